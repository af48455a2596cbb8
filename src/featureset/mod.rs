//! Feature sets: Delta tables written by kiln, one commit per run, each
//! carrying the run's [`Lineage`].

mod dead_letters;
mod encoding;
mod history;
mod lineage;
mod schema;
mod stats;
mod tables;
mod watch;
mod write;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Metadata, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use url::Url;

use crate::error::{Context, KilnError, Result};
use crate::ledger::{self, ReadInput};
use crate::pipeline::SinkMode;

pub use dead_letters::{DeadLetter, dead_letter_batch, dead_letter_location, dead_letter_schema};
pub use history::{VersionDetail, VersionInfo, version_detail, version_info, versions};
pub use lineage::{
    ColumnStats, FeatureSetRead, FeaturesInput, InputFile, KafkaInput, LINEAGE_KEY, LabelsInput, Lineage,
    LostRange, TrainingSetLineage,
};
pub use schema::{Fit, fit, storable_schema, to_storable};
pub use stats::StatsCollector;
pub use tables::OpenTables;
pub use watch::{Arrived, Wanted, recent_commits, trigger_commit, wait};
pub use write::{FileWriter, WriteBuffers, WrittenFiles, finish_parts, write_batches};

/// The table URL of a feature set location: a path (relative to the
/// working directory), `file://`, `s3://` or `gs://`. Nothing is created.
pub fn table_url(location: &str) -> Result<Url> {
    let url = if location.contains("://") {
        Url::parse(location).map_err(|e| KilnError::Usage(format!("'{location}' is not a valid URL: {e}")))?
    } else {
        let path = std::path::absolute(location)
            .map_err(|e| KilnError::Usage(format!("'{location}' is not a valid path: {e}")))?;
        Url::from_directory_path(&path)
            .map_err(|_| KilnError::Usage(format!("'{location}' is not a valid path")))?
    };
    let mut url = url;
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

/// `path@3` is version 3 of `path`; an `@` not followed by digits is part of the path.
pub fn split_version(url: &str) -> (String, Option<u64>) {
    match url.rsplit_once('@') {
        Some((base, v)) if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) => {
            (base.to_string(), v.parse().ok())
        }
        _ => (url.to_string(), None),
    }
}

/// Open a feature set; `None` when nothing has been committed there yet.
pub async fn open(location: &str) -> Result<Option<DeltaTable>> {
    let url = table_url(location)?;
    // A local folder without a log is simply a feature set not written
    // yet; asking deltalake would log an error for the missing path.
    if let Ok(dir) = url.to_file_path()
        && !dir.join("_delta_log").is_dir()
    {
        return Ok(None);
    }
    let table = DeltaTable::try_from_url(url)
        .await
        .context(|| format!("opening feature set at '{location}'"))?;
    Ok(table.version().is_some().then_some(table))
}

/// Open a feature set that must exist, at `version` or the latest.
pub async fn open_existing(location: &str, version: Option<u64>) -> Result<DeltaTable> {
    let Some(mut table) = open(location).await? else {
        return Err(KilnError::Usage(format!(
            "no feature set at '{location}': it has no Delta log (_delta_log)"
        )));
    };
    let latest = table.version().unwrap_or_default();
    if let Some(v) = version.filter(|v| *v > latest) {
        return Err(KilnError::Usage(format!(
            "feature set '{location}' has no version {v}: its latest version is {latest}"
        )));
    }
    if let Some(v) = version {
        table
            .load_version(v)
            .await
            .context(|| format!("loading version {v} of '{location}'"))?;
    }
    Ok(table)
}

/// The Arrow schema of a loaded table.
pub fn arrow_schema(table: &DeltaTable) -> Result<SchemaRef> {
    let snapshot = table
        .snapshot()
        .context(|| "reading the table snapshot".to_string())?;
    Ok(snapshot.snapshot().arrow_schema())
}

/// A feature set write whose data files are written but not committed yet.
pub struct StagedWrite {
    pub name: String,
    pub location: String,
    pub mode: SinkMode,
    pub schema: SchemaRef,
    pub files: WrittenFiles,
    pub add_columns: bool,
    pub lineage: Lineage,
    /// The input ledger's `txn` actions (Kafka positions, files read),
    /// committed with the data.
    pub transactions: Vec<Transaction>,
    /// The inputs whose positions the transactions move on, each with the
    /// version its position was read at: the commit is refused if a commit
    /// since wrote one of them (see [`ledger::conflict`]).
    pub inputs: Vec<ReadInput>,
}

impl StagedWrite {
    pub fn rows(&self) -> u64 {
        self.files.rows
    }
}

/// Commit one staged write as one new version: its data files, the
/// ledger's transactions and the lineage; for an overwrite the removal of
/// every file before it, for new columns the wider schema. Returns the
/// version and leaves the new state in `tables`. A commit whose inputs
/// another writer consumed since they were read fails with
/// [`KilnError::Conflict`].
pub async fn commit(staged: StagedWrite, tables: &OpenTables) -> Result<u64> {
    let latest = tables.latest(&staged.location).await?;
    if let Some(table) = &latest {
        ledger::check_since(table, &staged.name, &staged.inputs).await?;
    }
    let adds = staged.files.adds.len();
    let mut removes = Vec::new();
    if let (Some(table), SinkMode::Overwrite) = (&latest, staged.mode) {
        let snapshot = table
            .snapshot()
            .context(|| format!("reading feature set '{}'", staged.name))?;
        removes = snapshot
            .snapshot()
            .file_views(&table.log_store(), None)
            .map_ok(|f| Action::Remove(f.remove_action(true)))
            .try_collect::<Vec<_>>()
            .await
            .context(|| format!("listing the files of feature set '{}'", staged.name))?;
    }
    let metrics = serde_json::json!({
        "num_added_files": adds,
        "num_removed_files": removes.len(),
        "num_added_rows": staged.files.rows,
    });
    let lineage = serde_json::to_value(&staged.lineage)?;
    let properties = CommitProperties::default()
        .with_metadata([
            (LINEAGE_KEY.to_string(), lineage),
            ("operationMetrics".to_string(), metrics),
        ])
        .with_application_transactions(staged.transactions);
    let files = staged.files.adds.into_iter().map(Action::Add);
    let new_table = latest.is_none();
    let failed = |e| commit_error(e, &staged.name, &staged.location, new_table);
    let table = match latest {
        None => {
            let url = table_url(&staged.location)?;
            let table = DeltaTableBuilder::from_url(url)
                .and_then(|b| b.build())
                .context(|| format!("opening feature set '{}' at '{}'", staged.name, staged.location))?;
            let columns: StructType = staged.schema.as_ref().try_into_kernel()?;
            // Had another writer created the table meanwhile, delta-rs
            // would commit on top of it unchecked; fail instead, and check
            // against its commits on the next try.
            let created = CreateBuilder::new()
                .with_log_store(table.log_store())
                .with_columns(columns.fields().cloned())
                .with_actions(files)
                .with_commit_properties(properties.with_max_retries(0))
                .await;
            match created {
                Ok(table) => table,
                Err(_) if open(&staged.location).await?.is_some() => {
                    return Err(KilnError::Conflict(format!(
                        "feature set '{}' at '{}' was created by another writer during this run",
                        staged.name, staged.location
                    )));
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Some(mut table) => {
            let snapshot = table
                .snapshot()
                .context(|| format!("reading feature set '{}'", staged.name))?;
            let mut actions = Vec::new();
            if staged.add_columns {
                let wider: StructType = staged.schema.as_ref().try_into_kernel()?;
                if &wider != snapshot.snapshot().schema().as_ref() {
                    actions.push(Action::Metadata(with_schema(snapshot.metadata(), &wider)?));
                }
            }
            actions.extend(removes);
            actions.extend(files);
            let operation = DeltaOperation::Write {
                mode: match staged.mode {
                    SinkMode::Append => SaveMode::Append,
                    SinkMode::Overwrite => SaveMode::Overwrite,
                },
                partition_by: None,
                predicate: None,
            };
            let version = CommitBuilder::from(properties)
                .with_actions(actions)
                .build(Some(snapshot), table.log_store(), operation)
                .await
                .map_err(failed)?
                .version();
            table
                .update_incremental(Some(version))
                .await
                .context(|| format!("reading back version {version} of feature set '{}'", staged.name))?;
            table
        }
    };
    tables.remember(&staged.location, &table)?;
    table.version().ok_or_else(|| {
        KilnError::Io(format!(
            "feature set '{}' has no version after commit",
            staged.name
        ))
    })
}

/// `metadata` with `schema` instead of its own, everything else kept (as
/// delta-rs's schema merge does it).
fn with_schema(metadata: &Metadata, schema: &StructType) -> Result<Metadata> {
    let mut value = serde_json::to_value(metadata)?;
    value["schemaString"] = serde_json::Value::String(serde_json::to_string(schema)?);
    Ok(serde_json::from_value(value)?)
}

fn commit_error(e: DeltaTableError, name: &str, location: &str, new_table: bool) -> KilnError {
    use deltalake::kernel::transaction::TransactionError;
    match e {
        DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(conflict),
        } => KilnError::Conflict(format!(
            "feature set '{name}' at '{location}': another writer committed first ({conflict})"
        )),
        DeltaTableError::Transaction {
            source: TransactionError::MaxCommitAttempts(_) | TransactionError::VersionAlreadyExists(_),
        }
        | DeltaTableError::VersionAlreadyExists(_)
            if new_table =>
        {
            KilnError::Conflict(format!(
                "feature set '{name}' at '{location}' was created by another writer during this run"
            ))
        }
        source => KilnError::Delta {
            context: format!("committing feature set '{name}' at '{location}'"),
            source,
        },
    }
}

/// A feature set as a read-only table (pinned to `version`, or the latest)
/// for a DataFusion session.
pub async fn table_provider(
    tables: &OpenTables,
    location: &str,
    version: Option<u64>,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    let table = tables.at(location, version).await?;
    let provider = table
        .table_provider()
        .await
        .context(|| format!("reading feature set at '{location}'"))?;
    Ok(provider)
}
