//! The trigger worker's consumer-group member: a thread polls the trigger
//! topic and hands each message to the worker's loop.
//!
//! Two triggers of one pipeline must never run at once anywhere. They share
//! a partition (the pipeline is the key), and one member holds a partition
//! at a time; the gap is a rebalance, where the group may give the
//! partition to another worker while this one still runs a trigger from it.
//! So a revocation waits, inside the rebalance callback, until the runs of
//! the revoked partitions have ended (up to the drain timeout, after which
//! they are abandoned uncommitted): the group hands the partition on only
//! once this member has let it go.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::AbortHandle;

use crate::error::{KilnError, Result};
use crate::kafka_client::ClientSettings;
use crate::source::kafka::repeats::Repeats;
use crate::source::kafka::{TopicPartition, rebalance};

/// One message from the trigger topic.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    pub tp: TopicPartition,
    pub offset: i64,
    /// Which holding of the partition it came in: a delivery from before a
    /// revocation is not this worker's to run.
    pub epoch: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// Messages waiting in the worker beyond which fetching pauses.
const MAX_WAITING: usize = 1000;
/// How long abandoned runs get to stop after they were told to.
const ABORT_GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Holding {
    /// The partitions held now, each with the epoch it arrived in.
    assigned: BTreeMap<TopicPartition, u64>,
    /// Runs in flight per partition: (offset, handle to abandon it).
    running: BTreeMap<TopicPartition, Vec<(i64, AbortHandle)>>,
}

struct Shared {
    holding: Mutex<Holding>,
    /// Signalled when a run ends.
    ended: Condvar,
    epochs: AtomicU64,
    stop: AtomicBool,
    /// Messages the loop has not started yet.
    waiting: AtomicUsize,
    paused: AtomicBool,
    fatal: Mutex<Option<String>>,
    /// How long a revocation waits for the runs of its partitions.
    drain: Duration,
}

struct MemberContext {
    shared: Arc<Shared>,
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
        let cooperative = rebalance::is_cooperative(consumer);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                {
                    let mut holding = self.shared.holding.lock().expect("holding lock");
                    for tp in &partitions {
                        let epoch = self.shared.epochs.fetch_add(1, Ordering::SeqCst) + 1;
                        holding.assigned.insert(tp.clone(), epoch);
                    }
                }
                tracing::info!(partitions = ?partitions, "trigger partitions assigned");
                crate::ops::health::joined_group();
                if let Err(e) = rebalance::take(consumer, tpl) {
                    tracing::error!(error = %e, "assigning trigger partitions");
                }
                if self.shared.paused.load(Ordering::SeqCst) {
                    let _ = consumer.pause(tpl);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.shared.let_go(&partitions);
                tracing::info!(partitions = ?partitions, "trigger partitions revoked");
                if let Err(e) = rebalance::give_up(consumer, tpl) {
                    tracing::error!(error = %e, "unassigning trigger partitions");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

impl Shared {
    /// Stop counting `partitions` as held and wait for their runs to end;
    /// abandon those still running after the drain timeout.
    fn let_go(&self, partitions: &[TopicPartition]) {
        let mut holding = self.holding.lock().expect("holding lock");
        for tp in partitions {
            holding.assigned.remove(tp);
        }
        let running = |h: &Holding| -> usize {
            partitions
                .iter()
                .filter_map(|tp| h.running.get(tp))
                .map(Vec::len)
                .sum()
        };
        let mut deadline = Instant::now() + self.drain;
        let mut abandoned = false;
        while running(&holding) > 0 {
            let now = Instant::now();
            if now >= deadline {
                if abandoned {
                    tracing::error!("abandoned trigger runs did not stop; letting the partitions go anyway");
                    break;
                }
                tracing::warn!(
                    runs = running(&holding),
                    "trigger runs of revoked partitions did not end within the drain timeout; abandoning them uncommitted"
                );
                for tp in partitions {
                    for (_, run) in holding.running.get(tp).into_iter().flatten() {
                        run.abort();
                    }
                }
                abandoned = true;
                deadline = now + ABORT_GRACE;
                continue;
            }
            if !abandoned {
                tracing::info!(
                    runs = running(&holding),
                    "waiting for the runs of revoked trigger partitions to end"
                );
            }
            holding = self
                .ended
                .wait_timeout(holding, deadline - now)
                .expect("holding lock")
                .0;
        }
    }

    fn fail(&self, why: String) {
        self.fatal.lock().expect("fatal lock").get_or_insert(why);
    }
}

/// A running member of the trigger workers' group.
pub(super) struct Member {
    consumer: Arc<BaseConsumer<MemberContext>>,
    shared: Arc<Shared>,
    poller: Option<JoinHandle<()>>,
}

impl Member {
    /// Join the group `group` (unless the settings name one) and send every
    /// message of `topic` to `to_loop`. `drain` is how long a revocation
    /// waits for runs to end.
    pub fn start(
        settings: &ClientSettings,
        group: &str,
        topic: &str,
        drain: Duration,
        to_loop: UnboundedSender<Delivery>,
    ) -> Result<Self> {
        let mut config = settings.config();
        for (key, default) in [
            ("group.id", group),
            ("client.id", "kiln-worker"),
            // A new group runs the triggers sent before it first started.
            ("auto.offset.reset", "earliest"),
            // Triggers are few and waited for: a fetch with nothing to
            // return comes back at once rather than after librdkafka's
            // default half second.
            ("fetch.wait.max.ms", "100"),
        ] {
            if settings.get(key).is_none() {
                config.set(key, default);
            }
        }
        let shared = Arc::new(Shared {
            holding: Mutex::new(Holding::default()),
            ended: Condvar::new(),
            epochs: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            fatal: Mutex::new(None),
            drain,
        });
        if config.get("partition.assignment.strategy").is_none() && config.get("group.protocol").is_none() {
            config.set("partition.assignment.strategy", "cooperative-sticky");
        }
        // A trigger is acknowledged only once its run has ended.
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        config.set("enable.partition.eof", "false");
        crate::ops::enable_statistics(&mut config);
        let group = config.get("group.id").unwrap_or(group).to_string();
        crate::ops::health::expect_group();
        let consumer: BaseConsumer<MemberContext> = config
            .create_with_context(MemberContext {
                shared: Arc::clone(&shared),
                group,
            })
            .map_err(|e| {
                KilnError::Usage(format!(
                    "Kafka client settings: {}",
                    settings.scrub(&e.to_string())
                ))
            })?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| KilnError::Kafka(format!("subscribing to '{topic}': {e}")))?;
        let consumer = Arc::new(consumer);
        let poller = {
            let consumer = Arc::clone(&consumer);
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("kiln-trigger-poll".into())
                .spawn(move || poll_loop(&consumer, &shared, &to_loop))
                .map_err(|e| KilnError::Io(format!("starting the trigger poll thread: {e}")))?
        };
        Ok(Self {
            consumer,
            shared,
            poller: Some(poller),
        })
    }

    /// Why the member cannot go on, if it cannot.
    pub fn check(&self) -> Result<()> {
        if let Some(why) = self.shared.fatal.lock().expect("fatal lock").clone() {
            return Err(KilnError::Kafka(why));
        }
        if self.poller.as_ref().is_some_and(JoinHandle::is_finished)
            && !self.shared.stop.load(Ordering::SeqCst)
        {
            return Err(KilnError::Kafka(
                "the trigger poll thread stopped unexpectedly; see the log above".into(),
            ));
        }
        Ok(())
    }

    /// Whether `delivery` still belongs to this worker.
    pub fn holds(&self, delivery: &Delivery) -> bool {
        let holding = self.shared.holding.lock().expect("holding lock");
        holding.assigned.get(&delivery.tp) == Some(&delivery.epoch)
    }

    /// Start `run` for `delivery` unless its partition has left this
    /// worker; `start` spawns it and gives the handle that abandons it.
    pub fn start_run(&self, delivery: &Delivery, start: impl FnOnce() -> AbortHandle) -> bool {
        let mut holding = self.shared.holding.lock().expect("holding lock");
        if holding.assigned.get(&delivery.tp) != Some(&delivery.epoch) {
            return false;
        }
        let handle = start();
        holding
            .running
            .entry(delivery.tp.clone())
            .or_default()
            .push((delivery.offset, handle));
        true
    }

    /// The run of `delivery` ended (after its offset was committed).
    pub fn run_ended(&self, delivery: &Delivery) {
        let mut holding = self.shared.holding.lock().expect("holding lock");
        if let Some(runs) = holding.running.get_mut(&delivery.tp) {
            runs.retain(|(offset, _)| *offset != delivery.offset);
            if runs.is_empty() {
                holding.running.remove(&delivery.tp);
            }
        }
        drop(holding);
        self.shared.ended.notify_all();
    }

    /// Abandon every run in flight (shutdown past its timeout).
    pub fn abandon_all(&self) {
        let holding = self.shared.holding.lock().expect("holding lock");
        for (_, run) in holding.running.values().flatten() {
            run.abort();
        }
    }

    /// The loop took one delivery off its queue (started, refused or
    /// dropped it): fetching resumes once few are left.
    pub fn took(&self) {
        self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Commit `next` as the group offset of `tp`, if the partition is still
    /// held as of `epoch`. Asynchronous: the broker's answer is not waited
    /// for (closing the consumer waits for the commits in flight).
    pub fn commit(&self, tp: &TopicPartition, epoch: u64, next: i64) -> Result<()> {
        if self.shared.holding.lock().expect("holding lock").assigned.get(tp) != Some(&epoch) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next))
            .map_err(|e| KilnError::Kafka(format!("committing {tp} at {next}: {e}")))?;
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| KilnError::Kafka(format!("committing {tp} at {next}: {e}")))
    }

    /// Take no more messages (shutdown); the member stays in the group
    /// until [`Member::close`].
    pub fn stop_fetching(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    /// Stop fetching, then leave the group (revoking every partition).
    pub fn close(mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.take() {
            let _ = poller.join();
        }
        crate::ops::health::stopped(POLL_LOOP);
        self.consumer.unsubscribe();
        // The last reference: dropping closes the consumer, which serves the
        // final revocation and leaves the group.
    }
}

/// The poll thread's name in `/healthz`.
const POLL_LOOP: &str = "the trigger poll thread";

fn poll_loop(consumer: &BaseConsumer<MemberContext>, shared: &Shared, to_loop: &UnboundedSender<Delivery>) {
    let mut repeats = Repeats::default();
    while !shared.stop.load(Ordering::SeqCst) {
        crate::ops::health::beat(POLL_LOOP, crate::ops::health::POLL_ALLOWANCE);
        let waiting = shared.waiting.load(Ordering::SeqCst);
        let paused = shared.paused.load(Ordering::SeqCst);
        if (!paused && waiting >= MAX_WAITING || paused && waiting < MAX_WAITING / 2)
            && let Ok(assignment) = consumer.assignment()
        {
            // Paused partitions keep their place: librdkafka fetches again
            // from the next undelivered offset on resume.
            let done = if paused {
                consumer.resume(&assignment)
            } else {
                consumer.pause(&assignment)
            };
            if let Err(e) = done {
                tracing::warn!(error = %e, "pausing or resuming the trigger partitions");
            }
            shared.paused.store(!paused, Ordering::SeqCst);
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let tp = TopicPartition {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                };
                let epoch = shared
                    .holding
                    .lock()
                    .expect("holding lock")
                    .assigned
                    .get(&tp)
                    .copied();
                let Some(epoch) = epoch else {
                    continue;
                };
                shared.waiting.fetch_add(1, Ordering::SeqCst);
                let delivery = Delivery {
                    tp,
                    offset: message.offset(),
                    epoch,
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                };
                if to_loop.send(delivery).is_err() {
                    return;
                }
            }
            Some(Err(KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::AutoOffsetReset))) => {
                shared.fail(
                    "a trigger partition's committed offset is no longer on the broker (retention deleted \
                     triggers this group never ran); set -X auto.offset.reset=earliest to run what is left"
                        .into(),
                );
                return;
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if repeats.say(&text) {
                    tracing::warn!(error = %text, "Kafka error on the trigger topic; retrying");
                }
            }
        }
    }
}
