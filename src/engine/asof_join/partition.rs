//! One partition of an as-of join, within the memory pool.
//!
//! Both sides are read into memory while the pool allows, up to
//! [`SIDE_BYTES`] each; then they are matched at once. When a side is
//! larger, the partition becomes a grace hash join: both sides' rows are
//! split into [`BUCKETS`] buckets by a hash of their keys (salted, so rows
//! that one hash put in this partition spread over the buckets), and the
//! buckets are matched one at a time, each read whole. The buckets stay
//! in memory while the pool holds both sides; past that they go to spill
//! files (see [`Store`]). A bucket larger than [`SIDE_BYTES`] is split
//! again with another salt, up to [`MAX_DEPTH`] times; past that one
//! key's rows alone are larger than the pool, which is an error saying
//! so. Rows of equal keys always meet in one bucket, so the answer is the
//! one the in-memory match gives; only the order of the left rows
//! changes.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{concat, concat_batches, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{DataFusionError, Result, resources_datafusion_err};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::{BaselineMetrics, Count};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::spill::spill_pool::{SpillPoolSink, spsc_channel};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::matching::{Rule, join};

/// Buckets per side when a partition is split.
const BUCKET_BITS: u32 = 4;
const BUCKETS: usize = 1 << BUCKET_BITS;
/// The most one side is read into memory for one match (see
/// [`Partition::cap`]), unless the session sets a [`SideLimit`].
const SIDE_BYTES: usize = 64 << 20;
/// How many times a bucket that does not fit is split again.
const MAX_DEPTH: usize = 3;

pub(super) type Expr = Arc<dyn PhysicalExpr>;

/// A session's own [`SIDE_BYTES`], as a [`SessionConfig`] extension: the
/// tests lower it to split small inputs into buckets.
///
/// [`SessionConfig`]: datafusion::prelude::SessionConfig
#[derive(Debug, Clone, Copy)]
pub(super) struct SideLimit(pub usize);

impl SideLimit {
    pub fn of(config: &datafusion::prelude::SessionConfig) -> usize {
        config.get_extension::<SideLimit>().map_or(SIDE_BYTES, |l| l.0)
    }
}

/// What the operator evaluates on one side's rows.
#[derive(Clone)]
pub(super) struct SideExprs {
    pub keys: Vec<Expr>,
    pub time: Expr,
}

/// One side of a partition (or of a bucket), read whole.
pub(super) struct Read {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub keys: Vec<ArrayRef>,
    pub time: ArrayRef,
    /// Holds the side's memory in the pool until its match is done.
    pub reservation: MemoryReservation,
}

/// A side that did not fit: what was read, and what was not.
struct Overflow {
    read: Vec<RecordBatch>,
    rest: SendableRecordBatchStream,
}

/// A partition's two sides and what the match needs of them.
pub(super) struct Partition {
    pub left: SideExprs,
    pub right: SideExprs,
    pub rule: Rule,
    pub schema: SchemaRef,
    pub left_memory: MemoryReservation,
    pub right_memory: MemoryReservation,
    pub left_spill: Arc<SpillManager>,
    pub right_spill: Arc<SpillManager>,
    pub metrics: BaselineMetrics,
    pub right_rows: Count,
    pub matched_rows: Count,
    pub buckets: Count,
    pub batch_size: usize,
    /// The most a side is read into memory for one match.
    pub side_bytes: usize,
}

/// A bucket left to match: each side's rows, and how many times
/// they were split.
struct Pending {
    left: BucketRows,
    right: BucketRows,
    depth: usize,
}

impl Partition {
    /// The joined rows of the partition, as a stream.
    pub async fn run(
        self,
        left: SendableRecordBatchStream,
        right: SendableRecordBatchStream,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let counted = self.right_rows.clone();
        let right: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            right.schema(),
            right.inspect_ok(move |b| counted.add(b.num_rows())),
        ));
        // The right side's columns are copied into one piece to gather
        // from, so it reserves twice its size.
        let (left_read, right_read) = futures::try_join!(
            read(left, &self.left, self.left_memory.new_empty(), 1, self.cap(0)),
            read(right, &self.right, self.right_memory.new_empty(), 2, self.cap(0)),
        )?;
        let (left_parts, right_parts) = match (left_read, right_read) {
            (Ok(l), Ok(r)) => {
                let batches = self.matched(l, r)?;
                return Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed());
            }
            (l, r) => (
                l.map_or_else(|o| o, overflow_of),
                r.map_or_else(|o| o, overflow_of),
            ),
        };
        if self.left.keys.is_empty() {
            return Err(too_large(
                "an ASOF JOIN without ON keys reads both sides whole, and they do not fit",
            ));
        }
        let pending = self.split(left_parts, right_parts, 0).await?;
        let buckets = futures::stream::try_unfold((self, pending), |(this, mut pending)| async move {
            while let Some(next) = pending.pop() {
                if let Some(batches) = this.bucket_matched(next, &mut pending).await? {
                    return Ok::<_, DataFusionError>(Some((batches, (this, pending))));
                }
            }
            Ok(None)
        });
        Ok(buckets
            .map_ok(|batches: Vec<RecordBatch>| futures::stream::iter(batches.into_iter().map(Ok)))
            .try_flatten()
            .boxed())
    }

    /// The most a side of split number `depth` is read into memory for
    /// one match, however large the pool: Polars matches many small
    /// buckets faster than one large partition (1 M labels against 10 M
    /// feature rows took 6.7 s in two partitions, 5.4 s split into
    /// buckets). The last split, and a join without keys, which cannot be
    /// split, have only the pool as their limit.
    fn cap(&self, depth: usize) -> usize {
        if self.left.keys.is_empty() || depth > MAX_DEPTH {
            usize::MAX
        } else {
            self.side_bytes
        }
    }

    fn matched(&self, left: Read, right: Read) -> Result<Vec<RecordBatch>> {
        let timer = self.metrics.elapsed_compute().timer();
        let (batches, matched) = join(left, right, self.rule, &self.schema)?;
        self.matched_rows.add(matched);
        timer.done();
        for batch in &batches {
            self.metrics.record_output(batch.num_rows());
        }
        Ok(batches)
    }

    /// The bucket's matched rows, or None when it did not fit and was split
    /// into `pending` again.
    async fn bucket_matched(
        &self,
        bucket: Pending,
        pending: &mut Vec<Pending>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let right = bucket.right.stream;
        let cap = self.cap(bucket.depth);
        let left = read(
            bucket.left.stream,
            &self.left,
            self.left_memory.new_empty(),
            1,
            cap,
        )
        .await?;
        let right = match left {
            Ok(_) => read(right, &self.right, self.right_memory.new_empty(), 2, cap).await?,
            Err(_) => Err(Overflow {
                read: Vec::new(),
                rest: right,
            }),
        };
        match (left, right) {
            (Ok(l), Ok(r)) => {
                self.buckets.add(1);
                Ok(Some(self.matched(l, r)?))
            }
            (l, r) => {
                if bucket.depth > MAX_DEPTH {
                    return Err(too_large(
                        "the rows of one ASOF JOIN key do not fit in the memory pool, even split by their keys' hash",
                    ));
                }
                let l = l.map_or_else(|o| o, overflow_of);
                let r = r.map_or_else(|o| o, overflow_of);
                pending.extend(self.split(l, r, bucket.depth).await?);
                Ok(None)
            }
        }
    }

    /// Both sides split by key (split number `depth`), as the buckets to
    /// match next: those with left rows (the others give no output).
    async fn split(&self, left: Overflow, right: Overflow, depth: usize) -> Result<Vec<Pending>> {
        let mut left = split_by_key(
            left,
            &self.left,
            &self.left_spill,
            self.left_memory.new_empty(),
            true,
            depth,
            self.batch_size,
            true,
        )
        .await?;
        let right = split_by_key(
            right,
            &self.right,
            &self.right_spill,
            self.right_memory.new_empty(),
            left.store.in_memory(),
            depth,
            self.batch_size,
            false,
        )
        .await?;
        // Held left rows would keep from the pool the memory that reading
        // the right side's buckets back needs: both sides wait in memory,
        // or both on disk.
        if !right.store.in_memory() {
            left.store.move_to_disk(&self.left_spill)?;
        }
        Ok(left
            .into_buckets()
            .into_iter()
            .zip(right.into_buckets())
            .filter(|(l, _)| l.rows > 0)
            .map(|(left, right)| Pending {
                left,
                right,
                depth: depth + 1,
            })
            .collect())
    }
}

fn too_large(what: &str) -> DataFusionError {
    resources_datafusion_err!("{what}: raise the memory limit (KILN_MEMORY_LIMIT)")
}

/// A side read whole, as batches to be split after all.
fn overflow_of(read: Read) -> Overflow {
    let schema = Arc::clone(&read.schema);
    Overflow {
        read: read.batches,
        rest: Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty())),
    }
}

/// Reads `rows` whole within `reservation` (`factor` times each batch's
/// size) and `cap` bytes, or returns what it read and the rest when the
/// pool says no or the cap is reached.
async fn read(
    mut rows: SendableRecordBatchStream,
    exprs: &SideExprs,
    reservation: MemoryReservation,
    factor: usize,
    cap: usize,
) -> Result<Result<Read, Overflow>> {
    let mut batches = Vec::new();
    let mut keys: Vec<Vec<ArrayRef>> = vec![Vec::new(); exprs.keys.len()];
    let mut times = Vec::new();
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        let num_rows = batch.num_rows();
        let evaluate = |e: &Expr| e.evaluate(&batch)?.into_array(num_rows);
        let batch_keys = exprs.keys.iter().map(evaluate).collect::<Result<Vec<_>>>()?;
        let time = evaluate(&exprs.time)?;
        // The bytes the rows take, not the buffers they lie in: a spill
        // file is read back as slices of a few large chunks, which every
        // batch would otherwise count whole. The keys and time are
        // concatenated into copies.
        let size = [
            &batch.columns().to_vec()[..],
            &batch_keys,
            std::slice::from_ref(&time),
        ]
        .iter()
        .enumerate()
        .flat_map(|(i, arrays)| arrays.iter().map(move |a| (i, a)))
        .map(|(i, a)| Ok(a.to_data().get_slice_memory_size()? * if i == 0 { factor } else { 1 }))
        .sum::<Result<usize, arrow::error::ArrowError>>()?;
        if reservation.size() + size > cap || reservation.try_grow(size).is_err() {
            batches.push(batch);
            return Ok(Err(Overflow {
                read: batches,
                rest: rows,
            }));
        }
        for (all, key) in keys.iter_mut().zip(batch_keys) {
            all.push(key);
        }
        times.push(time);
        batches.push(batch);
    }
    let schema = rows.schema();
    let key_types = exprs
        .keys
        .iter()
        .map(|k| k.data_type(&schema))
        .collect::<Result<Vec<_>>>()?;
    Ok(Ok(Read {
        keys: keys
            .iter()
            .zip(&key_types)
            .map(|(parts, t)| concat_or_empty(parts, t))
            .collect::<Result<_>>()?,
        time: concat_or_empty(&times, &exprs.time.data_type(&schema)?)?,
        batches,
        schema,
        reservation,
    }))
}

fn concat_or_empty(parts: &[ArrayRef], data_type: &DataType) -> Result<ArrayRef> {
    if parts.is_empty() {
        return Ok(arrow::array::new_empty_array(data_type));
    }
    let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    Ok(concat(&parts)?)
}

/// A bucket's rows of one side, in memory or on disk, and how many there
/// are.
struct BucketRows {
    rows: usize,
    stream: SendableRecordBatchStream,
}

/// A side's rows split by key into [`BUCKETS`] buckets.
struct SplitSide {
    store: Store,
    rows: Vec<usize>,
    schema: SchemaRef,
}

impl SplitSide {
    fn into_buckets(self) -> Vec<BucketRows> {
        self.rows
            .into_iter()
            .zip(self.store.into_streams(&self.schema))
            .map(|(rows, stream)| BucketRows { rows, stream })
            .collect()
    }
}

/// Where a side's buckets are kept while they wait to be matched.
enum Store {
    /// In memory, for as long as the pool holds them: writing every row to
    /// a file and reading it back was an eighth of a training set's time.
    Memory {
        held: Vec<Vec<RecordBatch>>,
        reservation: MemoryReservation,
    },
    /// In spill files, one per bucket.
    Disk {
        sinks: Vec<SpillPoolSink>,
        streams: Vec<SendableRecordBatchStream>,
    },
}

impl Store {
    fn memory(reservation: MemoryReservation) -> Self {
        Store::Memory {
            held: vec![Vec::new(); BUCKETS],
            reservation,
        }
    }

    fn disk(spill: &Arc<SpillManager>) -> Self {
        let (sinks, streams) = (0..BUCKETS)
            .map(|_| spsc_channel(usize::MAX, Arc::clone(spill)))
            .unzip();
        Store::Disk { sinks, streams }
    }

    fn in_memory(&self) -> bool {
        matches!(self, Store::Memory { .. })
    }

    /// Keeps `batch` in `bucket`: in memory if the pool allows, else on
    /// disk from now on.
    fn push(&mut self, bucket: usize, batch: RecordBatch, spill: &Arc<SpillManager>) -> Result<()> {
        if let Store::Memory { held, reservation } = self {
            if reservation.try_grow(batch.get_array_memory_size()).is_ok() {
                held[bucket].push(batch);
                return Ok(());
            }
            self.move_to_disk(spill)?;
        }
        match self {
            Store::Disk { sinks, .. } => sinks[bucket].push_batch(&batch),
            Store::Memory { .. } => unreachable!("moved to disk above"),
        }
    }

    /// Writes what is held to spill files and frees its memory; what comes
    /// later goes there too.
    fn move_to_disk(&mut self, spill: &Arc<SpillManager>) -> Result<()> {
        let Store::Memory { held, reservation } = self else {
            return Ok(());
        };
        let held = std::mem::take(held);
        let disk = Store::disk(spill);
        if let Store::Disk { sinks, .. } = &disk {
            for (sink, batches) in sinks.iter().zip(&held) {
                for batch in batches {
                    sink.push_batch(batch)?;
                }
            }
        }
        drop(held);
        reservation.free();
        *self = disk;
        Ok(())
    }

    /// Each bucket's rows as a stream. Files end here; held rows give
    /// their memory back to the pool as the stream hands them out, to the
    /// reader that reserves it again.
    fn into_streams(self, schema: &SchemaRef) -> Vec<SendableRecordBatchStream> {
        match self {
            // Dropping the sinks ends the files: their streams end where
            // they do.
            Store::Disk { sinks, streams } => {
                drop(sinks);
                streams
            }
            Store::Memory { held, reservation } => held
                .into_iter()
                .map(|batches| {
                    let size: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
                    let mine = reservation.split(size.min(reservation.size()));
                    let handed = futures::stream::iter(batches).map(move |batch| {
                        mine.shrink(batch.get_array_memory_size().min(mine.size()));
                        Ok(batch)
                    });
                    Box::pin(RecordBatchStreamAdapter::new(Arc::clone(schema), handed))
                        as SendableRecordBatchStream
                })
                .collect(),
        }
    }
}

/// Splits a side's rows into [`BUCKETS`] buckets by a hash of their keys,
/// salted by split number `depth`: the same on both sides. They are held
/// in `memory` if `hold` and the pool allows. `left`: these are the left
/// side's rows (see [`Buckets::left`]).
#[allow(clippy::too_many_arguments)]
async fn split_by_key(
    overflow: Overflow,
    exprs: &SideExprs,
    spill: &Arc<SpillManager>,
    memory: MemoryReservation,
    hold: bool,
    depth: usize,
    batch_size: usize,
    left: bool,
) -> Result<SplitSide> {
    let mut buckets = Buckets {
        salt: 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(depth as u64 + 1),
        left,
        store: if hold {
            Store::memory(memory)
        } else {
            Store::disk(spill)
        },
        spill: Arc::clone(spill),
        waiting: (0..BUCKETS).map(|_| (Vec::new(), 0)).collect(),
        rows: vec![0; BUCKETS],
        hashes: Vec::new(),
        schema: Arc::clone(spill.schema()),
        batch_size,
    };
    for batch in overflow.read {
        buckets.split(&batch, exprs)?;
    }
    let mut rest = overflow.rest;
    while let Some(batch) = rest.next().await {
        buckets.split(&batch?, exprs)?;
    }
    for b in 0..BUCKETS {
        buckets.write(b)?;
    }
    let Buckets {
        store, rows, schema, ..
    } = buckets;
    Ok(SplitSide { store, rows, schema })
}

struct Buckets {
    /// Mixed into each row's hash by split number: DataFusion partitioned
    /// the rows by the low bits of the same hash, and each split must
    /// spread what the one before kept together.
    salt: u64,
    /// Whether these are the left side's rows, which are output: those
    /// that can match nothing are kept.
    left: bool,
    store: Store,
    spill: Arc<SpillManager>,
    /// Rows wait per bucket until there are a batch's worth, so that the
    /// buckets hold batches of the usual size, not slivers: held as
    /// slivers, the right side's rows took as long again to split a second
    /// time, and glibc's malloc searched its free lists for a quarter of
    /// the time of 3 M labels against 30 M feature rows.
    waiting: Vec<(Vec<RecordBatch>, usize)>,
    rows: Vec<usize>,
    hashes: Vec<u64>,
    schema: SchemaRef,
    batch_size: usize,
}

impl Buckets {
    fn split(&mut self, batch: &RecordBatch, exprs: &SideExprs) -> Result<()> {
        let rows = batch.num_rows();
        let keys = exprs
            .keys
            .iter()
            .map(|e| e.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<_>>>()?;
        let time = exprs.time.evaluate(batch)?.into_array(rows)?;
        self.hashes.clear();
        self.hashes.resize(rows, 0);
        create_hashes(&keys, &RandomState::default(), &mut self.hashes)?;
        let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); BUCKETS];
        for (row, hash) in self.hashes.iter().enumerate() {
            // A row with a null key or time matches nothing: on the right
            // it is dropped, on the left it goes to any bucket (all of
            // them in one would make that bucket as large as they are).
            let matchable = time.is_valid(row) && keys.iter().all(|k| k.is_valid(row));
            let bucket = if matchable {
                // The top bits of a multiply: every bit of the hash counts.
                let mixed = (hash ^ self.salt).wrapping_mul(0xff51_afd7_ed55_8ccd);
                (mixed >> (64 - BUCKET_BITS)) as usize
            } else if self.left {
                row % BUCKETS
            } else {
                continue;
            };
            rows_of[bucket].push(row as u32);
        }
        for (b, rows) in rows_of.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let count = rows.len();
            self.waiting[b]
                .0
                .push(take_record_batch(batch, &UInt32Array::from(rows))?);
            self.waiting[b].1 += count;
            self.rows[b] += count;
            if self.waiting[b].1 >= self.batch_size {
                self.write(b)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, b: usize) -> Result<()> {
        let (parts, rows) = std::mem::take(&mut self.waiting[b]);
        if rows > 0 {
            let batch = concat_batches(&self.schema, &parts)?;
            drop(parts);
            self.store.push(b, batch, &self.spill)?;
        }
        Ok(())
    }
}
