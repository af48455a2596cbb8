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

use parquet::basic::Compression;
use parquet::file::properties::{DEFAULT_MAX_ROW_GROUP_ROW_COUNT, WriterProperties};

/// Rows per distinct value for a dictionary to be kept.
const ROWS_PER_DISTINCT_VALUE: usize = 20;
/// Bytes a dictionary of 8-byte values takes per entry.
const ENTRY_BYTES: usize = 8;
const MIN_DICTIONARY_BYTES: usize = 64 * 1024;
const MAX_DICTIONARY_BYTES: usize = 1024 * 1024;

/// Writer settings for a write of `rows` rows, in row groups of at most
/// `row_group_bytes`: the writer holds the row group it is building in
/// memory, and a million rows of wide values would otherwise be gigabytes.
pub fn writer_properties(rows: usize, row_group_bytes: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(dictionary_limit(rows))
        .set_max_row_group_bytes(Some(row_group_bytes.max(1)))
        .build()
}

fn dictionary_limit(rows: usize) -> usize {
    let row_group = rows.min(DEFAULT_MAX_ROW_GROUP_ROW_COUNT);
    (row_group / ROWS_PER_DISTINCT_VALUE * ENTRY_BYTES).clamp(MIN_DICTIONARY_BYTES, MAX_DICTIONARY_BYTES)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
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
            Some(writer_properties(rows as usize, 64 << 20)),
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
