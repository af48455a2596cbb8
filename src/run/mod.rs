//! A bounded run: read what each feature set consumed, plan, execute every
//! INSERT, then commit each feature set.
//!
//! Nothing is committed until every query of a pass has run to completion,
//! so a failure anywhere in execution leaves every feature set as it was.
//! The commits themselves are one Delta commit per feature set, made in the
//! order of the INSERTs (Delta has no multi-table transaction); a feature
//! set left behind by a failure between two commits is brought level by
//! the next run (see [`crate::ledger::plan`]).

mod check;
mod explain;
pub(crate) mod kafka;
mod poison;
mod progress;
mod retry;
mod stream;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::{self, PlannedInsert, PlannedPipeline, Resources};
use crate::error::{Context, Fault, KilnError, Result};
use crate::featureset::{
    self, InputFile, KafkaInput, Lineage, LostRange, OpenTables, StagedWrite, StatsCollector,
};
use crate::ledger::plan::{self, Group, Standing};
use crate::ledger::{self, ReadInput};
use crate::pipeline::{Pipeline, SinkMode};
use crate::source::kafka::{PartitionRange, TopicPartition};

pub use check::{CheckReport, check_paths};
pub use explain::{InsertPlan, explain_pipeline};
use progress::Progress;
use retry::Retries;
pub use stream::{StreamOptions, StreamSummary, parse_duration, stream_pipeline};

/// How a run was started and how it reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recorded in the lineage: `manual`, `demo`, `cronjob`, ...
    pub trigger: String,
    /// Show a progress indicator (only when stderr is a terminal).
    pub progress: bool,
    pub resources: Resources,
    /// The most Kafka records one bounded run reads (a backfill in steps
    /// that each fit in memory); None: up to the high watermarks.
    pub max_records: Option<u64>,
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
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a run read from Kafka.
#[derive(Debug, Clone, Serialize)]
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

/// Run `pipeline` once.
pub async fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
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

fn session(options: &RunOptions) -> Result<datafusion::prelude::SessionContext> {
    engine::session(&options.resources).context(|| "creating the query session".to_string())
}

/// One try at a bounded run: read the ledgers, plan, read the inputs once,
/// then run and commit each group of feature sets.
struct Attempt<'a> {
    pipeline: &'a Pipeline,
    options: &'a RunOptions,
    tables: &'a OpenTables,
    run_id: &'a str,
    started: Instant,
    kafka_sources: &'a [kafka::KafkaSource],
    ends: &'a BTreeMap<String, kafka::Watermarks>,
}

impl Attempt<'_> {
    async fn run(&self, summary: &mut RunSummary) -> Result<()> {
        let pipeline = self.pipeline;
        let has_incremental = pipeline.sources().any(|(_, d)| d.options.incremental);
        let listed = if has_incremental {
            let ctx = session(self.options)?;
            engine::list_incremental_files(&ctx, pipeline)
                .await
                .map_err(KilnError::Problems)?
        } else {
            BTreeSet::new()
        };
        let mut standings = Vec::new();
        let mut read_at = BTreeMap::new();
        for (name, location) in targets(pipeline) {
            let table = self.tables.latest(&location).await?;
            let ledger = ledger::read(table.as_ref(), &pipeline.name)
                .await
                .map_err(|e| e.context(format!("reading what feature set '{name}' consumed")))?;
            let partitions = self.ends.values().flat_map(|m| m.keys().map(ledger::kafka_key));
            let files = listed.iter().map(|f| ledger::file_key(f));
            ledger::refuse_other_pipelines(&ledger, &name, &pipeline.name, partitions.chain(files))?;
            let mut kafka = BTreeMap::new();
            for source in self.kafka_sources {
                kafka.extend(
                    kafka::starts(&name, source, &ledger.kafka, &self.ends[&source.decl.name]).await?,
                );
            }
            standings.push(Standing {
                name: name.clone(),
                kafka,
                new_files: listed.difference(&ledger.files).cloned().collect(),
            });
            read_at.insert(name, ReadAt::at(ledger.version));
        }
        let has_kafka = !self.kafka_sources.is_empty();
        let end_of = |tp: &TopicPartition| {
            self.ends
                .values()
                .find_map(|m| m.get(tp))
                .map_or(i64::MIN, |&(_, high)| high)
        };
        let work = |g: &Group| {
            let kafka_work = g.first_positions || g.kafka.iter().any(|(tp, &from)| from < end_of(tp));
            let file_work = !g.new_files.is_empty();
            (!has_kafka && !has_incremental) || (has_kafka && kafka_work) || (has_incremental && file_work)
        };
        let (busy, idle): (Vec<Group>, Vec<Group>) = plan::group(&standings).into_iter().partition(work);
        let why = if has_kafka {
            "no new records since the last run"
        } else {
            "no new input files since the last run"
        };
        for g in &idle {
            for name in &g.targets {
                summary.record(skipped_set(pipeline, name, why));
            }
        }
        if busy.is_empty() {
            // Nothing to read, but a broken pipeline still says so.
            let ctx = session(self.options)?;
            for source in self.kafka_sources {
                source
                    .register(&ctx, Vec::new())
                    .map_err(|e| KilnError::Run(format!("registering source '{}': {e}", source.decl.name)))?;
            }
            engine::plan_pipeline(&ctx, pipeline, self.tables, Some(&BTreeSet::new()))
                .await
                .map_err(KilnError::Problems)?;
            return Ok(());
        }
        let from = plan::read_from(&busy);
        let ends = match self.options.max_records {
            Some(cap) => capped(self.ends, &from, cap),
            None => self.ends.clone(),
        };
        let reads = kafka::read_all(self.kafka_sources, &from, &ends).await?;
        if has_kafka {
            summary.kafka = Some(KafkaSummary::of(&reads));
        }
        for g in busy {
            if g.targets.len() < standings.len() {
                tracing::info!(feature_sets = ?g.targets, "feature sets that stand apart from the others run on their own");
            }
            let pass = Pass {
                reads: kafka::slice_from(&reads, &g.kafka),
                files: has_incremental.then(|| g.new_files.clone()),
                read_at: g
                    .targets
                    .iter()
                    .map(|t| (t.clone(), read_at[t].clone()))
                    .collect(),
                lost: g.lost.clone(),
                first_positions: g.first_positions,
                has_kafka,
            };
            let done = run_group(
                &pipeline.only_inserts_into(&g.targets),
                self.options,
                self.tables,
                self.run_id,
                self.started,
                pass,
            )
            .await?;
            summary.input_files += done.input_files;
            for outcome in done.feature_sets {
                summary.record(outcome);
            }
        }
        kafka::report_to_groups(&reads).await;
        Ok(())
    }
}

/// `ends` moved in so that reading from `from` takes at most `cap` records,
/// shared out evenly over the partitions that have any to read.
fn capped(
    ends: &BTreeMap<String, kafka::Watermarks>,
    from: &ledger::Positions,
    cap: u64,
) -> BTreeMap<String, kafka::Watermarks> {
    let start = |tp: &TopicPartition, low: i64| from.get(tp).copied().unwrap_or(low);
    let behind = ends
        .values()
        .flatten()
        .filter(|(tp, (low, high))| start(tp, *low) < *high)
        .count()
        .max(1) as u64;
    let share = (cap / behind).max(1) as i64;
    ends.iter()
        .map(|(source, marks)| {
            let marks = marks
                .iter()
                .map(|(tp, &(low, high))| (tp.clone(), (low, high.min(start(tp, low).saturating_add(share)))))
                .collect();
            (source.clone(), marks)
        })
        .collect()
}

/// The feature sets the INSERTs of `pipeline` write: (name, location), once each.
fn targets(pipeline: &Pipeline) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, insert) in pipeline.inserts() {
        let decl = pipeline
            .feature_set(&insert.target)
            .expect("inserts target declared feature sets (checked when parsed)");
        if !out.iter().any(|(n, _)| n == &decl.name) {
            out.push((decl.name.clone(), decl.location.clone()));
        }
    }
    out
}

/// The version at which a feature set's positions were read: one for the
/// whole ledger (a run), or per partition (a stream worker, whose
/// partitions arrive at different times).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadAt {
    pub version: Option<u64>,
    pub kafka: BTreeMap<TopicPartition, Option<u64>>,
}

impl ReadAt {
    fn at(version: Option<u64>) -> Self {
        Self {
            version,
            kafka: BTreeMap::new(),
        }
    }

    fn of(&self, tp: &TopicPartition) -> Option<u64> {
        self.kafka.get(tp).copied().unwrap_or(self.version)
    }
}

/// What one group of feature sets reads in a pass.
pub(crate) struct Pass {
    /// Kafka records, already sliced to where the group stands.
    pub reads: Vec<kafka::SourceReads>,
    /// For incremental file sources: the files to read.
    pub files: Option<BTreeSet<String>>,
    /// Per feature set of the group.
    pub read_at: BTreeMap<String, ReadAt>,
    pub lost: BTreeMap<TopicPartition, (i64, i64)>,
    /// Commit even with nothing read, to keep a first position.
    pub first_positions: bool,
    pub has_kafka: bool,
}

impl KafkaSummary {
    fn of(reads: &[kafka::SourceReads]) -> Self {
        KafkaSummary {
            records: reads.iter().map(|r| r.records()).sum(),
            bad_records: reads.iter().map(|r| r.bad_records()).sum(),
            ranges: reads.iter().flat_map(|r| r.lineage()).collect(),
        }
    }
}

/// Run one group's pass in a session of its own. A pass whose queries fail
/// on Kafka records is run again without the records that fail them by
/// themselves, which go to the dead letters (see [`poison`]).
async fn run_group(
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    run_id: &str,
    started: Instant,
    mut pass: Pass,
) -> Result<RunSummary> {
    let mut searched = false;
    loop {
        let ctx = session(options)?;
        kafka::register(&ctx, &pass.reads)?;
        match run_pass(&ctx, pipeline, options, tables, run_id, started, &pass).await {
            // A bad value, not a store failing under the query.
            Err(e @ KilnError::Execution { .. })
                if pass.has_kafka && !searched && e.fault() == Fault::User =>
            {
                searched = true;
                tracing::warn!(error = %e, "the pass failed while executing; looking for the records that fail it");
                match poison::set_aside(pipeline, options, tables, &pass).await? {
                    Some(clean) => pass = clean,
                    None => return Err(e),
                }
            }
            done => return done,
        }
    }
}

/// Plan, execute every INSERT, then commit: one pass of a run.
async fn run_pass(
    ctx: &datafusion::prelude::SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    run_id: &str,
    started: Instant,
    pass: &Pass,
) -> Result<RunSummary> {
    let planned = engine::plan_pipeline(ctx, pipeline, tables, pass.files.as_ref())
        .await
        .map_err(KilnError::Problems)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "planned");
    let kafka_summary = pass.has_kafka.then(|| KafkaSummary::of(&pass.reads));
    let incremental: BTreeSet<String> = planned
        .sources
        .iter()
        .filter(|s| s.incremental)
        .map(|s| s.table.name().to_string())
        .collect();

    let progress = Progress::new(options.progress);
    let mut staged = Vec::new();
    let mut input_files = 0;
    for (insert, (stmt, _)) in planned.inserts.iter().zip(pipeline.inserts()) {
        progress.start(&insert.feature_set.name);
        let (batches, stats, rows) = execute(insert, &progress)
            .await
            .map_err(|e| with_place(pipeline.problem(stmt, "while running this INSERT").to_string(), e))?;
        let inputs = files_read(&planned);
        input_files += inputs.len();
        let lineage = Lineage {
            pipeline: pipeline.name.clone(),
            sql_sha256: pipeline.sql_sha256.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: run_id.to_string(),
            trigger: options.trigger.clone(),
            mode: insert.feature_set.options.mode.as_str().to_string(),
            kafka: pass.reads.iter().flat_map(|r| r.lineage()).collect(),
            lost: pass
                .lost
                .iter()
                .map(|(tp, &(from, to))| LostRange {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    from,
                    to,
                })
                .collect(),
            inputs,
            rows_written: rows,
            columns: stats,
        };
        let read_at = pass
            .read_at
            .get(&insert.feature_set.name)
            .cloned()
            .unwrap_or_default();
        let ledger_files: Vec<(&str, i64)> = lineage
            .inputs
            .iter()
            .filter(|f| incremental.contains(&f.source))
            .map(|f| (f.path.as_str(), modified_ms(&f.last_modified)))
            .collect();
        let mut transactions = kafka::transactions(&pipeline.name, &pass.reads);
        transactions.extend(ledger::file_transactions(
            &pipeline.name,
            ledger_files.iter().copied(),
        ));
        let mut inputs: Vec<ReadInput> = pass
            .reads
            .iter()
            .flat_map(|r| r.reads.iter())
            .map(|r| ReadInput {
                app_id: ledger::kafka_app_id(&pipeline.name, &r.range.tp()),
                read_at: read_at.of(&r.range.tp()),
            })
            .collect();
        inputs.extend(ledger_files.iter().map(|(url, _)| ReadInput {
            app_id: ledger::file_app_id(&pipeline.name, url),
            read_at: read_at.version,
        }));
        staged.push((
            insert,
            StagedWrite {
                name: insert.feature_set.name.clone(),
                location: insert.feature_set.location.clone(),
                mode: insert.feature_set.options.mode,
                schema: insert.target_schema.clone(),
                batches,
                add_columns: insert.add_columns,
                lineage,
                transactions,
                inputs,
            },
        ));
    }
    progress.finish();
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "executed");
    if pass.has_kafka {
        kafka::check_bad_record_limits(&pass.reads)?;
        kafka::send_to_dead_letter_topics(&pipeline.name, run_id, &pass.reads).await?;
    }

    let mut outcomes = Vec::new();
    // Feature sets this pass already committed to (two INSERTs into one):
    // the next commit reads its inputs at that version.
    let mut committed: BTreeMap<String, u64> = BTreeMap::new();
    for (insert, mut write) in staged {
        // What was consumed must be recorded even when it made no rows.
        if write.rows() == 0
            && write.mode == SinkMode::Append
            && write.transactions.is_empty()
            && !pass.first_positions
        {
            outcomes.push(skipped(insert, "the query returned no rows"));
            continue;
        }
        if let Some(&v) = committed.get(&write.location) {
            for input in &mut write.inputs {
                input.read_at = Some(v);
            }
        }
        if !committed.is_empty() {
            fail::fail_point!("run-between-feature-sets", |_| Err(failpoint(
                "run-between-feature-sets"
            )));
        }
        let dead_letters = if pass.has_kafka {
            fail::fail_point!("run-before-dead-letters", |_| Err(failpoint(
                "run-before-dead-letters"
            )));
            let written = commit_dead_letters(pipeline, tables, run_id, &write, &pass.reads).await?;
            fail::fail_point!("run-after-dead-letters", |_| Err(failpoint(
                "run-after-dead-letters"
            )));
            written
        } else {
            0
        };
        let rows = write.rows();
        let location = write.location.clone();
        let version = featureset::commit(write, tables).await?;
        committed.insert(location, version);
        outcomes.push(SinkOutcome {
            feature_set: insert.feature_set.name.clone(),
            location: insert.feature_set.location.clone(),
            version: Some(version),
            rows,
            mode: insert.feature_set.options.mode,
            skipped: None,
            dead_letters,
        });
    }
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "committed");
    Ok(RunSummary {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        run_id: run_id.to_string(),
        elapsed_ms: started.elapsed().as_millis(),
        input_files,
        kafka: kafka_summary,
        feature_sets: outcomes,
    })
}

/// The error a failpoint set to `return` raises (test builds only, with
/// the `failpoints` feature and `FAILPOINTS=name=return`): an internal
/// fault, never retried, so the run stops there as a crash would.
#[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
fn failpoint(name: &str) -> KilnError {
    KilnError::Run(format!("failpoint {name}"))
}

fn modified_ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).map_or(0, |t| t.timestamp_millis())
}

/// Write the pass's bad records beside the feature set `write` goes to,
/// before the feature set itself commits: a run stopped in between finds
/// them recorded and does not write them twice. Returns how many it wrote.
async fn commit_dead_letters(
    pipeline: &Pipeline,
    tables: &OpenTables,
    run_id: &str,
    write: &StagedWrite,
    reads: &[kafka::SourceReads],
) -> Result<u64> {
    let for_table = |r: &&kafka::SourceReads| r.to_topic().is_none() && r.bad_records() > 0;
    if !reads.iter().any(|r| for_table(&r)) {
        return Ok(0);
    }
    let existing = kafka::dead_letter_ledger(tables, &pipeline.name, &write.location).await?;
    let letters: Vec<_> = reads
        .iter()
        .filter(for_table)
        .flat_map(|r| r.dead_letters(&existing.kafka))
        .collect();
    if letters.is_empty() {
        return Ok(0);
    }
    let location = featureset::dead_letter_location(&write.location);
    let count = letters.len() as u64;
    for letter in letters.iter().take(5) {
        tracing::warn!(
            feature_set = %write.name, topic = %letter.topic, partition = letter.partition,
            offset = letter.offset, error = %letter.error, "record sent to the dead letters"
        );
    }
    // Positions never move back: an owner that lost a partition mid-batch
    // may still hold an older range of it.
    let ranges: Vec<PartitionRange> = reads
        .iter()
        .flat_map(|r| r.ranges())
        .map(|mut range| {
            if let Some(&at) = existing.kafka.get(&range.tp()) {
                range.to = range.to.max(at);
            }
            range
        })
        .collect();
    let inputs = ranges
        .iter()
        .map(|r| ReadInput {
            app_id: ledger::kafka_app_id(&pipeline.name, &r.tp()),
            read_at: existing.version,
        })
        .collect();
    let dead = StagedWrite {
        name: format!("{}/_dead_letters", write.name),
        location,
        mode: SinkMode::Append,
        schema: featureset::dead_letter_schema(),
        batches: vec![featureset::dead_letter_batch(&letters, &pipeline.name, run_id)],
        add_columns: false,
        lineage: Lineage {
            rows_written: count,
            columns: Vec::new(),
            ..write.lineage.clone()
        },
        transactions: ledger::kafka_transactions(&pipeline.name, &ranges),
        inputs,
    };
    featureset::commit(dead, tables).await?;
    Ok(count)
}

fn skipped(insert: &PlannedInsert, why: &str) -> SinkOutcome {
    SinkOutcome {
        feature_set: insert.feature_set.name.clone(),
        location: insert.feature_set.location.clone(),
        version: None,
        rows: 0,
        mode: insert.feature_set.options.mode,
        skipped: Some(why.to_string()),
        dead_letters: 0,
    }
}

fn skipped_set(pipeline: &Pipeline, name: &str, why: &str) -> SinkOutcome {
    let decl = pipeline
        .feature_set(name)
        .expect("targets are declared feature sets");
    SinkOutcome {
        feature_set: decl.name.clone(),
        location: decl.location.clone(),
        version: None,
        rows: 0,
        mode: decl.options.mode,
        skipped: Some(why.to_string()),
        dead_letters: 0,
    }
}

fn files_read(planned: &PlannedPipeline) -> Vec<InputFile> {
    planned
        .sources
        .iter()
        .flat_map(|s| s.table.take_files_read())
        .collect()
}

fn with_place(place: String, e: KilnError) -> KilnError {
    KilnError::Execution {
        place,
        source: Box::new(e),
    }
}

/// Run one INSERT's query to completion, keeping its rows in storable form.
async fn execute(
    insert: &PlannedInsert,
    progress: &Progress,
) -> Result<(
    Vec<arrow::record_batch::RecordBatch>,
    Vec<featureset::ColumnStats>,
    u64,
)> {
    let mut stream = insert
        .df
        .clone()
        .execute_stream()
        .await
        .context(|| format!("planning the query for '{}'", insert.feature_set.name))?;
    let mut stats = StatsCollector::new(&insert.target_schema);
    let mut batches = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.context(|| format!("computing '{}'", insert.feature_set.name))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let stored = featureset::to_storable(&batch, &insert.target_schema)?;
        stats.update(&stored);
        rows += stored.num_rows() as u64;
        progress.add(stored.num_rows() as u64);
        batches.push(stored);
    }
    Ok((batches, stats.finish(), rows))
}
