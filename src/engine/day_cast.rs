//! `CAST(ts AS DATE)` by arithmetic where the time zone has a fixed offset.
//!
//! Arrow casts a timestamp to a date through chrono, one row at a time:
//! the timestamp becomes a `DateTime` in its zone, then a calendar date,
//! then days since the epoch again. That was about a tenth of the CPU of
//! the sample aggregates, which group by `CAST(event_time AS DATE)` over
//! every event. In UTC, or any zone with a fixed offset (`+02:00`), the
//! date is the shifted time divided by a day, rounded down: what
//! [`DateOf`] computes, over whole buffers. Zones with daylight saving
//! (`Europe/Berlin`) keep Arrow's cast.
//!
//! [`dates_by_arithmetic`] swaps the cast for [`DateOf`] in an optimized
//! logical plan, just before physical planning, and only in projections
//! and aggregates: a cast in a filter stays a cast, which the Parquet scan
//! can prune row groups with. The hour, minute and day of the week of such
//! a time are swapped there too (see [`super::time_parts`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, PrimitiveArray};
use arrow::compute::kernels::aggregate::{max, min};
use arrow::datatypes::{
    ArrowTimestampType, DataType, Field, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use chrono::{NaiveDate, NaiveDateTime, Offset, TimeZone};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ExprSchema, Result, exec_err};
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use super::time_parts;

/// Every `CAST(ts AS DATE)` of a timestamp in a fixed-offset zone, in the
/// projections and aggregates of `plan`, as [`DateOf`]. The plan's schema
/// and column names stay as they were.
pub fn dates_by_arithmetic(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan
        .transform_up(|node| {
            if !matches!(node, LogicalPlan::Projection(_) | LogicalPlan::Aggregate(_)) {
                return Ok(Transformed::no(node));
            }
            let Some(input) = node.inputs().first().map(|i| Arc::clone(i.schema())) else {
                return Ok(Transformed::no(node));
            };
            let names = NamePreserver::new(&node);
            node.map_expressions(|expr| {
                let name = names.save(&expr);
                let rewritten = expr.transform_up(|e| {
                    swap_cast(e, input.as_ref())?
                        .transform_data(|e| time_parts::swap_date_part(e, input.as_ref()))
                })?;
                Ok(if rewritten.transformed {
                    Transformed::yes(name.restore(rewritten.data))
                } else {
                    rewritten
                })
            })
        })?
        .data)
}

fn swap_cast(expr: Expr, schema: &dyn ExprSchema) -> Result<Transformed<Expr>> {
    let Expr::Cast(Cast { expr: inner, field }) = &expr else {
        return Ok(Transformed::no(expr));
    };
    if field.data_type() != &DataType::Date32 {
        return Ok(Transformed::no(expr));
    }
    let fixed = match inner.get_type(schema)? {
        DataType::Timestamp(_, tz) => fixed_offset_seconds(tz.as_deref()).is_some(),
        _ => false,
    };
    if !fixed {
        return Ok(Transformed::no(expr));
    }
    static UDF: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| Arc::new(ScalarUDF::from(DateOf::default())));
    Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::clone(&UDF),
        vec![inner.as_ref().clone()],
    ))))
}

/// Seconds east of UTC of a zone whose offset never changes: none (a
/// naive timestamp, read as UTC, as Arrow does), the names of UTC, and
/// `+HH:MM` / `-HHMM` / `+HH` offsets.
pub(super) fn fixed_offset_seconds(tz: Option<&str>) -> Option<i64> {
    const UTC_NAMES: [&str; 8] = [
        "UTC", "Etc/UTC", "GMT", "Etc/GMT", "UCT", "Etc/UCT", "Zulu", "Etc/Zulu",
    ];
    let Some(tz) = tz else { return Some(0) };
    if UTC_NAMES.contains(&tz) {
        return Some(0);
    }
    if !tz.starts_with(['+', '-']) {
        return None;
    }
    let zone: arrow::array::timezone::Tz = tz.parse().ok()?;
    let epoch = NaiveDateTime::default();
    Some(i64::from(
        zone.offset_from_utc_datetime(&epoch).fix().local_minus_utc(),
    ))
}

/// `CAST(ts AS DATE)` for a timestamp in a zone of fixed offset: the local
/// date, as days since 1970-01-01. Any other zone, or a time outside the
/// dates chrono can represent, goes to Arrow's cast (and its error).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateOf {
    signature: Signature,
}

impl Default for DateOf {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateOf {
    fn name(&self) -> &str {
        "cast_to_date"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Date32)
    }

    /// Nullable exactly where the cast it replaces is.
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let nullable = args.arg_fields.first().is_none_or(|f| f.is_nullable());
        Ok(Arc::new(Field::new(self.name(), DataType::Date32, nullable)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("cast_to_date takes one timestamp");
        };
        match arg {
            ColumnarValue::Array(array) => Ok(ColumnarValue::Array(dates_of(array)?)),
            ColumnarValue::Scalar(scalar) => {
                let array = dates_of(&scalar.to_array()?)?;
                Ok(ColumnarValue::Scalar(
                    datafusion::common::ScalarValue::try_from_array(&array, 0)?,
                ))
            }
        }
    }
}

/// The local dates of `times`, a timestamp array.
fn dates_of(times: &ArrayRef) -> Result<ArrayRef> {
    let DataType::Timestamp(unit, tz) = times.data_type() else {
        return exec_err!("cast_to_date takes a timestamp, not {}", times.data_type());
    };
    let fast = fixed_offset_seconds(tz.as_deref()).and_then(|offset| match unit {
        TimeUnit::Second => by_arithmetic::<TimestampSecondType, 1>(times, offset),
        TimeUnit::Millisecond => by_arithmetic::<TimestampMillisecondType, 1_000>(times, offset),
        TimeUnit::Microsecond => by_arithmetic::<TimestampMicrosecondType, 1_000_000>(times, offset),
        TimeUnit::Nanosecond => by_arithmetic::<TimestampNanosecondType, 1_000_000_000>(times, offset),
    });
    match fast {
        Some(dates) => Ok(Arc::new(dates)),
        None => Ok(arrow::compute::cast(times, &DataType::Date32)?),
    }
}

/// Days of the first and last dates chrono represents, one day inside
/// each end: Arrow's cast fails past them, and the arithmetic leaves those
/// times to it.
pub(super) static DAY_RANGE: LazyLock<(i64, i64)> = LazyLock::new(|| {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    let days = |d: NaiveDate| d.signed_duration_since(epoch).num_days();
    (days(NaiveDate::MIN) + 1, days(NaiveDate::MAX) - 1)
});

/// `floor((t + offset) / day)` for every time, when every valid time's date
/// is one chrono represents; `None` otherwise. The units per second are a
/// constant, so the division is a multiplication.
fn by_arithmetic<T: ArrowTimestampType, const PER_SECOND: i64>(
    times: &ArrayRef,
    offset_seconds: i64,
) -> Option<Date32Array> {
    let times: &PrimitiveArray<T> = times.as_primitive();
    let per_day = 86_400 * PER_SECOND;
    let offset = offset_seconds * PER_SECOND;
    let (first_day, last_day) = *DAY_RANGE;
    // The bounds in i128: in nanoseconds they are past i64, so every i64
    // time is inside them.
    let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let lowest = clamp(i128::from(first_day) * i128::from(per_day) - i128::from(offset));
    let highest = clamp((i128::from(last_day) + 1) * i128::from(per_day) - 1 - i128::from(offset));
    if let (Some(lo), Some(hi)) = (min(times), max(times))
        && (lo < lowest || hi > highest)
    {
        return None;
    }
    // Within the bounds `t + offset` cannot overflow. A null's slot may
    // hold anything, so its sum wraps rather than panics; it is masked.
    Some(times.unary(|t| (t.wrapping_add(offset)).div_euclid(per_day) as i32))
}

#[cfg(test)]
pub(super) mod tests {
    use arrow::array::{
        TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
    };

    use super::*;
    use crate::engine::KilnQueryPlanner;
    use arrow::array::{Int64Array, RecordBatch};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn arrow_dates(times: &ArrayRef) -> ArrayRef {
        arrow::compute::cast(times, &DataType::Date32).unwrap()
    }

    /// Times around midnight, before the epoch, nulls, and the extremes of
    /// each unit.
    fn samples(per_second: i64) -> Vec<Option<i64>> {
        let day = 86_400 * per_second;
        let mut v: Vec<Option<i64>> = [-3 * day - 1, -day, -1, 0, 1, day - 1, day, 20_000 * day + 7]
            .into_iter()
            .map(Some)
            .collect();
        v.push(None);
        v.extend((0..200).map(|i| Some(i * 7_919 * per_second * 61 - 50 * day)));
        v
    }

    #[test]
    fn the_same_dates_as_arrows_cast_in_fixed_zones() {
        for tz in [
            None,
            Some("UTC"),
            Some("+00:00"),
            Some("+05:30"),
            Some("-0800"),
            Some("+14"),
        ] {
            let tz: Option<Arc<str>> = tz.map(Into::into);
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(TimestampSecondArray::from(samples(1)).with_timezone_opt(tz.clone())),
                Arc::new(TimestampMillisecondArray::from(samples(1_000)).with_timezone_opt(tz.clone())),
                Arc::new(TimestampMicrosecondArray::from(samples(1_000_000)).with_timezone_opt(tz.clone())),
                Arc::new(
                    TimestampNanosecondArray::from(samples(1_000_000_000)).with_timezone_opt(tz.clone()),
                ),
            ];
            for times in arrays {
                assert!(fixed_offset_seconds(tz.as_deref()).is_some(), "{tz:?}");
                assert_eq!(
                    &dates_of(&times).unwrap(),
                    &arrow_dates(&times),
                    "{:?}",
                    times.data_type()
                );
            }
        }
    }

    #[test]
    fn zones_with_daylight_saving_and_far_times_keep_arrows_cast() {
        assert_eq!(fixed_offset_seconds(Some("Europe/Berlin")), None);
        assert_eq!(fixed_offset_seconds(Some("+02:00")), Some(7_200));
        let berlin: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(samples(1_000_000)).with_timezone("Europe/Berlin"));
        assert_eq!(&dates_of(&berlin).unwrap(), &arrow_dates(&berlin));
        // Seconds this far out are past chrono's dates: Arrow's error, not
        // a wrong date.
        let far: ArrayRef = Arc::new(TimestampSecondArray::from(vec![0, i64::MAX / 2]).with_timezone("UTC"));
        assert!(dates_of(&far).is_err());
        assert!(arrow::compute::cast(&far, &DataType::Date32).is_err());
        // Nanoseconds never are.
        let nanos: ArrayRef =
            Arc::new(TimestampNanosecondArray::from(vec![i64::MIN, i64::MAX]).with_timezone("UTC"));
        assert_eq!(&dates_of(&nanos).unwrap(), &arrow_dates(&nanos));
    }

    /// A session over `times` (UTC microseconds, `+05:30` seconds, Berlin
    /// microseconds), with the rewrite on or off.
    pub(in crate::engine) fn session(arithmetic: bool) -> SessionContext {
        let n = 5_000i64;
        let micros: Vec<i64> = (0..n).map(|i| (i * 7_919 - 2_000_000) * 60_000_000 / 7).collect();
        let utc = TimestampMicrosecondArray::from(micros.clone()).with_timezone("UTC");
        let india = TimestampSecondArray::from(micros.iter().map(|m| m / 1_000_000).collect::<Vec<_>>())
            .with_timezone("+05:30");
        let berlin = TimestampMicrosecondArray::from(micros).with_timezone("Europe/Berlin");
        let batch = RecordBatch::try_from_iter([
            ("utc", Arc::new(utc) as ArrayRef),
            ("india", Arc::new(india) as ArrayRef),
            ("berlin", Arc::new(berlin) as ArrayRef),
            (
                "v",
                Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())) as ArrayRef,
            ),
        ])
        .unwrap();
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2).with_batch_size(64))
            .with_default_features()
            .with_query_planner(Arc::new(KilnQueryPlanner::new(arithmetic)))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_batch("t", batch).unwrap();
        ctx
    }

    #[tokio::test]
    async fn grouped_by_date_the_same_answer_with_the_casts_only_in_projections_and_aggregates() {
        let sql = "SELECT CAST(utc AS DATE) AS day, CAST(india AS DATE) AS local_day, \
                          CAST(berlin AS DATE) AS berlin_day, count(*) AS n, sum(v) AS s \
                   FROM t WHERE CAST(utc AS DATE) >= DATE '1969-12-20' \
                   GROUP BY CAST(utc AS DATE), CAST(india AS DATE), CAST(berlin AS DATE) \
                   ORDER BY day, local_day, berlin_day";
        let mut answers = Vec::new();
        for arithmetic in [true, false] {
            let df = session(arithmetic).sql(sql).await.unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            let text = displayable(plan.as_ref()).indent(true).to_string();
            if arithmetic {
                assert!(text.contains("cast_to_date(utc@"), "{text}");
                assert!(text.contains("cast_to_date(india@"), "{text}");
                assert!(!text.contains("cast_to_date(berlin@"), "{text}");
                // The filter keeps its cast, which a Parquet scan prunes by.
                let filter = text.lines().find(|l| l.contains("FilterExec")).unwrap();
                assert!(filter.contains("CAST(utc@"), "{filter}");
            } else {
                assert!(!text.contains("cast_to_date"), "{text}");
            }
            let schema = df.schema().as_arrow().clone();
            let batches = df.collect().await.unwrap();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert!(rows > 100, "{rows}");
            assert!(batches.iter().all(|b| b.schema().fields() == schema.fields()));
            answers.push(
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(answers[0], answers[1]);
    }
}
