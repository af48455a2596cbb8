//! A consumer-group member for `kiln stream`: partitions spread over the
//! workers of one pipeline and move between them on rebalance.
//!
//! The group decides who reads a partition; the feature sets decide from
//! where. On every assignment the member asks its owner for the positions
//! recorded in the feature sets and starts there, never at the group's own
//! committed offset. A thread polls the consumer and appends records to a
//! buffer; a second thread decodes them there a chunk at a time, so that
//! fetching, decoding, and the stream loop running and committing the batch
//! it took all go on at once;
//! revoked partitions leave the buffer at once, and a counter tells the
//! loop that a batch it is working on may now belong to another worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::buffer::{Buffer, BufferLimits, ChunkToDecode, TakenBatch, decode_chunk};
use super::decode::RecordDecoder;
use super::positions::TopicPartition;
use super::rebalance;
use super::repeats::Repeats;
use crate::error::{KilnError, Result};

/// Where the member starts reading the partitions it is given: the next
/// offset, or None for the source's `start` (earliest or latest).
pub type PositionLookup =
    dyn Fn(&[TopicPartition]) -> Result<BTreeMap<TopicPartition, Option<i64>>> + Send + Sync;

/// Full chunks waiting for the decode thread; when it falls this far
/// behind, the poll thread waits for it.
const DECODE_QUEUE_CHUNKS: usize = 4;

/// State shared by the poll and decode threads, the rebalance callback and
/// the loop.
struct Shared {
    buffer: Mutex<Buffer>,
    /// Held by the poll thread from a poll until its record is buffered, so
    /// a rewind never meets a record fetched before its seek.
    polling: Mutex<()>,
    stop: AtomicBool,
    /// Why the member cannot go on (positions that cannot be read, a
    /// position the broker no longer has): the worker fails with it rather
    /// than holding partitions it does not read.
    fatal: Mutex<Option<String>>,
    revocations: AtomicU64,
    start: Offset,
    decoder: RecordDecoder,
}

struct MemberContext {
    shared: Arc<Shared>,
    positions: Box<PositionLookup>,
    group: String,
}

impl ClientContext for MemberContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::ops::consumer_statistics(&self.group, &statistics);
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let partitions = rebalance::partitions_of(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let positions = match (self.positions)(&partitions) {
                    Ok(p) => p,
                    Err(e) => {
                        // Without positions the member must not read. It
                        // leaves the partitions unassigned and the worker
                        // fails with the reason, so the group hands them on
                        // instead of their lag growing unseen.
                        tracing::error!(error = %e, "reading positions for assigned partitions; not taking them");
                        self.shared.fail(format!(
                            "reading where the feature sets stand in {partitions:?}: {e}"
                        ));
                        return;
                    }
                };
                let mut buffer = self.shared.buffer.lock().expect("buffer lock");
                for tp in &partitions {
                    let at = positions.get(tp).copied().flatten();
                    let offset = at.map_or(self.shared.start, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, offset) {
                        tracing::error!(partition = %tp, error = %e, "setting the start offset");
                    }
                    buffer.assign(tp.clone(), at);
                }
                drop(buffer);
                tracing::info!(partitions = ?partitions, positions = ?positions, "partitions assigned");
                crate::ops::health::joined_group();
                if let Err(e) = rebalance::take(consumer, tpl) {
                    tracing::error!(error = %e, "assigning partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.revocations.fetch_add(1, Ordering::SeqCst);
                self.shared
                    .buffer
                    .lock()
                    .expect("buffer lock")
                    .revoke(&partitions);
                tracing::info!(partitions = ?partitions, "partitions revoked");
                if let Err(e) = rebalance::give_up(consumer, tpl) {
                    tracing::error!(error = %e, "unassigning partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                if !rebalance::is_cooperative(consumer) {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

/// A running member of the pipeline's consumer group.
pub struct Member {
    consumer: Arc<BaseConsumer<MemberContext>>,
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
    decoder: Option<JoinHandle<()>>,
}

impl Member {
    /// Join the group and start fetching `topics`, decoding records with
    /// `decoder` as they arrive. `limits` is the most the buffer holds
    /// before fetching pauses (a few batches' worth).
    pub fn start(
        client: &ClientConfig,
        topics: &[String],
        start: Offset,
        decoder: RecordDecoder,
        positions: Box<PositionLookup>,
        limits: BufferLimits,
    ) -> Result<Self> {
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            polling: Mutex::new(()),
            stop: AtomicBool::new(false),
            fatal: Mutex::new(None),
            revocations: AtomicU64::new(0),
            start,
            decoder,
        });
        let mut config = client.clone();
        // Partitions move one at a time, and no member gives up the ones it
        // keeps: without this, every rebalance revokes everything.
        if config.get("partition.assignment.strategy").is_none() {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        config.set("enable.partition.eof", "false");
        // A position the broker no longer has is an error, never a silent
        // jump to the end (librdkafka's default) or the start.
        config.set("auto.offset.reset", "error");
        crate::ops::enable_statistics(&mut config);
        crate::ops::health::expect_group();
        let context = MemberContext {
            shared: Arc::clone(&shared),
            positions,
            group: config.get("group.id").unwrap_or_default().to_string(),
        };
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(context)
            .map_err(|e| KilnError::Kafka(format!("creating the stream consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| KilnError::Kafka(format!("subscribing to {}: {e}", topics.join(", "))))?;
        let consumer = Arc::new(consumer);
        let (to_decode, chunks) = sync_channel(DECODE_QUEUE_CHUNKS);
        let decoder = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("kiln-decode".into())
                .spawn(move || decode_loop(&shared, chunks))
                .map_err(|e| KilnError::Io(format!("starting the Kafka decode thread: {e}")))?
        };
        let poller = {
            let consumer = Arc::clone(&consumer);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("kiln-kafka-poll".into())
                .spawn(move || poll_loop(&consumer, &shared, limits, to_decode))
                .map_err(|e| KilnError::Io(format!("starting the Kafka poll thread: {e}")))?
        };
        Ok(Self {
            consumer,
            shared,
            poller: Some(poller),
            decoder: Some(decoder),
        })
    }

    /// An error when the poll or decode thread has ended (a panic) while
    /// the member runs: without them the worker would wait for ever.
    pub fn check_threads(&self) -> Result<()> {
        if let Some(why) = self.shared.fatal.lock().expect("fatal lock").clone() {
            return Err(KilnError::Kafka(why));
        }
        let ended = |t: &Option<JoinHandle<()>>| t.as_ref().is_some_and(JoinHandle::is_finished);
        if ended(&self.poller) || ended(&self.decoder) {
            return Err(KilnError::Kafka(
                "the Kafka poll or decode thread stopped unexpectedly; see the log above".into(),
            ));
        }
        Ok(())
    }

    /// Rows and bytes buffered, and how long ago the oldest arrived.
    pub fn buffered(&self) -> (usize, usize, Option<Duration>) {
        self.shared.buffer.lock().expect("buffer lock").buffered()
    }

    /// How many revocations the member has seen; a batch whose count changed
    /// while it ran may hold partitions another worker now reads.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    /// Take a batch of at most about `max_rows` records and `max_bytes`
    /// bytes (see [`Buffer::take`]).
    pub fn take_batch(&self, max_rows: usize, max_bytes: usize) -> TakenBatch {
        self.shared
            .buffer
            .lock()
            .expect("buffer lock")
            .take(max_rows, max_bytes)
    }

    /// The partitions the member holds now.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.shared.buffer.lock().expect("buffer lock").held()
    }

    /// Drop what is buffered for `positions` and read again from there.
    pub fn rewind(&self, positions: &BTreeMap<TopicPartition, Option<i64>>) -> Result<()> {
        // librdkafka drops what it fetched before a seek; the one record the
        // poll thread may hold is dealt with by waiting for it.
        let _polling = self.shared.polling.lock().expect("poll lock");
        let mut buffer = self.shared.buffer.lock().expect("buffer lock");
        for (tp, at) in positions {
            if !buffer.rewind(tp, *at) {
                continue;
            }
            let offset = at.map_or(self.shared.start, Offset::Offset);
            self.consumer
                .seek(&tp.topic, tp.partition, offset, Duration::from_secs(10))
                .map_err(|e| KilnError::Kafka(format!("rewinding {tp} to {offset:?}: {e}")))?;
        }
        Ok(())
    }

    /// Report committed positions to the group, for lag monitors.
    pub fn report(&self, positions: &BTreeMap<TopicPartition, i64>) {
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in positions {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(error = %e, "committing offsets to the consumer group");
        }
    }

    /// Stop fetching, leave the group (revoking every partition) and wait
    /// for the poll and decode threads.
    pub fn close(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        // The poll thread held the only sender: the decode thread finishes
        // what was queued and ends.
        if let Some(decoder) = self.decoder.take() {
            let _ = decoder.join();
        }
        crate::ops::health::stopped(POLL_LOOP);
        self.consumer.unsubscribe();
        // The last reference: dropping closes the consumer, which serves the
        // final revocation and leaves the group.
    }
}

/// The poll thread's name in `/healthz`.
const POLL_LOOP: &str = "the Kafka poll thread";

fn poll_loop(
    consumer: &BaseConsumer<MemberContext>,
    shared: &Shared,
    limits: BufferLimits,
    to_decode: SyncSender<ChunkToDecode>,
) {
    let mut repeats = Repeats::default();
    // Whether the buffer was full after the last record: only then is it
    // looked at again before polling.
    let mut full = false;
    // The partition of the last record: records come in runs per
    // partition, and this saves making its name again for each.
    let mut tp = TopicPartition {
        topic: String::new(),
        partition: -1,
    };
    while !shared.stop.load(Ordering::SeqCst) {
        crate::ops::health::beat(POLL_LOOP, crate::ops::health::POLL_ALLOWANCE);
        // Backpressure by not polling: librdkafka's own queue fills and it
        // stops fetching. Pausing the partitions instead would make it drop
        // what it prefetched and fetch it again on resume.
        if full {
            full = shared.buffer.lock().expect("buffer lock").is_full(limits);
            if full {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        }
        let _polling = shared.polling.lock().expect("poll lock");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                if tp.partition != message.partition() || tp.topic != message.topic() {
                    tp = TopicPartition {
                        topic: message.topic().to_string(),
                        partition: message.partition(),
                    };
                }
                let chunk = {
                    let mut buffer = shared.buffer.lock().expect("buffer lock");
                    let chunk = buffer.push(
                        &tp,
                        message.offset(),
                        message.timestamp().to_millis(),
                        message.key(),
                        message.payload(),
                    );
                    full = buffer.is_full(limits);
                    chunk
                };
                if let Some(chunk) = chunk
                    && to_decode.send(chunk).is_err()
                {
                    tracing::error!("the Kafka decode thread has stopped; no longer fetching");
                    return;
                }
            }
            Some(Err(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset))) => {
                shared.fail(
                    "a partition's next offset is no longer on the broker (the topic's retention deleted \
                     records before this worker read them); restart the worker to read the positions again: \
                     it names the partition and the lost range, or skips it under 'on_data_loss' 'skip'"
                        .into(),
                );
                return;
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if repeats.say(&text) {
                    if matches!(e, KafkaError::MessageConsumption(_)) {
                        tracing::warn!(error = %text, "Kafka consumer error; retrying");
                    } else {
                        tracing::warn!(error = %text, "Kafka error; retrying");
                    }
                }
            }
        }
    }
}

impl Shared {
    fn fail(&self, why: String) {
        self.fatal.lock().expect("fatal lock").get_or_insert(why);
    }
}

/// Decode full chunks as the poll thread hands them over, in order, outside
/// the buffer's lock, so that the stream loop only runs and commits.
fn decode_loop(shared: &Shared, chunks: Receiver<ChunkToDecode>) {
    for handed in chunks {
        let chunk = decode_chunk(&shared.decoder, &handed.tp, &handed.records);
        shared
            .buffer
            .lock()
            .expect("buffer lock")
            .add_decoded(&handed, chunk);
    }
}
