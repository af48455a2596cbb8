//! Per-column statistics of the rows a run writes, gathered batch by batch
//! as they stream to the writer, so no second pass over the data is needed.

use arrow::array::{Array, ArrayRef, Float64Array};
use arrow::compute::{cast, sum};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use super::lineage::ColumnStats;

struct Column {
    name: String,
    data_type: DataType,
    count: u64,
    null_count: u64,
    /// None where the type has no order (nested types).
    min: Option<MinAccumulator>,
    max: Option<MaxAccumulator>,
    /// (sum, count) for numeric columns.
    sum: Option<(f64, u64)>,
}

/// Accumulates statistics over the batches of one feature set write.
pub struct StatsCollector {
    columns: Vec<Column>,
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

impl StatsCollector {
    pub fn new(schema: &SchemaRef) -> Self {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                let t = f.data_type();
                let ordered = !t.is_nested();
                Column {
                    name: f.name().clone(),
                    data_type: t.clone(),
                    count: 0,
                    null_count: 0,
                    min: ordered.then(|| MinAccumulator::try_new(t).ok()).flatten(),
                    max: ordered.then(|| MaxAccumulator::try_new(t).ok()).flatten(),
                    sum: is_numeric(t).then_some((0.0, 0)),
                }
            })
            .collect();
        Self { columns }
    }

    pub fn update(&mut self, batch: &RecordBatch) {
        for (col, array) in self.columns.iter_mut().zip(batch.columns()) {
            let nulls = array.null_count() as u64;
            col.null_count += nulls;
            col.count += array.len() as u64 - nulls;
            let values = std::slice::from_ref(array);
            // A type the accumulators cannot order loses its min/max rather
            // than failing the run.
            if col.min.as_mut().is_some_and(|m| m.update_batch(values).is_err()) {
                col.min = None;
            }
            if col.max.as_mut().is_some_and(|m| m.update_batch(values).is_err()) {
                col.max = None;
            }
            if let Some((s, n)) = col.sum.as_mut()
                && let Some((batch_sum, batch_n)) = numeric_sum(array)
            {
                *s += batch_sum;
                *n += batch_n;
            }
        }
    }

    /// Fold in the statistics of another part of the same write.
    pub fn merge(&mut self, part: StatsCollector) {
        for (col, part) in self.columns.iter_mut().zip(part.columns) {
            col.count += part.count;
            col.null_count += part.null_count;
            col.min = merged(col.min.take(), part.min);
            col.max = merged(col.max.take(), part.max);
            col.sum = match (col.sum, part.sum) {
                (Some((s, n)), Some((part_s, part_n))) => Some((s + part_s, n + part_n)),
                _ => None,
            };
        }
    }

    pub fn finish(self) -> Vec<ColumnStats> {
        self.columns
            .into_iter()
            .map(|mut c| ColumnStats {
                name: c.name,
                data_type: c.data_type.to_string(),
                count: c.count,
                null_count: c.null_count,
                min: c.min.as_mut().and_then(|m| m.evaluate().ok()).and_then(show),
                max: c.max.as_mut().and_then(|m| m.evaluate().ok()).and_then(show),
                mean: c.sum.and_then(|(s, n)| (n > 0).then(|| s / n as f64)),
            })
            .collect()
    }
}

/// `into` with `part`'s state folded in; none where either has none.
fn merged<A: Accumulator>(into: Option<A>, part: Option<A>) -> Option<A> {
    let (mut into, mut part) = (into?, part?);
    let state = part
        .state()
        .ok()?
        .iter()
        .map(ScalarValue::to_array)
        .collect::<datafusion::error::Result<Vec<_>>>()
        .ok()?;
    into.merge_batch(&state).ok()?;
    Some(into)
}

/// A value as a reader would write it: times and dates in ISO 8601 (a
/// ScalarValue prints them as the integers they are stored as).
fn show(value: ScalarValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    if value.data_type().is_temporal()
        && let Ok(array) = value.to_array()
        && let Ok(formatter) = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())
    {
        return Some(formatter.value(0).to_string());
    }
    Some(value.to_string())
}

fn numeric_sum(array: &ArrayRef) -> Option<(f64, u64)> {
    let as_f64 = cast(array, &DataType::Float64).ok()?;
    let floats = as_f64.as_any().downcast_ref::<Float64Array>()?;
    let n = (floats.len() - floats.null_count()) as u64;
    Some((sum(floats).unwrap_or(0.0), n))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn counts_nulls_min_max_and_mean_across_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let b1 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(4), None])),
                Arc::new(StringArray::from(vec![Some("b"), Some("a")])),
            ],
        )
        .unwrap();
        let b2 = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(-2), Some(10)])),
                Arc::new(StringArray::from(vec![None, Some("c")])),
            ],
        )
        .unwrap();
        let mut s = StatsCollector::new(&schema);
        s.update(&b1);
        s.update(&b2);
        let stats = s.finish();
        assert_eq!(stats[0].count, 3);
        assert_eq!(stats[0].null_count, 1);
        assert_eq!(stats[0].min.as_deref(), Some("-2"));
        assert_eq!(stats[0].max.as_deref(), Some("10"));
        assert_eq!(stats[0].mean, Some(4.0));
        assert_eq!(stats[1].min.as_deref(), Some("a"));
        assert_eq!(stats[1].max.as_deref(), Some("c"));
        assert_eq!(stats[1].mean, None);
    }

    #[test]
    fn parts_merge_as_if_gathered_whole() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = |n: Vec<Option<i64>>, s: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(Int64Array::from(n)), Arc::new(StringArray::from(s))],
            )
            .unwrap()
        };
        let first = batch(vec![Some(4), None, Some(7)], vec![Some("m"), Some("z"), None]);
        let second = batch(vec![Some(-3), Some(5)], vec![Some("b"), None]);
        let mut whole = StatsCollector::new(&schema);
        whole.update(&first);
        whole.update(&second);
        let mut a = StatsCollector::new(&schema);
        a.update(&first);
        let mut b = StatsCollector::new(&schema);
        b.update(&second);
        // A part that saw no rows changes nothing.
        let empty = StatsCollector::new(&schema);
        b.merge(empty);
        a.merge(b);
        let (merged, whole) = (a.finish(), whole.finish());
        assert_eq!(merged, whole);
        assert_eq!(merged[0].min.as_deref(), Some("-3"));
        assert_eq!(merged[0].max.as_deref(), Some("7"));
        assert_eq!(merged[0].count, 4);
        assert_eq!(merged[1].min.as_deref(), Some("b"));
        assert_eq!(merged[1].max.as_deref(), Some("z"));
        assert_eq!(merged[1].null_count, 2);
    }

    #[test]
    fn times_and_dates_read_as_iso_8601() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("d", DataType::Date32, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_767_225_600_000_000, 1_767_225_601_500_000])
                        .with_timezone("UTC"),
                ),
                Arc::new(Date32Array::from(vec![20_454, 20_455])),
            ],
        )
        .unwrap();
        let mut s = StatsCollector::new(&schema);
        s.update(&batch);
        let stats = s.finish();
        assert_eq!(stats[0].min.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(stats[0].max.as_deref(), Some("2026-01-01T00:00:01.500Z"));
        assert_eq!(stats[1].min.as_deref(), Some("2026-01-01"));
    }
}
