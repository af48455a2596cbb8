//! Operating kiln: logs, metrics, health and the endpoints that serve
//! them, signals, allocator settings.

pub mod allocator;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod signals;

/// How often librdkafka reports the statistics behind the consumer-lag
/// metric and the readiness probe's broker check.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Ask a consumer for its statistics (unless the settings say otherwise).
pub(crate) fn enable_statistics(config: &mut rdkafka::ClientConfig) {
    if config.get("statistics.interval.ms").is_none() {
        config.set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
    }
}

/// A consumer of `group` reported its statistics.
pub(crate) fn consumer_statistics(group: &str, statistics: &rdkafka::Statistics) {
    metrics::consumer_statistics(group, statistics);
    health::kafka_statistics(statistics);
}
