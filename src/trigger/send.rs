//! `kiln trigger`: send one trigger message and wait for the broker's
//! acknowledgement.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::Trigger;
use crate::error::{KilnError, Result};
use crate::kafka_client::ClientSettings;

/// How long the broker may take to acknowledge, retries included.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a sent trigger landed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp (ms since the epoch): when it was handed to
    /// the producer.
    pub timestamp_ms: Option<i64>,
    /// When the broker acknowledged it (ms since the epoch, this clock).
    pub acked_ms: i64,
}

/// Send `trigger` to `topic`, keyed by its pipeline, and wait until the
/// broker has it.
pub async fn send(settings: &ClientSettings, topic: &str, trigger: &Trigger) -> Result<Sent> {
    trigger
        .check()
        .map_err(|reason| KilnError::Usage(format!("the trigger {reason}")))?;
    let mut config = settings.config();
    // A one-shot producer with idempotence waits half a second for its
    // producer id before the first send; a trigger written twice by a retry
    // runs once anyway (its id), so the wait buys nothing.
    if settings.get("enable.idempotence").is_none() {
        config.set("enable.idempotence", "false");
    }
    // One message: nothing to batch it with.
    if settings.get("linger.ms").is_none() {
        config.set("linger.ms", "0");
    }
    if settings.get("message.timeout.ms").is_none() {
        config.set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
    }
    let producer: FutureProducer = config.create().map_err(|e| {
        KilnError::Usage(format!(
            "Kafka client settings: {}",
            settings.scrub(&e.to_string())
        ))
    })?;
    let payload = serde_json::to_vec(trigger)?;
    let record = FutureRecord::to(topic)
        .key(trigger.pipeline.as_bytes())
        .payload(&payload);
    let delivered = producer
        .send(record, Timeout::After(DELIVERY_TIMEOUT))
        .await
        .map_err(|(e, _)| {
            KilnError::Kafka(format!(
                "sending the trigger to '{topic}' at {}: {}",
                settings.brokers(),
                settings.scrub(&e.to_string())
            ))
        })?;
    Ok(Sent {
        id: trigger.id.clone(),
        topic: topic.to_string(),
        partition: delivered.partition,
        offset: delivered.offset,
        timestamp_ms: delivered.timestamp.to_millis(),
        acked_ms: chrono::Utc::now().timestamp_millis(),
    })
}
