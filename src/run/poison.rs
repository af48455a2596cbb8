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

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

use super::kafka::{self, SourceReads};
use super::pass::{Pass, execute};
use super::progress::Progress;
use super::{RunOptions, session};
use crate::engine;
use crate::error::{Fault, KilnError, Result};
use crate::featureset::OpenTables;
use crate::pipeline::Pipeline;
use crate::source::kafka::fetch::without_offsets;
use crate::source::kafka::read::fetch_raw;
use crate::source::kafka::{BadKind, BadRecord, RawRecord};

/// Query runs one search may make before it gives up: about twenty bad
/// records in a quarter of a million.
const MAX_PROBES: usize = 800;

/// The offsets of the pass's ranges numbered one after the other: (source,
/// partition read, first offset, first number, how many). A number with no
/// record behind it (a gap, a record that did not decode) fails nothing.
struct Offsets {
    spans: Vec<(usize, usize, i64, usize, usize)>,
    total: usize,
}

impl Offsets {
    fn of(reads: &[SourceReads]) -> Self {
        let mut spans = Vec::new();
        let mut total = 0;
        for (s, source) in reads.iter().enumerate() {
            for (r, read) in source.reads.iter().enumerate() {
                let len = (read.range.to - read.range.from).max(0) as usize;
                spans.push((s, r, read.range.from, total, len));
                total += len;
            }
        }
        Self { spans, total }
    }

    /// The reads with only the offsets numbered `lo..hi`: a narrower range
    /// to fetch, or the rows in memory at those offsets.
    fn subset(&self, reads: &[SourceReads], lo: usize, hi: usize) -> Vec<SourceReads> {
        let mut out = reads.to_vec();
        for &(s, r, from, start, len) in &self.spans {
            let a = from + (lo.clamp(start, start + len) - start) as i64;
            let b = from + (hi.clamp(start, start + len) - start) as i64;
            let streamed = out[s].streamed;
            let read = &mut out[s].reads[r];
            read.batches = read
                .batches
                .iter()
                .filter_map(|batch| window(batch, a, b.max(a)))
                .collect();
            read.bad
                .retain(|bad| streamed && (a..b).contains(&bad.record.offset));
            read.range.from = a;
            read.range.to = b.max(a);
            read.records = 0;
        }
        out
    }

    /// (source, partition read, offset) of number `n`.
    fn locate(&self, n: usize) -> Option<(usize, usize, i64)> {
        let i = self
            .spans
            .partition_point(|&(_, _, _, start, _)| start <= n)
            .checked_sub(1)?;
        let (s, r, from, start, len) = self.spans[i];
        (n < start + len).then(|| (s, r, from + (n - start) as i64))
    }
}

/// The rows of `batch` (in offset order) at offsets `a..b`.
fn window(batch: &RecordBatch, a: i64, b: i64) -> Option<RecordBatch> {
    let offsets = batch.column_by_name("_offset")?.as_primitive::<Int64Type>();
    let first = offsets.values().partition_point(|o| *o < a);
    let end = offsets.values().partition_point(|o| *o < b);
    (first < end).then(|| batch.slice(first, end - first))
}

/// `pass` with the records that fail its queries by themselves moved to
/// its bad records; None when no single record is to blame.
pub(crate) async fn set_aside(
    pipeline: &Pipeline,
    options: &RunOptions,
    tables: &OpenTables,
    pass: &Pass,
) -> Result<Option<Pass>> {
    let rows = Offsets::of(&pass.reads);
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
        let Some((s, r, offset)) = rows.locate(row) else {
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
        // A streamed read leaves its bad records out of the rows it fetches.
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
                kind: BadKind::FailsQuery,
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
    let fetches = kafka::register(&ctx, reads, options.resources.buffer_bytes / 2)?;
    let planned = engine::plan_pipeline(&ctx, pipeline, tables, pass.files.as_ref())
        .await
        .map_err(KilnError::Problems)?;
    let quiet = Progress::new(false);
    for insert in &planned.inserts {
        match execute(insert, &quiet, None).await {
            Ok(_) => {}
            // A broker or store failing, records gone: no record is to blame.
            Err(e) if e.fault() != Fault::User || e.is_data_loss() => return Err(e),
            Err(e) => return Ok(Some(e.to_string())),
        }
    }
    // A streamed range that stopped early fails here, not in the query.
    kafka::complete(reads, &fetches).await?;
    Ok(None)
}
