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

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use super::retry::Retries;
use super::{RunOptions, RunSummary, run_pipeline};
use crate::engine::Resources;
use crate::error::{Fault, KilnError, Result};
use crate::events::{Events, FailureData, MessageAt, VersionData};
use crate::featureset;
use crate::kafka_client::ClientSettings;
use crate::pipeline::{Pipeline, Variables};
use crate::trigger::{BadTrigger, Trigger};
use acks::Acks;
use consumer::{Delivery, Member};

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
}

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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSummary>,
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
            TriggerStatus::NothingToCommit => {}
            TriggerStatus::Failed => self.failed += 1,
        }
    }
}

/// The consumer group of the workers of `topic`, unless `-X group.id` names one.
pub fn default_group(topic: &str) -> String {
    format!("kiln-worker.{topic}")
}

/// A trigger the loop has started.
struct InFlight {
    delivery: Delivery,
    trigger: Trigger,
    started: Started,
}

/// When something began, by the clock (for reports) and monotonically.
#[derive(Debug, Clone, Copy)]
struct Started {
    at: chrono::DateTime<chrono::Utc>,
    instant: Instant,
}

impl Started {
    fn now() -> Self {
        Self {
            at: chrono::Utc::now(),
            instant: Instant::now(),
        }
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    let mut queue: VecDeque<(Delivery, Trigger)> = VecDeque::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut runs: JoinSet<TriggerEnd> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    let mut shutdown = std::pin::pin!(super::stream::shutdown_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ended = Ended {
        options,
        member: &member,
        acks: &mut acks,
        summary: &mut summary,
        on_trigger,
    };
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                if !member.holds(&delivery) {
                    member.took();
                    continue;
                }
                ended.acks.delivered(&delivery.tp, delivery.epoch, delivery.offset);
                match accept(&delivery) {
                    Ok(trigger) => queue.push_back((delivery, trigger)),
                    Err(bad) => {
                        member.took();
                        tracing::warn!(
                            topic = %delivery.tp.topic, partition = delivery.tp.partition, offset = delivery.offset,
                            id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, "bad trigger; acknowledged without running"
                        );
                        let report = failed_report(&delivery, bad.id, bad.pipeline, bad.reason, Started::now());
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
                busy.remove(&flight.trigger.pipeline);
                match end {
                    Some(end) => {
                        let report = end.report(&flight);
                        ended.finish(&flight.delivery, report).await?;
                    }
                    None => {
                        tracing::warn!(id = %flight.trigger.id, pipeline = %flight.trigger.pipeline, "trigger run abandoned uncommitted; the partition's next owner runs it");
                        member.run_ended(&flight.delivery);
                    }
                }
            }
            _ = tick.tick() => member.check()?,
        }
        // Start what may start: the oldest waiting trigger of each pipeline
        // not running now.
        while runs.len() < concurrency {
            let Some(i) = queue.iter().position(|(_, t)| !busy.contains(&t.pipeline)) else {
                break;
            };
            let (delivery, trigger) = queue.remove(i).expect("position is in the queue");
            member.took();
            let task = {
                let runner = Arc::clone(&runner);
                let trigger = trigger.clone();
                async move { runner.run(&trigger).await }
            };
            let started = member.start_run(&delivery, || {
                let handle = runs.spawn(task);
                in_flight.insert(
                    handle.id(),
                    InFlight {
                        delivery: delivery.clone(),
                        trigger: trigger.clone(),
                        started: Started::now(),
                    },
                );
                handle
            });
            if started {
                tracing::info!(id = %trigger.id, pipeline = %trigger.pipeline, partition = delivery.tp.partition, offset = delivery.offset, "running trigger");
                busy.insert(trigger.pipeline.clone());
            }
        }
    }

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
                let report = end.report(&flight);
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

/// The trigger in `delivery`, or why it is none. Its key must be its
/// pipeline: that is what keeps two runs of one pipeline apart.
fn accept(delivery: &Delivery) -> std::result::Result<Trigger, BadTrigger> {
    let trigger = Trigger::parse(delivery.payload.as_deref())?;
    if delivery.key.as_deref() != Some(trigger.pipeline.as_bytes()) {
        return Err(BadTrigger {
            id: Some(trigger.id),
            pipeline: Some(trigger.pipeline),
            reason: "the message key is not the pipeline's name: a trigger is sent with its pipeline as \
                     the key (as `kiln trigger` does), so that one worker at a time runs a pipeline"
                .into(),
        });
    }
    Ok(trigger)
}

fn failed_report(
    delivery: &Delivery,
    id: Option<String>,
    pipeline: Option<String>,
    reason: String,
    started: Started,
) -> TriggerReport {
    TriggerReport {
        id,
        pipeline,
        topic: delivery.tp.topic.clone(),
        partition: delivery.tp.partition,
        offset: delivery.offset,
        status: TriggerStatus::Failed,
        reason: Some(reason),
        run: None,
        started_at: rfc3339(started.at),
        ended_at: rfc3339(chrono::Utc::now()),
        elapsed_ms: started.instant.elapsed().as_millis(),
    }
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
        TriggerStatus::Committed | TriggerStatus::NothingToCommit => {}
    }
}

/// How a run of one trigger ended.
enum TriggerEnd {
    Ran(RunSummary),
    Failed(String),
}

impl TriggerEnd {
    fn report(self, flight: &InFlight) -> TriggerReport {
        let (status, reason, run) = match self {
            TriggerEnd::Ran(summary) => {
                let status = if summary.committed() > 0 {
                    TriggerStatus::Committed
                } else if summary
                    .feature_sets
                    .iter()
                    .all(|o| o.skipped.as_deref() == Some(super::ALREADY_COMMITTED))
                {
                    TriggerStatus::AlreadyRun
                } else {
                    TriggerStatus::NothingToCommit
                };
                (status, None, Some(summary))
            }
            TriggerEnd::Failed(reason) => {
                tracing::warn!(id = %flight.trigger.id, pipeline = %flight.trigger.pipeline, reason = %reason, "trigger failed; acknowledged without running again");
                (TriggerStatus::Failed, Some(reason), None)
            }
        };
        TriggerReport {
            id: Some(flight.trigger.id.clone()),
            pipeline: Some(flight.trigger.pipeline.clone()),
            topic: flight.delivery.tp.topic.clone(),
            partition: flight.delivery.tp.partition,
            offset: flight.delivery.offset,
            status,
            reason,
            run,
            started_at: rfc3339(flight.started.at),
            ended_at: rfc3339(chrono::Utc::now()),
            elapsed_ms: flight.started.instant.elapsed().as_millis(),
        }
    }
}

/// What every run of the worker shares.
struct Runner {
    dir: PathBuf,
    /// Recorded in the lineage as what started the run.
    trigger: String,
    resources: Resources,
    events: Option<Events>,
}

/// Waits between tries of a trigger whose run failed on a broker or store.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Runner {
    /// Run `trigger`'s pipeline; a broker or store failure is tried again
    /// (with backoff, for as long as the worker holds the trigger), any
    /// other failure ends the trigger.
    async fn run(&self, trigger: &Trigger) -> TriggerEnd {
        let path = self.dir.join(format!("{}.sql", trigger.pipeline));
        if !path.is_file() {
            return TriggerEnd::Failed(format!(
                "unknown pipeline '{}': there is no {} in {} (found: {})",
                trigger.pipeline,
                path.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                self.dir.display(),
                pipeline_names(&self.dir).join(", ")
            ));
        }
        let pipeline = match Pipeline::load(&path, &Variables::from_env(trigger.set.clone())) {
            Ok(p) => p,
            Err(problems) => {
                return TriggerEnd::Failed(
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        };
        let options = RunOptions {
            trigger: self.trigger.clone(),
            trigger_id: Some(trigger.id.clone()),
            progress: false,
            resources: self.resources.clone(),
            max_records: None,
            events: self.events.clone(),
        };
        let mut retries = Retries::new(RETRY_MIN, RETRY_MAX, usize::MAX);
        loop {
            match run_pipeline(&pipeline, &options).await {
                Ok(summary) => return TriggerEnd::Ran(summary),
                Err(e) if matches!(e.fault(), Fault::External | Fault::Conflict) => {
                    let wait = retries.next_wait().unwrap_or(RETRY_MAX);
                    tracing::warn!(
                        id = %trigger.id, pipeline = %trigger.pipeline, error = %e, wait_ms = wait.as_millis() as u64,
                        "the trigger's run failed on a broker or store; trying it again"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return TriggerEnd::Failed(one_line(&e.to_string())),
            }
        }
    }
}

/// The pipelines in `dir`: its `*.sql` files' names.
fn pipeline_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "sql" && path.is_file())
                .then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
