//! The records a stream worker has fetched and not yet put in a batch.
//!
//! Per partition: chunks already decoded, oldest first, then chunks being
//! decoded, then records still to decode. The poll thread appends records;
//! each full chunk goes to the decode thread and comes back decoded, so
//! fetching, decoding and the stream loop's batches all go on at once. A
//! batch takes decoded chunks, and the undecoded tail only when no chunk
//! of its partition is out being decoded, so a partition's records are
//! always taken in order. A rewind or revocation gives the partition a new
//! epoch; a chunk that comes back from an older epoch is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::decode::{BadRecord, RecordDecoder};
use super::positions::TopicPartition;
use super::records::{Records, RecordsBuilder};

/// Records of one partition decoded together.
#[derive(Debug)]
pub struct DecodedChunk {
    pub batches: Vec<RecordBatch>,
    pub bad: Vec<BadRecord>,
    /// The offsets of its first and last record.
    pub first: i64,
    pub last: i64,
    /// Records, good and bad.
    pub records: usize,
    /// Key and value bytes.
    pub bytes: usize,
}

/// Decode one chunk of a partition's records.
pub fn decode_chunk(decoder: &RecordDecoder, tp: &TopicPartition, records: &Records) -> DecodedChunk {
    let (batches, bad) = decoder.decode(&tp.topic, tp.partition, records);
    DecodedChunk {
        batches,
        bad,
        first: records.offset(0),
        last: records.offset(records.len() - 1),
        records: records.len(),
        bytes: records.bytes(),
    }
}

/// A full chunk of one partition's records, handed out by [`Buffer::push`]
/// to be decoded and given back with [`Buffer::add_decoded`].
#[derive(Debug)]
pub struct ChunkToDecode {
    pub tp: TopicPartition,
    pub records: Records,
    /// The partition's epoch when the chunk was handed out.
    epoch: u64,
}

/// A chunk out being decoded: what it counts for in the buffer.
#[derive(Debug)]
struct Decoding {
    arrived: Instant,
    records: usize,
    bytes: usize,
}

/// One partition's share of a batch: from `from`, the chunks the decode
/// thread decoded, then records still to decode.
#[derive(Debug)]
pub struct TakenPartition {
    pub tp: TopicPartition,
    pub from: i64,
    pub decoded: Vec<DecodedChunk>,
    pub pending: Records,
}

impl TakenPartition {
    /// The offset after the last record taken.
    pub fn to(&self) -> i64 {
        match self.pending.len() {
            0 => self.decoded.last().map_or(self.from, |c| c.last + 1),
            n => self.pending.offset(n - 1) + 1,
        }
    }
}

/// A batch taken from the buffer.
pub type TakenBatch = Vec<TakenPartition>;

#[derive(Debug, Default)]
struct PartitionBuffer {
    /// The first offset of the next batch (None until a record shows it,
    /// when reading starts at `earliest` or `latest`).
    from: Option<i64>,
    /// With when each chunk's first record arrived.
    decoded: VecDeque<(Instant, DecodedChunk)>,
    /// Chunks handed out to be decoded, in offset order; they come back
    /// in that order.
    decoding: VecDeque<Decoding>,
    pending: RecordsBuilder,
    /// When the first pending record arrived.
    pending_since: Option<Instant>,
    /// The last offset buffered; a record at or before it was fetched
    /// before a rewind.
    last: Option<i64>,
    /// Which assignment or rewind of the partition this buffer serves.
    epoch: u64,
}

impl PartitionBuffer {
    fn starting_at(from: Option<i64>, epoch: u64) -> Self {
        Self {
            from,
            epoch,
            ..Default::default()
        }
    }

    fn records(&self) -> usize {
        self.decoded.iter().map(|(_, c)| c.records).sum::<usize>()
            + self.decoding.iter().map(|d| d.records).sum::<usize>()
            + self.pending.len()
    }

    fn bytes(&self) -> usize {
        self.decoded.iter().map(|(_, c)| c.bytes).sum::<usize>()
            + self.decoding.iter().map(|d| d.bytes).sum::<usize>()
            + self.pending.bytes()
    }

    /// When its oldest record arrived.
    fn oldest(&self) -> Option<Instant> {
        self.decoded
            .front()
            .map(|(arrived, _)| *arrived)
            .or_else(|| self.decoding.front().map(|d| d.arrived))
            .or(self.pending_since)
    }
}

/// How full the buffer may get before the member stops fetching.
#[derive(Debug, Clone, Copy)]
pub struct BufferLimits {
    pub rows: usize,
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Buffer {
    partitions: BTreeMap<TopicPartition, PartitionBuffer>,
    /// Records and bytes buffered, counting chunks being decoded.
    rows: usize,
    bytes: usize,
    /// The epoch the next assignment or rewind gets.
    next_epoch: u64,
}

impl Buffer {
    /// Start holding `tp`; its next batch starts at `at` (None: at the
    /// first record that arrives).
    pub fn assign(&mut self, tp: TopicPartition, at: Option<i64>) {
        let fresh = self.fresh(at);
        self.partitions.insert(tp, fresh);
        self.recount();
    }

    fn fresh(&mut self, from: Option<i64>) -> PartitionBuffer {
        self.next_epoch += 1;
        PartitionBuffer::starting_at(from, self.next_epoch)
    }

    /// Stop holding `partitions`, dropping what they had buffered.
    pub fn revoke(&mut self, partitions: &[TopicPartition]) {
        for tp in partitions {
            self.partitions.remove(tp);
        }
        self.recount();
    }

    /// Drop what `tp` has buffered and start again at `at`; false when the
    /// partition is not held.
    pub fn rewind(&mut self, tp: &TopicPartition, at: Option<i64>) -> bool {
        if !self.partitions.contains_key(tp) {
            return false;
        }
        let fresh = self.fresh(at);
        self.partitions.insert(tp.clone(), fresh);
        self.recount();
        true
    }

    pub fn held(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// Records and bytes buffered, and how long ago the oldest arrived:
    /// each record's wait counts towards `--batch-interval`, not only the
    /// first one's since the last batch.
    pub fn buffered(&self) -> (usize, usize, Option<Duration>) {
        let oldest = self.partitions.values().filter_map(PartitionBuffer::oldest).min();
        (self.rows, self.bytes, oldest.map(|t| t.elapsed()))
    }

    pub fn is_full(&self, limits: BufferLimits) -> bool {
        self.rows >= limits.rows || self.bytes >= limits.bytes
    }

    /// Append one fetched record. Returns the partition's next chunk to
    /// decode when this record fills it; records of partitions not held,
    /// and records fetched before a rewind, are dropped.
    pub fn push(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Option<ChunkToDecode> {
        let p = self.partitions.get_mut(tp)?;
        if p.from.is_some_and(|from| offset < from) || p.last.is_some_and(|last| offset <= last) {
            return None;
        }
        p.pending.push(offset, timestamp_ms, key, value);
        p.last = Some(offset);
        let since = *p.pending_since.get_or_insert_with(Instant::now);
        self.rows += 1;
        self.bytes += key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        if !p.pending.is_full() {
            return None;
        }
        p.pending_since = None;
        let records = p.pending.finish();
        p.decoding.push_back(Decoding {
            arrived: since,
            records: records.len(),
            bytes: records.bytes(),
        });
        Some(ChunkToDecode {
            tp: tp.clone(),
            records,
            epoch: p.epoch,
        })
    }

    /// Put back a chunk handed out by [`Buffer::push`], now decoded. Chunks
    /// of one partition must come back in the order they were handed out.
    /// One whose partition was rewound or revoked since is dropped: its
    /// records left the counts then.
    pub fn add_decoded(&mut self, handed: &ChunkToDecode, chunk: DecodedChunk) {
        let Some(p) = self.partitions.get_mut(&handed.tp) else {
            return;
        };
        if p.epoch != handed.epoch {
            return;
        }
        let Some(decoding) = p.decoding.pop_front() else {
            return;
        };
        debug_assert_eq!(decoding.records, chunk.records, "chunks come back in order");
        p.decoded.push_back((decoding.arrived, chunk));
    }

    /// Take a batch of at most about `max_rows` records and `max_bytes`
    /// bytes: the same share of each partition's records (the oldest), in
    /// whole decoded chunks.
    pub fn take(&mut self, max_rows: usize, max_bytes: usize) -> TakenBatch {
        let share = (max_rows as f64 / self.rows.max(1) as f64)
            .min(max_bytes as f64 / self.bytes.max(1) as f64)
            .min(1.0);
        let (mut rows, mut bytes) = (0, 0);
        let mut batch = Vec::new();
        for (tp, p) in self.partitions.iter_mut() {
            let available = p.records();
            if available == 0 {
                continue;
            }
            let want = ((available as f64 * share).ceil() as usize).clamp(1, available);
            let mut decoded = Vec::new();
            let mut taken = 0;
            while taken < want
                && let Some((_, chunk)) = p.decoded.pop_front()
            {
                taken += chunk.records;
                bytes += chunk.bytes;
                decoded.push(chunk);
            }
            // Records after a chunk still out being decoded wait for it.
            let pending = if taken < want && p.decoding.is_empty() && !p.pending.is_empty() {
                taken += p.pending.len();
                bytes += p.pending.bytes();
                p.pending_since = None;
                p.pending.finish()
            } else {
                RecordsBuilder::default().finish()
            };
            if taken == 0 {
                continue;
            }
            rows += taken;
            let first = decoded.first().map_or_else(|| pending.offset(0), |c| c.first);
            let part = TakenPartition {
                tp: tp.clone(),
                from: p.from.unwrap_or(first),
                decoded,
                pending,
            };
            p.from = Some(part.to());
            batch.push(part);
        }
        self.rows = self.rows.saturating_sub(rows);
        self.bytes = self.bytes.saturating_sub(bytes);
        batch
    }

    /// Count again after partitions were added, dropped or cleared; chunks
    /// out being decoded count for the partitions that still expect them.
    fn recount(&mut self) {
        self.rows = self.partitions.values().map(PartitionBuffer::records).sum();
        self.bytes = self.partitions.values().map(PartitionBuffer::bytes).sum();
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;
    use crate::pipeline::KafkaFormat;
    use crate::source::kafka::decode::{CHUNK_BYTES, CHUNK_RECORDS};

    fn decoder() -> RecordDecoder {
        let schema = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
        RecordDecoder::new(KafkaFormat::Json, &schema, 1024).unwrap()
    }

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition {
            topic: "clicks".into(),
            partition,
        }
    }

    /// Every offset a taken partition holds: rows and bad records.
    fn offsets(decoder: &RecordDecoder, part: &TakenPartition) -> Vec<i64> {
        let mut chunks: Vec<&DecodedChunk> = part.decoded.iter().collect();
        let rest = (!part.pending.is_empty()).then(|| decode_chunk(decoder, &part.tp, &part.pending));
        chunks.extend(rest.as_ref());
        let mut out = Vec::new();
        for chunk in chunks {
            for b in &chunk.batches {
                let column = b.column_by_name("_offset").unwrap().as_primitive::<Int64Type>();
                out.extend(column.values().iter().copied());
            }
            out.extend(chunk.bad.iter().map(|b| b.record.offset));
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn batches_hold_every_record_once_in_order_while_chunks_decode_aside() {
        let decoder = decoder();
        let mut buffer = Buffer::default();
        let partitions = [tp(0), tp(1), tp(2)];
        for p in &partitions {
            buffer.assign(p.clone(), None);
        }
        // Partition 1 starts at a position recorded earlier.
        buffer.rewind(&partitions[1], Some(500));
        let counts = [20_000i64, 9_000, 30_000];
        let mut next = [0i64, 500, 7];
        let mut seen: Vec<Vec<i64>> = vec![Vec::new(); 3];
        let mut expected_from = [None::<i64>; 3];
        // Chunks handed to the "decode thread" and not yet put back: up to
        // three at once, over any partitions.
        let mut aside: VecDeque<ChunkToDecode> = VecDeque::new();
        let give_back = |buffer: &mut Buffer, handed: ChunkToDecode| {
            let chunk = decode_chunk(&decoder, &handed.tp, &handed.records);
            buffer.add_decoded(&handed, chunk);
        };
        let mut pushed = 0usize;
        let mut round = 0;
        loop {
            let mut progressed = false;
            for (i, p) in partitions.iter().enumerate() {
                let end = counts[i] + if i == 1 { 500 } else { 0 };
                for _ in 0..1_500 {
                    if next[i] >= end {
                        break;
                    }
                    let value = if next[i] % 997 == 0 {
                        b"{\"id\": \"bad\"}".to_vec()
                    } else {
                        format!("{{\"id\": {}}}", next[i]).into_bytes()
                    };
                    let full = buffer.push(p, next[i], Some(next[i]), None, Some(&value));
                    // A record fetched again after the last one is refused.
                    assert!(buffer.push(p, next[i], None, None, Some(b"{}")).is_none());
                    pushed += 1;
                    next[i] += 1;
                    progressed = true;
                    if let Some(handed) = full {
                        if aside.len() == 3 {
                            give_back(&mut buffer, aside.pop_front().unwrap());
                        }
                        aside.push_back(handed);
                    }
                }
            }
            // Take while chunks are still aside: the batch must stop short of
            // them. Now and then take all there is, tails included.
            round += 1;
            // Seldom enough that chunks fill between takes.
            let most = match round % 16 {
                0 => Some(usize::MAX),
                8 => Some(4_000),
                _ if progressed => None,
                _ => Some(4_000),
            };
            let taken = most.map_or_else(Vec::new, |most| buffer.take(most, usize::MAX));
            for part in taken {
                let i = part.tp.partition as usize;
                if let Some(from) = expected_from[i] {
                    assert_eq!(
                        part.from, from,
                        "batches of partition {i} must follow one another"
                    );
                }
                let got = offsets(&decoder, &part);
                assert!(
                    got.iter().copied().eq(part.from..part.to()),
                    "partition {i}: a batch holds its range whole, nothing else"
                );
                expected_from[i] = Some(part.to());
                seen[i].extend(got);
            }
            if !progressed && aside.is_empty() && buffer.buffered().0 == 0 {
                break;
            }
            if !progressed && let Some(handed) = aside.pop_front() {
                give_back(&mut buffer, handed);
            }
        }
        assert_eq!(pushed, 20_000 + 9_000 + (30_000 - 7));
        for (i, offsets) in seen.iter().enumerate() {
            let start = [0, 500, 7][i];
            let want: Vec<i64> = (start..counts[i] + if i == 1 { 500 } else { 0 }).collect();
            assert_eq!(offsets.len(), want.len(), "partition {i}");
            assert!(offsets == &want, "partition {i}: every offset once, in order");
        }
        assert_eq!(buffer.buffered(), (0, 0, None));
    }

    #[test]
    fn rewind_and_revoke_drop_what_was_buffered() {
        let mut buffer = Buffer::default();
        buffer.assign(tp(0), Some(10));
        buffer.assign(tp(1), None);
        assert!(buffer.push(&tp(0), 9, None, None, Some(b"{}")).is_none());
        assert_eq!(
            buffer.buffered().0,
            0,
            "a record before the start position is not kept"
        );
        for offset in 10..20 {
            buffer.push(&tp(0), offset, None, Some(b"k"), Some(b"{\"id\":1}"));
            buffer.push(&tp(1), offset, None, None, Some(b"{\"id\":1}"));
        }
        let (rows, bytes, age) = buffer.buffered();
        assert_eq!((rows, bytes), (20, 10 * 9 + 10 * 8));
        assert!(age.is_some());
        assert!(buffer.rewind(&tp(0), Some(15)));
        assert_eq!(buffer.buffered().0, 10);
        // Fetched before the seek: dropped. From the new position: kept.
        assert!(buffer.push(&tp(0), 14, None, None, Some(b"{}")).is_none());
        buffer.push(&tp(0), 15, None, None, Some(b"{\"id\":1}"));
        buffer.revoke(&[tp(1)]);
        assert_eq!(buffer.held(), vec![tp(0)]);
        let batch = buffer.take(100, usize::MAX);
        assert_eq!(batch.len(), 1);
        assert_eq!((batch[0].from, batch[0].to()), (15, 16));
        assert!(!buffer.rewind(&tp(1), None), "a revoked partition is not held");
        assert_eq!(buffer.buffered(), (0, 0, None));
    }

    #[test]
    fn chunks_close_by_bytes_before_their_offsets_could_overflow() {
        // 8,192 values of 300 KB would be 2.4 GB in one chunk: past the
        // 2 GiB a binary column's 32-bit offsets can address.
        let big = vec![b'x'; 300 * 1024];
        let mut buffer = Buffer::default();
        buffer.assign(tp(0), Some(0));
        let mut handed = Vec::new();
        for offset in 0..700 {
            handed.extend(buffer.push(&tp(0), offset, None, None, Some(&big)));
        }
        assert!(handed.len() >= 3, "{} chunks", handed.len());
        for chunk in &handed {
            assert!(
                chunk.records.bytes() < CHUNK_BYTES + big.len(),
                "{}",
                chunk.records.bytes()
            );
            assert!(chunk.records.len() < CHUNK_RECORDS);
        }
        let first: Vec<i64> = handed.iter().map(|c| c.records.offsets.value(0)).collect();
        assert_eq!(first[0], 0);
        assert!(first.windows(2).all(|w| w[0] < w[1]), "in order: {first:?}");
    }

    #[test]
    fn the_age_of_a_batch_is_that_of_its_oldest_record_still_buffered() {
        let decoder = decoder();
        let mut buffer = Buffer::default();
        buffer.assign(tp(0), Some(0));
        let fill = |buffer: &mut Buffer, from: i64| {
            for offset in from..from + CHUNK_RECORDS as i64 {
                if let Some(handed) = buffer.push(&tp(0), offset, None, None, Some(b"{\"id\":1}")) {
                    let chunk = decode_chunk(&decoder, &handed.tp, &handed.records);
                    buffer.add_decoded(&handed, chunk);
                }
            }
        };
        fill(&mut buffer, 0);
        std::thread::sleep(Duration::from_millis(80));
        fill(&mut buffer, CHUNK_RECORDS as i64);
        let before = buffer.buffered().2.unwrap();
        assert!(before >= Duration::from_millis(80));
        let batch = buffer.take(CHUNK_RECORDS, usize::MAX);
        assert_eq!(batch[0].to(), CHUNK_RECORDS as i64, "one chunk of two taken");
        let after = buffer.buffered().2.unwrap();
        assert!(
            after + Duration::from_millis(50) < before,
            "what is left arrived later: {after:?} against {before:?}"
        );
    }

    #[test]
    fn a_chunk_decoded_across_a_rewind_is_dropped() {
        let decoder = decoder();
        let mut buffer = Buffer::default();
        buffer.assign(tp(0), Some(0));
        let value = b"{\"id\":1}";
        let mut out = None;
        for offset in 0..CHUNK_RECORDS as i64 + 10 {
            out = buffer.push(&tp(0), offset, None, None, Some(value)).or(out);
        }
        let handed = out.expect("a full chunk is handed out");
        assert_eq!(buffer.buffered().0, CHUNK_RECORDS + 10);
        let batch = buffer.take(usize::MAX, usize::MAX);
        assert!(
            batch.is_empty(),
            "the tail waits for the chunk before it: {batch:?}"
        );
        // Rewound while the chunk was out: it no longer counts, and does not
        // come back into the buffer.
        assert!(buffer.rewind(&tp(0), Some(5)));
        assert_eq!(buffer.buffered(), (0, 0, None));
        let chunk = decode_chunk(&decoder, &handed.tp, &handed.records);
        buffer.add_decoded(&handed, chunk);
        assert_eq!(buffer.buffered(), (0, 0, None));
        for offset in 5..8 {
            buffer.push(&tp(0), offset, None, None, Some(value));
        }
        let batch = buffer.take(usize::MAX, usize::MAX);
        assert_eq!((batch[0].from, batch[0].to()), (5, 8));
    }
}
