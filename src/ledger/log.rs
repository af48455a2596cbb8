//! Reading `txn` actions straight out of a Delta log.
//!
//! delta-rs answers "what is the version of app id X" with a log replay per
//! question, which is fine for eight Kafka partitions and hopeless for ten
//! thousand landed files. A feature set's whole ledger is instead read in
//! one pass: the `txn` column of the last checkpoint (the state the
//! checkpoint carried forward from every commit before it, so it survives
//! log cleanup) and the commits after it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, StructArray};
use arrow::datatypes::Int64Type;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::logstore::{LogStore, get_actions};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Deserialize;

use crate::error::{Context, KilnError, Result};

/// Commit files read at once.
const COMMITS_IN_FLIGHT: usize = 16;

/// The `txn` app ids one commit wrote, with their versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitTxns {
    pub version: u64,
    pub txns: Vec<(String, i64)>,
}

/// The latest `txn` version of every app id, as of the loaded version of
/// `table`.
pub async fn app_versions(table: &DeltaTable) -> Result<BTreeMap<String, i64>> {
    let Some(version) = table.version() else {
        return Ok(BTreeMap::new());
    };
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let mut versions = BTreeMap::new();
    let after = match last_checkpoint(store.as_ref(), log_store.log_path()).await? {
        Some(hint) if hint.version <= version => {
            if hint.v2_checkpoint.is_some() {
                return Err(KilnError::Usage(
                    "the feature set uses v2 checkpoints, whose sidecar files kiln cannot read its \
                     input ledger from yet"
                        .into(),
                ));
            }
            for path in checkpoint_parts(log_store.log_path(), &hint) {
                read_checkpoint_txns(Arc::clone(&store), path, &mut versions).await?;
            }
            Some(hint.version)
        }
        _ => None,
    };
    let first = after.map_or(0, |v| v + 1);
    for commit in commits(log_store.as_ref(), first, version).await? {
        // Later commits win, as in a log replay.
        versions.extend(commit.txns);
    }
    Ok(versions)
}

/// The `txn` actions of every commit in `first..=last`, oldest first. A
/// commit file that is gone (log cleanup) is an error: what it held can no
/// longer be checked.
pub async fn commits(log_store: &dyn LogStore, first: u64, last: u64) -> Result<Vec<CommitTxns>> {
    if first > last {
        return Ok(Vec::new());
    }
    futures::stream::iter(first..=last)
        .map(|v| commit_txns(log_store, v))
        .buffered(COMMITS_IN_FLIGHT)
        .try_collect()
        .await
}

async fn commit_txns(log_store: &dyn LogStore, version: u64) -> Result<CommitTxns> {
    let bytes = log_store
        .read_commit_entry(version)
        .await
        .context(|| format!("reading commit {version}"))?
        .ok_or_else(|| {
            KilnError::Io(format!(
                "commit {version} is no longer in the Delta log (cleaned up after a checkpoint)"
            ))
        })?;
    let actions = get_actions(version, &bytes).context(|| format!("parsing commit {version}"))?;
    Ok(CommitTxns {
        version,
        txns: actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Txn(t) => Some((t.app_id, t.version)),
                _ => None,
            })
            .collect(),
    })
}

/// The fields of `_delta_log/_last_checkpoint` kiln needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CheckpointHint {
    version: u64,
    parts: Option<u64>,
    v2_checkpoint: Option<serde_json::Value>,
}

async fn last_checkpoint(store: &dyn ObjectStore, log_path: &Path) -> Result<Option<CheckpointHint>> {
    let path = log_path.clone().join("_last_checkpoint");
    let bytes = match store.get(&path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|e| KilnError::Io(format!("reading {path}: {e}")))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(KilnError::Io(format!("reading {path}: {e}"))),
    };
    // A torn or foreign hint only means the commits are read from the start.
    Ok(serde_json::from_slice(&bytes).ok())
}

/// The file names of a classic checkpoint: one file, or `parts` of them.
fn checkpoint_parts(log_path: &Path, hint: &CheckpointHint) -> Vec<Path> {
    let v = hint.version;
    match hint.parts {
        Some(n) if n > 1 => (1..=n)
            .map(|part| {
                log_path
                    .clone()
                    .join(format!("{v:020}.checkpoint.{part:010}.{n:010}.parquet"))
            })
            .collect(),
        _ => vec![log_path.clone().join(format!("{v:020}.checkpoint.parquet"))],
    }
}

async fn read_checkpoint_txns(
    store: Arc<dyn ObjectStore>,
    path: Path,
    versions: &mut BTreeMap<String, i64>,
) -> Result<()> {
    let failed = |e: parquet::errors::ParquetError| KilnError::Io(format!("reading checkpoint {path}: {e}"));
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| KilnError::Io(format!("reading checkpoint {path}: {e}")))?
        .bytes()
        .await
        .map_err(|e| KilnError::Io(format!("reading checkpoint {path}: {e}")))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(failed)?;
    let Some(txn) = builder.schema().index_of("txn").ok() else {
        // A checkpoint of a table that never had a txn action.
        return Ok(());
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [txn]);
    for batch in builder.with_projection(mask).build().map_err(failed)? {
        let batch = batch.map_err(|e| KilnError::Io(format!("reading checkpoint {path}: {e}")))?;
        let column: &StructArray = batch.column(0).as_struct();
        let (Some(app_ids), Some(txn_versions)) =
            (column.column_by_name("appId"), column.column_by_name("version"))
        else {
            return Err(KilnError::Io(format!(
                "checkpoint {path}: its txn column has no appId or version"
            )));
        };
        let cast = |a: &arrow::array::ArrayRef, to: &arrow::datatypes::DataType| {
            arrow::compute::cast(a, to)
                .map_err(|e| KilnError::Io(format!("checkpoint {path}: txn column: {e}")))
        };
        let app_ids = cast(app_ids, &arrow::datatypes::DataType::Utf8)?;
        let txn_versions = cast(txn_versions, &arrow::datatypes::DataType::Int64)?;
        let app_ids = app_ids.as_string::<i32>();
        let txn_versions = txn_versions.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            if column.is_valid(row) && app_ids.is_valid(row) && txn_versions.is_valid(row) {
                versions.insert(app_ids.value(row).to_string(), txn_versions.value(row));
            }
        }
    }
    Ok(())
}
