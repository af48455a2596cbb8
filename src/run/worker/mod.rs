//! `kiln worker`: runs started by trigger messages on a Kafka topic.
//!
//! Each message names a pipeline in the `--pipelines` folder (read again
//! for every trigger, so a changed file or ConfigMap needs no restart) and
//! its variables. Workers of one deployment form one consumer group, so
//! triggers spread over them; at most `--concurrency` runs go at once in a
//! worker, and never two of one pipeline.
//!
//! Each trigger runs once. Its id is an input in the ledger of every
//! feature set its run commits to (see [`crate::ledger`]): a redelivered
//! trigger commits only where it has not yet, and two runs of it racing
//! cannot both commit. Its offset is committed to the group only after its
//! run ended, so a worker that dies re-delivers it; the ledger then makes
//! the second delivery do only what the first left undone.

mod acks;
mod consumer;
mod jobs;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;

use super::RunSummary;
use crate::engine::Resources;
use crate::error::{KilnError, Result};
use crate::events::{Events, FailureData, MessageAt, VersionData};
use crate::featureset;
use crate::kafka_client::ClientSettings;
use crate::ops::{health, metrics};
use acks::Acks;
use consumer::{Delivery, Member};
use jobs::{Job, JobEnd, Runner, Started, accept, pipeline_names, report_of};

/// What a worker reads and how it runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The trigger topic.
    pub topic: String,
    /// The folder of pipeline files.
    pub pipelines: PathBuf,
    pub client: ClientSettings,
    /// Runs at once in this worker.
    pub concurrency: usize,
    /// On SIGTERM (and on losing a partition), how long runs in flight may
    /// take to end before they are abandoned uncommitted.
    pub shutdown_timeout: Duration,
    /// What the whole worker may use; each run gets its share.
    pub resources: Resources,
    /// Where versions and failed triggers are announced (`--events`).
    pub events: Option<Events>,
}

/// How a trigger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerStatus {
    /// Its run committed at least one feature set.
    Committed,
    /// Every feature set already had its commit: a repeated delivery.
    AlreadyRun,
    /// It ran and had nothing to commit (no new input).
    NothingToCommit,
    /// Not a trigger, an unknown pipeline, a missing variable, or a run
    /// that failed: acknowledged, not run again.
    Failed,
    /// A notification of objects no pipeline's incremental source covers.
    Skipped,
}

impl TriggerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerStatus::Committed => "committed",
            TriggerStatus::AlreadyRun => "already_run",
            TriggerStatus::NothingToCommit => "nothing_to_commit",
            TriggerStatus::Failed => "failed",
            TriggerStatus::Skipped => "skipped",
        }
    }
}

/// The worker loop's name in `/healthz`, and how long it may go without
/// turning (it turns at least every half second).
const TRIGGER_LOOP: &str = "the trigger worker loop";
const TRIGGER_ALLOWANCE: Duration = Duration::from_secs(60);

/// One trigger the worker finished with.
#[derive(Debug, Clone, Serialize)]
pub struct TriggerReport {
    pub id: Option<String>,
    pub pipeline: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub status: TriggerStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A trigger's run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSummary>,
    /// An S3 notification's created objects, those no pipeline covers, and
    /// a run per pipeline that covers some.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub uncovered: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunSummary>,
    /// When the worker started and finished with it (RFC 3339, UTC).
    pub started_at: String,
    pub ended_at: String,
    pub elapsed_ms: u128,
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkerSummary {
    pub topic: String,
    pub triggers: u64,
    pub committed: u64,
    pub already_run: u64,
    pub failed: u64,
    /// Runs still in flight when --shutdown-timeout passed; their triggers
    /// stay unacknowledged and run again on the next worker.
    pub abandoned_at_shutdown: u64,
}

impl WorkerSummary {
    fn count(&mut self, report: &TriggerReport) {
        self.triggers += 1;
        match report.status {
            TriggerStatus::Committed => self.committed += 1,
            TriggerStatus::AlreadyRun => self.already_run += 1,
            TriggerStatus::NothingToCommit | TriggerStatus::Skipped => {}
            TriggerStatus::Failed => self.failed += 1,
        }
    }
}

/// The consumer group of the workers of `topic`, unless `-X group.id` names one.
fn default_group(topic: &str) -> String {
    format!("kiln-worker.{topic}")
}

/// A job the loop has started.
struct InFlight {
    delivery: Delivery,
    job: Job,
    started: Started,
}

/// Run triggers from `options.topic` until SIGTERM or SIGINT; `on_trigger`
/// hears of each one as it ends.
pub async fn run_worker(
    options: &WorkerOptions,
    on_trigger: &dyn Fn(&TriggerReport),
) -> Result<WorkerSummary> {
    if !options.pipelines.is_dir() {
        return Err(KilnError::Usage(format!(
            "--pipelines '{}' is not a folder",
            options.pipelines.display()
        )));
    }
    let concurrency = options.concurrency.max(1);
    let runner = Arc::new(Runner {
        dir: options.pipelines.clone(),
        trigger: format!("kafka://{}", options.topic),
        resources: options.resources.shared_by(concurrency),
        events: options.events.clone(),
    });
    tracing::info!(
        topic = %options.topic, brokers = %options.client.brokers(), pipelines = %options.pipelines.display(),
        found = ?pipeline_names(&options.pipelines), concurrency, "trigger worker starting"
    );
    let (to_loop, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
    let member = Arc::new(Member::start(
        &options.client,
        &default_group(&options.topic),
        &options.topic,
        drain_timeout(options),
        to_loop,
    )?);
    let mut summary = WorkerSummary {
        topic: options.topic.clone(),
        ..WorkerSummary::default()
    };
    let mut acks = Acks::default();
    let mut queue: VecDeque<(Delivery, Job)> = VecDeque::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut runs: JoinSet<JobEnd> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    let mut shutdown = std::pin::pin!(crate::ops::signals::stop_requested());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ended = Ended {
        options,
        member: &member,
        acks: &mut acks,
        summary: &mut summary,
        on_trigger,
    };
    loop {
        health::beat(TRIGGER_LOOP, TRIGGER_ALLOWANCE);
        tokio::select! {
            _ = &mut shutdown => break,
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                if !member.holds(&delivery) {
                    member.took();
                    continue;
                }
                ended.acks.delivered(&delivery.tp, delivery.epoch, delivery.offset);
                match accept(&delivery, &options.pipelines) {
                    Ok(job) if job.pipelines.is_empty() => {
                        // Objects no pipeline covers: nothing to run.
                        member.took();
                        let report = JobEnd { runs: Vec::new(), failed: None }.report(&delivery, &job, Started::now());
                        ended.finish(&delivery, report).await?;
                    }
                    Ok(job) => queue.push_back((delivery, job)),
                    Err(bad) => {
                        member.took();
                        tracing::warn!(
                            topic = %delivery.tp.topic, partition = delivery.tp.partition, offset = delivery.offset,
                            id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, "bad trigger; acknowledged without running"
                        );
                        let mut report = report_of(&delivery, Started::now(), TriggerStatus::Failed, Some(bad.reason));
                        report.id = bad.id;
                        report.pipeline = bad.pipeline;
                        ended.finish(&delivery, report).await?;
                    }
                }
            }
            Some(joined) = runs.join_next_with_id(), if !runs.is_empty() => {
                let (id, end) = match joined {
                    Ok((id, end)) => (id, Some(end)),
                    Err(e) => (e.id(), None),
                };
                let flight = in_flight.remove(&id).expect("every run is in flight");
                for p in &flight.job.pipelines {
                    busy.remove(p);
                }
                match end {
                    Some(end) => {
                        let report = end.report(&flight.delivery, &flight.job, flight.started);
                        ended.finish(&flight.delivery, report).await?;
                    }
                    None => {
                        tracing::warn!(job = %flight.job.describe(), "run abandoned uncommitted; the partition's next owner runs it");
                        member.run_ended(&flight.delivery);
                    }
                }
            }
            _ = tick.tick() => member.check()?,
        }
        // Start what may start: the oldest waiting trigger of each pipeline
        // not running now.
        while runs.len() < concurrency {
            let Some(i) = queue
                .iter()
                .position(|(_, job)| job.pipelines.iter().all(|p| !busy.contains(p)))
            else {
                break;
            };
            let (delivery, job) = queue.remove(i).expect("position is in the queue");
            member.took();
            let task = {
                let runner = Arc::clone(&runner);
                let job = job.clone();
                async move { runner.run(&job).await }
            };
            let started = member.start_run(&delivery, || {
                let handle = runs.spawn(task);
                in_flight.insert(
                    handle.id(),
                    InFlight {
                        delivery: delivery.clone(),
                        job: job.clone(),
                        started: Started::now(),
                    },
                );
                handle
            });
            if started {
                tracing::info!(job = %job.describe(), id = job.id().unwrap_or("-"), partition = delivery.tp.partition, offset = delivery.offset, "running");
                busy.extend(job.pipelines.iter().cloned());
            }
        }
    }

    health::stopped(TRIGGER_LOOP);
    tracing::info!(
        running = runs.len(),
        waiting = queue.len(),
        "stopping: taking no more triggers"
    );
    member.stop_fetching();
    let deadline = tokio::time::Instant::now() + options.shutdown_timeout;
    while !runs.is_empty() {
        let joined = match tokio::time::timeout_at(deadline, runs.join_next_with_id()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    runs = runs.len(),
                    "runs in flight did not end within --shutdown-timeout; abandoning them uncommitted"
                );
                member.abandon_all();
                runs.abort_all();
                while let Some(joined) = runs.join_next_with_id().await {
                    let id = joined.map_or_else(|e| e.id(), |(id, _)| id);
                    if let Some(flight) = in_flight.remove(&id) {
                        member.run_ended(&flight.delivery);
                        ended.summary.abandoned_at_shutdown += 1;
                    }
                }
                break;
            }
        };
        match joined {
            Ok((id, end)) => {
                let flight = in_flight.remove(&id).expect("every run is in flight");
                let report = end.report(&flight.delivery, &flight.job, flight.started);
                ended.finish(&flight.delivery, report).await?;
            }
            Err(e) => {
                if let Some(flight) = in_flight.remove(&e.id()) {
                    member.run_ended(&flight.delivery);
                }
            }
        }
    }
    drop(runs);
    match Arc::try_unwrap(member) {
        Ok(member) => tokio::task::spawn_blocking(move || member.close())
            .await
            .map_err(|e| KilnError::Run(format!("leaving the trigger group: {e}")))?,
        Err(_) => tracing::warn!("the trigger consumer is still in use; not leaving the group cleanly"),
    }
    Ok(summary)
}

/// How long a revocation may wait for the runs of its partitions: the
/// shutdown timeout, but well inside `max.poll.interval.ms`, past which
/// librdkafka itself leaves the group of a member stuck in its callback.
fn drain_timeout(options: &WorkerOptions) -> Duration {
    let max_poll = options
        .client
        .get("max.poll.interval.ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::from_secs(300), Duration::from_millis);
    let drain = options.shutdown_timeout.min(max_poll.mul_f64(0.8));
    if drain < options.shutdown_timeout {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "--shutdown-timeout is longer than max.poll.interval.ms allows; a revoked partition's runs get this long"
        );
    }
    drain
}

/// Acknowledging what ended.
struct Ended<'a> {
    options: &'a WorkerOptions,
    member: &'a Arc<Member>,
    acks: &'a mut Acks,
    summary: &'a mut WorkerSummary,
    on_trigger: &'a dyn Fn(&TriggerReport),
}

impl Ended<'_> {
    /// Report a trigger that ended and move its partition's group offset
    /// as far as everything before it has ended.
    async fn finish(&mut self, delivery: &Delivery, report: TriggerReport) -> Result<()> {
        self.summary.count(&report);
        // Labelled by the pipeline that ran: a bad trigger's name is
        // whatever its sender wrote, not a label.
        let ran = report.run.as_ref().map_or("-", |r| r.pipeline.as_str());
        metrics::trigger_finished(ran, report.status.as_str());
        (self.on_trigger)(&report);
        if let Some(events) = &self.options.events {
            announce(events, &report).await;
        }
        if let Some(next) = self.acks.ended(&delivery.tp, delivery.epoch, delivery.offset) {
            fail::fail_point!("worker-before-offset-commit", |_| {
                tracing::error!("failpoint worker-before-offset-commit: exiting");
                std::process::exit(137)
            });
            // The trigger's commits are in the ledgers: a lost offset commit
            // only means a later delivery finds them there.
            if let Err(e) = self.member.commit(&delivery.tp, delivery.epoch, next) {
                tracing::warn!(error = %self.options.client.scrub(&e.to_string()), "committing the trigger offset; a redelivery will find the trigger's commits");
            }
        }
        self.member.run_ended(delivery);
        Ok(())
    }
}

/// The events a trigger that ended owes: a failure, or (for one run
/// before) its versions again, since the worker that committed them may
/// have died before it announced them.
async fn announce(events: &Events, report: &TriggerReport) {
    match report.status {
        TriggerStatus::Failed => {
            events
                .failed(FailureData {
                    reason: report.reason.clone().unwrap_or_default(),
                    pipeline: report.pipeline.clone(),
                    run_id: None,
                    trigger: format!("kafka://{}", report.topic),
                    trigger_id: report.id.clone(),
                    message: Some(MessageAt {
                        topic: report.topic.clone(),
                        partition: report.partition,
                        offset: report.offset,
                    }),
                })
                .await;
        }
        TriggerStatus::AlreadyRun => {
            let (Some(run), Some(id)) = (&report.run, &report.id) else {
                return;
            };
            for outcome in &run.feature_sets {
                match featureset::trigger_commit(&outcome.location, id).await {
                    Ok(Some((version, lineage))) => {
                        events
                            .version(VersionData::of_commit(
                                &outcome.feature_set,
                                &outcome.location,
                                version,
                                &lineage,
                            ))
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "looking up a trigger's commit to announce it again")
                    }
                }
            }
        }
        // The run announced its own versions as it committed them.
        TriggerStatus::Committed | TriggerStatus::NothingToCommit | TriggerStatus::Skipped => {}
    }
}
