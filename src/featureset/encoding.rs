//! How feature set columns are laid out in Parquet.
//!
//! Dictionary encoding pays where values repeat: a column of categories
//! becomes small indexes into a short list. Where they hardly repeat (ids,
//! offsets, measurements, timestamps) the writer still hashes every value
//! into a dictionary until the dictionary outgrows its page limit, and with
//! the default limit (1 MiB) that never happens within a micro-batch:
//! hashing was the largest single cost of writing one. So the limit follows
//! the row group: a column keeps its dictionary while it holds about one
//! distinct value per twenty rows (the rule DuckDB's writer uses) and falls
//! back to plain encoding soon after.
//!
//! Even that early fallback hashes tens of thousands of values per column
//! and row group, and a column of a few tens of thousands of distinct
//! values (prices, say) never outgrows the limit and is hashed whole. So
//! the writer first looks at the rows it holds back: a column whose values
//! are mostly distinct there is written without a dictionary from the
//! start.

use arrow::array::{Array, RecordBatch};
use datafusion::common::hash_utils::create_hashes;
use parquet::basic::Compression;
use parquet::file::properties::{DEFAULT_MAX_ROW_GROUP_ROW_COUNT, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Rows per distinct value for a dictionary to be kept.
const ROWS_PER_DISTINCT_VALUE: usize = 20;
/// Bytes a dictionary of 8-byte values takes per entry.
const ENTRY_BYTES: usize = 8;
const MIN_DICTIONARY_BYTES: usize = 64 * 1024;
const MAX_DICTIONARY_BYTES: usize = 1024 * 1024;

/// Rows of the held-back batches looked at to judge a column's values.
const SAMPLE_ROWS: usize = 64 * 1024;
/// Fewer rows than this say too little about the values to come.
const MIN_SAMPLE_ROWS: usize = 4096;

/// Writer settings for a write of `rows` rows, in row groups of at most
/// `row_group_bytes`: the writer holds the row group it is building in
/// memory, and a million rows of wide values would otherwise be gigabytes.
/// `first` are the first batches to be written, the sample that decides
/// which columns go without a dictionary.
pub fn writer_properties(rows: usize, row_group_bytes: usize, first: &[RecordBatch]) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(dictionary_limit(rows))
        .set_max_row_group_bytes(Some(row_group_bytes.max(1)));
    for name in mostly_distinct_columns(first) {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), false);
    }
    builder.build()
}

/// The flat columns of which more than half the sampled values are
/// distinct: ids, times, measurements. A dictionary of them would be about
/// as large as the values, so it could not pay whatever rows follow.
fn mostly_distinct_columns(first: &[RecordBatch]) -> Vec<String> {
    let Some(schema) = first.first().map(|b| b.schema()) else {
        return Vec::new();
    };
    let mut sample: Vec<RecordBatch> = Vec::new();
    let mut sampled = 0;
    for batch in first {
        if sampled >= SAMPLE_ROWS {
            break;
        }
        let take = batch.num_rows().min(SAMPLE_ROWS - sampled);
        sample.push(batch.slice(0, take));
        sampled += take;
    }
    if sampled < MIN_SAMPLE_ROWS {
        return Vec::new();
    }
    let random_state = foldhash::quality::FixedState::with_seed(0);
    let mut hashes = Vec::new();
    let mut distinct =
        hashbrown::HashSet::with_capacity_and_hasher(sampled, foldhash::fast::FixedState::default());
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.data_type().is_nested())
        .filter(|(i, _)| {
            distinct.clear();
            for batch in &sample {
                let column = batch.column(*i);
                hashes.clear();
                hashes.resize(column.len(), 0);
                if create_hashes([column.as_ref() as &dyn Array], &random_state, &mut hashes).is_err() {
                    return false;
                }
                distinct.extend(hashes.iter().copied());
            }
            distinct.len() * 2 > sampled
        })
        .map(|(_, f)| f.name().clone())
        .collect()
}

fn dictionary_limit(rows: usize) -> usize {
    let row_group = rows.min(DEFAULT_MAX_ROW_GROUP_ROW_COUNT);
    (row_group / ROWS_PER_DISTINCT_VALUE * ENTRY_BYTES).clamp(MIN_DICTIONARY_BYTES, MAX_DICTIONARY_BYTES)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    /// Bytes of the dictionary page of column `i` in the first row group.
    fn dictionary_bytes(file: &std::fs::File, i: usize) -> Option<i64> {
        let reader = SerializedFileReader::new(file.try_clone().unwrap()).unwrap();
        let column = reader.metadata().row_group(0).column(i).clone();
        column
            .dictionary_page_offset()
            .map(|start| column.data_page_offset() - start)
    }

    #[test]
    fn values_that_repeat_keep_a_dictionary_and_unique_ones_give_it_up_early() {
        let rows = 100_000i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Int64, false),
            Field::new("category", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i % 50))),
            ],
        )
        .unwrap();
        let file = tempfile::tempfile().unwrap();
        let mut writer = ArrowWriter::try_new(
            file.try_clone().unwrap(),
            schema,
            Some(writer_properties(rows as usize, 64 << 20, &[])),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        // With parquet's default limit every id would go into a dictionary
        // of about 800 kB.
        let ids = dictionary_bytes(&file, 0).unwrap_or(0);
        assert!(
            ids <= 2 * MIN_DICTIONARY_BYTES as i64,
            "dictionary of unique ids: {ids} bytes"
        );
        assert!(
            dictionary_bytes(&file, 1).is_some(),
            "50 categories keep their dictionary"
        );
    }

    fn ids_and_categories(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_id", DataType::Int64, false),
            Field::new("category", DataType::Utf8, true),
            Field::new("price", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (i % 7 != 0).then(|| format!("c{}", i % 50))),
                )),
                // A thousand prices.
                Arc::new(Float64Array::from_iter_values(
                    (0..rows).map(|i| (i % 1000) as f64 * 0.5),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn columns_mostly_distinct_in_the_first_rows_go_without_a_dictionary() {
        // The sample spans batches and stops at SAMPLE_ROWS.
        let batch = ids_and_categories(3 * SAMPLE_ROWS as i64);
        let first = [batch.slice(0, 1000), batch.slice(1000, batch.num_rows() - 1000)];
        let props = writer_properties(batch.num_rows(), 64 << 20, &first);
        assert!(!props.dictionary_enabled(&ColumnPath::from("event_id")));
        assert!(props.dictionary_enabled(&ColumnPath::from("category")));
        assert!(props.dictionary_enabled(&ColumnPath::from("price")));

        let file = tempfile::tempfile().unwrap();
        let mut writer =
            ArrowWriter::try_new(file.try_clone().unwrap(), batch.schema(), Some(props)).unwrap();
        for part in &first {
            writer.write(part).unwrap();
        }
        writer.close().unwrap();
        assert_eq!(
            dictionary_bytes(&file, 0),
            None,
            "unique ids: no dictionary page at all"
        );
        assert!(dictionary_bytes(&file, 1).is_some());
        // What was written reads back whole.
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192)
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
        assert_eq!(
            arrow::compute::concat_batches(&batch.schema(), &read).unwrap(),
            batch
        );
    }

    #[test]
    fn a_few_rows_decide_nothing() {
        let batch = ids_and_categories(MIN_SAMPLE_ROWS as i64 - 1);
        let props = writer_properties(batch.num_rows(), 64 << 20, &[batch]);
        assert!(props.dictionary_enabled(&ColumnPath::from("event_id")));
        assert!(writer_properties(0, 64 << 20, &[]).dictionary_enabled(&ColumnPath::from("event_id")));
    }

    #[test]
    fn dictionary_limit_follows_the_row_group() {
        assert_eq!(dictionary_limit(100), MIN_DICTIONARY_BYTES);
        assert_eq!(dictionary_limit(400_000), 160_000);
        assert_eq!(
            dictionary_limit(50_000_000),
            DEFAULT_MAX_ROW_GROUP_ROW_COUNT / 20 * 8
        );
        assert!(dictionary_limit(50_000_000) <= MAX_DICTIONARY_BYTES);
    }
}
