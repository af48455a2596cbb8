//! Events onto a Kafka topic (`--events kafka://TOPIC`).

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::{CloudEvent, EventSink, VERSION};
use crate::error::{KilnError, Result};
use crate::kafka_client::ClientSettings;

/// How long librdkafka keeps retrying one event before giving up on it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Events per partition read back to find what was announced.
const TAIL: i64 = 1000;
/// How long reading them back may take.
const TAIL_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// The newest version event of each location among the last [`TAIL`]
    /// events of every partition of the topic.
    async fn announced(&self, locations: &BTreeSet<String>) -> Result<BTreeMap<String, u64>> {
        let settings = self.settings.clone();
        let topic = self.topic.clone();
        let locations = locations.clone();
        tokio::task::spawn_blocking(move || newest_versions(&settings, &topic, &locations))
            .await
            .map_err(|e| KilnError::Run(format!("reading the events topic: {e}")))?
            .map_err(|e| {
                KilnError::Kafka(format!(
                    "reading back '{}': {}",
                    self.topic,
                    self.settings.scrub(&e.to_string())
                ))
            })
    }
}

fn newest_versions(
    settings: &ClientSettings,
    topic: &str,
    locations: &BTreeSet<String>,
) -> KafkaResult<BTreeMap<String, u64>> {
    let mut config = settings.config();
    config
        .set(
            "group.id",
            format!("kiln-events-reader-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TAIL_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, partition.id(), TAIL_TIMEOUT)?;
        if high > low {
            tpl.add_partition_offset(topic, partition.id(), Offset::Offset(low.max(high - TAIL)))?;
            ends.insert(partition.id(), high);
        }
    }
    let mut newest = BTreeMap::new();
    if ends.is_empty() {
        return Ok(newest);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + TAIL_TIMEOUT;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        if ends
            .get(&message.partition())
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            ends.remove(&message.partition());
        }
        let Some(event) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<CloudEvent<serde_json::Value>>(p).ok())
        else {
            continue;
        };
        if event.kind != VERSION {
            continue;
        }
        let (Some(location), Some(version)) =
            (event.data["location"].as_str(), event.data["version"].as_u64())
        else {
            continue;
        };
        if locations.contains(location) {
            let entry = newest.entry(location.to_string()).or_insert(version);
            *entry = (*entry).max(version);
        }
    }
    Ok(newest)
}
