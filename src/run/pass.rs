//! One pass: plan a group's INSERTs over what it reads, execute them, then
//! commit its dead letters and feature sets, each checked by the ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream};
use futures::StreamExt;

use super::progress::Progress;
use super::{KafkaSummary, RunOptions, RunSummary, SinkOutcome, kafka, poison, session};
use crate::engine::{self, PlannedInsert, PlannedPipeline};
use crate::error::{Context, Fault, KilnError, Result};
use crate::featureset::{
    self, FileWriter, InputFile, Lineage, LostRange, OpenTables, StagedWrite, StatsCollector, WriteBuffers,
    WrittenFiles,
};
use crate::ledger::{self, ReadInput};
use crate::ops::{health, metrics};
use crate::pipeline::{Pipeline, SinkMode};
use crate::source::kafka::{PartitionRange, TopicPartition};

/// The version at which a feature set's positions were read: one for the
/// whole ledger (a run), or per partition (a stream worker, whose
/// partitions arrive at different times).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadAt {
    pub version: Option<u64>,
    pub kafka: BTreeMap<TopicPartition, Option<u64>>,
}

impl ReadAt {
    pub(super) fn at(version: Option<u64>) -> Self {
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

/// Run one group's pass in a session of its own; returns its summary and
/// what it read. A pass whose queries fail on Kafka records is run again
/// without the records that fail them by themselves, which go to the dead
/// letters (see [`poison`]).
pub(super) async fn run_group(
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    run_id: &str,
    started: Instant,
    mut pass: Pass,
) -> Result<(RunSummary, Vec<kafka::SourceReads>)> {
    let mut searched = false;
    loop {
        let ctx = session(options)?;
        let fetches = kafka::register(&ctx, &pass.reads, options.resources.buffer_bytes / 2)?;
        match run_pass(&ctx, pipeline, options, tables, run_id, started, &pass, &fetches).await {
            // A bad value, not a store failing under the query.
            Err(e @ KilnError::Execution { .. })
                if pass.has_kafka && !searched && e.fault() == Fault::User && !e.is_data_loss() =>
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

/// Plan, execute every INSERT into its data files, then commit: one pass
/// of a run.
#[allow(clippy::too_many_arguments)]
async fn run_pass(
    ctx: &datafusion::prelude::SessionContext,
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    run_id: &str,
    started: Instant,
    pass: &Pass,
    fetches: &kafka::Fetches,
) -> Result<(RunSummary, Vec<kafka::SourceReads>)> {
    let planned = engine::plan_pipeline(ctx, pipeline, tables, pass.files.as_ref())
        .await
        .map_err(KilnError::Problems)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "planned");
    let incremental: BTreeSet<String> = planned
        .sources
        .iter()
        .filter(|s| s.incremental)
        .map(|s| s.table.name().to_string())
        .collect();

    let progress = Progress::new(options.progress);
    let names: Vec<&str> = planned
        .inserts
        .iter()
        .map(|i| i.feature_set.name.as_str())
        .collect();
    progress.start(&names.join(", "));
    // Each INSERT is planned in turn, which is when its file sources record
    // the files it reads (its lineage and ledger entries), then they all
    // run at once. Streamed Kafka ranges are the exception: every query
    // reading a range must stop where the first stopped (see
    // `RangeFetch::outcome`), so those INSERTs run one after another.
    let concurrent = !pass.reads.iter().any(|r| r.streamed);
    let share = if concurrent {
        planned.inserts.len().max(1)
    } else {
        1
    };
    let buffers = WriteBuffers::within(options.resources.buffer_bytes / 2 / share);
    // Futures do nothing until awaited: every plan is made before any runs.
    let mut jobs = Vec::new();
    let mut inputs = Vec::new();
    for (insert, (stmt, _)) in planned.inserts.iter().zip(pipeline.inserts()) {
        let place = pipeline.problem(stmt, "while running this INSERT").to_string();
        let plan = match physical_plan(insert).await {
            Ok(plan) => plan,
            Err(e) => return Err(with_place(place, e)),
        };
        inputs.push(files_read(&planned));
        let job = write_insert(insert.clone(), plan, tables.clone(), buffers, progress.clone());
        jobs.push(async move { job.await.map_err(|e| with_place(place, e)) });
    }
    let outcomes = if concurrent {
        all_at_once(jobs).await?
    } else {
        let mut outcomes = Vec::new();
        for job in jobs {
            outcomes.push(job.await?);
        }
        outcomes
    };
    let written: Vec<_> = planned
        .inserts
        .iter()
        .zip(outcomes)
        .zip(inputs)
        .map(|((insert, (files, stats)), inputs)| (insert, files, stats, inputs))
        .collect();
    progress.finish();
    // Every INSERT has run: what each streamed range held is known now.
    let reads = kafka::complete(&pass.reads, fetches).await?;
    let kafka_summary = pass.has_kafka.then(|| KafkaSummary::of(&reads));
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "executed");

    let mut staged = Vec::new();
    let mut input_files = 0;
    for (insert, files, stats, inputs) in written {
        input_files += inputs.len();
        let lineage = Lineage {
            pipeline: pipeline.name.clone(),
            sql_sha256: pipeline.sql_sha256.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: run_id.to_string(),
            trigger: options.trigger.clone(),
            trigger_id: options.trigger_id.clone(),
            mode: insert.feature_set.options.mode.as_str().to_string(),
            key: insert.feature_set.options.key.clone(),
            timestamp: insert.feature_set.options.timestamp.clone(),
            feature_sets_read: insert.feature_sets_read.clone(),
            kafka: reads.iter().flat_map(|r| r.lineage()).collect(),
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
            rows_written: files.rows,
            columns: stats,
            duration_ms: Some(started.elapsed().as_millis() as u64),
            training_set: None,
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
        let mut transactions = kafka::transactions(&pipeline.name, &reads);
        transactions.extend(ledger::file_transactions(
            &pipeline.name,
            ledger_files.iter().copied(),
        ));
        let mut inputs: Vec<ReadInput> = reads
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
        if let Some(id) = &options.trigger_id {
            transactions.push(ledger::trigger_transaction(&pipeline.name, id));
            inputs.push(ReadInput {
                app_id: ledger::trigger_app_id(&pipeline.name, id),
                read_at: read_at.version,
            });
        }
        staged.push((
            insert,
            StagedWrite {
                name: insert.feature_set.name.clone(),
                location: insert.feature_set.location.clone(),
                mode: insert.feature_set.options.mode,
                schema: insert.target_schema.clone(),
                files,
                add_columns: insert.add_columns,
                lineage,
                transactions,
                inputs,
            },
        ));
    }
    if pass.has_kafka {
        kafka::check_bad_record_limits(&reads)?;
        kafka::send_to_dead_letter_topics(&pipeline.name, run_id, &reads).await?;
    }

    let oldest_record_ms = kafka::oldest_timestamp_ms(&reads);
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
            let written = commit_dead_letters(pipeline, tables, run_id, &write, &reads).await?;
            fail::fail_point!("run-after-dead-letters", |_| Err(failpoint(
                "run-after-dead-letters"
            )));
            written
        } else {
            0
        };
        let rows = write.rows();
        let location = write.location.clone();
        let lineage = write.lineage.clone();
        let commit_started = Instant::now();
        let outcome = featureset::commit(write, tables).await;
        let oldest_record_age = oldest_record_ms.map(|ms| {
            let now = chrono::Utc::now().timestamp_millis();
            std::time::Duration::from_millis(now.saturating_sub(ms).max(0) as u64)
        });
        metrics::commit_ended(
            &pipeline.name,
            &insert.feature_set.name,
            commit_started.elapsed(),
            outcome.as_ref().ok().map(|&v| (v, rows)),
            oldest_record_age,
        );
        // A lost race is planned again at once; anything else is a failing
        // commit until one succeeds.
        health::commit_attempted(match &outcome {
            Err(e) if e.fault() != Fault::Conflict => Some(e.one_line()),
            _ => None,
        });
        let version = outcome?;
        committed.insert(location, version);
        outcomes.push(SinkOutcome {
            feature_set: insert.feature_set.name.clone(),
            location: insert.feature_set.location.clone(),
            version: Some(version),
            rows,
            mode: insert.feature_set.options.mode,
            skipped: None,
            dead_letters,
            lineage: Some(lineage),
        });
    }
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "committed");
    metrics::pass_committed(
        &pipeline.name,
        kafka_summary.as_ref().map_or(0, |k| k.records),
        &kafka::bad_records_by_kind(&reads),
        started.elapsed(),
    );
    let summary = RunSummary {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        run_id: run_id.to_string(),
        elapsed_ms: started.elapsed().as_millis(),
        input_files,
        kafka: kafka_summary,
        feature_sets: outcomes,
    };
    Ok((summary, reads))
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
        location: location.clone(),
        mode: SinkMode::Append,
        schema: featureset::dead_letter_schema(),
        files: featureset::write_batches(
            &location,
            featureset::dead_letter_schema(),
            vec![featureset::dead_letter_batch(&letters, &pipeline.name, run_id)],
            tables,
        )
        .await?,
        add_columns: false,
        lineage: Lineage {
            rows_written: count,
            columns: Vec::new(),
            // The dead letters have their own columns.
            key: Vec::new(),
            timestamp: None,
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
        lineage: None,
    }
}

pub(super) fn skipped_set(pipeline: &Pipeline, name: &str, why: &str) -> SinkOutcome {
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
        lineage: None,
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

/// Run `jobs` as tasks of their own; their outputs in order. The first to
/// fail stops the others (dropping the set aborts them).
async fn all_at_once<T: Send + 'static>(
    jobs: Vec<impl std::future::Future<Output = Result<T>> + Send + 'static>,
) -> Result<Vec<T>> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut outputs: Vec<Option<T>> = jobs.iter().map(|_| None).collect();
    for (i, job) in jobs.into_iter().enumerate() {
        tasks.spawn(async move { (i, job.await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, output) = joined.map_err(|e| KilnError::Run(format!("an INSERT's task ended: {e}")))?;
        outputs[i] = Some(output?);
    }
    Ok(outputs
        .into_iter()
        .map(|o| o.expect("every task has ended"))
        .collect())
}

/// One INSERT's query as an execution plan, with the context to run it in.
async fn physical_plan(insert: &PlannedInsert) -> Result<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)> {
    let task = Arc::new(insert.df.task_ctx());
    let plan = insert
        .df
        .clone()
        .create_physical_plan()
        .await
        .context(|| format!("planning the query for '{}'", insert.feature_set.name))?;
    Ok((plan, task))
}

/// Run one INSERT's plan into new data files of its feature set. Each of
/// the plan's output partitions is drained by a writer of its own, so
/// that encoding the Parquet files uses as many cores as the query does.
async fn write_insert(
    insert: PlannedInsert,
    (plan, task): (Arc<dyn ExecutionPlan>, Arc<TaskContext>),
    tables: OpenTables,
    buffers: WriteBuffers,
    progress: Progress,
) -> Result<(WrittenFiles, Vec<featureset::ColumnStats>)> {
    let parts = plan.output_partitioning().partition_count().max(1);
    let share = buffers.shared_by(parts);
    let first = FileWriter::open(
        &insert.feature_set.location,
        insert.target_schema.clone(),
        &tables,
        share,
    )
    .await?;
    let mut writers = vec![first];
    while writers.len() < parts {
        writers.push(writers[0].sibling(share));
    }
    let insert = Arc::new(insert);
    let mut jobs = Vec::with_capacity(parts);
    for (part, mut writer) in writers.into_iter().enumerate() {
        let stream = plan
            .execute(part, Arc::clone(&task))
            .context(|| format!("planning the query for '{}'", insert.feature_set.name))?;
        let (insert, progress) = (Arc::clone(&insert), progress.clone());
        jobs.push(async move {
            let stats = drain(&insert, stream, &progress, Some(&mut writer)).await?;
            Ok((writer, stats))
        });
    }
    let mut writers = Vec::with_capacity(parts);
    let mut stats = StatsCollector::new(&insert.target_schema);
    for (writer, part) in all_at_once(jobs).await? {
        writers.push(writer);
        stats.merge(part);
    }
    Ok((featureset::finish_parts(writers).await?, stats.finish()))
}

/// Run one INSERT's query to completion, its rows in storable form into
/// `writer` (none: only to see whether it fails); returns the statistics
/// of its columns.
pub(super) async fn execute(
    insert: &PlannedInsert,
    progress: &Progress,
    writer: Option<&mut FileWriter>,
) -> Result<Vec<featureset::ColumnStats>> {
    let (plan, task) = physical_plan(insert).await?;
    let stream = datafusion::physical_plan::execute_stream(plan, task)
        .context(|| format!("planning the query for '{}'", insert.feature_set.name))?;
    Ok(drain(insert, stream, progress, writer).await?.finish())
}

/// The rows of `stream`, in storable form, into `writer`; the statistics
/// of their columns.
async fn drain(
    insert: &PlannedInsert,
    mut stream: SendableRecordBatchStream,
    progress: &Progress,
    mut writer: Option<&mut FileWriter>,
) -> Result<StatsCollector> {
    let mut stats = StatsCollector::new(&insert.target_schema);
    while let Some(batch) = stream.next().await {
        let batch = batch.context(|| format!("computing '{}'", insert.feature_set.name))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let stored = featureset::to_storable(&batch, &insert.target_schema)?;
        stats.update(&stored);
        progress.add(stored.num_rows() as u64);
        if let Some(writer) = writer.as_deref_mut() {
            writer.write(stored).await?;
        }
    }
    Ok(stats)
}
