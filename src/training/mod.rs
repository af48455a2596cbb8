//! Point-in-time training sets: each label row joined with, from every
//! feature set, the latest row of its entity from before the label's time,
//! so that no training row sees a feature from its own future.
//!
//! The labels and each feature set (at one version, resolved once at the
//! start) are read into Arrow; the match runs in Polars (see [`asof`]);
//! the feature columns are gathered in Arrow by the row numbers it
//! returns, and the result is committed as a new version of a feature set
//! whose lineage names every input and the exact version of each feature
//! set.
//!
//! Output order: by label time, then the entity columns, then the label's
//! other columns (ascending, nulls last), so the same inputs give the same
//! file whatever order their files were read in.

mod args;
mod asof;
mod bridge;
mod inputs;
mod keys;
mod order;
mod time;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use args::{FeaturesFlag, features_specs};
pub use inputs::{LabelFormat, LabelSource};

use crate::engine::{self, Resources};
use crate::error::{Context, KilnError, Result};
use crate::featureset::{
    self, FeaturesInput, FileWriter, LabelsInput, Lineage, OpenTables, StagedWrite, StatsCollector,
    TrainingSetLineage, WriteBuffers,
};
use crate::pipeline::SinkMode;

/// One feature set to join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeaturesSpec {
    pub location: String,
    /// `None`: the latest version when the build starts.
    pub version: Option<u64>,
    /// The feature time column; the feature set's declared `timestamp` by default.
    pub time: Option<String>,
    /// Put before each of its column names.
    pub prefix: Option<String>,
    /// Label entity column → this feature set's column, where they differ.
    pub entity_map: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct TrainingSetRequest {
    pub labels: LabelSource,
    pub entity: Vec<String>,
    pub label_time: String,
    pub features: Vec<FeaturesSpec>,
    /// Match feature rows at the label's time too (default: strictly before).
    pub inclusive: bool,
    pub max_age: Option<Duration>,
    pub out: String,
}

/// What `kiln training-set` reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingSetSummary {
    pub location: String,
    pub version: u64,
    pub rows: u64,
    pub elapsed_ms: u64,
    pub lineage: Lineage,
}

/// The name a training set's lineage gives as its pipeline.
pub const PIPELINE: &str = "training-set";

/// Polars sizes its thread pool once, from `POLARS_MAX_THREADS`, on first
/// use: give it the CPUs DataFusion gets (the container's quota). Call
/// before any thread is started.
pub fn size_polars_threads() {
    if std::env::var_os("POLARS_MAX_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: called at start-up, before the runtime or any other
        // thread exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("POLARS_MAX_THREADS", threads.to_string()) };
    }
}

pub async fn build_training_set(
    request: &TrainingSetRequest,
    resources: &Resources,
) -> Result<TrainingSetSummary> {
    let started = Instant::now();
    check_request(request)?;
    let ctx = engine::session(resources).context(|| "creating the query session".to_string())?;
    let tables = OpenTables::default();
    refuse_other_outputs(&tables, &request.out).await?;

    // Every feature set's version is fixed before anything is read.
    let mut resolved = Vec::new();
    for spec in &request.features {
        resolved.push(resolve(&tables, spec).await?);
    }

    let labels = inputs::read_labels(&ctx, &tables, &request.labels).await?;
    let labels_batch = order_labels(&labels.batch, request)?;
    let mut columns: Vec<(Field, ArrayRef)> = labels_batch
        .schema()
        .fields()
        .iter()
        .zip(labels_batch.columns())
        .map(|(f, c)| (f.as_ref().clone(), c.clone()))
        .collect();
    let mut owners: BTreeMap<String, String> = columns
        .iter()
        .map(|(f, _)| (f.name().clone(), "the labels".to_string()))
        .collect();

    let mut features_lineage = Vec::new();
    for (spec, feature_set) in request.features.iter().zip(&resolved) {
        let batch = inputs::read_feature_set(
            &ctx,
            &tables,
            &spec.location,
            Some(feature_set.version),
            "features",
        )
        .await?;
        let joined = join_one(request, &labels_batch, spec, feature_set, &batch)?;
        for (field, array) in joined.columns {
            if let Some(owner) =
                owners.insert(field.name().clone(), format!("feature set '{}'", spec.location))
            {
                return Err(KilnError::Usage(format!(
                    "column '{}' comes from both {owner} and feature set '{}': give that --features a --prefix",
                    field.name(),
                    spec.location
                )));
            }
            columns.push((field, array));
        }
        features_lineage.push(FeaturesInput {
            location: spec.location.clone(),
            version: feature_set.version,
            time: feature_set.time.clone(),
            prefix: spec.prefix.clone(),
            entity: joined.entity,
            rows: batch.num_rows() as u64,
            matched: joined.matched,
        });
    }

    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let output = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    let training = TrainingSetLineage {
        labels: LabelsInput {
            location: match &request.labels {
                LabelSource::Files { location, .. } | LabelSource::FeatureSet { location, .. } => {
                    location.clone()
                }
            },
            format: labels.format,
            version: labels.version,
            rows: labels.batch.num_rows() as u64,
        },
        entity: request.entity.clone(),
        label_time: request.label_time.clone(),
        inclusive: request.inclusive,
        max_age: request.max_age.map(|d| humantime::format_duration(d).to_string()),
        features: features_lineage,
    };
    let mut key = request.entity.clone();
    key.push(request.label_time.clone());
    let lineage = Lineage {
        pipeline: PIPELINE.to_string(),
        sql_sha256: options_sha256(&training),
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        run_id: uuid::Uuid::new_v4().to_string(),
        trigger: "manual".to_string(),
        trigger_id: None,
        mode: SinkMode::Overwrite.as_str().to_string(),
        key,
        timestamp: Some(request.label_time.clone()),
        inputs: labels.files,
        kafka: Vec::new(),
        lost: Vec::new(),
        rows_written: output.num_rows() as u64,
        columns: Vec::new(),
        duration_ms: None,
        training_set: Some(training),
    };
    let (version, lineage) = write(&tables, &request.out, output, lineage, resources, started).await?;
    Ok(TrainingSetSummary {
        location: request.out.clone(),
        version,
        rows: lineage.rows_written,
        elapsed_ms: started.elapsed().as_millis() as u64,
        lineage,
    })
}

fn check_request(request: &TrainingSetRequest) -> Result<()> {
    if request.entity.is_empty() {
        return Err(KilnError::Usage("--entity names no column".into()));
    }
    if request.features.is_empty() {
        return Err(KilnError::Usage("give at least one --features".into()));
    }
    for spec in &request.features {
        if let Some(unknown) = spec.entity_map.keys().find(|k| !request.entity.contains(k)) {
            return Err(KilnError::Usage(format!(
                "--entity-map of '{}' maps '{unknown}', which is not an --entity column ({})",
                spec.location,
                request.entity.join(", ")
            )));
        }
    }
    Ok(())
}

/// A training set is written over only a location that holds nothing yet
/// or an earlier training set: never over a pipeline's feature set.
async fn refuse_other_outputs(tables: &OpenTables, out: &str) -> Result<()> {
    let Some(table) = tables.latest(out).await? else {
        return Ok(());
    };
    let version = table.version().unwrap_or_default();
    let lineage = featureset::version_info(&table, version)
        .await?
        .and_then(|i| i.lineage);
    match lineage {
        Some(l) if l.training_set.is_some() => Ok(()),
        Some(l) => Err(KilnError::Usage(format!(
            "'{out}' holds feature set versions of pipeline '{}': a training set is written to a new location \
             or over an earlier training set",
            l.pipeline
        ))),
        None => Err(KilnError::Usage(format!(
            "'{out}' holds a Delta table kiln did not write: a training set is written to a new location \
             or over an earlier training set"
        ))),
    }
}

/// A feature set's version and time column, as of the start.
struct Resolved {
    version: u64,
    time: String,
}

async fn resolve(tables: &OpenTables, spec: &FeaturesSpec) -> Result<Resolved> {
    let table = tables.at(&spec.location, spec.version).await?;
    let version = table.version().unwrap_or_default();
    let time = match &spec.time {
        Some(time) => time.clone(),
        None => {
            let lineage = featureset::version_info(&table, version)
                .await?
                .and_then(|i| i.lineage);
            lineage.and_then(|l| l.timestamp).ok_or_else(|| {
                KilnError::Usage(format!(
                    "feature set '{}' (version {version}) declares no timestamp column: give --feature-time after its --features",
                    spec.location
                ))
            })?
        }
    };
    Ok(Resolved { version, time })
}

fn column<'a>(batch: &'a RecordBatch, name: &str, what: &str, flag: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| {
        let names: Vec<_> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
        KilnError::Usage(format!(
            "no column '{name}' (given by {flag}) in {what}, whose columns are: {}",
            names.join(", ")
        ))
    })
}

/// The labels in output order (see the module's comment).
fn order_labels(batch: &RecordBatch, request: &TrainingSetRequest) -> Result<RecordBatch> {
    let time = column(batch, &request.label_time, "the labels", "--label-time")?;
    let what = format!("label time column '{}'", request.label_time);
    let unit = time::unit_of(&what, time.data_type())?;
    let instants = time::instants(&what, time, unit)?;
    let mut then = Vec::new();
    for name in &request.entity {
        then.push(column(batch, name, "the labels", "--entity")?.clone());
    }
    for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
        if !request.entity.contains(field.name()) && field.name() != &request.label_time {
            then.push(array.clone());
        }
    }
    let order = order::by_time_then(&instants, &then, false, false)?;
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &order, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// The feature columns one feature set adds to the labels.
struct Joined {
    columns: Vec<(Field, ArrayRef)>,
    /// The feature set's entity columns, in `--entity` order.
    entity: Vec<String>,
    matched: u64,
}

fn join_one(
    request: &TrainingSetRequest,
    labels: &RecordBatch,
    spec: &FeaturesSpec,
    resolved: &Resolved,
    features: &RecordBatch,
) -> Result<Joined> {
    let what = format!("feature set '{}'", spec.location);
    let entity: Vec<String> = request
        .entity
        .iter()
        .map(|e| spec.entity_map.get(e).cloned().unwrap_or_else(|| e.clone()))
        .collect();
    let mut label_keys = Vec::new();
    let mut feature_keys = Vec::new();
    for (label_name, feature_name) in request.entity.iter().zip(&entity) {
        let label = column(labels, label_name, "the labels", "--entity")?;
        let feature = column(features, feature_name, &what, "--entity / --entity-map")?;
        let (l, f) = keys::align(label_name, label, feature_name, feature, &spec.location)?;
        label_keys.push(l);
        feature_keys.push(f);
    }
    let label_what = format!("label time column '{}'", request.label_time);
    let feature_what = format!("feature time column '{}' of {what}", resolved.time);
    let label_time = column(labels, &request.label_time, "the labels", "--label-time")?;
    let feature_time = column(
        features,
        &resolved.time,
        &what,
        "--feature-time or its declared timestamp",
    )?;
    let unit = time::finer(
        time::unit_of(&label_what, label_time.data_type())?,
        time::unit_of(&feature_what, feature_time.data_type())?,
    );
    let label_instants = time::instants(&label_what, label_time, unit)?;
    let feature_instants = time::instants(&feature_what, feature_time, unit)?;

    let payload: Vec<(&Arc<Field>, &ArrayRef)> = features
        .schema_ref()
        .fields()
        .iter()
        .zip(features.columns())
        .filter(|(f, _)| !entity.contains(f.name()))
        .collect();
    let tiebreak: Vec<ArrayRef> = payload
        .iter()
        .filter(|(f, _)| f.name() != &resolved.time)
        .map(|(_, c)| (*c).clone())
        .collect();
    let rows: UInt32Array = asof::match_rows(
        asof::Side {
            keys: &label_keys,
            time: &label_instants,
        },
        asof::Side {
            keys: &feature_keys,
            time: &feature_instants,
        },
        &tiebreak,
        asof::Rule {
            inclusive: request.inclusive,
            max_age: request.max_age.map(|d| time::duration_in(d, unit)),
        },
    )?;
    let matched = (rows.len() - rows.null_count()) as u64;
    let prefix = spec.prefix.as_deref().unwrap_or("");
    let columns = payload
        .into_iter()
        .map(|(field, array)| {
            let taken = take(array.as_ref(), &rows, None)?;
            let name = format!("{prefix}{}", field.name());
            Ok((Field::new(name, field.data_type().clone(), true), taken))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Joined {
        columns,
        entity,
        matched,
    })
}

/// Identical requests (same inputs, versions and rule) hash the same.
fn options_sha256(training: &TrainingSetLineage) -> String {
    let described = serde_json::json!({
        "labels": training.labels.location,
        "labels_version": training.labels.version,
        "entity": training.entity,
        "label_time": training.label_time,
        "inclusive": training.inclusive,
        "max_age": training.max_age,
        "features": training.features.iter().map(|f| serde_json::json!({
            "location": f.location, "version": f.version, "time": f.time,
            "prefix": f.prefix, "entity": f.entity,
        })).collect::<Vec<_>>(),
    });
    let digest = Sha256::digest(described.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write the training set's rows as a new version that replaces the last.
async fn write(
    tables: &OpenTables,
    out: &str,
    output: RecordBatch,
    mut lineage: Lineage,
    resources: &Resources,
    started: Instant,
) -> Result<(u64, Lineage)> {
    let schema: SchemaRef = featureset::storable_schema(output.schema_ref())?;
    let output = featureset::to_storable(&output, &schema)?;
    let mut writer = FileWriter::open(
        out,
        schema.clone(),
        tables,
        WriteBuffers::within(resources.buffer_bytes),
    )
    .await?;
    let mut stats = StatsCollector::new(&schema);
    const SLICE_ROWS: usize = 64 * 1024;
    let mut offset = 0;
    while offset < output.num_rows() {
        let slice = output.slice(offset, SLICE_ROWS.min(output.num_rows() - offset));
        stats.update(&slice);
        writer.write(slice).await?;
        offset += SLICE_ROWS;
    }
    let files = writer.finish().await?;
    lineage.columns = stats.finish();
    lineage.duration_ms = Some(started.elapsed().as_millis() as u64);
    let staged = StagedWrite {
        name: out.to_string(),
        location: out.to_string(),
        mode: SinkMode::Overwrite,
        schema,
        files,
        // Each training set may have other columns than the one it replaces.
        add_columns: true,
        lineage: lineage.clone(),
        transactions: Vec::new(),
        inputs: Vec::new(),
    };
    let version = featureset::commit(staged, tables).await?;
    Ok((version, lineage))
}

#[cfg(test)]
mod tests;
