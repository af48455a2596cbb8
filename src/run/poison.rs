//! Records that decode but make the pipeline's SQL fail (`CAST('abc' AS
//! INT)`, a timestamp that overflows): "poison" records.
//!
//! Such a record would fail its whole pass, and a stream worker would
//! crash-loop on it. When a pass with Kafka records fails while executing,
//! its records are bisected: the queries run (nothing is committed) over
//! halves of the records until single records are found that fail them by
//! themselves. Those are set aside as bad records, with the error, and the
//! pass runs again without them; they reach the dead letters like records
//! that could not be decoded, and count against `max.bad.records`. An error
//! that no single record causes (a sum that overflows over many), one that
//! happens with no record at all (a broken file source), or one that most
//! records cause alone (a broken query) still fails the pass.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::Int64Type;

use super::kafka::{self, SourceReads};
use super::pass::{Pass, execute};
use super::progress::Progress;
use super::{RunOptions, session};
use crate::engine;
use crate::error::{KilnError, Result};
use crate::featureset::OpenTables;
use crate::pipeline::Pipeline;
use crate::source::kafka::read::fetch_raw;
use crate::source::kafka::{BadRecord, RawRecord};

/// Query runs one search may make before it gives up: about twenty bad
/// records in a quarter of a million.
const MAX_PROBES: usize = 800;

/// Where each batch's rows start when the pass's rows are numbered in
/// order: (source, partition read, batch, first row number).
struct Rows {
    spans: Vec<(usize, usize, usize, usize)>,
    total: usize,
}

impl Rows {
    fn of(reads: &[SourceReads]) -> Self {
        let mut spans = Vec::new();
        let mut total = 0;
        for (s, source) in reads.iter().enumerate() {
            for (r, read) in source.reads.iter().enumerate() {
                for (b, batch) in read.batches.iter().enumerate() {
                    spans.push((s, r, b, total));
                    total += batch.num_rows();
                }
            }
        }
        Self { spans, total }
    }

    /// The reads with only the rows numbered `lo..hi`.
    fn subset(&self, reads: &[SourceReads], lo: usize, hi: usize) -> Vec<SourceReads> {
        let mut out = reads.to_vec();
        for read in out.iter_mut().flat_map(|s| s.reads.iter_mut()) {
            read.batches.clear();
            read.bad.clear();
            read.records = 0;
        }
        for &(s, r, b, start) in &self.spans {
            let batch = &reads[s].reads[r].batches[b];
            let (from, to) = (lo.max(start), hi.min(start + batch.num_rows()));
            if from < to {
                out[s].reads[r].batches.push(batch.slice(from - start, to - from));
            }
        }
        out
    }

    /// (source, partition read, offset) of row number `row`.
    fn locate(&self, reads: &[SourceReads], row: usize) -> Option<(usize, usize, i64)> {
        let i = self
            .spans
            .partition_point(|&(_, _, _, start)| start <= row)
            .checked_sub(1)?;
        let (s, r, b, start) = self.spans[i];
        let offsets = reads[s].reads[r].batches[b]
            .column_by_name("_offset")?
            .as_primitive::<Int64Type>();
        Some((s, r, offsets.value(row - start)))
    }
}

/// `pass` with the records that fail its queries by themselves moved to
/// its bad records; None when no single record is to blame.
pub(crate) async fn set_aside(
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    pass: &Pass,
) -> Result<Option<Pass>> {
    let rows = Rows::of(&pass.reads);
    // Failing without any Kafka record, the queries fail for another
    // reason (a file source, the SQL itself): no record is to blame.
    if fails(pipeline, options, tables, pass, &rows.subset(&pass.reads, 0, 0))
        .await?
        .is_some()
    {
        return Ok(None);
    }
    let mut poison: Vec<(usize, String)> = Vec::new();
    let mut probes = 0;
    let mut stack = vec![(0, rows.total)];
    while let Some((lo, hi)) = stack.pop() {
        if lo >= hi {
            continue;
        }
        probes += 1;
        if probes > MAX_PROBES {
            tracing::warn!(
                found = poison.len(),
                "too many records fail the queries to find them one by one"
            );
            return Ok(None);
        }
        let Some(error) = fails(pipeline, options, tables, pass, &rows.subset(&pass.reads, lo, hi)).await?
        else {
            continue;
        };
        if hi - lo == 1 {
            poison.push((lo, error));
        } else {
            let mid = lo + (hi - lo) / 2;
            stack.push((mid, hi));
            stack.push((lo, mid));
        }
    }
    if poison.is_empty() {
        return Ok(None);
    }
    // Most records failing alone is a broken query, not bad records:
    // fail the pass rather than send the whole batch to the dead letters.
    if poison.len() > 1 && poison.len() * 2 > rows.total {
        tracing::warn!(
            failing = poison.len(),
            records = rows.total,
            "most records fail the queries on their own; not setting them aside"
        );
        return Ok(None);
    }
    // Per partition read: the poisoned offsets and why.
    let mut by_read: BTreeMap<(usize, usize), BTreeMap<i64, String>> = BTreeMap::new();
    for (row, error) in poison {
        let Some((s, r, offset)) = rows.locate(&pass.reads, row) else {
            return Ok(None);
        };
        by_read.entry((s, r)).or_default().insert(offset, error);
    }
    let mut reads = pass.reads.clone();
    for ((s, r), offsets) in by_read {
        let client = reads[s].source.client.clone();
        let read = &mut reads[s].reads[r];
        let tp = read.range.tp();
        let raw: BTreeMap<i64, RawRecord> = fetch_raw(&client, tp.clone(), offsets.keys().copied().collect())
            .await?
            .into_iter()
            .map(|r| (r.offset, r))
            .collect();
        for (offset, error) in &offsets {
            tracing::warn!(partition = %tp, offset, error = %error, "the pipeline's SQL fails on this record; it goes to the dead letters");
        }
        let skip: BTreeSet<i64> = offsets.keys().copied().collect();
        read.batches = read
            .batches
            .iter()
            .map(|b| without_offsets(b, &skip))
            .collect::<Result<Vec<_>>>()?;
        read.bad
            .extend(offsets.into_iter().map(|(offset, error)| BadRecord {
                record: raw.get(&offset).cloned().unwrap_or(RawRecord {
                    offset,
                    timestamp_ms: None,
                    key: None,
                    value: None,
                }),
                reason: format!("the pipeline's SQL failed on this record: {error}"),
            }));
        read.bad.sort_by_key(|b| b.record.offset);
    }
    Ok(Some(Pass {
        reads,
        files: pass.files.clone(),
        read_at: pass.read_at.clone(),
        lost: pass.lost.clone(),
        first_positions: pass.first_positions,
        has_kafka: pass.has_kafka,
    }))
}

/// Whether the pass's queries fail over `reads`, and with what; commits nothing.
async fn fails(
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    pass: &Pass,
    reads: &[SourceReads],
) -> Result<Option<String>> {
    let ctx = session(options)?;
    kafka::register(&ctx, reads)?;
    let planned = engine::plan_pipeline(&ctx, pipeline, tables, pass.files.as_ref())
        .await
        .map_err(KilnError::Problems)?;
    let quiet = Progress::new(false);
    for insert in &planned.inserts {
        if let Err(e) = execute(insert, &quiet).await {
            return Ok(Some(e.to_string()));
        }
    }
    Ok(None)
}

fn without_offsets(batch: &RecordBatch, skip: &BTreeSet<i64>) -> Result<RecordBatch> {
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
