//! Bounded reads as streams: a fixed offset range of one topic-partition,
//! fetched while the query runs, so that a run over a backlog holds a few
//! chunks of it at a time rather than all of it.
//!
//! Each topic-partition is one partition of the source's table. Every
//! execution of the table (each INSERT that reads the source, each side of
//! a self-join) fetches its range again, and what the fetches find is kept
//! in the range's [`Found`]: where reading stopped, how many records there
//! were and the records that could not be decoded. Reading stops short of
//! the planned end where an open transaction holds the tail back; the first
//! fetch to stop there lowers the end for the fetches after it, so every
//! INSERT of a run sees the same records. Fetches that still disagree (a
//! transaction committed while two ran at once) fail the pass, to be run
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;
use rdkafka::ClientConfig;

use super::decode::{BadRecord, RecordDecoder};
use super::positions::PartitionRange;
use super::read::{self, PartitionRead};
use crate::error::{Context, KilnError, Result};

/// Decoded chunks waiting for the query, per fetch: with [`CHUNK_BYTES`]
/// chunks, what one partition's fetch holds ahead of the query.
///
/// [`CHUNK_BYTES`]: super::decode::CHUNK_BYTES
const CHANNEL_CHUNKS: usize = 2;

/// What one partition's consumer may prefetch. librdkafka's defaults let
/// each consumer queue up to 100,000 records or 64 MiB and take fetch
/// responses of 50 MiB; a run fetches every partition with a consumer of
/// its own, beside what the query holds.
#[derive(Debug, Clone, Copy)]
pub struct FetchBuffers {
    bytes: usize,
}

impl FetchBuffers {
    /// Buffers for one partition's fetch within `bytes`.
    pub fn within(bytes: usize) -> Self {
        Self {
            bytes: bytes.clamp(2 << 20, 16 << 20),
        }
    }

    /// `client` with these limits, where the pipeline set none of its own.
    pub fn applied_to(&self, client: &ClientConfig) -> ClientConfig {
        // Half for the queue of fetched records, half for a fetch response
        // being read; librdkafka's own bookkeeping of a queued record is
        // about 400 bytes, whatever its size.
        let half = self.bytes / 2;
        let sized_records = client.get("message.max.bytes").is_some();
        let mut client = client.clone();
        let mut set = |key: &str, value: String| {
            if client.get(key).is_none() {
                client.set(key, value);
            }
        };
        set("queued.max.messages.kbytes", (half / 1024).to_string());
        set("queued.min.messages", (half / 400).max(1000).to_string());
        // A fetch must hold one record of the largest size the client allows.
        if !sized_records {
            set("fetch.max.bytes", half.max(1 << 20).to_string());
        }
        client
    }
}

/// What the fetches of one range found.
#[derive(Debug)]
struct Found {
    /// Where fetches stop: the planned end, or where the first fetch found
    /// the readable end.
    end: i64,
    /// (where it stopped, records) of each fetch that read to its end.
    done: Vec<(i64, u64)>,
    bad: BTreeMap<i64, BadRecord>,
}

/// One topic-partition's range, fetched on each execution.
#[derive(Debug, Clone)]
pub struct RangeFetch {
    client: ClientConfig,
    decoder: RecordDecoder,
    schema: SchemaRef,
    range: PartitionRange,
    /// Offsets left out of the rows (records set aside as poison).
    skip: Arc<BTreeSet<i64>>,
    found: Arc<Mutex<Found>>,
}

impl RangeFetch {
    pub fn new(
        client: ClientConfig,
        decoder: RecordDecoder,
        range: PartitionRange,
        skip: BTreeSet<i64>,
    ) -> Self {
        Self {
            client,
            schema: decoder.schema(),
            decoder,
            found: Arc::new(Mutex::new(Found {
                end: range.to,
                done: Vec::new(),
                bad: BTreeMap::new(),
            })),
            range,
            skip: Arc::new(skip),
        }
    }

    /// What was read, once the queries have run: the range as far as it
    /// was readable, its record count and bad records (no rows). A range
    /// that no query read to its end (a `LIMIT`, a source no INSERT reads)
    /// is read to its end now, so that its bad records are not skipped.
    pub async fn outcome(&self) -> Result<PartitionRead> {
        if self.found().done.is_empty() && !self.range.is_empty() {
            let mut rows = self.execute_now();
            while let Some(batch) = rows.next().await {
                batch.context(|| format!("reading {} to its end", self.range.tp()))?;
            }
        }
        let found = self.found();
        let (to, records) = match found.done.as_slice() {
            [] if self.range.is_empty() => (self.range.from, 0),
            [] => {
                return Err(KilnError::Run(format!(
                    "{} was not read to its end",
                    self.range.tp()
                )));
            }
            [(to, records), rest @ ..] => {
                if let Some((other, _)) = rest.iter().find(|(t, _)| t != to) {
                    return Err(KilnError::Kafka(format!(
                        "{} became readable up to offset {other} while this run read it up to {to} \
                         (a transaction committed meanwhile); nothing was committed",
                        self.range.tp()
                    )));
                }
                (*to, *records)
            }
        };
        Ok(PartitionRead {
            range: PartitionRange {
                to,
                ..self.range.clone()
            },
            batches: Vec::new(),
            bad: found.bad.values().cloned().collect(),
            records,
        })
    }

    fn found(&self) -> std::sync::MutexGuard<'_, Found> {
        self.found.lock().expect("fetch state lock")
    }

    fn execute_now(&self) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_CHUNKS);
        let fetch = self.clone();
        tokio::task::spawn_blocking(move || {
            let sent = tx.clone();
            let result = fetch.run(&mut |batches| {
                for batch in batches {
                    // The query stopped reading (a LIMIT): stop fetching.
                    if sent.blocking_send(Ok(batch)).is_err() {
                        return false;
                    }
                }
                true
            });
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(DataFusionError::External(Box::new(e))));
            }
        });
        let rows = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }

    /// Fetch the range, handing each decoded chunk's rows to `emit` (which
    /// says whether to go on), and record what was found.
    fn run(&self, emit: &mut dyn FnMut(Vec<RecordBatch>) -> bool) -> Result<()> {
        let end = self.found().end;
        let range = PartitionRange {
            to: end.max(self.range.from),
            ..self.range.clone()
        };
        let mut bad = Vec::new();
        let mut stopped = false;
        let mut failed = None;
        let read = read::read_range(&self.client, &self.decoder, range, &mut |batches, found_bad| {
            bad.extend(found_bad);
            let rows = batches
                .into_iter()
                .map(|b| without_offsets(&b, &self.skip))
                .collect::<Result<Vec<_>>>();
            let going = match rows {
                Ok(rows) => emit(rows),
                Err(e) => {
                    failed = Some(e);
                    false
                }
            };
            stopped |= !going;
            going
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let mut found = self.found();
        for b in bad {
            found.bad.insert(b.record.offset, b);
        }
        if !stopped {
            found.end = found.end.min(read.range.to.max(self.range.from));
            found.done.push((read.range.to, read.records));
        }
        Ok(())
    }
}

impl PartitionStream for RangeFetch {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.execute_now()
    }
}

/// `batch` without the rows at offsets `skip`.
pub fn without_offsets(batch: &RecordBatch, skip: &BTreeSet<i64>) -> Result<RecordBatch> {
    if skip.is_empty() {
        return Ok(batch.clone());
    }
    let Some(offsets) = batch.column_by_name("_offset") else {
        return Ok(batch.clone());
    };
    let keep: BooleanArray = offsets
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|o| Some(!skip.contains(o)))
        .collect();
    Ok(filter_record_batch(batch, &keep)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_buffers_bound_the_consumer_unless_the_pipeline_says_otherwise() {
        let mut declared = ClientConfig::new();
        declared.set("bootstrap.servers", "b:9092");
        let sized = FetchBuffers::within(8 << 20).applied_to(&declared);
        assert_eq!(sized.get("queued.max.messages.kbytes"), Some("4096"));
        assert_eq!(sized.get("fetch.max.bytes"), Some("4194304"));
        assert_eq!(sized.get("queued.min.messages"), Some("10485"));
        // A tiny budget still lets a fetch hold a record of the default
        // largest size; a huge one stays at the cap.
        let tiny = FetchBuffers::within(1).applied_to(&declared);
        assert_eq!(tiny.get("fetch.max.bytes"), Some("1048576"));
        let huge = FetchBuffers::within(usize::MAX).applied_to(&declared);
        assert_eq!(huge.get("queued.max.messages.kbytes"), Some("8192"));

        declared.set("queued.max.messages.kbytes", "65536");
        declared.set("message.max.bytes", "20000000");
        let own = FetchBuffers::within(8 << 20).applied_to(&declared);
        assert_eq!(own.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(
            own.get("fetch.max.bytes"),
            None,
            "left to librdkafka beside a large message.max.bytes"
        );
        // librdkafka takes what was set.
        let made: rdkafka::error::KafkaResult<rdkafka::consumer::BaseConsumer> = sized.create();
        assert!(made.is_ok(), "{:?}", made.err());
    }
}
