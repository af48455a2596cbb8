//! Topic-partitions, offset ranges and positions (the next offset to read).
//! Where each feature set stands is kept by [`crate::ledger`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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

    pub fn tp(&self) -> TopicPartition {
        TopicPartition {
            topic: self.topic.clone(),
            partition: self.partition,
        }
    }
}

/// Next offset to read, per topic-partition.
pub type Positions = BTreeMap<TopicPartition, i64>;
