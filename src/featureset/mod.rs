//! Feature sets: Delta tables written by kiln, one commit per run, each
//! carrying the run's [`Lineage`].

mod dead_letters;
mod encoding;
mod history;
mod lineage;
mod schema;
mod stats;
mod tables;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::error::{Context, KilnError, Result};
use crate::ledger::{self, ReadInput};
use crate::pipeline::SinkMode;

pub use dead_letters::{DeadLetter, dead_letter_batch, dead_letter_location, dead_letter_schema};
pub use history::{VersionDetail, VersionInfo, version_detail, version_info, versions};
pub use lineage::{ColumnStats, InputFile, KafkaInput, LINEAGE_KEY, Lineage, LostRange};
pub use schema::{Fit, fit, storable_schema, to_storable};
pub use stats::StatsCollector;
pub use tables::OpenTables;

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

/// A feature set write that has been computed but not committed yet.
pub struct StagedWrite {
    pub name: String,
    pub location: String,
    pub mode: SinkMode,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
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
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }
}

/// Commit one staged write as one new version; returns the version, and
/// leaves the new state in `tables`. A commit whose inputs another writer
/// consumed since they were read fails with [`KilnError::Conflict`].
pub async fn commit(staged: StagedWrite, tables: &OpenTables) -> Result<u64> {
    let url = table_url(&staged.location)?;
    if url.scheme() == "file" {
        let dir = url
            .to_file_path()
            .map_err(|_| KilnError::Usage(format!("bad local location '{}'", staged.location)))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| KilnError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    let context = || format!("opening feature set '{}' at '{}'", staged.name, staged.location);
    let latest = tables.latest(&staged.location).await?;
    if let Some(table) = &latest {
        ledger::check_since(table, &staged.name, &staged.inputs).await?;
    }
    let new_table = latest.is_none();
    // A new feature set is created by its first write.
    let table = match latest {
        Some(table) => table,
        None => DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .context(context)?,
    };
    let batches = if staged.batches.is_empty() {
        // Overwrite with no rows still commits: the new snapshot is empty.
        vec![RecordBatch::new_empty(staged.schema.clone())]
    } else {
        staged.batches
    };
    let lineage = serde_json::to_value(&staged.lineage)?;
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let mut properties = CommitProperties::default()
        .with_metadata([(LINEAGE_KEY.to_string(), lineage)])
        .with_application_transactions(staged.transactions);
    if new_table {
        // Had another writer created the table meanwhile, delta-rs would
        // commit on top of it unchecked; fail instead, and check against
        // its commits on the next try.
        properties = properties.with_max_retries(0);
    }
    let mut write = table
        .write(batches)
        .with_writer_properties(encoding::writer_properties(rows))
        .with_save_mode(match staged.mode {
            SinkMode::Append => SaveMode::Append,
            SinkMode::Overwrite => SaveMode::Overwrite,
        })
        .with_commit_properties(properties);
    if staged.add_columns {
        write = write.with_schema_mode(SchemaMode::Merge);
    }
    let table = write
        .await
        .map_err(|e| commit_error(e, &staged.name, &staged.location, new_table))?;
    tables.remember(&staged.location, &table)?;
    table.version().ok_or_else(|| {
        KilnError::Io(format!(
            "feature set '{}' has no version after commit",
            staged.name
        ))
    })
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
        } if new_table => KilnError::Conflict(format!(
            "feature set '{name}' at '{location}' was created by another writer during this run"
        )),
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
