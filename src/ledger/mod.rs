//! The input ledger: what each feature set has consumed, per pipeline.
//!
//! A feature set's Delta log is the only record of what reached it. Every
//! commit kiln makes carries, in the same commit as its rows, one `txn`
//! action per input it consumed:
//!
//! - a Kafka partition: app id `kiln/<pipeline>/kafka/<topic>/<partition>`,
//!   version the next offset to read;
//! - a landed file: app id `kiln/<pipeline>/file/<url>`, version its
//!   last-modified time in milliseconds;
//! - a trigger (`kiln worker`, `kiln run --trigger-id`): app id
//!   `kiln/<pipeline>/trigger/<id>`, version the time of the commit in
//!   milliseconds. A trigger is an input like any other: consumed once per
//!   feature set, and two runs of it cannot both commit.
//!
//! `txn` actions are part of the table's state: checkpoints carry them
//! forward, so log cleanup never loses them (unless the table sets
//! `delta.setTransactionRetentionDuration`, which kiln refuses).
//!
//! This module owns reading the ledger ([`read`]), planning the next pass
//! from it ([`plan`]: the same functions for `run` and `stream`), and the
//! conflict rule ([`conflict`]): a commit is checked against every commit
//! made since the position of each of its inputs was read, including the
//! table's first commit, so two writers of the same input never both
//! succeed.

pub mod conflict;
mod log;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};

use deltalake::DeltaTable;
use deltalake::kernel::Transaction;

pub use conflict::{ReadInput, check_since};

use crate::error::{Context, KilnError, Result};
use crate::source::kafka::{PartitionRange, TopicPartition};

pub use crate::source::kafka::positions::Positions;

/// What one feature set has consumed for one pipeline, as of `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// The table version this was read at; None when the feature set does
    /// not exist yet.
    pub version: Option<u64>,
    pub kafka: Positions,
    /// URLs of the files read.
    pub files: BTreeSet<String>,
    /// Ids of the triggers whose runs committed here.
    pub triggers: BTreeSet<String>,
    /// Inputs other pipelines consumed into this feature set, by input
    /// (`kafka/<topic>/<partition>`, `file/<url>`): a renamed or copied
    /// pipeline file would read them all again.
    pub others: BTreeMap<String, String>,
}

impl Ledger {
    /// The other pipeline that consumed `input` (an [`input_key`]) into
    /// this feature set when this one never did.
    pub fn consumed_elsewhere(&self, input: &str) -> Option<&str> {
        let own = if let Some(url) = input.strip_prefix("file/") {
            self.files.contains(url)
        } else if let Some(id) = input.strip_prefix("trigger/") {
            self.triggers.contains(id)
        } else {
            self.kafka.keys().any(|tp| kafka_key(tp) == input)
        };
        if own {
            return None;
        }
        self.others.get(input).map(String::as_str)
    }
}

/// Refuse to run `pipeline` into `feature_set` when another pipeline
/// already consumed one of `inputs` (ledger keys) there and this one never
/// did: a renamed or copied pipeline file would read everything again.
pub fn refuse_other_pipelines(
    ledger: &Ledger,
    feature_set: &str,
    pipeline: &str,
    inputs: impl IntoIterator<Item = String>,
) -> Result<()> {
    for input in inputs {
        if let Some(other) = ledger.consumed_elsewhere(&input) {
            return Err(KilnError::Usage(format!(
                "feature set '{feature_set}' has consumed {input} as pipeline '{other}', never as '{pipeline}' \
                 (a pipeline is named by its file, or by --pipeline): this run would read it a second time; \
                 run it with --pipeline {other} to go on where '{other}' stopped, or write into another \
                 feature set"
            )));
        }
    }
    Ok(())
}

/// The pipeline-independent name of a Kafka input in a ledger.
pub fn kafka_key(tp: &TopicPartition) -> String {
    format!("kafka/{}/{}", tp.topic, tp.partition)
}

/// The pipeline-independent name of a file input in a ledger.
pub fn file_key(url: &str) -> String {
    format!("file/{url}")
}

/// The pipeline-independent name of a trigger in a ledger.
pub fn trigger_key(id: &str) -> String {
    format!("trigger/{id}")
}

/// The app id recording that `pipeline` committed the run of trigger `id`.
pub fn trigger_app_id(pipeline: &str, id: &str) -> String {
    format!("kiln/{pipeline}/{}", trigger_key(id))
}

/// The app id of a pipeline's position in a topic-partition.
pub fn kafka_app_id(pipeline: &str, tp: &TopicPartition) -> String {
    format!("kiln/{pipeline}/{}", kafka_key(tp))
}

/// The app id recording that `pipeline` read the file at `url`.
pub fn file_app_id(pipeline: &str, url: &str) -> String {
    format!("kiln/{pipeline}/{}", file_key(url))
}

/// Read `pipeline`'s ledger from `table` (None: not created yet).
pub async fn read(table: Option<&DeltaTable>, pipeline: &str) -> Result<Ledger> {
    let Some(table) = table else {
        return Ok(Ledger::default());
    };
    refuse_expiring_transactions(table)?;
    let versions = log::app_versions(table).await?;
    Ok(from_app_versions(table.version(), pipeline, &versions))
}

fn from_app_versions(version: Option<u64>, pipeline: &str, versions: &BTreeMap<String, i64>) -> Ledger {
    let mut ledger = Ledger {
        version,
        ..Ledger::default()
    };
    for (app_id, &v) in versions {
        // Pipeline names are file stems: they hold no '/'.
        let Some((owner, input)) = app_id.strip_prefix("kiln/").and_then(|r| r.split_once('/')) else {
            continue;
        };
        if owner != pipeline {
            ledger
                .others
                .entry(input.to_string())
                .or_insert_with(|| owner.to_string());
            continue;
        }
        if let Some(url) = input.strip_prefix("file/") {
            ledger.files.insert(url.to_string());
        } else if let Some(id) = input.strip_prefix("trigger/") {
            ledger.triggers.insert(id.to_string());
        } else if let Some(tp) = input.strip_prefix("kafka/") {
            // Topic names cannot hold '/', so the last one splits off the partition.
            if let Some((topic, partition)) = tp.rsplit_once('/')
                && let Ok(partition) = partition.parse()
            {
                ledger.kafka.insert(
                    TopicPartition {
                        topic: topic.to_string(),
                        partition,
                    },
                    v,
                );
            }
        }
    }
    ledger
}

/// Transaction expiry would silently drop what a feature set consumed.
fn refuse_expiring_transactions(table: &DeltaTable) -> Result<()> {
    let snapshot = table
        .snapshot()
        .context(|| "reading the feature set's snapshot".to_string())?;
    if snapshot
        .snapshot()
        .table_properties()
        .set_transaction_retention_duration
        .is_some()
    {
        return Err(KilnError::Usage(
            "the feature set sets delta.setTransactionRetentionDuration: kiln records what it consumed \
             in the table's txn actions, which that property expires; unset it"
                .into(),
        ));
    }
    Ok(())
}

/// The `txn` actions that record `ranges` as read by `pipeline`.
pub fn kafka_transactions(pipeline: &str, ranges: &[PartitionRange]) -> Vec<Transaction> {
    let now = chrono::Utc::now().timestamp_millis();
    ranges
        .iter()
        .map(|r| Transaction::new_with_last_update(kafka_app_id(pipeline, &r.tp()), r.to, Some(now)))
        .collect()
}

/// The `txn` actions that record files (URL, last modified in ms) as read.
pub fn file_transactions<'a>(
    pipeline: &str,
    files: impl IntoIterator<Item = (&'a str, i64)>,
) -> Vec<Transaction> {
    let now = chrono::Utc::now().timestamp_millis();
    files
        .into_iter()
        .map(|(url, modified)| {
            Transaction::new_with_last_update(file_app_id(pipeline, url), modified, Some(now))
        })
        .collect()
}

/// The `txn` action that records the run of trigger `id` as committed.
pub fn trigger_transaction(pipeline: &str, id: &str) -> Transaction {
    let now = chrono::Utc::now().timestamp_millis();
    Transaction::new_with_last_update(trigger_app_id(pipeline, id), now, Some(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_holds_only_its_own_pipeline() {
        let versions: BTreeMap<String, i64> = [
            ("kiln/p/kafka/clicks/0", 10),
            ("kiln/p/kafka/clicks/1", 7),
            ("kiln/p/kafka/a.b-c/12", 3),
            ("kiln/p/file/s3://bucket/x/part=1/f.csv", 99),
            ("kiln/p/trigger/2026-11-28/daily", 1764288000000),
            ("kiln/p2/trigger/t-1", 1),
            ("kiln/p2/kafka/clicks/0", 500),
            ("kiln/p2/file/s3://bucket/y.csv", 1),
            ("kiln/o/kafka/clicks/0", 1),
            ("other-writer", 4),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ledger = from_app_versions(Some(5), "p", &versions);
        let tp = |t: &str, p| TopicPartition {
            topic: t.into(),
            partition: p,
        };
        assert_eq!(ledger.version, Some(5));
        assert_eq!(
            ledger.kafka,
            Positions::from([(tp("clicks", 0), 10), (tp("clicks", 1), 7), (tp("a.b-c", 12), 3)])
        );
        assert_eq!(
            ledger.files,
            BTreeSet::from(["s3://bucket/x/part=1/f.csv".to_string()])
        );
        // What other pipelines consumed, for refusing a renamed copy.
        assert_eq!(
            ledger.consumed_elsewhere("kafka/clicks/0"),
            None,
            "read by p itself"
        );
        assert_eq!(ledger.consumed_elsewhere("file/s3://bucket/y.csv"), Some("p2"));
        assert_eq!(ledger.consumed_elsewhere("kafka/clicks/9"), None);
        // A trigger id may hold '/'.
        assert_eq!(ledger.triggers, BTreeSet::from(["2026-11-28/daily".to_string()]));
        assert_eq!(ledger.consumed_elsewhere("trigger/t-1"), Some("p2"));
    }
}
