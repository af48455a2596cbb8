//! The dead-letter table beside a feature set: records a run could not turn
//! into rows, kept whole (key and value bytes) with where they came from and
//! why, so nothing read is ever lost silently.

use std::sync::Arc;

use arrow::array::{
    BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// One record that did not become a row.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The pipeline's source table it was read for.
    pub source: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub error: String,
}

/// Where the dead letters of the feature set at `location` go.
pub fn dead_letter_location(location: &str) -> String {
    format!("{}/_dead_letters", location.trim_end_matches('/'))
}

pub fn dead_letter_schema() -> SchemaRef {
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, true),
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new("timestamp", utc(), true),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("pipeline", DataType::Utf8, true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("recorded_at", utc(), true),
    ]))
}

/// The dead letters as rows of [`dead_letter_schema`].
pub fn dead_letter_batch(letters: &[DeadLetter], pipeline: &str, run_id: &str) -> RecordBatch {
    let n = letters.len();
    let now = chrono::Utc::now().timestamp_micros();
    let text =
        |f: fn(&DeadLetter) -> &str| Arc::new(letters.iter().map(|l| Some(f(l))).collect::<StringArray>());
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            text(|l| &l.source),
            text(|l| &l.topic),
            Arc::new(letters.iter().map(|l| l.partition).collect::<Int32Array>()),
            Arc::new(letters.iter().map(|l| l.offset).collect::<Int64Array>()),
            Arc::new(
                letters
                    .iter()
                    .map(|l| l.timestamp_ms.map(|t| t * 1000))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone("UTC"),
            ),
            Arc::new(letters.iter().map(|l| l.key.as_deref()).collect::<BinaryArray>()),
            Arc::new(
                letters
                    .iter()
                    .map(|l| l.value.as_deref())
                    .collect::<BinaryArray>(),
            ),
            text(|l| &l.error),
            Arc::new(StringArray::from(vec![pipeline; n])),
            Arc::new(StringArray::from(vec![run_id; n])),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ],
    )
    .expect("columns built to the dead-letter schema")
}
