//! Fetched Kafka records held in Arrow buffers.
//!
//! A record is copied once, from the consumer's message into one growing
//! buffer per field of its partition, instead of into two allocations of
//! its own: millions of records a second make per-record allocations the
//! largest cost after decoding itself. The buffers become the metadata
//! columns as they are (`_offset`, `_timestamp`, `_key`, and the value for
//! BYTES sources) and are sliced, not copied, when a chunk is split.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, BinaryArray, BinaryBuilder, Int64Array, TimestampMillisecondArray};
use arrow::buffer::ScalarBuffer;

use super::decode::{CHUNK_BYTES, CHUNK_RECORDS, RawRecord};

/// Records of one topic-partition being gathered, in offset order.
#[derive(Debug, Default)]
pub struct RecordsBuilder {
    offsets: Vec<i64>,
    timestamps: Vec<Option<i64>>,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    bytes: usize,
}

impl RecordsBuilder {
    pub fn push(&mut self, offset: i64, timestamp_ms: Option<i64>, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.bytes += key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len);
        self.offsets.push(offset);
        self.timestamps.push(timestamp_ms);
        self.keys.append_option(key);
        self.values.append_option(value);
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Key and value bytes gathered so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the chunk being gathered is complete: [`CHUNK_RECORDS`]
    /// records, or [`CHUNK_BYTES`] of keys and values.
    pub fn is_full(&self) -> bool {
        self.len() >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES
    }

    /// What has been gathered; the builder starts again empty.
    pub fn finish(&mut self) -> Records {
        let offsets = std::mem::take(&mut self.offsets);
        let timestamps = std::mem::take(&mut self.timestamps);
        self.bytes = 0;
        Records {
            offsets: Int64Array::new(ScalarBuffer::from(offsets), None),
            timestamps: timestamps
                .into_iter()
                .collect::<TimestampMillisecondArray>()
                .with_timezone("UTC"),
            keys: self.keys.finish(),
            values: self.values.finish(),
        }
    }
}

/// Records of one topic-partition, in offset order, as Arrow arrays.
#[derive(Debug, Clone)]
pub struct Records {
    pub offsets: Int64Array,
    /// Milliseconds since the epoch, UTC (the broker's or the producer's).
    pub timestamps: TimestampMillisecondArray,
    pub keys: BinaryArray,
    pub values: BinaryArray,
}

impl Records {
    #[cfg(test)]
    pub fn from_raw(records: &[RawRecord]) -> Self {
        let mut builder = RecordsBuilder::default();
        for r in records {
            builder.push(r.offset, r.timestamp_ms, r.key.as_deref(), r.value.as_deref());
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Key and value bytes.
    pub fn bytes(&self) -> usize {
        let span = |a: &BinaryArray| {
            let offsets = a.value_offsets();
            (offsets[offsets.len() - 1] - offsets[0]) as usize
        };
        span(&self.keys) + span(&self.values)
    }

    pub fn offset(&self, i: usize) -> i64 {
        self.offsets.value(i)
    }

    /// The value of record `i`; None for a tombstone.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        self.values.is_valid(i).then(|| self.values.value(i))
    }

    /// Records `range`, sharing the buffers.
    pub fn slice(&self, range: Range<usize>) -> Self {
        let (start, len) = (range.start, range.len());
        Self {
            offsets: self.offsets.slice(start, len),
            timestamps: self.timestamps.slice(start, len),
            keys: self.keys.slice(start, len),
            values: self.values.slice(start, len),
        }
    }

    /// Record `i` copied out whole (for a dead letter).
    pub fn raw(&self, i: usize) -> RawRecord {
        RawRecord {
            offset: self.offset(i),
            timestamp_ms: self.timestamps.is_valid(i).then(|| self.timestamps.value(i)),
            key: self.keys.is_valid(i).then(|| self.keys.value(i).to_vec()),
            value: self.value(i).map(<[u8]>::to_vec),
        }
    }

    /// The columns `_offset`, `_timestamp` and `_key`.
    pub fn metadata_columns(&self) -> [Arc<dyn Array>; 3] {
        [
            Arc::new(self.offsets.clone()),
            Arc::new(self.timestamps.clone()),
            Arc::new(self.keys.clone()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_slice_without_copying() {
        let mut builder = RecordsBuilder::default();
        builder.push(7, Some(1_000), Some(b"k"), Some(b"{\"a\":1}"));
        builder.push(8, None, None, None);
        builder.push(9, Some(3_000), Some(b"k3"), Some(b""));
        assert_eq!((builder.len(), builder.bytes()), (3, 10));
        let records = builder.finish();
        assert!(builder.is_empty() && builder.bytes() == 0);
        assert_eq!(records.bytes(), 10);
        let tail = records.slice(1..3);
        assert_eq!(tail.bytes(), 2);
        assert_eq!(tail.offset(0), 8);
        assert_eq!(tail.value(0), None, "a tombstone has no value");
        assert_eq!(tail.value(1), Some(&b""[..]), "an empty value is not a tombstone");
        let raw = tail.raw(1);
        assert_eq!(
            (raw.offset, raw.timestamp_ms, raw.key.as_deref()),
            (9, Some(3_000), Some(&b"k3"[..]))
        );
        assert_eq!(tail.raw(0).timestamp_ms, None);
        assert_eq!(
            tail.values.values().as_ptr(),
            records.values.values().as_ptr(),
            "slices share the value buffer"
        );
    }
}
