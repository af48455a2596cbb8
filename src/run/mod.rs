//! A bounded run: plan, execute every INSERT, then commit each feature set.
//!
//! Nothing is committed until every query has run to completion, so a
//! failure anywhere in execution leaves every feature set as it was. The
//! commits themselves are one Delta commit per feature set, made in the
//! order of the INSERTs (Delta has no multi-table transaction).

mod check;
mod explain;
pub(crate) mod kafka;
mod progress;
mod stream;

use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::{self, PlannedInsert, PlannedPipeline, Resources};
use crate::error::{Context, KilnError, Result};
use crate::featureset::{self, InputFile, KafkaInput, Lineage, OpenTables, StagedWrite, StatsCollector};
use crate::pipeline::{Pipeline, SinkMode};

pub use check::{CheckReport, check_paths};
pub use explain::{InsertPlan, explain_pipeline};
use progress::Progress;
pub use stream::{StreamOptions, StreamSummary, parse_duration, stream_pipeline};

/// How a run was started and how it reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recorded in the lineage: `manual`, `demo`, `cronjob`, ...
    pub trigger: String,
    /// Show a progress indicator (only when stderr is a terminal).
    pub progress: bool,
    pub resources: Resources,
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

    /// Fold a later pass of the same run into this one.
    fn merge(&mut self, later: RunSummary) {
        self.elapsed_ms = later.elapsed_ms;
        self.input_files += later.input_files;
        self.feature_sets.extend(later.feature_sets);
        match (&mut self.kafka, later.kafka) {
            (Some(k), Some(l)) => {
                k.records += l.records;
                k.bad_records += l.bad_records;
                k.ranges.extend(l.ranges);
            }
            (k, l) => *k = k.take().or(l),
        }
    }
}

/// Run `pipeline` once.
pub async fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let ctx = session(options)?;
    let tables = OpenTables::default();
    let kafka_sources = kafka::prepare(&ctx, pipeline)
        .await
        .map_err(KilnError::Problems)?;
    if kafka_sources.is_empty() {
        return run_pass(&ctx, pipeline, options, &tables, &run_id, started, None).await;
    }
    let mut summary: Option<RunSummary> = None;
    loop {
        let mut targets = Vec::new();
        for (_, insert) in pipeline.inserts() {
            let decl = pipeline
                .feature_set(&insert.target)
                .expect("inserts target declared feature sets (checked when parsed)");
            if !targets.iter().any(|(n, _)| n == &decl.name) {
                targets.push((decl.name.clone(), tables.latest(&decl.location).await?));
            }
        }
        let scope = kafka::scope(pipeline, &kafka_sources, &targets).await?;
        let pass_pipeline = if scope.catch_up {
            tracing::info!(feature_sets = ?scope.targets, "bringing feature sets level with the others first");
            pipeline.only_inserts_into(&scope.targets)
        } else {
            pipeline.clone()
        };
        let ctx = session(options)?;
        let reads = kafka::read_and_register(&ctx, &kafka_sources, &scope).await?;
        let catch_up = scope.catch_up;
        let pass = KafkaPass { scope, reads };
        let done = run_pass(
            &ctx,
            &pass_pipeline,
            options,
            &tables,
            &run_id,
            started,
            Some(&pass),
        )
        .await?;
        kafka::report_to_groups(&pass.reads).await;
        summary = Some(match summary {
            None => done,
            Some(mut earlier) => {
                earlier.merge(done);
                earlier
            }
        });
        if !catch_up {
            return Ok(summary.expect("set above"));
        }
    }
}

fn session(options: &RunOptions) -> Result<datafusion::prelude::SessionContext> {
    engine::session(&options.resources).context(|| "creating the query session".to_string())
}

/// The Kafka records one pass of a run read.
struct KafkaPass {
    scope: kafka::Scope,
    reads: Vec<kafka::SourceReads>,
}

/// Plan, execute and commit one micro-batch of `kiln stream`.
async fn run_batch(
    ctx: &datafusion::prelude::SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    scope: kafka::Scope,
    reads: Vec<kafka::SourceReads>,
) -> Result<RunSummary> {
    let run_id = uuid::Uuid::new_v4().to_string();
    let pass = KafkaPass { scope, reads };
    run_pass(
        ctx,
        pipeline,
        options,
        tables,
        &run_id,
        Instant::now(),
        Some(&pass),
    )
    .await
}

/// Plan, execute every INSERT, then commit: one pass of a run.
async fn run_pass(
    ctx: &datafusion::prelude::SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    run_id: &str,
    started: Instant,
    kafka: Option<&KafkaPass>,
) -> Result<RunSummary> {
    let planned = engine::plan_pipeline(ctx, pipeline, tables)
        .await
        .map_err(KilnError::Problems)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "planned");

    let kafka_summary = kafka.as_ref().map(|k| KafkaSummary {
        records: k.reads.iter().map(|r| r.records()).sum(),
        bad_records: k.reads.iter().map(|r| r.bad_records()).sum(),
        ranges: k.reads.iter().flat_map(|r| r.lineage()).collect(),
    });
    let summary = |feature_sets, input_files| RunSummary {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        run_id: run_id.to_string(),
        elapsed_ms: started.elapsed().as_millis(),
        input_files,
        kafka: kafka_summary.clone(),
        feature_sets,
    };
    let files_idle = planned.nothing_new();
    let has_incremental = planned.sources.iter().any(|s| s.incremental);
    let nothing_new = match kafka {
        None => files_idle,
        Some(k) => {
            let kafka_idle = k.scope.nothing_to_read() && !k.scope.first_positions;
            kafka_idle && (!has_incremental || files_idle)
        }
    };
    if nothing_new {
        let why = if kafka.is_some() {
            "no new records since the last run"
        } else {
            "no new input files since the last run"
        };
        let outcomes = planned.inserts.iter().map(|i| skipped(i, why)).collect();
        return Ok(summary(outcomes, 0));
    }

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
            inputs,
            kafka: kafka
                .iter()
                .flat_map(|k| &k.reads)
                .flat_map(|r| r.lineage())
                .collect(),
            rows_written: rows,
            columns: stats,
        };
        staged.push((
            insert,
            StagedWrite {
                name: insert.feature_set.name.clone(),
                location: insert.feature_set.location.clone(),
                mode: insert.feature_set.options.mode,
                schema: insert.target_schema.clone(),
                batches,
                add_columns: insert.add_columns,
                exists: insert.base_version.is_some(),
                lineage,
                transactions: kafka
                    .map(|k| kafka::transactions(&pipeline.name, &k.reads))
                    .unwrap_or_default(),
                read_version: kafka
                    .and_then(|k| k.scope.read_versions.get(&insert.feature_set.name).copied()),
            },
        ));
    }
    progress.finish();
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "executed");
    if let Some(k) = kafka {
        kafka::check_bad_record_limits(&k.reads)?;
        kafka::send_to_dead_letter_topics(&pipeline.name, run_id, &k.reads).await?;
    }

    let mut outcomes = Vec::new();
    for (insert, write) in staged {
        // Consumed records must be recorded even when they made no rows.
        if write.rows() == 0 && write.mode == SinkMode::Append && kafka.is_none() {
            outcomes.push(skipped(insert, "the query returned no rows"));
            continue;
        }
        let dead_letters = match kafka {
            Some(k) => commit_dead_letters(pipeline, tables, run_id, &write, &k.reads).await?,
            None => 0,
        };
        let rows = write.rows();
        let version = featureset::commit(write, tables).await?;
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
    Ok(summary(outcomes, input_files))
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
    let existing = kafka::dead_letter_positions(tables, &pipeline.name, &write.location, reads).await?;
    let exists = existing.is_some();
    let already = existing.unwrap_or_default();
    let letters: Vec<_> = reads
        .iter()
        .filter(for_table)
        .flat_map(|r| r.dead_letters(&already))
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
    let dead = StagedWrite {
        name: format!("{}/_dead_letters", write.name),
        exists,
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
        transactions: kafka::transactions(&pipeline.name, reads),
        read_version: None,
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

fn files_read(planned: &PlannedPipeline) -> Vec<InputFile> {
    planned
        .sources
        .iter()
        .flat_map(|s| s.table.take_files_read())
        .collect()
}

fn with_place(place: String, e: KilnError) -> KilnError {
    KilnError::Run(format!("{place}: {e}"))
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
