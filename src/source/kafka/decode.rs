//! Kafka record values into Arrow rows of the declared schema, with arrow's
//! own JSON and CSV decoders.
//!
//! A chunk of records is decoded in one go; when that fails, it is split in
//! halves until the records at fault stand alone, so one bad record costs
//! O(log n) extra decodes and every good record still gets its row. Bad
//! records come back with the decoder's reason, for the dead letters.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use super::records::Records;
pub use crate::pipeline::KafkaFormat as Format;

/// Records decoded together; large enough that per-chunk costs vanish, as
/// large as DataFusion's batches.
pub const CHUNK_RECORDS: usize = 8192;

/// A chunk also closes at this many bytes of keys and values: its binary
/// and string columns have 32-bit offsets (2 GiB), which 8,192 values of
/// 300 KB would overflow.
pub const CHUNK_BYTES: usize = 64 << 20;

/// The metadata columns every Kafka source has, after its own columns.
pub const METADATA_COLUMNS: &[&str] = &["_topic", "_partition", "_offset", "_timestamp", "_key"];

fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("_key", DataType::Binary, true),
    ]
}

/// One record copied out whole, as the dead letters keep it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A record that could not become a row, and why.
#[derive(Debug, Clone)]
pub struct BadRecord {
    pub record: RawRecord,
    pub kind: BadKind,
    pub reason: String,
}

/// What is wrong with a bad record, in a word (the metrics' `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// The value is not in the source's format, or not of its columns.
    Undecodable,
    /// No value, or no bytes in it.
    Empty,
    /// Larger than `max.record.bytes`.
    TooLarge,
    /// It decoded, but the pipeline's SQL fails on it.
    FailsQuery,
}

impl BadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BadKind::Undecodable => "undecodable",
            BadKind::Empty => "empty",
            BadKind::TooLarge => "too_large",
            BadKind::FailsQuery => "fails_query",
        }
    }
}

/// Decodes chunks of one topic-partition's records.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: Format,
    /// The declared columns (for BYTES, `value`).
    values: SchemaRef,
    /// The declared columns, then the metadata columns.
    table: SchemaRef,
    max_record_bytes: usize,
}

impl RecordDecoder {
    /// `declared`: the source's columns as written in its CREATE EXTERNAL TABLE.
    pub fn new(format: Format, declared: &Schema, max_record_bytes: usize) -> Result<Self, String> {
        let values = match format {
            Format::Bytes if declared.fields().is_empty() => {
                Schema::new(vec![Field::new("value", DataType::Binary, true)])
            }
            Format::Bytes => {
                return Err(
                    "a Kafka source STORED AS BYTES has one column, `value`: remove the column list".into(),
                );
            }
            _ if declared.fields().is_empty() => {
                return Err(
                    "a Kafka source needs its columns declared: CREATE EXTERNAL TABLE name (col TYPE, ...)"
                        .into(),
                );
            }
            _ => declared.clone(),
        };
        if let Some(clash) = values
            .fields()
            .iter()
            .find(|f| METADATA_COLUMNS.contains(&f.name().as_str()))
        {
            return Err(format!(
                "column '{}' is one of the metadata columns every Kafka source has ({}): rename it",
                clash.name(),
                METADATA_COLUMNS.join(", ")
            ));
        }
        let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(metadata_fields());
        Ok(Self {
            format,
            values: Arc::new(values),
            table: Arc::new(Schema::new(fields)),
            max_record_bytes,
        })
    }

    /// The table's schema: declared columns, then metadata.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.table)
    }

    /// Rows for the good records of `records` (all of one topic-partition,
    /// in offset order) and the bad ones with their reasons.
    pub fn decode(
        &self,
        topic: &str,
        partition: i32,
        records: &Records,
    ) -> (Vec<RecordBatch>, Vec<BadRecord>) {
        let mut parts = Vec::new();
        let mut failed = Vec::new();
        // Runs of records that pass the checks made without decoding.
        let mut run_start = 0;
        for i in 0..records.len() {
            if let Some((kind, reason)) = self.precheck(records, i) {
                self.decode_range(records, run_start..i, &mut parts, &mut failed);
                failed.push((i, kind, reason));
                run_start = i + 1;
            }
        }
        self.decode_range(records, run_start..records.len(), &mut parts, &mut failed);
        let mut batches = Vec::with_capacity(parts.len());
        for (range, values) in parts {
            match self.with_metadata(topic, partition, &records.slice(range.clone()), values) {
                Ok(batch) => batches.push(batch),
                // Not expected: the metadata columns are built to the schema.
                Err(e) => failed.extend(range.map(|i| (i, BadKind::Undecodable, e.to_string()))),
            }
        }
        failed.sort_by_key(|(i, _, _)| *i);
        let bad = failed
            .into_iter()
            .map(|(i, kind, reason)| BadRecord {
                record: records.raw(i),
                kind,
                reason,
            })
            .collect();
        (batches, bad)
    }

    /// Faults visible without decoding.
    fn precheck(&self, records: &Records, i: usize) -> Option<(BadKind, String)> {
        let value = records.value(i);
        let len = value.map_or(0, <[u8]>::len);
        if len > self.max_record_bytes {
            return Some((
                BadKind::TooLarge,
                format!(
                    "value of {len} bytes is larger than max.record.bytes ({})",
                    self.max_record_bytes
                ),
            ));
        }
        if self.format != Format::Bytes && len == 0 {
            return Some((
                BadKind::Empty,
                match value {
                    None => "empty message: the record has no value (a tombstone)",
                    Some(_) => "empty message: the value has no bytes",
                }
                .into(),
            ));
        }
        None
    }

    fn decode_range(
        &self,
        records: &Records,
        range: Range<usize>,
        parts: &mut Vec<(Range<usize>, RecordBatch)>,
        failed: &mut Vec<(usize, BadKind, String)>,
    ) {
        if range.is_empty() {
            return;
        }
        match self.try_decode(&records.slice(range.clone())) {
            Ok(batch) => parts.push((range, batch)),
            Err(reason) if range.len() == 1 => failed.push((range.start, BadKind::Undecodable, reason)),
            Err(_) => {
                let mid = range.start + range.len() / 2;
                self.decode_range(records, range.start..mid, parts, failed);
                self.decode_range(records, mid..range.end, parts, failed);
            }
        }
    }

    /// All of `records` as rows of the declared columns, or the first fault.
    fn try_decode(&self, records: &Records) -> Result<RecordBatch, String> {
        let values = (0..records.len()).map(|i| records.value(i).unwrap_or_default());
        let batch = match self.format {
            Format::Bytes => RecordBatch::try_new(
                Arc::clone(&self.values),
                vec![Arc::new(records.values.clone()) as ArrayRef],
            )
            .map_err(reason)?,
            Format::Json => {
                let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(&self.values))
                    .with_batch_size(records.len() + 1)
                    .build_decoder()
                    .map_err(reason)?;
                for bytes in values {
                    let before = decoder.len();
                    let used = decoder.decode(bytes).map_err(reason)?;
                    // The decoder stops early only when a record brings more
                    // rows than the batch has room for.
                    let rows = decoder.len() - before;
                    if used < bytes.len() || rows > 1 {
                        return Err("more than one JSON value in one record; expected one object".into());
                    }
                    if decoder.has_partial_record() {
                        return Err("truncated JSON: the value ends inside a JSON value".into());
                    }
                    if rows == 0 {
                        return Err("no JSON object in the value".into());
                    }
                }
                decoder.flush().map_err(reason)?.ok_or("no rows decoded")?
            }
            Format::Csv => {
                let mut decoder = arrow::csv::ReaderBuilder::new(Arc::clone(&self.values))
                    .with_header(false)
                    .with_batch_size(records.len().max(1) + 1)
                    .build_decoder();
                let mut line = Vec::new();
                for bytes in values {
                    line.clear();
                    line.extend_from_slice(bytes);
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    let mut rest = line.as_slice();
                    while !rest.is_empty() {
                        let used = decoder.decode(rest).map_err(reason)?;
                        if used == 0 {
                            return Err("CSV record could not be read".into());
                        }
                        rest = &rest[used..];
                    }
                }
                decoder.flush().map_err(reason)?.ok_or("no rows decoded")?
            }
        };
        if batch.num_rows() != records.len() {
            return Err(format!(
                "{} rows from {} records: a record holds more than one line",
                batch.num_rows(),
                records.len()
            ));
        }
        Ok(batch)
    }

    fn with_metadata(
        &self,
        topic: &str,
        partition: i32,
        records: &Records,
        values: RecordBatch,
    ) -> Result<RecordBatch, ArrowError> {
        let n = records.len();
        let mut columns: Vec<ArrayRef> = values.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![topic; n])));
        columns.push(Arc::new(Int32Array::from(vec![partition; n])));
        columns.extend(records.metadata_columns());
        RecordBatch::try_new(Arc::clone(&self.table), columns)
    }
}

fn reason(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    // arrow prefixes its messages with the error kind; the rest is the reason.
    text.strip_prefix("Json error: ")
        .or_else(|| text.strip_prefix("Parser error: "))
        .or_else(|| text.strip_prefix("Invalid argument error: "))
        .unwrap_or(&text)
        .to_string()
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn declared() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ])
    }

    /// The rows of every batch as one.
    fn one(batches: Vec<RecordBatch>) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    fn raw_records(values: &[&[u8]]) -> Vec<RawRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| RawRecord {
                offset: 100 + i as i64,
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
                key: Some(format!("k{i}").into_bytes()),
                value: Some(v.to_vec()),
            })
            .collect()
    }

    #[test]
    fn json_bad_records_are_set_aside_with_reasons() {
        let decoder = RecordDecoder::new(Format::Json, &declared(), 64).unwrap();
        let long = format!("{{\"id\": 9, \"name\": \"{}\"}}", "x".repeat(80));
        let input = raw_records(&[
            br#"{"id": 1, "name": "a"}"#,
            br#"{"id": 2, "na"#,
            br#"{"id": "three"}"#,
            br#"{"id": null, "name": "n"}"#,
            b"",
            b"{\"id\": 7, \"name\": \"\xff\"}",
            long.as_bytes(),
            br#"{"id": 4}{"id": 5}"#,
            br#"{"id": 6, "name": "f", "extra": true}"#,
        ]);
        let (batches, bad) = decoder.decode("clicks", 3, &Records::from_raw(&input));
        let batch = one(batches);
        let ids: Vec<i64> = batch.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, [1, 6]);
        assert_eq!(batch.schema().field(2).name(), "_topic");
        let offsets: Vec<i64> = batch.column(4).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(offsets, [100, 108]);
        assert_eq!(batch.column(6).as_binary::<i32>().value(1), b"k8");
        let bad_offsets: Vec<i64> = bad.iter().map(|b| b.record.offset).collect();
        assert_eq!(bad_offsets, [101, 102, 103, 104, 105, 106, 107]);
        let why = |o: i64| bad.iter().find(|b| b.record.offset == o).unwrap().reason.clone();
        assert!(why(101).contains("truncated"), "{}", why(101));
        assert!(!why(102).is_empty());
        assert!(why(104).contains("empty message"));
        assert!(why(106).contains("max.record.bytes"));
        assert!(why(107).contains("more than one JSON value"), "{}", why(107));
    }

    #[test]
    fn csv_rows_and_type_errors() {
        let decoder = RecordDecoder::new(Format::Csv, &declared(), 1024).unwrap();
        let input = raw_records(&[b"1,a", b"x,b\n", b"3,", b"4,d\n5,e"]);
        let (batches, bad) = decoder.decode("t", 0, &Records::from_raw(&input));
        let batch = one(batches);
        assert_eq!(batch.num_rows(), 2);
        assert!(batch.column(1).is_null(1), "an empty CSV field is NULL");
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].record.offset, 101);
        assert!(bad[1].reason.contains("more than one line"), "{}", bad[1].reason);
    }

    #[test]
    fn bytes_keep_values_and_tombstones() {
        let decoder = RecordDecoder::new(Format::Bytes, &Schema::empty(), 1024).unwrap();
        let mut input = raw_records(&[b"raw", b""]);
        input[1].value = None;
        let (batches, bad) = decoder.decode("t", 0, &Records::from_raw(&input));
        let batch = one(batches);
        assert!(bad.is_empty());
        assert_eq!(batch.column(0).as_binary::<i32>().value(0), b"raw");
        assert!(batch.column(0).is_null(1));
    }

    #[test]
    fn declarations_that_cannot_work_are_refused() {
        assert!(RecordDecoder::new(Format::Json, &Schema::empty(), 1).is_err());
        assert!(RecordDecoder::new(Format::Bytes, &declared(), 1).is_err());
        let clash = Schema::new(vec![Field::new("_offset", DataType::Int64, true)]);
        assert!(
            RecordDecoder::new(Format::Json, &clash, 1)
                .unwrap_err()
                .contains("metadata")
        );
    }
}
