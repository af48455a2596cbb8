//! Waiting for a feature set's next version (`kiln wait`) by watching its
//! Delta log, without loading the table.
//!
//! A poll asks the store whether the next commit file (`_delta_log/
//! <version>.json`) exists: one request, whatever the size of the log, and
//! only a commit that exists is read. Waiting for a trigger's commit also
//! reads the commits already there once (a run may commit before anyone
//! waits for it), newest first, back to [`LOOK_BACK`] commits or the first
//! one log cleanup kept.

use std::time::{Duration, Instant};

use deltalake::DeltaTableBuilder;
use deltalake::logstore::ObjectStoreRef;
use object_store::ObjectStoreExt as _;
use object_store::path::Path;
use serde::Serialize;

use super::{LINEAGE_KEY, Lineage, table_url};
use crate::error::{Context, KilnError, Result};

/// Commits read back when waiting for a trigger that may have committed
/// already.
const LOOK_BACK: u64 = 1000;

/// What to wait for.
#[derive(Debug, Clone)]
pub enum Wanted {
    /// Any version newer than this one.
    After(u64),
    /// A commit whose lineage names this trigger: its id (`kiln worker`,
    /// `kiln run --trigger-id`), or what `kiln run --trigger` named.
    Trigger(String),
}

/// The version waited for.
#[derive(Debug, Clone, Serialize)]
pub struct Arrived {
    pub location: String,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// Wait until the feature set at `location` (which may not exist yet) has
/// what is `wanted`, asking every `poll`; None when `timeout` passes first.
pub async fn wait(
    location: &str,
    wanted: &Wanted,
    timeout: Option<Duration>,
    poll: Duration,
) -> Result<Option<Arrived>> {
    let log = Log::open(location)?;
    let started = Instant::now();
    let arrived = |version: u64| Arrived {
        location: location.to_string(),
        version,
        trigger: match wanted {
            Wanted::Trigger(id) => Some(id.clone()),
            Wanted::After(_) => None,
        },
    };
    let mut next = match wanted {
        Wanted::After(after) => match log.latest().await? {
            Some(latest) if latest > *after => return Ok(Some(arrived(latest))),
            _ => after + 1,
        },
        Wanted::Trigger(id) => {
            let latest = log.latest().await?;
            if let Some(latest) = latest {
                for version in (latest.saturating_sub(LOOK_BACK - 1)..=latest).rev() {
                    match log.trigger_of(version).await? {
                        Commit::Missing => break,
                        Commit::By(names) if names.contains(id) => {
                            return Ok(Some(arrived(version)));
                        }
                        Commit::By(_) => {}
                    }
                }
            }
            latest.map_or(0, |v| v + 1)
        }
    };
    loop {
        match wanted {
            Wanted::After(_) => {
                if log.exists(next).await? {
                    // Report the newest there is, not only the first newer.
                    while log.exists(next + 1).await? {
                        next += 1;
                    }
                    return Ok(Some(arrived(next)));
                }
            }
            Wanted::Trigger(id) => {
                // Read each new commit as it appears, without waiting in
                // between.
                let mut found_new = false;
                while let Commit::By(names) = log.trigger_of(next).await? {
                    found_new = true;
                    if names.contains(id) {
                        return Ok(Some(arrived(next)));
                    }
                    next += 1;
                }
                if found_new {
                    continue;
                }
            }
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Ok(None);
        }
        let left = timeout.map_or(poll, |t| t.saturating_sub(started.elapsed()).min(poll));
        tokio::time::sleep(left).await;
    }
}

/// The newest of the last [`LOOK_BACK`] commits of the feature set at
/// `location` whose lineage names trigger `id`, with that lineage.
pub async fn trigger_commit(location: &str, id: &str) -> Result<Option<(u64, Lineage)>> {
    let log = Log::open(location)?;
    let Some(latest) = log.latest().await? else {
        return Ok(None);
    };
    for version in (latest.saturating_sub(LOOK_BACK - 1)..=latest).rev() {
        let Some(lineage) = log.lineage_of(version).await? else {
            break;
        };
        if lineage.as_ref().and_then(|l| l.get("trigger_id")?.as_str()) == Some(id) {
            let lineage = serde_json::from_value(lineage.expect("matched")).map_err(|e| {
                KilnError::Io(format!(
                    "reading the lineage of version {version} of '{location}': {e}"
                ))
            })?;
            return Ok(Some((version, lineage)));
        }
    }
    Ok(None)
}

/// The last `count` commits of the feature set at `location` that carry
/// kiln's lineage, newest first.
pub async fn recent_commits(location: &str, count: u64) -> Result<Vec<(u64, Lineage)>> {
    let log = Log::open(location)?;
    let Some(latest) = log.latest().await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for version in (latest.saturating_sub(count.max(1) - 1)..=latest).rev() {
        let Some(lineage) = log.lineage_of(version).await? else {
            break;
        };
        if let Some(lineage) = lineage.and_then(|l| serde_json::from_value(l).ok()) {
            out.push((version, lineage));
        }
    }
    Ok(out)
}

/// A commit file: missing, or there with what its lineage names as its
/// trigger (the trigger's id and what started the run).
enum Commit {
    Missing,
    By(Vec<String>),
}

/// A feature set's `_delta_log`, through its object store.
struct Log {
    location: String,
    store: ObjectStoreRef,
}

impl Log {
    fn open(location: &str) -> Result<Self> {
        let url = table_url(location)?;
        let table = DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .context(|| format!("opening feature set at '{location}'"))?;
        Ok(Self {
            location: location.to_string(),
            store: table.log_store().object_store(None),
        })
    }

    fn commit_path(version: u64) -> Path {
        Path::from(format!("_delta_log/{version:020}.json"))
    }

    async fn exists(&self, version: u64) -> Result<bool> {
        match self.store.head(&Self::commit_path(version)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// The latest version: from the last checkpoint (if any) forward, one
    /// request per commit since; None when nothing was committed.
    async fn latest(&self) -> Result<Option<u64>> {
        // Log cleanup may have removed the commit files up to the checkpoint.
        let checkpoint = match self.store.get(&Path::from("_delta_log/_last_checkpoint")).await {
            Ok(found) => {
                let bytes = found.bytes().await.map_err(|e| self.failed(e))?;
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["version"].as_u64())
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(self.failed(e)),
        };
        let mut version = checkpoint.unwrap_or(0);
        if checkpoint.is_none() && !self.exists(0).await? {
            return Ok(None);
        }
        while self.exists(version + 1).await? {
            version += 1;
        }
        Ok(Some(version))
    }

    async fn trigger_of(&self, version: u64) -> Result<Commit> {
        let Some(lineage) = self.lineage_of(version).await? else {
            return Ok(Commit::Missing);
        };
        let names = ["trigger_id", "trigger"]
            .iter()
            .filter_map(|key| Some(lineage.as_ref()?.get(*key)?.as_str()?.to_string()))
            .collect();
        Ok(Commit::By(names))
    }

    /// The lineage kiln recorded in commit `version` (None inside when the
    /// commit is not kiln's); None when there is no such commit file.
    async fn lineage_of(&self, version: u64) -> Result<Option<Option<serde_json::Value>>> {
        let bytes = match self.store.get(&Self::commit_path(version)).await {
            Ok(found) => found.bytes().await.map_err(|e| self.failed(e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(e)),
        };
        Ok(Some(
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .find_map(|mut action| Some(action.get_mut("commitInfo")?.get_mut(LINEAGE_KEY)?.take())),
        ))
    }

    fn failed(&self, e: object_store::Error) -> KilnError {
        KilnError::Io(format!("reading the Delta log of '{}': {e}", self.location))
    }
}
