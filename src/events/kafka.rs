//! Events onto a Kafka topic (`--events kafka://TOPIC`).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use super::EventSink;
use crate::error::{KilnError, Result};
use crate::kafka_client::ClientSettings;

/// How long librdkafka keeps retrying one event before giving up on it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// An idempotent producer for one events topic.
pub struct KafkaEvents {
    producer: FutureProducer,
    topic: String,
    settings: ClientSettings,
}

impl std::fmt::Debug for KafkaEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEvents")
            .field("topic", &self.topic)
            .field("brokers", &self.settings.brokers())
            .finish()
    }
}

impl KafkaEvents {
    /// A producer for `topic`; touches no broker yet.
    pub fn new(settings: &ClientSettings, topic: &str) -> Result<Self> {
        let mut config = settings.config();
        // A send retried inside librdkafka is never written twice.
        config.set("enable.idempotence", "true");
        if settings.get("message.timeout.ms").is_none() {
            config.set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string());
        }
        if settings.get("client.id").is_none() {
            config.set("client.id", "kiln-events");
        }
        let producer = config.create().map_err(|e| {
            KilnError::Usage(format!(
                "--events: Kafka client settings: {}",
                settings.scrub(&e.to_string())
            ))
        })?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            settings: settings.clone(),
        })
    }
}

#[async_trait::async_trait]
impl EventSink for KafkaEvents {
    async fn send(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let record = FutureRecord::to(&self.topic).key(key).payload(&value);
        self.producer
            .send(record, Timeout::After(DELIVERY_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                KilnError::Kafka(format!(
                    "sending an event to '{}' at {}: {}",
                    self.topic,
                    self.settings.brokers(),
                    self.settings.scrub(&e.to_string())
                ))
            })
    }
}
