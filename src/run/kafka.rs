//! The Kafka side of a bounded run: which offsets it reads for which
//! feature sets, reading them, and reporting progress back to the group.
//!
//! Every feature set an INSERT writes records, per topic-partition, the
//! next offset it needs. Normally they all agree and the run reads from
//! there to the high watermark seen at its start. They disagree only when a
//! run stopped between two commits (Delta has no multi-table transaction) or
//! an INSERT was added later; then the lagging feature sets first run alone
//! up to where the others stand, so no feature set sees a record twice.

use std::collections::BTreeMap;

use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{KilnError, Result};
use crate::featureset::{self, DeadLetter, KafkaInput, OpenTables};
use crate::pipeline::{Pipeline, Problem, StartAt};
use crate::source::kafka::positions::{self, Positions};
use crate::source::kafka::{KafkaSource, PartitionRange, PartitionRead, TopicPartition, read};

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

/// What one pass of a run reads, and for which feature sets.
#[derive(Debug)]
pub struct Scope {
    /// The feature sets this pass commits.
    pub targets: Vec<String>,
    /// Per source (by name), its ranges.
    pub ranges: BTreeMap<String, Vec<PartitionRange>>,
    /// True when this pass only brings lagging feature sets level.
    pub catch_up: bool,
    /// Some target has never recorded a position: commit even if empty, so
    /// that a `'start' 'latest'` position is kept.
    pub first_positions: bool,
    /// Per feature set, the version its positions were read at.
    pub read_versions: BTreeMap<String, u64>,
}

impl Scope {
    pub fn nothing_to_read(&self) -> bool {
        self.ranges.values().flatten().all(PartitionRange::is_empty)
    }
}

/// Decide the next pass of a run over `targets` (feature set name, its table
/// if it exists).
pub async fn scope(
    pipeline: &Pipeline,
    sources: &[KafkaSource],
    targets: &[(String, Option<DeltaTable>)],
) -> Result<Scope> {
    let read_versions = targets
        .iter()
        .filter_map(|(name, table)| Some((name.clone(), table.as_ref()?.version()?)))
        .collect();
    // Where every target stands, per source and topic-partition.
    let mut standing: Vec<(String, BTreeMap<String, Positions>)> = Vec::new();
    let mut marks_by_source = BTreeMap::new();
    let mut first_positions = false;
    for source in sources {
        let marks = read::watermarks(&source.client, &source.decl.topics).await?;
        let partitions: Vec<TopicPartition> = marks.keys().cloned().collect();
        for (name, table) in targets {
            let recorded = match table {
                Some(t) => positions::recorded(t, &pipeline.name, &partitions).await?,
                None => Positions::new(),
            };
            let mut at = Positions::new();
            for (tp, &(low, high)) in &marks {
                let position = match recorded.get(tp) {
                    Some(&p) if p < low => {
                        tracing::warn!(
                            feature_set = %name, partition = %tp, position = p, earliest = low,
                            "offsets {p}..{low} were deleted by the topic's retention before this pipeline read them"
                        );
                        low
                    }
                    Some(&p) => p,
                    None => {
                        first_positions = true;
                        match source.decl.options.start {
                            StartAt::Earliest => low,
                            StartAt::Latest => high,
                        }
                    }
                };
                at.insert(tp.clone(), position);
            }
            match standing.iter_mut().find(|(n, _)| n == name) {
                Some((_, by_source)) => {
                    by_source.insert(source.decl.name.clone(), at);
                }
                None => standing.push((name.clone(), BTreeMap::from([(source.decl.name.clone(), at)]))),
            }
        }
        marks_by_source.insert(source.decl.name.clone(), marks);
    }

    // Targets standing at the same place run together.
    let mut groups: Vec<(BTreeMap<String, Positions>, Vec<String>)> = Vec::new();
    for (name, at) in standing {
        match groups.iter_mut().find(|(g, _)| *g == at) {
            Some((_, names)) => names.push(name),
            None => groups.push((at, vec![name])),
        }
    }
    let ranges_to = |from: &BTreeMap<String, Positions>, to: &dyn Fn(&str, &TopicPartition) -> i64| {
        from.iter()
            .map(|(source, at)| {
                let ranges = at
                    .iter()
                    .map(|(tp, &p)| PartitionRange {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        from: p,
                        to: to(source, tp).max(p),
                    })
                    .collect();
                (source.clone(), ranges)
            })
            .collect::<BTreeMap<_, _>>()
    };
    if groups.len() <= 1 {
        let (at, targets) = groups.pop().unwrap_or_default();
        let ranges = ranges_to(&at, &|source, tp| marks_by_source[source][tp].1);
        return Ok(Scope {
            targets,
            ranges,
            catch_up: false,
            first_positions,
            read_versions,
        });
    }
    let behind = |a: &BTreeMap<String, Positions>, b: &BTreeMap<String, Positions>| {
        a.iter().all(|(source, at)| {
            at.iter()
                .all(|(tp, p)| b.get(source).and_then(|x| x.get(tp)).is_none_or(|q| p <= q))
        })
    };
    let Some(lowest) = groups
        .iter()
        .position(|(at, _)| groups.iter().all(|(other, _)| behind(at, other)))
    else {
        let described: Vec<String> = groups.iter().map(|(_, names)| names.join(", ")).collect();
        return Err(KilnError::Run(format!(
            "the feature sets of pipeline '{}' stand at Kafka positions that cannot be brought level \
             (each ahead of the other somewhere): {}; run them from separate pipelines",
            pipeline.name,
            described.join(" / ")
        )));
    };
    let (at, targets) = groups.swap_remove(lowest);
    let level = |source: &str, tp: &TopicPartition| {
        groups
            .iter()
            .filter_map(|(other, _)| other.get(source).and_then(|x| x.get(tp)).copied())
            .min()
            .unwrap_or(i64::MAX)
    };
    Ok(Scope {
        targets,
        ranges: ranges_to(&at, &level),
        catch_up: true,
        first_positions,
        read_versions,
    })
}

/// What a pass read from one source.
pub struct SourceReads {
    pub source: KafkaSource,
    pub reads: Vec<PartitionRead>,
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

/// Read every source's ranges and register the sources in `ctx`.
pub async fn read_and_register(
    ctx: &SessionContext,
    sources: &[KafkaSource],
    scope: &Scope,
) -> Result<Vec<SourceReads>> {
    let mut out = Vec::new();
    for source in sources {
        let ranges = scope.ranges.get(&source.decl.name).cloned().unwrap_or_default();
        let reads = read::read_ranges(&source.client, &source.decoder, ranges).await?;
        let partitions = reads.iter().map(|r| r.batches.clone()).collect();
        source
            .register(ctx, partitions)
            .map_err(|e| KilnError::Run(format!("registering source '{}': {e}", source.decl.name)))?;
        out.push(SourceReads {
            source: source.clone(),
            reads,
        });
    }
    Ok(out)
}

/// The `txn` actions recording every range of `reads` for `pipeline`.
pub fn transactions(pipeline: &str, reads: &[SourceReads]) -> Vec<Transaction> {
    let ranges: Vec<PartitionRange> = reads.iter().flat_map(SourceReads::ranges).collect();
    positions::transactions(pipeline, &ranges)
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
                    "source '{}': {bad} of {read} records could not be decoded, more than max.bad.records \
                     ({limit}); nothing was committed{first}",
                    r.source.decl.name
                )));
            }
        }
    }
    Ok(())
}

/// Where a feature set's dead-letter table stands, per topic-partition;
/// None when the table does not exist yet.
pub async fn dead_letter_positions(
    tables: &OpenTables,
    pipeline: &str,
    location: &str,
    reads: &[SourceReads],
) -> Result<Option<Positions>> {
    let Some(table) = tables.latest(&featureset::dead_letter_location(location)).await? else {
        return Ok(None);
    };
    let partitions: Vec<TopicPartition> = reads
        .iter()
        .flat_map(|r| {
            r.reads.iter().map(|p| TopicPartition {
                topic: p.range.topic.clone(),
                partition: p.range.partition,
            })
        })
        .collect();
    positions::recorded(&table, pipeline, &partitions).await.map(Some)
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
        let client = r.source.client.clone();
        let (topic, pipeline, run_id) = (topic.to_string(), pipeline.to_string(), run_id.to_string());
        tokio::task::spawn_blocking(move || {
            produce_dead_letters(&client, &topic, &pipeline, &run_id, &letters)
        })
        .await
        .map_err(|e| KilnError::Io(format!("Kafka producer thread failed: {e}")))??;
    }
    Ok(sent)
}

fn produce_dead_letters(
    client: &rdkafka::ClientConfig,
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
    let mut config = rdkafka::ClientConfig::new();
    // The source's connection and security settings, without its consumer ones.
    for (key, value) in client.config_map() {
        if !matches!(
            key,
            "group.id" | "enable.auto.commit" | "enable.auto.offset.store" | "enable.partition.eof"
        ) && !key.starts_with("receive.")
            && !key.starts_with("fetch.")
        {
            config.set(key, value);
        }
    }
    let producer: BaseProducer = config
        .set("enable.idempotence", "true")
        .create()
        .map_err(failed)?;
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
    for r in reads {
        let mut tpl = TopicPartitionList::new();
        for p in r.reads.iter().filter(|p| !p.range.is_empty()) {
            if let Err(e) =
                tpl.add_partition_offset(&p.range.topic, p.range.partition, Offset::Offset(p.range.to))
            {
                tracing::warn!(error = %e, "offsets for the consumer group");
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        let client = r.source.client.clone();
        let group = r.source.group_id.clone();
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
