//! Bounded reads: fixed offset ranges of topic-partitions, fetched by a
//! consumer that is assigned them directly (no group join), decoded chunk
//! by chunk as they arrive.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use rdkafka::ClientConfig;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;

use super::decode::{BadRecord, RawRecord, RecordDecoder};
use super::positions::{PartitionRange, TopicPartition};
use super::records::RecordsBuilder;
use crate::error::{KilnError, Result};

/// How long a read may go without any record or end-of-partition event.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a run read from one topic-partition.
#[derive(Debug, Clone)]
pub struct PartitionRead {
    /// `to` is where reading really stopped: below the planned end when the
    /// tail is not readable yet (an open transaction).
    pub range: PartitionRange,
    pub batches: Vec<RecordBatch>,
    pub bad: Vec<BadRecord>,
    /// Records fetched, good and bad.
    pub records: u64,
}

impl PartitionRead {
    /// The part of this read at or after offset `from`: what a feature set
    /// standing at `from` has not consumed. Its range never moves back, so
    /// a feature set ahead of the read keeps its position.
    pub fn slice_from(&self, from: i64) -> PartitionRead {
        let range = PartitionRange {
            from: from.max(self.range.from),
            to: self.range.to.max(from),
            ..self.range.clone()
        };
        if range.from == self.range.from {
            return PartitionRead {
                range,
                batches: self.batches.clone(),
                bad: self.bad.clone(),
                records: self.records,
            };
        }
        let batches: Vec<RecordBatch> = self
            .batches
            .iter()
            .filter_map(|b| {
                let offsets = b.column_by_name("_offset")?.as_primitive::<Int64Type>();
                let first = offsets.values().partition_point(|o| *o < from);
                (first < b.num_rows()).then(|| b.slice(first, b.num_rows() - first))
            })
            .collect();
        let bad: Vec<BadRecord> = self
            .bad
            .iter()
            .filter(|b| b.record.offset >= from)
            .cloned()
            .collect();
        let records = batches.iter().map(|b| b.num_rows() as u64).sum::<u64>() + bad.len() as u64;
        PartitionRead {
            range,
            batches,
            bad,
            records,
        }
    }
}

/// The partitions of `topics` with their low and high watermarks now.
pub async fn watermarks(
    client: &ClientConfig,
    topics: &[String],
) -> Result<BTreeMap<TopicPartition, (i64, i64)>> {
    let client = client.clone();
    let topics = topics.to_vec();
    blocking(move || {
        let consumer: BaseConsumer = client.create().map_err(kafka_error("creating a Kafka client"))?;
        let mut marks = BTreeMap::new();
        for topic in &topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(kafka_error(&format!("reading the metadata of topic '{topic}'")))?;
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return Err(KilnError::Kafka(format!("topic '{topic}' does not exist")));
            };
            if let Some(e) = found.error() {
                return Err(KilnError::Kafka(format!("topic '{topic}': {e:?}")));
            }
            if found.partitions().is_empty() {
                return Err(KilnError::Kafka(format!(
                    "topic '{topic}' does not exist (no partitions)"
                )));
            }
            for p in found.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), REQUEST_TIMEOUT)
                    .map_err(kafka_error(&format!("reading the offsets of {topic}/{}", p.id())))?;
                marks.insert(
                    TopicPartition {
                        topic: topic.clone(),
                        partition: p.id(),
                    },
                    (low, high),
                );
            }
        }
        Ok(marks)
    })
    .await
}

/// Where decoded chunks go as they are read (a streamed read): the rows
/// and the records that could not be decoded; returns whether to go on.
pub(super) type Emit<'a> = &'a mut dyn FnMut(Vec<RecordBatch>, Vec<BadRecord>) -> bool;

/// One partition's read in progress.
struct Progress {
    read: PartitionRead,
    /// The planned end: offsets from here on belong to a later run.
    end: i64,
    chunk: RecordsBuilder,
    done: bool,
}

impl Progress {
    /// Decode the chunk gathered so far and hand it to `emit`. Returns
    /// whether to go on reading.
    fn decode(&mut self, decoder: &RecordDecoder, emit: Emit<'_>) -> bool {
        if self.chunk.is_empty() {
            return true;
        }
        let chunk = self.chunk.finish();
        let (batches, bad) = decoder.decode(&self.read.range.topic, self.read.range.partition, &chunk);
        emit(batches, bad)
    }
}

/// Read one range, handing its decoded chunks to `emit` as they come; the
/// read returned has the range as far as it was read and its record
/// count, no rows. It stops early when `emit` says so.
pub(super) fn read_range(
    client: &ClientConfig,
    decoder: &RecordDecoder,
    range: PartitionRange,
    emit: Emit<'_>,
) -> Result<PartitionRead> {
    let mut reads = read_topic(client, decoder, vec![range], emit)?;
    Ok(reads.remove(0))
}

fn read_topic(
    client: &ClientConfig,
    decoder: &RecordDecoder,
    ranges: Vec<PartitionRange>,
    emit: Emit<'_>,
) -> Result<Vec<PartitionRead>> {
    let topic = ranges.first().map(|r| r.topic.clone()).unwrap_or_default();
    let mut assignment = TopicPartitionList::new();
    let mut progress: HashMap<i32, Progress> = HashMap::new();
    for range in ranges {
        if !range.is_empty() {
            assignment
                .add_partition_offset(&range.topic, range.partition, Offset::Offset(range.from))
                .map_err(kafka_error("assigning partitions"))?;
        }
        progress.insert(
            range.partition,
            Progress {
                end: range.to,
                done: range.is_empty(),
                // `to` advances as records arrive.
                read: PartitionRead {
                    range: PartitionRange {
                        to: range.from,
                        ..range
                    },
                    batches: Vec::new(),
                    bad: Vec::new(),
                    records: 0,
                },
                chunk: RecordsBuilder::default(),
            },
        );
    }
    let mut going = true;
    if assignment.count() > 0 {
        // A range the broker no longer has fails the read instead of
        // librdkafka jumping past it.
        let consumer: BaseConsumer = client
            .clone()
            .set("auto.offset.reset", "error")
            .create()
            .map_err(kafka_error("creating a Kafka consumer"))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error(&format!("assigning the partitions of '{topic}'")))?;
        going = fetch(&consumer, &topic, decoder, &mut progress, emit)?;
    }
    let mut reads = Vec::new();
    for mut p in progress.into_values() {
        if going {
            going = p.decode(decoder, emit);
        }
        reads.push(p.read);
    }
    reads.sort_by_key(|r| r.range.partition);
    Ok(reads)
}

/// Fetch until every partition has reached its end; false when `emit`
/// said to stop.
fn fetch(
    consumer: &BaseConsumer,
    topic: &str,
    decoder: &RecordDecoder,
    progress: &mut HashMap<i32, Progress>,
    emit: Emit<'_>,
) -> Result<bool> {
    let mut last_event = Instant::now();
    let mut last_error: Option<String> = None;
    while progress.values().any(|p| !p.done) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                last_event = Instant::now();
                let Some(p) = progress.get_mut(&message.partition()) else {
                    continue;
                };
                let offset = message.offset();
                if p.done || offset >= p.end || offset < p.read.range.to {
                    continue;
                }
                p.chunk.push(
                    offset,
                    message.timestamp().to_millis(),
                    message.key(),
                    message.payload(),
                );
                p.read.records += 1;
                p.read.range.to = offset + 1;
                if p.read.range.to >= p.end {
                    finish(consumer, topic, p);
                }
                if p.chunk.is_full() && !p.decode(decoder, emit) {
                    return Ok(false);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                last_event = Instant::now();
                // The end of what is readable now: past the planned end, or
                // short of it where an open transaction holds the tail back.
                if let Some(p) = progress.get_mut(&partition).filter(|p| !p.done) {
                    if let Some(next) = position(consumer, topic, partition) {
                        p.read.range.to = p.read.range.to.max(next.min(p.end));
                    }
                    finish(consumer, topic, p);
                }
            }
            Some(Err(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset))) => {
                let reading: Vec<String> = progress
                    .values()
                    .filter(|p| !p.done)
                    .map(|p| {
                        format!(
                            "{topic}/{} from offset {}",
                            p.read.range.partition, p.read.range.to
                        )
                    })
                    .collect();
                return Err(KilnError::DataLoss(format!(
                    "the topic's retention deleted records this run was reading ({}); nothing was committed, \
                     and the next run names the lost range",
                    reading.join(", ")
                )));
            }
            Some(Err(e)) => {
                tracing::warn!(topic, error = %e, "Kafka fetch error; retrying");
                last_error = Some(e.to_string());
            }
        }
        if last_event.elapsed() > STALL_TIMEOUT {
            let stuck: Vec<String> = progress
                .values()
                .filter(|p| !p.done)
                .map(|p| {
                    format!(
                        "{}/{} at offset {} of {}",
                        topic, p.read.range.partition, p.read.range.to, p.end
                    )
                })
                .collect();
            return Err(KilnError::Kafka(format!(
                "reading Kafka stalled for {}s: {}{}",
                STALL_TIMEOUT.as_secs(),
                stuck.join(", "),
                last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            )));
        }
    }
    Ok(true)
}

fn finish(consumer: &BaseConsumer, topic: &str, p: &mut Progress) {
    p.done = true;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p.read.range.partition);
    // Stop fetching what belongs to a later run.
    if let Err(e) = consumer.pause(&tpl) {
        tracing::debug!(topic, error = %e, "pausing a finished partition");
    }
}

/// The consumer's next fetch offset for a partition.
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// The records at `offsets` of one topic-partition, raw, as the broker
/// has them: for the dead letters of records whose rows a query could not
/// handle (their decoded rows no longer hold the value's bytes).
pub async fn fetch_raw(
    client: &ClientConfig,
    tp: TopicPartition,
    offsets: Vec<i64>,
) -> Result<Vec<RawRecord>> {
    let client = client.clone();
    blocking(move || {
        let mut wanted: std::collections::BTreeSet<i64> = offsets.into_iter().collect();
        let (Some(&first), Some(&last)) = (wanted.first(), wanted.last()) else {
            return Ok(Vec::new());
        };
        let consumer: BaseConsumer = client
            .clone()
            .set("auto.offset.reset", "error")
            .create()
            .map_err(kafka_error("creating a Kafka consumer"))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(first))
            .map_err(kafka_error("assigning a partition"))?;
        consumer
            .assign(&assignment)
            .map_err(kafka_error(&format!("assigning {tp}")))?;
        let mut found = Vec::new();
        let mut last_event = Instant::now();
        while !wanted.is_empty() {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == tp.partition && m.topic() == tp.topic => {
                    last_event = Instant::now();
                    if wanted.remove(&m.offset()) {
                        found.push(RawRecord {
                            offset: m.offset(),
                            timestamp_ms: m.timestamp().to_millis(),
                            key: m.key().map(<[u8]>::to_vec),
                            value: m.payload().map(<[u8]>::to_vec),
                        });
                    }
                    if m.offset() >= last {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(kafka_error(&format!("reading {tp} again"))(e)),
                _ => {}
            }
            if last_event.elapsed() > STALL_TIMEOUT {
                return Err(KilnError::Kafka(format!(
                    "reading offsets {first}..={last} of {tp} again stalled for {}s",
                    STALL_TIMEOUT.as_secs()
                )));
            }
        }
        Ok(found)
    })
    .await
}

/// Run blocking client work off the async threads.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| KilnError::Io(format!("Kafka client thread failed: {e}")))?
}

fn kafka_error(doing: &str) -> impl Fn(KafkaError) -> KilnError + '_ {
    move |e| KilnError::Kafka(format!("{doing}: {e}"))
}
