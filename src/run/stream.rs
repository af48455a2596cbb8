//! `kiln stream`: micro-batches from Kafka for ever.
//!
//! Workers running the same pipeline form one consumer group. Each batch is
//! closed by whichever comes first of `--batch-rows`, `--batch-bytes` and
//! `--batch-interval`, and becomes one Delta commit per feature set carrying
//! the offsets it consumed. Positions always come from the feature sets:
//! when a partition arrives (start, rebalance) and after any failed batch,
//! the member reads them (noting the version each was read at) and seeks
//! there. A commit is checked against every commit since each of its
//! partitions' positions was read ([`crate::ledger::conflict`]); one that
//! another worker beat is dropped and its partitions are read again from the
//! table's positions. So a record reaches each feature set once, whatever is
//! killed when and however partitions move.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Offset;
use serde::Serialize;
use tracing::Instrument;

use super::kafka::{self, SourceReads};
use super::pass::{Pass, ReadAt, run_group};
use super::retry::Retries;
use super::{RunOptions, RunSummary, session};
use crate::error::{Fault, KilnError, Result};
use crate::featureset::OpenTables;
use crate::ledger::{self, Positions, plan};
use crate::ops::{health, metrics};
use crate::pipeline::{Pipeline, StartAt};
use crate::source::kafka::buffer::{self, BufferLimits, TakenBatch, TakenPartition};
use crate::source::kafka::group::{Member, PositionLookup};
use crate::source::kafka::{KafkaSource, PartitionRange, PartitionRead, TopicPartition, read};

/// How batches close and how the worker stops.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub batch_rows: usize,
    pub batch_bytes: usize,
    pub batch_interval: Duration,
    pub shutdown_timeout: Duration,
    pub run: RunOptions,
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamSummary {
    pub pipeline: String,
    pub batches: u64,
    pub records: u64,
    pub bad_records: u64,
    /// Batches dropped and read again (a partition moved mid-batch, or a
    /// failure that was retried).
    pub retried_batches: u64,
    /// Whether the batch in flight at shutdown was abandoned.
    pub abandoned_at_shutdown: bool,
}

/// The batch loop's name in `/healthz`, and how long it may go without
/// turning: a batch that has not committed in this long is stuck.
const STREAM_LOOP: &str = "the stream batch loop";
const STREAM_ALLOWANCE: Duration = Duration::from_secs(15 * 60);
/// How long a worker may hold no partitions before it checks the lag.
const IDLE_WARNING: Duration = Duration::from_secs(30);
/// How often it says so again.
const IDLE_REPEAT: Duration = Duration::from_secs(60);
/// How often the loop looks at the buffer.
const TICK: Duration = Duration::from_millis(20);
/// Failures in a row (broker, store) before the worker gives up.
const MAX_RETRIES: usize = 10;
/// Lost races in a row before the worker gives up: partitions keep moving
/// under it, or another writer uses this pipeline's name.
const MAX_CONFLICTS: usize = 30;

/// Where each feature set stands, as last read or written by this worker.
#[derive(Debug, Default)]
struct Standing {
    targets: BTreeMap<String, TargetStanding>,
}

/// One feature set's positions in the partitions this worker holds, each
/// with the version it was read at (when the partition arrived) or written
/// at (this worker's own commit): a batch is checked against every commit
/// since, per partition.
#[derive(Debug, Default, Clone)]
struct TargetStanding {
    positions: Positions,
    read_at: ReadAt,
    /// Ranges retention deleted before they were read (`on_data_loss`
    /// skip), for the lineage of the next commit.
    lost: BTreeMap<TopicPartition, (i64, i64)>,
}

/// Run `pipeline` as a stream worker until SIGTERM or SIGINT. `on_batch`
/// is told about every committed batch.
pub async fn stream_pipeline(
    pipeline: &Pipeline,
    options: &StreamOptions,
    on_batch: &(dyn Fn(&RunSummary) + Sync),
) -> Result<StreamSummary> {
    let _running = metrics::Running::start(&pipeline.name);
    let ctx = session(&options.run)?;
    let mut sources = kafka::prepare(&ctx, pipeline)
        .await
        .map_err(KilnError::Problems)?;
    if sources.len() != 1 {
        return Err(KilnError::Usage(format!(
            "kiln stream reads one Kafka source (several topics may share it: kafka://a,b); '{}' has {}",
            pipeline.file,
            sources.len()
        )));
    }
    if let Some((_, s)) = pipeline.sources().find(|(_, s)| s.options.incremental) {
        return Err(KilnError::Usage(format!(
            "source '{}' is incremental: in kiln stream, file sources are read whole for every batch; \
             remove 'incremental' or run the pipeline with kiln run",
            s.name
        )));
    }
    let source = sources.remove(0);
    let targets: Vec<(String, String)> = pipeline
        .inserts()
        .filter_map(|(_, i)| pipeline.feature_set(&i.target))
        .map(|d| (d.name.clone(), d.location.clone()))
        .fold(Vec::new(), |mut acc, t| {
            if !acc.contains(&t) {
                acc.push(t);
            }
            acc
        });
    let standing = Arc::new(Mutex::new(Standing::default()));
    let tables = OpenTables::default();

    let lookup: Box<PositionLookup> = {
        let handle = tokio::runtime::Handle::current();
        let (name, targets, standing) = (pipeline.name.clone(), targets.clone(), Arc::clone(&standing));
        let (tables, source) = (tables.clone(), source.clone());
        Box::new(move |partitions: &[TopicPartition]| {
            handle.block_on(read_standing(
                &tables, &name, &source, &targets, partitions, &standing,
            ))
        })
    };
    let start = match source.decl.options.start {
        StartAt::Earliest => Offset::Beginning,
        StartAt::Latest => Offset::End,
    };
    let limits = BufferLimits {
        rows: options.batch_rows.saturating_mul(2),
        bytes: options.batch_bytes.saturating_mul(2),
    };
    let member = Member::start(
        &source.client,
        &source.decl.topics,
        start,
        source.decoder.clone(),
        lookup,
        limits,
    )?;
    let mut worker = Worker {
        pipeline,
        options,
        source,
        targets,
        standing,
        tables,
        member,
        summary: StreamSummary {
            pipeline: pipeline.name.clone(),
            ..Default::default()
        },
        failures: Retries::new(Duration::from_millis(500), Duration::from_secs(30), MAX_RETRIES),
        conflicts: Retries::new(Duration::from_millis(50), Duration::from_secs(5), MAX_CONFLICTS),
        idle: None,
    };
    let result = worker
        .run(on_batch)
        .instrument(tracing::info_span!("stream", pipeline = %pipeline.name))
        .await;
    health::stopped(STREAM_LOOP);
    let Worker { member, summary, .. } = worker;
    // Leaving the group hands the partitions over at once.
    tokio::task::spawn_blocking(move || member.close())
        .await
        .map_err(|e| KilnError::Io(format!("closing the Kafka consumer: {e}")))?;
    result.map(|()| summary)
}

struct Worker<'a> {
    pipeline: &'a Pipeline,
    options: &'a StreamOptions,
    source: KafkaSource,
    targets: Vec<(String, String)>,
    standing: Arc<Mutex<Standing>>,
    /// The feature sets, kept open from batch to batch.
    tables: OpenTables,
    member: Member,
    summary: StreamSummary,
    /// Broker and store failures in a row.
    failures: Retries,
    /// Batches in a row refused because another worker committed first.
    conflicts: Retries,
    /// Since when the worker has held no partition, and when it last said so.
    idle: Option<(std::time::Instant, Option<std::time::Instant>)>,
}

impl Worker<'_> {
    async fn run(&mut self, on_batch: &(dyn Fn(&RunSummary) + Sync)) -> Result<()> {
        let mut shutdown = std::pin::pin!(crate::ops::signals::stop_requested());
        let mut stopping = false;
        loop {
            health::beat(STREAM_LOOP, STREAM_ALLOWANCE);
            if !stopping {
                tokio::select! {
                    _ = &mut shutdown => {
                        tracing::info!("stopping: no more fetching; finishing the batch in flight");
                        stopping = true;
                    }
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            self.member.check_threads()?;
            self.watch_idle().await;
            let (rows, bytes, age) = self.member.buffered();
            let due = rows >= self.options.batch_rows
                || bytes >= self.options.batch_bytes
                || age.is_some_and(|a| a >= self.options.batch_interval);
            if rows == 0 || !(due || stopping) {
                if stopping {
                    return Ok(());
                }
                continue;
            }
            let epoch = self.member.revocations();
            let batch = self
                .member
                .take_batch(self.options.batch_rows, self.options.batch_bytes);
            let timeout = self.options.shutdown_timeout;
            // None: the batch was abandoned at shutdown.
            let outcome = if stopping {
                tokio::time::timeout(timeout, self.process(batch, epoch))
                    .await
                    .ok()
            } else {
                let mut work = std::pin::pin!(self.process(batch, epoch));
                tokio::select! {
                    outcome = &mut work => Some(outcome),
                    _ = &mut shutdown => {
                        stopping = true;
                        tokio::time::timeout(timeout, work).await.ok()
                    }
                }
            };
            let Some(outcome) = outcome else {
                tracing::warn!("the batch in flight did not commit within --shutdown-timeout; abandoned");
                self.summary.abandoned_at_shutdown = true;
                return Ok(());
            };
            match outcome {
                Ok(summaries) => {
                    self.failures.reset();
                    self.conflicts.reset();
                    for s in &summaries {
                        on_batch(s);
                        if let Some(events) = &self.options.run.events {
                            super::announce(events, s).await;
                        }
                    }
                }
                Err(e) => {
                    let moved = self.member.revocations() != epoch;
                    let (retries, why) = if e.fault() == Fault::Conflict || moved {
                        (
                            &mut self.conflicts,
                            "partitions moved to another worker during the batch; reading them again",
                        )
                    } else if e.is_retriable() {
                        (&mut self.failures, "batch failed; retrying")
                    } else {
                        return Err(e);
                    };
                    let Some(wait) = retries.next_wait() else {
                        return Err(e);
                    };
                    tracing::warn!(error = %e, attempt = retries.attempts(), wait_ms = wait.as_millis() as u64, "{why}");
                    tokio::time::sleep(wait).await;
                    self.summary.retried_batches += 1;
                    self.rewind().await?;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Say so, loudly and again every minute, when this worker has held no
    /// partition for a while although its feature sets lag behind the
    /// topic: the group is not handing out partitions (a stuck coordinator,
    /// more workers than partitions while another is stuck), and nothing
    /// else would show it.
    async fn watch_idle(&mut self) {
        if !self.member.assigned().is_empty() {
            self.idle = None;
            return;
        }
        let now = std::time::Instant::now();
        let (since, said) = self.idle.get_or_insert((now, None));
        if now.duration_since(*since) < IDLE_WARNING
            || said.is_some_and(|t| now.duration_since(t) < IDLE_REPEAT)
        {
            return;
        }
        let idle_for = now.duration_since(*since);
        *said = Some(now);
        match self.lag().await {
            Ok(0) => tracing::info!(
                idle_s = idle_for.as_secs(),
                "holding no partitions; the feature sets are level with the topic"
            ),
            Ok(lag) => tracing::error!(
                idle_s = idle_for.as_secs(),
                lag,
                "this worker has held no partitions for {}s while its feature sets are {lag} records behind the topic: \
                 the consumer group is not assigning them (check the other workers and the group coordinator)",
                idle_for.as_secs()
            ),
            Err(e) => tracing::warn!(error = %e, "holding no partitions; could not read the group's lag"),
        }
    }

    /// Records on the topic that the furthest-behind feature set has not consumed.
    async fn lag(&self) -> Result<i64> {
        let marks = read::watermarks(&self.source.client, &self.source.decl.topics).await?;
        let mut worst = 0;
        for (_, location) in &self.targets {
            let table = self.tables.latest(location).await?;
            let ledger = ledger::read(table.as_ref(), &self.pipeline.name).await?;
            let lag: i64 = marks
                .iter()
                .map(|(tp, &(low, high))| {
                    (high - ledger.kafka.get(tp).copied().unwrap_or(low).max(low)).max(0)
                })
                .sum();
            worst = worst.max(lag);
        }
        Ok(worst)
    }

    /// Drop what is buffered and read every held partition again from the
    /// positions in the feature sets.
    async fn rewind(&self) -> Result<()> {
        let partitions = self.member.assigned();
        let positions = read_standing(
            &self.tables,
            &self.pipeline.name,
            &self.source,
            &self.targets,
            &partitions,
            &self.standing,
        )
        .await?;
        self.member.rewind(&positions)
    }

    /// Decode, run and commit one batch; per group of feature sets standing
    /// at the same positions, one pass.
    async fn process(&mut self, batch: TakenBatch, epoch: u64) -> Result<Vec<RunSummary>> {
        let started = std::time::Instant::now();
        let reads = self.decode(batch)?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "decoded the rest of the batch"
        );
        let groups = self.groups(&reads);
        let mut summaries = Vec::new();
        for (targets, at, pass_read_at, lost) in groups {
            let reads: Vec<PartitionRead> = reads
                .iter()
                .map(|r| r.slice_from(at.get(&r.range.tp()).copied().unwrap_or(r.range.from)))
                .filter(|r| !r.range.is_empty())
                .collect();
            if reads.is_empty() {
                continue;
            }
            let ranges: Vec<PartitionRange> = reads.iter().map(|r| r.range.clone()).collect();
            let pass = Pass {
                reads: vec![SourceReads {
                    source: self.source.clone(),
                    reads,
                    streamed: false,
                }],
                files: None,
                read_at: pass_read_at,
                lost,
                first_positions: false,
                has_kafka: true,
            };
            let pass_pipeline = self.pipeline.only_inserts_into(&targets);
            if self.member.revocations() != epoch {
                // A test holds here the commit of an owner whose partitions
                // were revoked mid-batch, so that it lands late.
                fail::fail_point!("stream-revoked-before-commit");
            }
            let run_id = uuid::Uuid::new_v4().to_string();
            let span = super::run_span(&self.pipeline.name, &run_id, &self.options.run);
            let (summary, _) = run_group(
                &pass_pipeline,
                &self.options.run,
                &self.tables,
                &run_id,
                started,
                pass,
            )
            .instrument(span)
            .await?;
            self.committed(&summary, &ranges);
            summaries.push(summary);
        }
        Ok(summaries)
    }

    /// The batch's rows per partition. The decode thread decoded most of
    /// them as they arrived; what it had not yet is decoded here, the
    /// partitions spread over the cores.
    fn decode(&self, batch: TakenBatch) -> Result<Vec<PartitionRead>> {
        let decoder = &self.source.decoder;
        let finish = |mut part: TakenPartition| -> PartitionRead {
            let to = part.to();
            if !part.pending.is_empty() {
                part.decoded
                    .push(buffer::decode_chunk(decoder, &part.tp, &part.pending));
            }
            let mut read = PartitionRead {
                range: PartitionRange {
                    topic: part.tp.topic,
                    partition: part.tp.partition,
                    from: part.from,
                    to,
                },
                batches: Vec::new(),
                bad: Vec::new(),
                records: 0,
            };
            for chunk in part.decoded {
                read.batches.extend(chunk.batches);
                read.bad.extend(chunk.bad);
                read.records += chunk.records as u64;
            }
            read
        };
        if batch.iter().filter(|p| !p.pending.is_empty()).count() <= 1 {
            return Ok(batch.into_iter().map(finish).collect());
        }
        let threads = self.options.run.resources.target_partitions.max(1);
        let mut shares: Vec<TakenBatch> = (0..threads).map(|_| Vec::new()).collect();
        for (i, partition) in batch.into_iter().enumerate() {
            shares[i % threads].push(partition);
        }
        // Blocks this task for the decode: the worker has nothing else to do
        // meanwhile.
        std::thread::scope(|scope| {
            let running: Vec<_> = shares
                .into_iter()
                .filter(|share| !share.is_empty())
                .map(|share| scope.spawn(move || share.into_iter().map(finish).collect::<Vec<_>>()))
                .collect();
            let mut reads = Vec::new();
            for t in running {
                // A decoder bug fails the batch, and the worker, with an
                // error rather than a panic.
                let decoded = t.join().map_err(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    KilnError::Kafka(format!(
                        "decoding a batch failed: a decode thread panicked: {why}"
                    ))
                })?;
                reads.extend(decoded);
            }
            Ok(reads)
        })
    }

    /// Feature sets grouped by where they stand in the batch's partitions
    /// (the same grouping as a bounded run's), with the versions their
    /// positions were read at and any ranges lost to retention.
    #[allow(clippy::type_complexity)]
    fn groups(
        &self,
        reads: &[PartitionRead],
    ) -> Vec<(
        Vec<String>,
        Positions,
        BTreeMap<String, ReadAt>,
        BTreeMap<TopicPartition, (i64, i64)>,
    )> {
        let standing = self.standing.lock().expect("standing lock");
        let held: Vec<(String, TargetStanding)> = self
            .targets
            .iter()
            .map(|(name, _)| {
                (
                    name.clone(),
                    standing.targets.get(name).cloned().unwrap_or_default(),
                )
            })
            .collect();
        drop(standing);
        let standings: Vec<plan::Standing> = held
            .iter()
            .map(|(name, t)| plan::Standing {
                name: name.clone(),
                kafka: reads
                    .iter()
                    .filter_map(|r| {
                        let tp = r.range.tp();
                        let from = *t.positions.get(&tp)?;
                        Some((
                            tp.clone(),
                            plan::Start {
                                from,
                                recorded: true,
                                lost: t.lost.get(&tp).copied(),
                            },
                        ))
                    })
                    .collect(),
                new_files: Default::default(),
            })
            .collect();
        plan::group(&standings)
            .into_iter()
            .map(|g| {
                let read_at = g
                    .targets
                    .iter()
                    .map(|name| {
                        let t = &held.iter().find(|(n, _)| n == name).expect("grouped from held").1;
                        (name.clone(), t.read_at.clone())
                    })
                    .collect();
                (g.targets, g.kafka, read_at, g.lost)
            })
            .collect()
    }

    /// Remember what a pass committed, and tell the group.
    fn committed(&mut self, summary: &RunSummary, ranges: &[PartitionRange]) {
        // Between the Delta commit and the group's offset commit.
        fail::fail_point!("stream-after-commit");
        let mut standing = self.standing.lock().expect("standing lock");
        for outcome in &summary.feature_sets {
            let entry = standing.targets.entry(outcome.feature_set.clone()).or_default();
            for r in ranges {
                let tp = r.tp();
                entry.positions.insert(tp.clone(), r.to);
                entry.lost.remove(&tp);
                if let Some(v) = outcome.version {
                    entry.read_at.kafka.insert(tp, Some(v));
                }
            }
        }
        drop(standing);
        if let Some(k) = &summary.kafka {
            self.summary.batches += 1;
            self.summary.records += k.records;
            self.summary.bad_records += k.bad_records;
        }
        self.member
            .report(&ranges.iter().map(|r| (r.tp(), r.to)).collect());
    }
}

/// Read where each feature set stands in `partitions` (and remember it,
/// with the version it was read at); per partition the lowest, where the
/// member starts fetching.
async fn read_standing(
    tables: &OpenTables,
    pipeline: &str,
    source: &KafkaSource,
    targets: &[(String, String)],
    partitions: &[TopicPartition],
    standing: &Mutex<Standing>,
) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
    let marks: kafka::Watermarks = read::watermarks(&source.client, &source.decl.topics)
        .await?
        .into_iter()
        .filter(|(tp, _)| partitions.contains(tp))
        .collect();
    let mut lowest: BTreeMap<TopicPartition, Option<i64>> = BTreeMap::new();
    for (name, location) in targets {
        let table = tables.latest(location).await?;
        let ledger = ledger::read(table.as_ref(), pipeline).await?;
        ledger::refuse_other_pipelines(&ledger, name, pipeline, marks.keys().map(ledger::kafka_key))?;
        let starts = kafka::starts(name, source, &ledger.kafka, &marks).await?;
        let mut standing = standing.lock().expect("standing lock");
        let entry = standing.targets.entry(name.clone()).or_default();
        for (tp, start) in starts {
            let low = lowest.entry(tp.clone()).or_insert(Some(start.from));
            *low = low.map(|l| l.min(start.from));
            entry.positions.insert(tp.clone(), start.from);
            entry.read_at.kafka.insert(tp.clone(), ledger.version);
            match start.lost {
                Some(lost) => entry.lost.insert(tp, lost),
                None => entry.lost.remove(&tp),
            };
        }
    }
    Ok(lowest)
}

/// The longest duration an option takes: past it, timers would overflow.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// `1s`, `500ms`, `2m`, `1h 30m` (humantime's syntax; a bare number is
/// seconds), longer than zero and at most a year.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text),
    };
    let duration =
        parsed.map_err(|e| format!("'{text}' is not a duration ({e}): write it like 1s, 500ms or 2m"))?;
    if duration.is_zero() {
        return Err(format!("'{text}' must be longer than zero"));
    }
    if duration > MAX_DURATION {
        return Err(format!("'{text}' is longer than a year"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("soon").is_err());
        // Absurd values are errors, not panics.
        assert!(
            parse_duration("99999999999999999999h")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(
            parse_duration("100000h")
                .unwrap_err()
                .contains("longer than a year")
        );
        assert!(
            parse_duration("18446744073709551615")
                .unwrap_err()
                .contains("longer than a year")
        );
    }
}
