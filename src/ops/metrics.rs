//! The process's Prometheus metrics: what runs, batches, commits and
//! consumers did, and what the query engine holds now.
//!
//! One registry per process, shared by every run the process makes (a
//! stream worker's batches, a trigger worker's jobs), served on
//! `/metrics` by [`super::server`]. The recording functions here are what
//! the rest of kiln calls; the families are private so that names, labels
//! and units stay in one place.

use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use rdkafka::Statistics;

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FeatureSetLabels {
    pipeline: String,
    feature_set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BadRecordLabels {
    pipeline: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    group: String,
    topic: String,
    partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    pipeline: String,
    status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from 10 ms to about 80 minutes.
fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

struct Metrics {
    registry: Registry,
    records_read: Family<PipelineLabels, Counter>,
    bad_records: Family<BadRecordLabels, Counter>,
    rows_committed: Family<FeatureSetLabels, Counter>,
    commits: Family<FeatureSetLabels, Counter>,
    failed_commits: Family<FeatureSetLabels, Counter>,
    batch_duration: HistogramFamily<PipelineLabels>,
    commit_duration: HistogramFamily<FeatureSetLabels>,
    event_lag: HistogramFamily<FeatureSetLabels>,
    version: Family<FeatureSetLabels, Gauge>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    triggers: Family<TriggerLabels, Counter>,
    running: Family<PipelineLabels, Gauge>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut metrics = Self {
            records_read: Family::default(),
            bad_records: Family::default(),
            rows_committed: Family::default(),
            commits: Family::default(),
            failed_commits: Family::default(),
            batch_duration: Family::new_with_constructor(duration_buckets),
            commit_duration: Family::new_with_constructor(duration_buckets),
            event_lag: Family::new_with_constructor(duration_buckets),
            version: Family::default(),
            consumer_lag: Family::default(),
            triggers: Family::default(),
            running: Family::default(),
            registry: Registry::with_prefix("kiln"),
        };
        let registry = &mut metrics.registry;
        registry.register(
            "records_read",
            "Kafka records read into committed batches",
            metrics.records_read.clone(),
        );
        registry.register(
            "bad_records",
            "Records set aside as dead letters, by reason (undecodable, empty, too_large, fails_query)",
            metrics.bad_records.clone(),
        );
        registry.register(
            "rows_committed",
            "Rows committed to feature sets",
            metrics.rows_committed.clone(),
        );
        registry.register(
            "commits",
            "Versions committed to feature sets",
            metrics.commits.clone(),
        );
        registry.register(
            "failed_commits",
            "Commits to feature sets that failed (lost races included; they are planned again)",
            metrics.failed_commits.clone(),
        );
        registry.register_with_unit(
            "batch_duration",
            "Time of one pass: read, transform and commit (a stream batch or a bounded run)",
            Unit::Seconds,
            metrics.batch_duration.clone(),
        );
        registry.register_with_unit(
            "commit_duration",
            "Time of one Delta commit",
            Unit::Seconds,
            metrics.commit_duration.clone(),
        );
        registry.register_with_unit(
            "event_to_commit_lag",
            "From the Kafka timestamp of the oldest record of a batch to its commit",
            Unit::Seconds,
            metrics.event_lag.clone(),
        );
        registry.register(
            "feature_set_version",
            "The last version this process committed to a feature set",
            metrics.version.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records between a held partition's high watermark and the group's committed offset",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "triggers",
            "Trigger messages a worker finished, by status (committed, already_run, nothing_to_commit, failed)",
            metrics.triggers.clone(),
        );
        registry.register(
            "running_pipelines",
            "Pipelines running now",
            metrics.running.clone(),
        );
        registry.register_collector(Box::new(EngineMemory));
        metrics
    }
}

/// The registry in the Prometheus text format.
pub fn encode() -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &METRICS.registry)
        .expect("writing to a String does not fail");
    out
}

/// A pass committed: count what it read and wrote.
pub(crate) fn pass_committed(pipeline: &str, records: u64, bad: &[(&'static str, u64)], elapsed: Duration) {
    let labels = PipelineLabels {
        pipeline: pipeline.to_string(),
    };
    METRICS.records_read.get_or_create(&labels).inc_by(records);
    METRICS
        .batch_duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    for &(reason, n) in bad {
        METRICS
            .bad_records
            .get_or_create(&BadRecordLabels {
                pipeline: pipeline.to_string(),
                reason: reason.to_string(),
            })
            .inc_by(n);
    }
}

/// The outcome of one commit to a feature set: `Some(version)` when it
/// committed, with the rows it added and how long ago its oldest Kafka
/// record was made (when it read any).
pub(crate) fn commit_ended(
    pipeline: &str,
    feature_set: &str,
    took: Duration,
    committed: Option<(u64, u64)>,
    oldest_record_age: Option<Duration>,
) {
    let labels = FeatureSetLabels {
        pipeline: pipeline.to_string(),
        feature_set: feature_set.to_string(),
    };
    METRICS
        .commit_duration
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    let Some((version, rows)) = committed else {
        METRICS.failed_commits.get_or_create(&labels).inc();
        return;
    };
    METRICS.commits.get_or_create(&labels).inc();
    METRICS.rows_committed.get_or_create(&labels).inc_by(rows);
    METRICS
        .version
        .get_or_create(&labels)
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    if let Some(age) = oldest_record_age {
        METRICS
            .event_lag
            .get_or_create(&labels)
            .observe(age.as_secs_f64());
    }
}

/// A worker finished a trigger.
pub(crate) fn trigger_finished(pipeline: &str, status: &str) {
    METRICS
        .triggers
        .get_or_create(&TriggerLabels {
            pipeline: pipeline.to_string(),
            status: status.to_string(),
        })
        .inc();
}

/// Counts a pipeline as running while it lives.
pub(crate) struct Running(PipelineLabels);

impl Running {
    pub(crate) fn start(pipeline: &str) -> Self {
        let labels = PipelineLabels {
            pipeline: pipeline.to_string(),
        };
        METRICS.running.get_or_create(&labels).inc();
        Self(labels)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        METRICS.running.get_or_create(&self.0).dec();
    }
}

/// librdkafka's statistics for a consumer of `group`: the lag of every
/// partition it holds. Partitions it no longer holds leave the metric, so
/// the sum over a group's workers is the group's lag.
pub(crate) fn consumer_statistics(group: &str, statistics: &Statistics) {
    for (topic, t) in &statistics.topics {
        for (&partition, p) in &t.partitions {
            if partition < 0 {
                continue;
            }
            let labels = PartitionLabels {
                group: group.to_string(),
                topic: topic.clone(),
                partition,
            };
            // Held and with a high watermark: the lag is known (librdkafka
            // says -1 when it is not).
            let held = p.fetch_state != "none" && p.hi_offset >= 0;
            if !held {
                METRICS.consumer_lag.remove(&labels);
                continue;
            }
            let lag = if p.committed_offset >= 0 {
                (p.hi_offset - p.committed_offset).max(0)
            } else {
                // Nothing committed yet: all that is on the partition.
                (p.hi_offset - p.lo_offset.max(0)).max(0)
            };
            METRICS.consumer_lag.get_or_create(&labels).set(lag);
        }
    }
}

/// The memory pools and spill files of the query sessions alive now.
static ENGINES: LazyLock<Mutex<Vec<Weak<RuntimeEnv>>>> = LazyLock::new(Mutex::default);

/// Count `runtime`'s memory pool and spill files while it lives.
pub(crate) fn track_engine(runtime: &Arc<RuntimeEnv>) {
    let mut engines = ENGINES.lock().expect("engines lock");
    engines.retain(|e| e.strong_count() > 0);
    engines.push(Arc::downgrade(runtime));
}

/// Reads the live sessions' memory at scrape time.
#[derive(Debug)]
struct EngineMemory;

impl Collector for EngineMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut reserved, mut spilled) = (0u64, 0u64);
        for runtime in ENGINES
            .lock()
            .expect("engines lock")
            .iter()
            .filter_map(Weak::upgrade)
        {
            reserved += runtime.memory_pool.reserved() as u64;
            spilled += runtime.disk_manager.used_disk_space();
        }
        for (name, help, value) in [
            (
                "memory_pool_reserved",
                "Memory the query engine's pools hold now",
                reserved,
            ),
            ("spill", "Spill files on disk now", spilled),
        ] {
            let gauge = ConstGauge::new(value as i64);
            let metric = encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        commit_ended("p", "fs", Duration::from_millis(30), Some((7, 100)), None);
        commit_ended("p", "fs", Duration::from_millis(30), None, None);
        pass_committed("p", 5, &[("undecodable", 2)], Duration::from_millis(40));
        let text = encode();
        for line in [
            "kiln_commits_total{pipeline=\"p\",feature_set=\"fs\"} 1",
            "kiln_failed_commits_total{pipeline=\"p\",feature_set=\"fs\"} 1",
            "kiln_rows_committed_total{pipeline=\"p\",feature_set=\"fs\"} 100",
            "kiln_feature_set_version{pipeline=\"p\",feature_set=\"fs\"} 7",
            "kiln_records_read_total{pipeline=\"p\"} 5",
            "kiln_bad_records_total{pipeline=\"p\",reason=\"undecodable\"} 2",
            "kiln_commit_duration_seconds_count{pipeline=\"p\",feature_set=\"fs\"} 2",
            "# TYPE kiln_memory_pool_reserved_bytes gauge",
            "# TYPE kiln_spill_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
    }
}
