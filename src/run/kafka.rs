//! The Kafka side of a run: where each feature set starts, reading the
//! ranges, slicing them for feature sets that stand apart, dead letters,
//! and reporting progress back to the consumer group.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KilnError, Result};
use crate::featureset::{self, DeadLetter, KafkaInput, OpenTables};
use crate::ledger::plan::{self, Start, StartError};
use crate::ledger::{self, Ledger, Positions};
use crate::pipeline::{Pipeline, Problem};
pub use crate::source::kafka::KafkaSource;
use crate::source::kafka::{FetchBuffers, PartitionRange, PartitionRead, RangeFetch, TopicPartition, read};

/// Check every Kafka source of `pipeline` (no broker is contacted).
pub async fn prepare(
    ctx: &SessionContext,
    pipeline: &Pipeline,
) -> std::result::Result<Vec<KafkaSource>, Vec<Problem>> {
    let (sources, problems) = prepare_each(ctx, pipeline).await;
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems)
    }
}

/// For planning without reading (`check`, `explain`): register every Kafka
/// source that can be prepared as an empty table; the problems of the rest.
pub async fn register_unread(ctx: &SessionContext, pipeline: &Pipeline) -> Vec<Problem> {
    let (sources, mut problems) = prepare_each(ctx, pipeline).await;
    for source in sources {
        if let Err(e) = source.register(ctx, Vec::new()) {
            problems.push(Problem::at(
                &pipeline.file,
                pipeline.statements[0].at,
                e.to_string(),
            ));
        }
    }
    problems
}

async fn prepare_each(ctx: &SessionContext, pipeline: &Pipeline) -> (Vec<KafkaSource>, Vec<Problem>) {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for (stmt, decl) in pipeline.kafka_sources() {
        match KafkaSource::prepare(ctx, pipeline, decl).await {
            Ok(source) => sources.push(source),
            Err(e) => problems.push(match e.option {
                Some(key) => pipeline.problem_at_option(stmt, &key, e.message),
                None => pipeline.problem(stmt, e.message),
            }),
        }
    }
    (sources, problems)
}

/// Every partition of every source's topics with its low and high
/// watermarks now, per source.
pub async fn watermarks(sources: &[KafkaSource]) -> Result<BTreeMap<String, Watermarks>> {
    let mut out = BTreeMap::new();
    for source in sources {
        let marks = read::watermarks(&source.client, &source.decl.topics).await?;
        out.insert(source.decl.name.clone(), marks);
    }
    Ok(out)
}

/// Low and high watermark per partition.
pub type Watermarks = BTreeMap<TopicPartition, (i64, i64)>;

/// Where `feature_set` starts in each partition of `source`, from its
/// ledger's positions: an error names the partition and the lost range
/// when retention got there first, or says the topic was created again.
pub async fn starts(
    feature_set: &str,
    source: &KafkaSource,
    recorded: &Positions,
    marks: &Watermarks,
) -> Result<BTreeMap<TopicPartition, Start>> {
    let options = &source.decl.options;
    let mut out = BTreeMap::new();
    for (tp, &m) in marks {
        let planned = plan::start_position(
            feature_set,
            tp,
            recorded.get(tp).copied(),
            m,
            options.start,
            options.on_data_loss,
        );
        let start = match planned {
            Ok(start) => start,
            Err(StartError::PastEnd { at, message }) => {
                // A broker may report a high watermark behind the records it
                // serves; the last record read still being there says so.
                let last = read::fetch_raw(&source.client, tp.clone(), vec![at - 1]).await;
                if !last.is_ok_and(|found| !found.is_empty()) {
                    return Err(KilnError::DataLoss(message));
                }
                tracing::warn!(partition = %tp, position = at, high_watermark = m.1,
                    "the broker reports a high watermark behind records it serves; going on from the recorded position");
                Start {
                    from: at,
                    recorded: true,
                    lost: None,
                }
            }
            Err(e) => return Err(KilnError::DataLoss(e.message().to_string())),
        };
        out.insert(tp.clone(), start);
    }
    Ok(out)
}

/// What a pass reads from one source: records in memory (a stream
/// worker's batch), or ranges fetched while the queries run (a bounded
/// run), whose record counts and bad records are known once they have run
/// (see [`complete`]).
#[derive(Clone)]
pub struct SourceReads {
    pub source: KafkaSource,
    pub reads: Vec<PartitionRead>,
    /// The reads are ranges to fetch, with no rows; their `bad` records are
    /// those set aside before (poison), left out of the rows.
    pub streamed: bool,
}

/// The Kafka timestamp (milliseconds) of the oldest record `reads` hold
/// in memory (a stream batch; a bounded run's ranges are fetched while its
/// queries run and hold none).
pub(crate) fn oldest_timestamp_ms(reads: &[SourceReads]) -> Option<i64> {
    reads
        .iter()
        .flat_map(|r| &r.reads)
        .flat_map(|p| &p.batches)
        .filter_map(|batch| {
            let column = batch.column_by_name("_timestamp")?;
            let stamps = column
                .as_any()
                .downcast_ref::<arrow::array::TimestampMillisecondArray>()?;
            arrow::compute::min(stamps)
        })
        .min()
}

/// How many bad records `reads` set aside, per kind.
pub(crate) fn bad_records_by_kind(reads: &[SourceReads]) -> Vec<(&'static str, u64)> {
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    for bad in reads.iter().flat_map(|r| &r.reads).flat_map(|p| &p.bad) {
        *counts.entry(bad.kind.as_str()).or_default() += 1;
    }
    counts.into_iter().collect()
}

impl SourceReads {
    pub fn records(&self) -> u64 {
        self.reads.iter().map(|r| r.records).sum()
    }

    pub fn bad_records(&self) -> u64 {
        self.reads.iter().map(|r| r.bad.len() as u64).sum()
    }

    pub fn lineage(&self) -> Vec<KafkaInput> {
        self.reads
            .iter()
            .map(|r| KafkaInput {
                source: self.source.decl.name.clone(),
                topic: r.range.topic.clone(),
                partition: r.range.partition,
                from: r.range.from,
                to: r.range.to,
                records: r.records,
                bad_records: r.bad.len() as u64,
            })
            .collect()
    }

    pub fn ranges(&self) -> Vec<PartitionRange> {
        self.reads.iter().map(|r| r.range.clone()).collect()
    }

    /// Whether this source's bad records go to a topic rather than to the
    /// feature sets' dead-letter tables.
    pub fn to_topic(&self) -> Option<&str> {
        self.source.decl.options.dead_letter_topic.as_deref()
    }

    /// The bad records at or after `positions` (those before were written
    /// to the dead letters by an earlier, interrupted run).
    pub fn dead_letters(&self, already: &Positions) -> Vec<DeadLetter> {
        self.reads
            .iter()
            .flat_map(|r| {
                let tp = TopicPartition {
                    topic: r.range.topic.clone(),
                    partition: r.range.partition,
                };
                let from = already.get(&tp).copied().unwrap_or(i64::MIN);
                r.bad
                    .iter()
                    .filter(move |b| b.record.offset >= from)
                    .map(move |b| DeadLetter {
                        source: self.source.decl.name.clone(),
                        topic: r.range.topic.clone(),
                        partition: r.range.partition,
                        offset: b.record.offset,
                        timestamp_ms: b.record.timestamp_ms,
                        key: b.record.key.clone(),
                        value: b.record.value.clone(),
                        error: b.reason.clone(),
                    })
            })
            .collect()
    }
}

/// The ranges a run reads, per source: every partition from `from` (or
/// its low watermark) to the high watermark in `ends`, fetched while the
/// queries run.
pub fn ranges_to_read(
    sources: &[KafkaSource],
    from: &Positions,
    ends: &BTreeMap<String, Watermarks>,
) -> Vec<SourceReads> {
    sources
        .iter()
        .map(|source| SourceReads {
            source: source.clone(),
            reads: ends[&source.decl.name]
                .iter()
                .map(|(tp, &(low, high))| {
                    let start = from.get(tp).copied().unwrap_or(low);
                    PartitionRead {
                        range: PartitionRange {
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            from: start,
                            to: high.max(start),
                        },
                        batches: Vec::new(),
                        bad: Vec::new(),
                        records: 0,
                    }
                })
                .collect(),
            streamed: true,
        })
        .collect()
}

/// What a feature set standing at `at` has not consumed of `reads`.
pub fn slice_from(reads: &[SourceReads], at: &Positions) -> Vec<SourceReads> {
    reads
        .iter()
        .map(|r| SourceReads {
            source: r.source.clone(),
            reads: r
                .reads
                .iter()
                .map(|p| p.slice_from(at.get(&p.range.tp()).copied().unwrap_or(p.range.from)))
                .collect(),
            streamed: r.streamed,
        })
        .collect()
}

/// The fetches behind the streamed sources of a session, per source.
pub struct Fetches(Vec<Vec<RangeFetch>>);

/// Register every source's reads in `ctx`, one partition per
/// topic-partition; the streamed ones share `buffer_bytes` for their
/// fetches in flight.
pub fn register(ctx: &SessionContext, reads: &[SourceReads], buffer_bytes: usize) -> Result<Fetches> {
    let streamed = reads
        .iter()
        .filter(|r| r.streamed)
        .map(|r| r.reads.len())
        .sum::<usize>();
    let buffers = FetchBuffers::within(buffer_bytes / streamed.max(1));
    let mut fetches = Vec::new();
    for r in reads {
        let failed = |e: datafusion::error::DataFusionError| {
            KilnError::Run(format!("registering source '{}': {e}", r.source.decl.name))
        };
        if r.streamed {
            let ranges: Vec<RangeFetch> = r
                .reads
                .iter()
                .map(|p| {
                    let skip = p.bad.iter().map(|b| b.record.offset).collect();
                    RangeFetch::new(
                        buffers.applied_to(&r.source.client),
                        r.source.decoder.clone(),
                        p.range.clone(),
                        skip,
                    )
                })
                .collect();
            r.source.register_fetches(ctx, ranges.clone()).map_err(failed)?;
            fetches.push(ranges);
        } else {
            let partitions = r.reads.iter().map(|p| p.batches.clone()).collect();
            r.source.register(ctx, partitions).map_err(failed)?;
            fetches.push(Vec::new());
        }
    }
    Ok(Fetches(fetches))
}

/// `reads` as the queries found them: a streamed range as far as it was
/// readable, with its record count and every bad record.
pub async fn complete(reads: &[SourceReads], fetches: &Fetches) -> Result<Vec<SourceReads>> {
    let mut out = Vec::new();
    for (r, ranges) in reads.iter().zip(&fetches.0) {
        if !r.streamed {
            out.push(r.clone());
            continue;
        }
        let mut done = Vec::new();
        for (planned, fetch) in r.reads.iter().zip(ranges) {
            // The fetch counted the records set aside too; it left out their rows.
            let mut read = fetch.outcome().await?;
            read.bad.extend(planned.bad.iter().cloned());
            read.bad.sort_by_key(|b| b.record.offset);
            done.push(read);
        }
        out.push(SourceReads {
            source: r.source.clone(),
            reads: done,
            streamed: false,
        });
    }
    Ok(out)
}

/// The `txn` actions recording every range of `reads` for `pipeline`.
pub fn transactions(pipeline: &str, reads: &[SourceReads]) -> Vec<Transaction> {
    let ranges: Vec<PartitionRange> = reads.iter().flat_map(SourceReads::ranges).collect();
    ledger::kafka_transactions(pipeline, &ranges)
}

/// Fail before anything commits when a source's bad records pass its
/// `max.bad.records`.
pub fn check_bad_record_limits(reads: &[SourceReads]) -> Result<()> {
    for r in reads {
        if let Some(limit) = r.source.decl.options.max_bad_records {
            let (bad, read) = (r.bad_records(), r.records());
            if limit.exceeded(bad, read) {
                let first = r
                    .reads
                    .iter()
                    .flat_map(|p| p.bad.first().map(|b| (p, b)))
                    .next()
                    .map(|(p, b)| {
                        format!(
                            "; first at {}/{} offset {}: {}",
                            p.range.topic, p.range.partition, b.record.offset, b.reason
                        )
                    })
                    .unwrap_or_default();
                return Err(KilnError::Run(format!(
                    "source '{}': {bad} of {read} records could not be decoded or made the pipeline's SQL fail, \
                     more than max.bad.records ({limit}); nothing was committed{first}",
                    r.source.decl.name
                )));
            }
        }
    }
    Ok(())
}

/// Where a feature set's dead-letter table stands for `pipeline`, and the
/// version that was read at (None: the table does not exist yet).
pub async fn dead_letter_ledger(tables: &OpenTables, pipeline: &str, location: &str) -> Result<Ledger> {
    let table = tables.latest(&featureset::dead_letter_location(location)).await?;
    ledger::read(table.as_ref(), pipeline).await
}

/// Send the bad records of sources with `'dead_letter.topic'` to that topic,
/// each with its raw key and value and headers naming where it came from and
/// why; returns how many. Waits until the broker has them all, so the run
/// fails before committing if it cannot deliver them. A run stopped after
/// this and before its commit sends them again when it is rerun.
pub async fn send_to_dead_letter_topics(pipeline: &str, run_id: &str, reads: &[SourceReads]) -> Result<u64> {
    let mut sent = 0;
    for r in reads {
        let Some(topic) = r.to_topic() else { continue };
        let letters = r.dead_letters(&Positions::new());
        if letters.is_empty() {
            continue;
        }
        sent += letters.len() as u64;
        let config = dead_letter_producer_config(&r.source.decl.options.client);
        let (topic, pipeline, run_id) = (topic.to_string(), pipeline.to_string(), run_id.to_string());
        tokio::task::spawn_blocking(move || {
            produce_dead_letters(config, &topic, &pipeline, &run_id, &letters)
        })
        .await
        .map_err(|e| KilnError::Io(format!("Kafka producer thread failed: {e}")))??;
    }
    Ok(sent)
}

/// The producer settings for a source's dead-letter topic: the source's
/// own connection and security properties as the pipeline gave them, less
/// its consumer ones. Built from the declared values, not from the
/// consumer's configuration, whose secrets librdkafka hands back masked.
fn dead_letter_producer_config(client: &[(String, String)]) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    for (key, value) in client {
        let key = key.as_str();
        if !matches!(
            key,
            "group.id"
                | "group.instance.id"
                | "enable.auto.commit"
                | "enable.auto.offset.store"
                | "enable.partition.eof"
        ) && !key.starts_with("receive.")
            && !key.starts_with("fetch.")
            && !key.starts_with("auto.")
            && !key.starts_with("partition.assignment")
            && !key.starts_with("session.")
            && !key.starts_with("heartbeat.")
            && !key.starts_with("max.poll")
            && !key.starts_with("isolation.")
        {
            config.set(key, value);
        }
    }
    config.set("enable.idempotence", "true");
    config
}

fn produce_dead_letters(
    config: rdkafka::ClientConfig,
    topic: &str,
    pipeline: &str,
    run_id: &str,
    letters: &[DeadLetter],
) -> Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let failed = |e: rdkafka::error::KafkaError| {
        KilnError::Kafka(format!("sending bad records to dead-letter topic '{topic}': {e}"))
    };
    let producer: BaseProducer = config.create().map_err(failed)?;
    for letter in letters {
        let (partition, offset) = (letter.partition.to_string(), letter.offset.to_string());
        let headers = [
            ("kiln.error", letter.error.as_str()),
            ("kiln.source", letter.source.as_str()),
            ("kiln.topic", letter.topic.as_str()),
            ("kiln.partition", partition.as_str()),
            ("kiln.offset", offset.as_str()),
            ("kiln.pipeline", pipeline),
            ("kiln.run_id", run_id),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        });
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &letter.value {
            record = record.payload(value.as_slice());
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((e, back))
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(std::time::Duration::from_millis(50));
                    pending = back;
                }
                Err((e, _)) => return Err(failed(e)),
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(60)).map_err(failed)
}

/// Tell each source's consumer group how far the feature sets got, for lag
/// monitors. The feature sets stay the truth; a failure here only warns.
pub async fn report_to_groups(reads: &[SourceReads]) {
    // Feature sets that stood apart read a source more than once: the
    // furthest read of each partition is where the group stands.
    let mut furthest: BTreeMap<String, (&KafkaSource, Positions)> = BTreeMap::new();
    for r in reads {
        let (_, at) = furthest
            .entry(r.source.decl.name.clone())
            .or_insert_with(|| (&r.source, Positions::new()));
        for p in r.reads.iter().filter(|p| !p.range.is_empty()) {
            let to = at.entry(p.range.tp()).or_insert(p.range.to);
            *to = (*to).max(p.range.to);
        }
    }
    for (source, at) in furthest.into_values() {
        let mut tpl = TopicPartitionList::new();
        for (tp, &to) in &at {
            if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(to)) {
                tracing::warn!(error = %e, "offsets for the consumer group");
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        let client = source.client.clone();
        let group = source.group_id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = client.create()?;
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await;
        match result {
            Ok(Ok(())) => tracing::debug!(group = %group, "offsets committed to the consumer group"),
            Ok(Err(e)) => {
                tracing::warn!(group = %group, error = %e, "could not commit offsets to the consumer group")
            }
            Err(e) => {
                tracing::warn!(group = %group, error = %e, "could not commit offsets to the consumer group")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_producer_keeps_the_declared_secrets() {
        let declared: Vec<(String, String)> = [
            ("bootstrap.servers", "b:9092"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "kiln"),
            ("sasl.password", "p'a$$word"),
            ("group.id", "g"),
            ("fetch.max.bytes", "1000"),
            ("auto.offset.reset", "error"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = dead_letter_producer_config(&declared);
        // librdkafka hands secrets back masked from a client's config_map;
        // the producer must get the real value.
        assert_eq!(config.get("sasl.password"), Some("p'a$$word"));
        assert_eq!(config.get("sasl.username"), Some("kiln"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("group.id"), None);
        assert_eq!(config.get("fetch.max.bytes"), None);
        assert_eq!(config.get("auto.offset.reset"), None);
        // And it is a configuration librdkafka accepts for a producer.
        let made: rdkafka::error::KafkaResult<rdkafka::producer::BaseProducer> = config.create();
        assert!(made.is_ok(), "{:?}", made.err());
    }
}
