//! Where each feature set stands in each topic-partition.
//!
//! The position is the next offset to read, written in the feature set's own
//! Delta commit as an application transaction (`txn` action) whose app id
//! names the pipeline, topic and partition. The table is therefore the
//! truth about what was consumed: a commit and its offsets land together or
//! not at all, and two writers of one position conflict in Delta's own
//! optimistic concurrency check instead of both succeeding.

use std::collections::BTreeMap;
use std::fmt;

use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Offsets `from..to` of one topic-partition: what a run reads and records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    /// The next offset to read after this run.
    pub to: i64,
}

impl PartitionRange {
    pub fn is_empty(&self) -> bool {
        self.to <= self.from
    }
}

/// Next offset to read, per topic-partition.
pub type Positions = BTreeMap<TopicPartition, i64>;

/// The app id of a pipeline's position in a topic-partition.
pub fn app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("kiln/{pipeline}/kafka/{}/{}", tp.topic, tp.partition)
}

/// The positions `pipeline` recorded in `table` for `partitions`; those it
/// never recorded are absent.
pub async fn recorded(
    table: &DeltaTable,
    pipeline: &str,
    partitions: &[TopicPartition],
) -> Result<Positions> {
    let snapshot = table
        .snapshot()
        .context(|| "reading the feature set's snapshot".to_string())?;
    let log_store = table.log_store();
    let mut positions = Positions::new();
    for tp in partitions {
        let version = snapshot
            .transaction_version(log_store.as_ref(), app_id(pipeline, tp))
            .await
            .context(|| format!("reading the recorded position of {tp}"))?;
        if let Some(next) = version {
            positions.insert(tp.clone(), next);
        }
    }
    Ok(positions)
}

/// The `txn` actions that record `ranges` as read by `pipeline`.
pub fn transactions(pipeline: &str, ranges: &[PartitionRange]) -> Vec<Transaction> {
    let now = chrono::Utc::now().timestamp_millis();
    ranges
        .iter()
        .map(|r| {
            let tp = TopicPartition {
                topic: r.topic.clone(),
                partition: r.partition,
            };
            Transaction::new_with_last_update(app_id(pipeline, &tp), r.to, Some(now))
        })
        .collect()
}
