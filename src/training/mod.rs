//! Point-in-time training sets: each label row joined with, from every
//! feature set, the latest row of its entity from before the label's time,
//! so that no training row sees a feature from its own future.
//!
//! Each feature set's version is resolved once, at the start. The build is
//! one DataFusion plan (see [`plan`]): the labels' scan, an as-of join
//! per feature set (the node `ASOF JOIN` plans to, matching in Polars and
//! spilling past the memory pool), and a sort into the output order; its
//! rows are written as they come and committed as a new version of a
//! feature set whose lineage names every input and the exact version of
//! each feature set.
//!
//! Output order: by label time, then the entity columns, then the label's
//! other columns (ascending, nulls last), so the same inputs give the same
//! file whatever order their files were read in.

mod args;
mod inputs;
mod keys;
mod plan;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::physical_plan::common::spawn_buffered;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, execute_stream};
use futures::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use args::{FeaturesFlag, features_specs};
pub use inputs::{LabelFormat, LabelSource};

use plan::FeatureInput;

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

pub async fn build_training_set(
    request: &TrainingSetRequest,
    resources: &Resources,
) -> Result<TrainingSetSummary> {
    let started = Instant::now();
    check_request(request)?;
    let ctx = engine::session(resources).context(|| "creating the query session".to_string())?;
    // One sort of the whole output, which spills and merges its own files:
    // sorts per partition would meet in a merge the memory pool cannot
    // spill, and that a pool held by the joins can starve.
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .optimizer
        .repartition_sorts = false;
    let tables = OpenTables::default();
    refuse_other_outputs(&tables, &request.out).await?;

    // Every feature set's version is fixed before anything is read.
    let mut resolved = Vec::new();
    for spec in &request.features {
        resolved.push(resolve(&tables, spec).await?);
    }
    let labels = inputs::open_labels(&ctx, &tables, &request.labels).await?;
    let mut features = Vec::new();
    for (spec, r) in request.features.iter().zip(&resolved) {
        features.push(FeatureInput {
            spec,
            time: r.time.clone(),
            table: featureset::table_provider(&tables, &spec.location, Some(r.version)).await?,
        });
    }
    let planned = plan::plan(request, Arc::clone(&labels.table), &features)?;
    let context = || "building the training set".to_string();
    let physical = ctx
        .state()
        .create_physical_plan(&planned.plan)
        .await
        .context(context)?;
    let rows = execute_stream(Arc::clone(&physical), ctx.task_ctx()).context(context)?;

    let mut key = request.entity.clone();
    key.push(request.label_time.clone());
    let lineage = Lineage {
        pipeline: PIPELINE.to_string(),
        sql_sha256: String::new(),
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
        run_id: uuid::Uuid::new_v4().to_string(),
        trigger: "manual".to_string(),
        trigger_id: None,
        mode: SinkMode::Overwrite.as_str().to_string(),
        key,
        timestamp: Some(request.label_time.clone()),
        inputs: Vec::new(),
        feature_sets_read: Vec::new(),
        kafka: Vec::new(),
        lost: Vec::new(),
        rows_written: 0,
        columns: Vec::new(),
        duration_ms: None,
        training_set: None,
    };
    let out_schema = Arc::new(planned.plan.schema().as_arrow().clone());
    let written = write(
        &tables,
        &request.out,
        out_schema,
        rows,
        lineage,
        resources,
        started,
        |lineage| {
            // What the joins counted, now that they are done.
            let counts = join_counts(&physical);
            let features_lineage = request
                .features
                .iter()
                .zip(&resolved)
                .zip(planned.entities.iter().zip(counts))
                .map(|((spec, r), (entity, (rows, matched)))| FeaturesInput {
                    location: spec.location.clone(),
                    version: r.version,
                    time: r.time.clone(),
                    prefix: spec.prefix.clone(),
                    entity: entity.clone(),
                    rows,
                    matched,
                })
                .collect();
            let training = TrainingSetLineage {
                labels: LabelsInput {
                    location: match &request.labels {
                        LabelSource::Files { location, .. } | LabelSource::FeatureSet { location, .. } => {
                            location.clone()
                        }
                    },
                    format: labels.format.clone(),
                    version: labels.version,
                    rows: lineage.rows_written,
                },
                entity: request.entity.clone(),
                label_time: request.label_time.clone(),
                inclusive: request.inclusive,
                max_age: request.max_age.map(|d| humantime::format_duration(d).to_string()),
                features: features_lineage,
            };
            lineage.sql_sha256 = options_sha256(&training);
            lineage.inputs = labels
                .files
                .as_ref()
                .map_or_else(Vec::new, |t| t.take_files_read());
            lineage.training_set = Some(training);
        },
    )
    .await?;
    let (version, lineage) = written;
    Ok(TrainingSetSummary {
        location: request.out.clone(),
        version,
        rows: lineage.rows_written,
        elapsed_ms: started.elapsed().as_millis() as u64,
        lineage,
    })
}

/// Each as-of join's right-side rows and matched left rows, in the order
/// the feature sets were given (the first is the innermost join).
fn join_counts(plan: &Arc<dyn ExecutionPlan>) -> Vec<(u64, u64)> {
    let mut counts = Vec::new();
    let _ = plan.apply(|node| {
        if node.name() == "AsOfJoinExec" {
            let metric = |name: &str| {
                node.metrics()
                    .and_then(|m| m.sum_by_name(name))
                    .map_or(0, |v| v.as_usize() as u64)
            };
            counts.push((metric(engine::RIGHT_ROWS), metric(engine::MATCHED_ROWS)));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    counts.reverse();
    counts
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

/// Write the training set's rows as they come, as a new version that
/// replaces the last; `finish_lineage` completes the lineage once every
/// row is written (what the scans and joins counted).
#[allow(clippy::too_many_arguments)]
async fn write(
    tables: &OpenTables,
    out: &str,
    schema: SchemaRef,
    rows: SendableRecordBatchStream,
    mut lineage: Lineage,
    resources: &Resources,
    started: Instant,
    finish_lineage: impl FnOnce(&mut Lineage),
) -> Result<(u64, Lineage)> {
    let storable: SchemaRef = featureset::storable_schema(&schema)?;
    let mut writer = FileWriter::open(
        out,
        storable.clone(),
        tables,
        WriteBuffers::within(resources.buffer_bytes),
    )
    .await?;
    let mut stats = StatsCollector::new(&storable);
    let mut written = 0u64;
    // The output sort's merge runs in a task of its own, so that it and
    // the Parquet encoding here share the cores instead of taking turns
    // (on one core, they were the last fifth of a 1 M-label build).
    let mut rows = spawn_buffered(rows, 2);
    while let Some(batch) = rows.next().await {
        let batch = featureset::to_storable(
            &batch.context(|| "building the training set".to_string())?,
            &storable,
        )?;
        written += batch.num_rows() as u64;
        stats.update(&batch);
        writer.write(batch).await?;
    }
    let files = writer.finish().await?;
    lineage.rows_written = written;
    lineage.columns = stats.finish();
    finish_lineage(&mut lineage);
    lineage.duration_ms = Some(started.elapsed().as_millis() as u64);
    let staged = StagedWrite {
        name: out.to_string(),
        location: out.to_string(),
        mode: SinkMode::Overwrite,
        schema: storable,
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
