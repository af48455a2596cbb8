//! Reading a feature set's versions back: what each commit did and the
//! lineage kiln recorded in it.

use deltalake::DeltaTable;
use deltalake::kernel::{Action, CommitInfo};
use deltalake::logstore::get_actions;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::lineage::{LINEAGE_KEY, Lineage};
use crate::error::{Context, Result};

/// One version of a feature set, as `kiln versions` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    /// RFC 3339, from the commit's own timestamp.
    pub timestamp: Option<String>,
    pub operation: Option<String>,
    /// Rows this commit wrote.
    pub rows: Option<u64>,
    pub pipeline: Option<String>,
    pub run_id: Option<String>,
    #[serde(skip)]
    pub lineage: Option<Lineage>,
}

impl VersionInfo {
    fn from_commit(version: u64, info: &CommitInfo) -> Self {
        let lineage: Option<Lineage> = info
            .info
            .get(LINEAGE_KEY)
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let rows = lineage.as_ref().map(|l| l.rows_written).or_else(|| {
            info.info
                .get("operationMetrics")
                .and_then(|m| m.get("num_added_rows"))
                .and_then(|v| v.as_u64())
        });
        Self {
            version,
            timestamp: info
                .timestamp
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            operation: info.operation.clone(),
            rows,
            pipeline: lineage.as_ref().map(|l| l.pipeline.clone()),
            run_id: lineage.as_ref().map(|l| l.run_id.clone()),
            lineage,
        }
    }
}

/// Every version of a loaded table, oldest first.
pub async fn versions(table: &DeltaTable) -> Result<Vec<VersionInfo>> {
    let Some(latest) = table.version() else {
        return Ok(Vec::new());
    };
    // One small GET per commit: on an object store, latency dominates, so
    // several are in flight at once (results stay in version order).
    let found: Vec<Option<VersionInfo>> = futures::stream::iter(0..=latest)
        .map(|v| version_info(table, v))
        .buffered(COMMITS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

/// What the commit of version `v` says about itself; `None` when its commit
/// file is gone (cleaned up after a log checkpoint) or has no commit info.
pub async fn version_info(table: &DeltaTable, v: u64) -> Result<Option<VersionInfo>> {
    let Some(bytes) = table
        .log_store()
        .read_commit_entry(v)
        .await
        .context(|| format!("reading commit {v}"))?
    else {
        return Ok(None);
    };
    let actions = get_actions(v, &bytes).context(|| format!("parsing commit {v}"))?;
    Ok(actions.iter().find_map(|a| match a {
        Action::CommitInfo(ci) => Some(VersionInfo::from_commit(v, ci)),
        _ => None,
    }))
}

/// Commit files read at once when listing versions.
const COMMITS_IN_FLIGHT: usize = 16;

/// One version in full, as `kiln show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct VersionDetail {
    pub location: String,
    #[serde(flatten)]
    pub info: VersionInfo,
    /// (name, Arrow type) of each column.
    pub schema: Vec<(String, String)>,
    /// Rows in the table as of this version.
    pub total_rows: u64,
    pub files: usize,
    pub lineage: Option<Lineage>,
}

/// Details of the loaded version of `table`.
pub async fn version_detail(table: &DeltaTable, location: &str) -> Result<VersionDetail> {
    let version = table.version().unwrap_or_default();
    let info = version_info(table, version).await?.unwrap_or(VersionInfo {
        version,
        timestamp: None,
        operation: None,
        rows: None,
        pipeline: None,
        run_id: None,
        lineage: None,
    });
    let snapshot = table
        .snapshot()
        .context(|| "reading the table snapshot".to_string())?;
    let schema = snapshot
        .snapshot()
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect();
    let files = snapshot.log_data().iter().collect::<Vec<_>>();
    let total_rows = files.iter().filter_map(|f| f.num_records()).sum::<usize>() as u64;
    Ok(VersionDetail {
        location: location.to_string(),
        lineage: info.lineage.clone(),
        info,
        schema,
        total_rows,
        files: files.len(),
    })
}
