//! A bounded run: read what each feature set consumed, plan, execute every
//! INSERT, then commit each feature set.
//!
//! Nothing is committed until every query of a pass has run to completion,
//! so a failure anywhere in execution leaves every feature set as it was.
//! The commits themselves are one Delta commit per feature set, made in the
//! order of the INSERTs (Delta has no multi-table transaction); a feature
//! set left behind by a failure between two commits is brought level by
//! the next run (see [`crate::ledger::plan`]).

mod attempt;
mod check;
mod explain;
pub(crate) mod kafka;
mod pass;
mod poison;
mod progress;
pub(crate) mod retry;
mod stream;
mod worker;

use std::time::Instant;

use serde::Serialize;
use tracing::Instrument;

use crate::engine::{self, Resources};
use crate::error::{Context, Fault, KilnError, Result};
use crate::events::{Events, VersionData};
use crate::featureset::{KafkaInput, Lineage, OpenTables};
use crate::ops::metrics;
use crate::pipeline::{Pipeline, SinkMode};

use attempt::Attempt;
pub use check::{CheckReport, check_paths};
pub use explain::{InsertPlan, explain_pipeline};
use retry::Retries;
pub use stream::{StreamOptions, StreamSummary, parse_duration, stream_pipeline};
pub use worker::{TriggerReport, TriggerStatus, WorkerOptions, WorkerSummary, run_worker};

/// Why a run of a trigger left a feature set alone: it has the trigger's
/// commit already.
pub(crate) const ALREADY_COMMITTED: &str = "this trigger has committed here already";

/// How a run was started and how it reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recorded in the lineage: `manual`, `demo`, `cronjob`, ...
    pub trigger: String,
    /// The identity of the trigger this run is for: each feature set
    /// commits at most one run of it (recorded in its ledger), so a trigger
    /// delivered twice, or run again after a crash, only does what is left.
    pub trigger_id: Option<String>,
    /// Show a progress indicator (only when stderr is a terminal).
    pub progress: bool,
    pub resources: Resources,
    /// The most Kafka records one bounded run reads (a backfill in steps
    /// that each fit in memory); None: up to the high watermarks.
    pub max_records: Option<u64>,
    /// Where each new version is announced (`--events`).
    pub events: Option<Events>,
    /// Read only these files (URLs) of the incremental sources, when given:
    /// the objects an S3 notification named.
    pub objects: Option<std::collections::BTreeSet<String>>,
}

/// What happened to one feature set in a run.
#[derive(Debug, Clone, Serialize)]
pub struct SinkOutcome {
    pub feature_set: String,
    pub location: String,
    /// The new version, when one was committed.
    pub version: Option<u64>,
    pub rows: u64,
    pub mode: SinkMode,
    /// Why nothing was committed, when nothing was.
    pub skipped: Option<String>,
    /// Records written to the feature set's dead-letter table.
    #[serde(skip_serializing_if = "is_zero")]
    pub dead_letters: u64,
    /// What the commit recorded, when there was one (for its event).
    #[serde(skip)]
    pub lineage: Option<Lineage>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a run read from Kafka.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KafkaSummary {
    pub records: u64,
    pub bad_records: u64,
    pub ranges: Vec<KafkaInput>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub file: String,
    pub run_id: String,
    pub elapsed_ms: u128,
    /// Files read across all sources.
    pub input_files: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSummary>,
    pub feature_sets: Vec<SinkOutcome>,
}

impl RunSummary {
    pub fn committed(&self) -> usize {
        self.feature_sets.iter().filter(|o| o.version.is_some()).count()
    }

    /// Keep what happened to one feature set: a later commit replaces an
    /// earlier outcome, a later skip does not.
    fn record(&mut self, outcome: SinkOutcome) {
        match self
            .feature_sets
            .iter_mut()
            .find(|o| o.feature_set == outcome.feature_set)
        {
            Some(earlier) if outcome.version.is_some() || earlier.version.is_none() => *earlier = outcome,
            Some(_) => {}
            None => self.feature_sets.push(outcome),
        }
    }
}

/// A lost race (another run or worker consumed the same input first) is
/// planned again from the ledger this many times before the run fails.
const MAX_CONFLICT_RETRIES: usize = 5;
/// Broker and store failures retried in a row before the run fails.
const MAX_FAILURE_RETRIES: usize = 5;

/// Run `pipeline` once. Its logs carry the pipeline's name and the run's
/// id (a `run` span).
pub async fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<RunSummary> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = run_span(&pipeline.name, &run_id, options);
    let _running = metrics::Running::start(&pipeline.name);
    run_once(pipeline, options, run_id).instrument(span).await
}

/// The span of one run or stream batch.
pub(crate) fn run_span(pipeline: &str, run_id: &str, options: &RunOptions) -> tracing::Span {
    tracing::info_span!(
        "run",
        pipeline = %pipeline,
        run_id = %run_id,
        trigger_id = options.trigger_id.as_deref()
    )
}

async fn run_once(pipeline: &Pipeline, options: &RunOptions, run_id: String) -> Result<RunSummary> {
    let started = Instant::now();
    let ctx = session(options)?;
    let tables = OpenTables::default();
    let kafka_sources = kafka::prepare(&ctx, pipeline)
        .await
        .map_err(KilnError::Problems)?;
    // Every attempt reads up to the ends seen when the run started, so a
    // run over a live topic ends.
    let ends = kafka::watermarks(&kafka_sources).await?;
    let mut summary = RunSummary {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        run_id: run_id.clone(),
        elapsed_ms: 0,
        input_files: 0,
        kafka: None,
        feature_sets: Vec::new(),
    };
    let mut conflicts = Retries::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(5),
        MAX_CONFLICT_RETRIES,
    );
    let mut failures = Retries::new(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(30),
        MAX_FAILURE_RETRIES,
    );
    loop {
        let attempt = Attempt {
            pipeline,
            options,
            tables: &tables,
            run_id: &run_id,
            started,
            kafka_sources: &kafka_sources,
            ends: &ends,
        };
        match attempt.run(&mut summary).await {
            Ok(()) => {
                summary.elapsed_ms = started.elapsed().as_millis();
                if let Some(events) = &options.events {
                    announce(events, &summary).await;
                }
                return Ok(summary);
            }
            Err(e) => {
                // What committed stays committed: the next attempt plans
                // again from the ledgers and does only what is left.
                let (retries, why) = match e.fault() {
                    Fault::Conflict => (
                        &mut conflicts,
                        "another writer consumed the same input first; planning again from the feature sets",
                    ),
                    Fault::External => (&mut failures, "a broker or store failed; trying again"),
                    Fault::User | Fault::Internal => return Err(e),
                };
                let Some(wait) = retries.next_wait() else {
                    return Err(e);
                };
                tracing::warn!(error = %e, attempt = retries.attempts(), wait_ms = wait.as_millis() as u64, "{why}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Publish an event for every version `summary` committed.
pub(crate) async fn announce(events: &Events, summary: &RunSummary) {
    for outcome in &summary.feature_sets {
        if let (Some(version), Some(lineage)) = (outcome.version, &outcome.lineage) {
            events
                .version(VersionData::of_commit(
                    &outcome.feature_set,
                    &outcome.location,
                    version,
                    lineage,
                ))
                .await;
        }
    }
}

fn session(options: &RunOptions) -> Result<datafusion::prelude::SessionContext> {
    engine::session(&options.resources).context(|| "creating the query session".to_string())
}

impl KafkaSummary {
    /// What another pass of the same run read (feature sets that stood
    /// apart read their own ranges).
    fn add(&mut self, other: KafkaSummary) {
        self.records += other.records;
        self.bad_records += other.bad_records;
        self.ranges.extend(other.ranges);
    }

    fn of(reads: &[kafka::SourceReads]) -> Self {
        KafkaSummary {
            records: reads.iter().map(|r| r.records()).sum(),
            bad_records: reads.iter().map(|r| r.bad_records()).sum(),
            ranges: reads.iter().flat_map(|r| r.lineage()).collect(),
        }
    }
}
