//! `kiln stream`: micro-batches from Kafka for ever.
//!
//! Workers running the same pipeline form one consumer group. Each batch is
//! closed by whichever comes first of `--batch-rows`, `--batch-bytes` and
//! `--batch-interval`, and becomes one Delta commit per feature set carrying
//! the offsets it consumed. Positions always come from the feature sets:
//! when a partition arrives (start, rebalance) and after any failed batch,
//! the member reads them and seeks there. A commit whose positions another
//! worker wrote first fails in Delta's conflict check; the batch is dropped
//! and the partitions are read again from the table's positions. So a
//! record reaches each feature set once, whatever is killed when.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use rdkafka::Offset;
use serde::Serialize;

use super::kafka::{self, Scope, SourceReads};
use super::{RunOptions, RunSummary, run_batch, session};
use crate::error::{KilnError, Result};
use crate::featureset::{self, OpenTables};
use crate::pipeline::{Pipeline, StartAt};
use crate::source::kafka::buffer::{self, BufferLimits, TakenBatch, TakenPartition};
use crate::source::kafka::group::{Member, PositionLookup};
use crate::source::kafka::positions::{self, Positions};
use crate::source::kafka::{KafkaSource, PartitionRange, PartitionRead, TopicPartition};

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

/// How often the loop looks at the buffer.
const TICK: Duration = Duration::from_millis(20);
/// Failures in a row (broker, store) before the worker gives up.
const MAX_RETRIES: u32 = 10;

/// Where each feature set stands, as last read or written by this worker.
#[derive(Debug, Default)]
struct Standing {
    /// Per feature set: the version its positions are known at, and them.
    targets: BTreeMap<String, (Option<u64>, Positions)>,
}

/// Run `pipeline` as a stream worker until SIGTERM or SIGINT. `on_batch`
/// is told about every committed batch.
pub async fn stream_pipeline(
    pipeline: &Pipeline,
    options: &StreamOptions,
    on_batch: &(dyn Fn(&RunSummary) + Sync),
) -> Result<StreamSummary> {
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
        let tables = tables.clone();
        Box::new(move |partitions: &[TopicPartition]| {
            handle.block_on(read_standing(&tables, &name, &targets, partitions, &standing))
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
        failures: 0,
    };
    let result = worker.run(on_batch).await;
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
    failures: u32,
}

impl Worker<'_> {
    async fn run(&mut self, on_batch: &(dyn Fn(&RunSummary) + Sync)) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown_signal());
        let mut stopping = false;
        loop {
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
                tokio::time::timeout(timeout, self.process(batch)).await.ok()
            } else {
                let mut work = std::pin::pin!(self.process(batch));
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
                    self.failures = 0;
                    for s in &summaries {
                        on_batch(s);
                    }
                }
                Err(e) => {
                    let moved = self.member.revocations() != epoch;
                    if featureset::lost_position_race(&e) || moved {
                        tracing::warn!(error = %e, "partitions moved to another worker during the batch; reading them again");
                    } else if transient(&e) && self.failures < MAX_RETRIES {
                        self.failures += 1;
                        let wait = Duration::from_millis(500 * 2u64.pow(self.failures.min(6)));
                        tracing::warn!(error = %e, attempt = self.failures, wait_ms = wait.as_millis() as u64, "batch failed; retrying");
                        tokio::time::sleep(wait).await;
                    } else {
                        return Err(e);
                    }
                    self.summary.retried_batches += 1;
                    self.rewind().await?;
                }
            }
            if stopping {
                return Ok(());
            }
        }
    }

    /// Drop what is buffered and read every held partition again from the
    /// positions in the feature sets.
    async fn rewind(&self) -> Result<()> {
        let partitions = self.member.assigned();
        let positions = read_standing(
            &self.tables,
            &self.pipeline.name,
            &self.targets,
            &partitions,
            &self.standing,
        )
        .await?;
        self.member.rewind(&positions)
    }

    /// Decode, run and commit one batch; per group of feature sets standing
    /// at the same positions, one pass.
    async fn process(&mut self, batch: TakenBatch) -> Result<Vec<RunSummary>> {
        let started = std::time::Instant::now();
        let reads = self.decode(batch);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "decoded the rest of the batch"
        );
        let groups = self.groups(&reads);
        let mut summaries = Vec::new();
        for (targets, at, read_versions) in groups {
            let reads: Vec<PartitionRead> = reads.iter().filter_map(|r| starting_at(r, &at)).collect();
            if reads.is_empty() {
                continue;
            }
            let ctx = session(&self.options.run)?;
            self.source
                .register(&ctx, reads.iter().map(|r| r.batches.clone()).collect())
                .map_err(|e| {
                    KilnError::Run(format!("registering source '{}': {e}", self.source.decl.name))
                })?;
            let ranges: Vec<PartitionRange> = reads.iter().map(|r| r.range.clone()).collect();
            let scope = Scope {
                targets: targets.clone(),
                ranges: BTreeMap::from([(self.source.decl.name.clone(), ranges.clone())]),
                catch_up: false,
                first_positions: false,
                read_versions,
            };
            let source_reads = vec![SourceReads {
                source: self.source.clone(),
                reads,
            }];
            let pass_pipeline = self.pipeline.only_inserts_into(&targets);
            let summary = run_batch(
                &ctx,
                &pass_pipeline,
                &self.options.run,
                &self.tables,
                scope,
                source_reads,
            )
            .await?;
            self.committed(&summary, &ranges);
            summaries.push(summary);
        }
        Ok(summaries)
    }

    /// The batch's rows per partition. The decode thread decoded most of
    /// them as they arrived; what it had not yet is decoded here, the
    /// partitions spread over the cores.
    fn decode(&self, batch: TakenBatch) -> Vec<PartitionRead> {
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
            return batch.into_iter().map(finish).collect();
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
            running
                .into_iter()
                .flat_map(|t| t.join().expect("a decode thread panicked"))
                .collect()
        })
    }

    /// Feature sets grouped by where they stand in the batch's partitions,
    /// with those positions and the versions they were read at.
    fn groups(&self, reads: &[PartitionRead]) -> Vec<(Vec<String>, Positions, BTreeMap<String, u64>)> {
        let standing = self.standing.lock().expect("standing lock");
        let mut groups: Vec<(Vec<String>, Positions, BTreeMap<String, u64>)> = Vec::new();
        for (name, _) in &self.targets {
            let (version, positions) = standing.targets.get(name).cloned().unwrap_or_default();
            let at: Positions = reads
                .iter()
                .filter_map(|r| {
                    let tp = tp_of(&r.range);
                    positions.get(&tp).map(|p| (tp, *p))
                })
                .collect();
            match groups.iter_mut().find(|(_, a, _)| *a == at) {
                Some((names, _, versions)) => {
                    names.push(name.clone());
                    versions.extend(version.map(|v| (name.clone(), v)));
                }
                None => groups.push((
                    vec![name.clone()],
                    at,
                    version.map(|v| (name.clone(), v)).into_iter().collect(),
                )),
            }
        }
        groups
    }

    /// Remember what a pass committed, and tell the group.
    fn committed(&mut self, summary: &RunSummary, ranges: &[PartitionRange]) {
        let mut standing = self.standing.lock().expect("standing lock");
        for outcome in &summary.feature_sets {
            let entry = standing.targets.entry(outcome.feature_set.clone()).or_default();
            if outcome.version.is_some() {
                entry.0 = outcome.version;
            }
            for r in ranges {
                entry.1.insert(tp_of(r), r.to);
            }
        }
        drop(standing);
        if let Some(k) = &summary.kafka {
            self.summary.batches += 1;
            self.summary.records += k.records;
            self.summary.bad_records += k.bad_records;
        }
        self.member
            .report(&ranges.iter().map(|r| (tp_of(r), r.to)).collect());
    }
}

fn tp_of(range: &PartitionRange) -> TopicPartition {
    TopicPartition {
        topic: range.topic.clone(),
        partition: range.partition,
    }
}

/// The part of `read` at or after the position in `at` (all of it when the
/// partition has none); None when nothing is left.
fn starting_at(read: &PartitionRead, at: &Positions) -> Option<PartitionRead> {
    let from = at.get(&tp_of(&read.range)).copied().unwrap_or(read.range.from);
    if from >= read.range.to {
        return None;
    }
    if from <= read.range.from {
        return Some(PartitionRead {
            range: read.range.clone(),
            batches: read.batches.clone(),
            bad: read.bad.clone(),
            records: read.records,
        });
    }
    let offset_column = |b: &RecordBatch| {
        b.column_by_name("_offset")
            .map(|c| c.as_primitive::<Int64Type>().clone())
    };
    let batches = read
        .batches
        .iter()
        .filter_map(|b| {
            let offsets = offset_column(b)?;
            let first = offsets.values().partition_point(|o| *o < from);
            (first < b.num_rows()).then(|| b.slice(first, b.num_rows() - first))
        })
        .collect();
    Some(PartitionRead {
        range: PartitionRange {
            from,
            ..read.range.clone()
        },
        batches,
        bad: read
            .bad
            .iter()
            .filter(|b| b.record.offset >= from)
            .cloned()
            .collect(),
        records: read.records,
    })
}

/// Read where each feature set stands in `partitions` (and remember it);
/// per partition the lowest, or None where one has never read it.
async fn read_standing(
    tables: &OpenTables,
    pipeline: &str,
    targets: &[(String, String)],
    partitions: &[TopicPartition],
    standing: &Mutex<Standing>,
) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
    let mut lowest: BTreeMap<TopicPartition, Option<i64>> = BTreeMap::new();
    for (name, location) in targets {
        let table = tables.latest(location).await?;
        let (version, recorded) = match &table {
            Some(t) => (t.version(), positions::recorded(t, pipeline, partitions).await?),
            None => (None, Positions::new()),
        };
        for tp in partitions {
            let here = recorded.get(tp).copied();
            let entry = lowest.entry(tp.clone()).or_insert(here);
            *entry = match (*entry, here) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        let mut standing = standing.lock().expect("standing lock");
        let entry = standing.targets.entry(name.clone()).or_default();
        entry.0 = version;
        for tp in partitions {
            match recorded.get(tp) {
                Some(p) => entry.1.insert(tp.clone(), *p),
                None => entry.1.remove(tp),
            };
        }
    }
    Ok(lowest)
}

/// Errors worth retrying: the broker, the object store, the Delta log.
fn transient(e: &KilnError) -> bool {
    matches!(
        e,
        KilnError::Delta { .. } | KilnError::Io(_) | KilnError::Kafka(_)
    )
}

/// `1s`, `500ms`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration: write it like 1s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit '{other}' in '{text}': use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("'{text}' must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").is_err());
    }
}
