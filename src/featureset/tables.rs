//! Feature sets kept open between the steps of a run and the batches of a
//! stream worker.
//!
//! Loading a Delta table replays its log from the last checkpoint: up to a
//! hundred commit files. A stream worker opens its feature sets for every
//! batch (to plan, to read positions, to commit), so a fresh load each time
//! would cost more than the batch itself after a few dozen versions. An
//! open table is instead brought up to date with only the commits made
//! since, and a commit leaves the new version here for the next open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake::DeltaTable;

use super::{open, open_existing, table_url};
use crate::error::{Context, Result};

/// The latest loaded state of each feature set, by table URL.
#[derive(Clone, Default)]
pub struct OpenTables {
    tables: Arc<Mutex<HashMap<String, DeltaTable>>>,
}

impl std::fmt::Debug for OpenTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.tables.lock().expect("open tables lock");
        f.debug_map()
            .entries(tables.iter().map(|(url, t)| (url, t.version())))
            .finish()
    }
}

impl OpenTables {
    /// The feature set at its latest version; None when nothing has been
    /// committed there yet.
    pub async fn latest(&self, location: &str) -> Result<Option<DeltaTable>> {
        let key = key(location)?;
        let Some(mut table) = self.cached(&key) else {
            let table = open(location).await?;
            if let Some(t) = &table {
                self.remember_at(key, t);
            }
            return Ok(table);
        };
        table
            .update_incremental(None)
            .await
            .context(|| format!("reading new commits of feature set at '{location}'"))?;
        self.remember_at(key, &table);
        Ok(Some(table))
    }

    /// The feature set as last loaded here, without asking the store for
    /// newer commits (what a writer needs of it changes only with table
    /// properties); loaded when nothing is held.
    pub async fn held(&self, location: &str) -> Result<Option<DeltaTable>> {
        match self.cached(&key(location)?) {
            Some(table) => Ok(Some(table)),
            None => self.latest(location).await,
        }
    }

    /// The feature set at `version` (None: the latest); it must exist.
    pub async fn at(&self, location: &str, version: Option<u64>) -> Result<DeltaTable> {
        let Some(version) = version else {
            return match self.latest(location).await? {
                Some(table) => Ok(table),
                None => open_existing(location, None).await,
            };
        };
        let key = key(location)?;
        match self.cached(&key) {
            Some(table) if table.version() == Some(version) => Ok(table),
            Some(mut table) if table.version().is_some_and(|held| held < version) => {
                let moved = table.update_incremental(Some(version)).await;
                if moved.is_err() || table.version() != Some(version) {
                    // Not there (yet): say so as a fresh load does.
                    return open_existing(location, Some(version)).await;
                }
                self.remember_at(key, &table);
                Ok(table)
            }
            // Older than the version held, or nothing held: loaded on its
            // own, and not kept (the next open wants the latest).
            _ => open_existing(location, Some(version)).await,
        }
    }

    /// Keep `table` (just committed, say) as the latest state of `location`.
    pub fn remember(&self, location: &str, table: &DeltaTable) -> Result<()> {
        self.remember_at(key(location)?, table);
        Ok(())
    }

    fn cached(&self, key: &str) -> Option<DeltaTable> {
        self.tables.lock().expect("open tables lock").get(key).cloned()
    }

    fn remember_at(&self, key: String, table: &DeltaTable) {
        let mut tables = self.tables.lock().expect("open tables lock");
        // Never step back: another step may have seen a later version.
        let newer = tables
            .get(&key)
            .is_none_or(|held| held.version() <= table.version());
        if newer {
            tables.insert(key, table.clone());
        }
    }
}

fn key(location: &str) -> Result<String> {
    Ok(table_url(location)?.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::*;
    use crate::featureset::{Lineage, StagedWrite, commit, write_batches};
    use crate::pipeline::SinkMode;

    async fn write(location: &str, tables: &OpenTables) -> StagedWrite {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
        let files = write_batches(location, schema.clone(), vec![batch], tables)
            .await
            .unwrap();
        StagedWrite {
            name: "fs".into(),
            location: location.into(),
            mode: SinkMode::Append,
            schema,
            files,
            add_columns: false,
            lineage: Lineage {
                pipeline: "p".into(),
                sql_sha256: String::new(),
                kiln_version: String::new(),
                run_id: String::new(),
                trigger: "test".into(),
                trigger_id: None,
                mode: "append".into(),
                key: Vec::new(),
                timestamp: None,
                inputs: Vec::new(),
                feature_sets_read: Vec::new(),
                kafka: Vec::new(),
                lost: Vec::new(),
                rows_written: 3,
                columns: Vec::new(),
                duration_ms: None,
                training_set: None,
            },
            transactions: Vec::new(),
            inputs: Vec::new(),
        }
    }

    #[tokio::test]
    async fn open_tables_follow_commits_made_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let location = dir.path().join("fs").display().to_string();
        let ours = OpenTables::default();
        assert!(ours.latest(&location).await.unwrap().is_none());
        assert_eq!(commit(write(&location, &ours).await, &ours).await.unwrap(), 0);

        // Another worker commits; ours reads only that commit, and sees it.
        let theirs = OpenTables::default();
        assert_eq!(commit(write(&location, &theirs).await, &theirs).await.unwrap(), 1);
        assert_eq!(ours.latest(&location).await.unwrap().unwrap().version(), Some(1));

        // An older version is loaded on its own and does not replace the latest.
        assert_eq!(ours.at(&location, Some(0)).await.unwrap().version(), Some(0));
        assert_eq!(ours.at(&location, None).await.unwrap().version(), Some(1));

        // A commit made against the held version moves it on.
        assert_eq!(commit(write(&location, &ours).await, &ours).await.unwrap(), 2);
        assert_eq!(theirs.at(&location, Some(2)).await.unwrap().version(), Some(2));
        let missing = ours.at(&location, Some(7)).await.unwrap_err().to_string();
        assert!(missing.contains("no version 7"), "{missing}");
    }
}
