//! Plan-time rewrite of trailing day-range windows over one row per day.
//!
//! `sum(x) OVER (PARTITION BY k ORDER BY day RANGE BETWEEN INTERVAL 'n' DAY
//! PRECEDING AND CURRENT ROW)` is the feature engineer's "last n+1 days".
//! DataFusion 55 computes its frame bounds row by row with `ScalarValue`
//! arithmetic, about five times DuckDB's time on our workload (see
//! `shared/notes/datafusion-engine.md`). When the window's input has one row
//! per (k, day), as a daily aggregate does, the same numbers come from one
//! hash aggregation:
//!
//! ```text
//! every input row is copied to the n+1 days it counts toward
//!   (day + 0, ..., day + n), then grouped by (k, target day):
//!   sum/count/min/max of the copies        = the window value
//!   bool_or(copy is the day itself)        = the target day exists
//!   max(CASE WHEN copy is the day itself THEN c END) = the row's column c
//! keep the groups whose day exists
//! ```
//!
//! One pass over the input, no sort, exact results (the sliding form also
//! leaves 1e-13 residues where the exact answer is zero). It applies only
//! when the planner can prove the uniqueness (a functional dependency from
//! a GROUP BY), the day column is a non-null DATE, every window function in
//! the node shares one frame, and the frame is short.

use std::sync::Arc;

use arrow::datatypes::{DataType, IntervalDayTime, IntervalMonthDayNano};
use datafusion::common::Dependency;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchema, Result, ScalarValue};
use datafusion::functions_aggregate::expr_fn::{bool_or, max};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, Window, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition, cast, col, lit, when,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Longest frame (in days, current day included) worth copying rows for.
const MAX_FRAME_DAYS: i32 = 32;
/// Window aggregates whose frame value is the same aggregate of the copies.
const DECOMPOSABLE: &[&str] = &["sum", "count", "min", "max"];

#[derive(Debug, Default)]
pub struct DailyRangeWindows;

/// The shape shared by every window function of a node.
struct Frame {
    partition_by: Vec<Column>,
    day: Column,
    days_back: i32,
}

fn days_of(bound: &ScalarValue) -> Option<i32> {
    match bound {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months: 0,
            days,
            nanoseconds: 0,
        })) => Some(*days),
        ScalarValue::IntervalDayTime(Some(IntervalDayTime {
            days,
            milliseconds: 0,
        })) => Some(*days),
        _ => None,
    }
}

fn frame_of(params: &WindowFunctionParams) -> Option<Frame> {
    let frame = &params.window_frame;
    if frame.units != WindowFrameUnits::Range
        || !matches!(frame.end_bound, WindowFrameBound::CurrentRow)
        || params.filter.is_some()
        || params.distinct
        || params.null_treatment.is_some()
        || params.order_by.len() != 1
        || !params.order_by[0].asc
    {
        return None;
    }
    let WindowFrameBound::Preceding(bound) = &frame.start_bound else {
        return None;
    };
    let days_back = days_of(bound).filter(|d| (0..MAX_FRAME_DAYS).contains(d))?;
    let Expr::Column(day) = &params.order_by[0].expr else {
        return None;
    };
    let partition_by = params
        .partition_by
        .iter()
        .map(|e| match e {
            Expr::Column(c) => Some(c.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Frame {
        partition_by,
        day: day.clone(),
        days_back,
    })
}

/// The window function of a node's expression, if it is one we decompose.
fn decomposable(expr: &Expr) -> Option<&WindowFunction> {
    let w = match expr {
        Expr::WindowFunction(w) => w,
        Expr::Alias(alias) => return decomposable(&alias.expr),
        _ => return None,
    };
    let WindowFunctionDefinition::AggregateUDF(udf) = &w.fun else {
        return None;
    };
    (DECOMPOSABLE.contains(&udf.name().to_lowercase().as_str()) && w.params.args.len() <= 1).then_some(w)
}

/// Does the input hold one row per (partition keys, day)?
fn unique_on(schema: &DFSchema, columns: &[&Column]) -> bool {
    let Some(indices) = columns
        .iter()
        .map(|c| schema.index_of_column(c).ok())
        .collect::<Option<Vec<usize>>>()
    else {
        return false;
    };
    schema.functional_dependencies().iter().any(|dep| {
        dep.mode == Dependency::Single
            && dep.target_indices.len() == schema.fields().len()
            && dep.source_indices.iter().all(|i| indices.contains(i))
    })
}

/// Types `max` can carry through the aggregation unchanged.
fn carriable(t: &DataType) -> bool {
    t.is_primitive()
        || matches!(
            t,
            DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
}

impl OptimizerRule for DailyRangeWindows {
    fn name(&self) -> &str {
        "kiln_daily_range_windows"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Window(window) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match applicable(window) {
            Some(frame) => rewrite(window, &frame).map(Transformed::yes),
            None => Ok(Transformed::no(plan)),
        }
    }
}

fn applicable(window: &Window) -> Option<Frame> {
    let functions = window
        .window_expr
        .iter()
        .map(decomposable)
        .collect::<Option<Vec<_>>>()?;
    let frame = frame_of(&functions.first()?.params)?;
    let same_spec = functions.iter().all(|w| {
        frame_of(&w.params).is_some_and(|f| {
            f.partition_by == frame.partition_by && f.day == frame.day && f.days_back == frame.days_back
        })
    });
    let schema = window.input.schema();
    let (_, day_field) = schema.qualified_field_from_column(&frame.day).ok()?;
    let mut keys: Vec<&Column> = frame.partition_by.iter().collect();
    keys.push(&frame.day);
    let carried_ok = schema.fields().iter().all(|f| carriable(f.data_type()));
    (same_spec
        && day_field.data_type() == &DataType::Date32
        && !day_field.is_nullable()
        && carried_ok
        && unique_on(schema, &keys))
    .then_some(frame)
}

fn rewrite(window: &Window, frame: &Frame) -> Result<LogicalPlan> {
    let input = &window.input;
    let schema = input.schema();
    let offsets = LogicalPlanBuilder::values((0..=frame.days_back).map(|d| vec![lit(d)]).collect())?
        .alias("__kiln_offsets")?
        .build()?;
    let offset = Expr::Column(Column::new(Some("__kiln_offsets"), "column1"));
    let is_self = offset.clone().eq(lit(0i32));

    // Each input row, once per day it counts toward.
    let partition_names: Vec<String> = (0..frame.partition_by.len())
        .map(|i| format!("__kiln_p{i}"))
        .collect();
    let mut copies: Vec<Expr> = frame
        .partition_by
        .iter()
        .zip(&partition_names)
        .map(|(c, n)| Expr::Column(c.clone()).alias(n))
        .collect();
    let target = cast(
        cast(Expr::Column(frame.day.clone()), DataType::Int32) + offset,
        DataType::Date32,
    );
    copies.push(target.alias("__kiln_day"));
    copies.push(is_self.alias("__kiln_self"));
    let mut aggregates = Vec::new();
    for (k, expr) in window.window_expr.iter().enumerate() {
        let w = decomposable(expr).expect("checked by applicable");
        let WindowFunctionDefinition::AggregateUDF(udf) = &w.fun else {
            unreachable!()
        };
        let args = match w.params.args.first() {
            Some(arg) => {
                copies.push(arg.clone().alias(format!("__kiln_v{k}")));
                vec![col(format!("__kiln_v{k}"))]
            }
            None => vec![],
        };
        aggregates.push(
            Expr::AggregateFunction(AggregateFunction::new_udf(
                Arc::clone(udf),
                args,
                false,
                None,
                vec![],
                None,
            ))
            .alias(format!("__kiln_w{k}")),
        );
    }
    // The input's own columns ride along from the copy that is the day itself.
    let mut carried = Vec::new();
    for (i, (qualifier, field)) in schema.iter().enumerate() {
        let c = Column::from((qualifier, field.as_ref()));
        if c == frame.day || frame.partition_by.contains(&c) {
            continue;
        }
        copies.push(Expr::Column(c).alias(format!("__kiln_c{i}")));
        carried.push(i);
        aggregates.push(
            max(when(col("__kiln_self"), col(format!("__kiln_c{i}"))).end()?).alias(format!("__kiln_c{i}")),
        );
    }
    aggregates.push(bool_or(col("__kiln_self")).alias("__kiln_present"));

    let mut group: Vec<Expr> = partition_names.iter().map(col).collect();
    group.push(col("__kiln_day"));
    // The offsets go on the build side: a cross join buffers its left input
    // in memory and streams the right one, keeping its partitions.
    let grouped = LogicalPlanBuilder::from(offsets)
        .cross_join(input.as_ref().clone())?
        .project(copies)?
        .aggregate(group, aggregates)?
        .filter(col("__kiln_present"))?;

    // Back to the window's schema: input columns, then one per function.
    let out_schema = &window.schema;
    let outputs: Vec<Expr> = schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            let c = Column::from((qualifier, field.as_ref()));
            let source = if c == frame.day {
                col("__kiln_day")
            } else if let Some(p) = frame.partition_by.iter().position(|p| *p == c) {
                col(&partition_names[p])
            } else {
                debug_assert!(carried.contains(&i));
                col(format!("__kiln_c{i}"))
            };
            source.alias_qualified(qualifier.cloned(), field.name())
        })
        .chain((0..window.window_expr.len()).map(|k| {
            let (qualifier, field) = out_schema.qualified_field(schema.fields().len() + k);
            col(format!("__kiln_w{k}")).alias_qualified(qualifier.cloned(), field.name())
        }))
        .collect();
    grouped.project(outputs)?.build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::engine::rule_testing::{plan, run, session_with};

    /// Events over 40 days for a few users, with gaps and duplicate days.
    fn context(with_rule: bool) -> SessionContext {
        let n = 400;
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("day", DataType::Date32, false),
            Field::new("amount", DataType::Float64, true),
            Field::new("tag", DataType::Utf8, true),
        ]));
        let user: Vec<Option<i64>> = (0..n)
            .map(|i| if i % 23 == 0 { None } else { Some(i % 4) })
            .collect();
        let day: Vec<i32> = (0..n)
            .map(|i| 20_000 + ((i * 7) % 40) as i32)
            .filter(|d| d % 5 != 1)
            .collect();
        let len = day.len();
        let amount: Vec<Option<f64>> = (0..len)
            .map(|i| {
                if i % 13 == 0 {
                    None
                } else {
                    Some((i % 9) as f64 * 1.5)
                }
            })
            .collect();
        let tag: Vec<String> = (0..len).map(|i| format!("t{}", i % 3)).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(user[..len].to_vec())),
                Arc::new(Date32Array::from(day)),
                Arc::new(Float64Array::from(amount)),
                Arc::new(StringArray::from(tag)),
            ],
        )
        .unwrap();
        let rule: Option<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> =
            with_rule.then(|| Arc::new(DailyRangeWindows) as _);
        session_with("events", batch, rule)
    }

    const DAILY: &str = "WITH daily AS (SELECT user_id, day, count(*) AS n, sum(amount) AS amount, \
         max(tag) AS tag FROM events GROUP BY user_id, day) ";

    #[tokio::test]
    async fn rewritten_windows_match_datafusion() {
        let plain = context(false);
        let fast = context(true);
        for tail in [
            "SELECT user_id, day, tag, sum(n) OVER w AS n7, sum(amount) OVER w AS a7, count(*) OVER w AS d7, \
             min(amount) OVER w AS lo, max(n) OVER w AS hi FROM daily \
             WINDOW w AS (PARTITION BY user_id ORDER BY day RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW) \
             ORDER BY user_id NULLS FIRST, day",
            "SELECT day, sum(n) OVER (ORDER BY day RANGE BETWEEN INTERVAL '2' DAY PRECEDING AND CURRENT ROW) AS s \
             FROM (SELECT day, sum(n) AS n FROM daily GROUP BY day) ORDER BY day",
        ] {
            let sql = format!("{DAILY}{tail}");
            assert!(
                plan(&fast, &sql).await.contains("__kiln_offsets"),
                "not rewritten: {sql}"
            );
            assert_eq!(run(&plain, &sql).await, run(&fast, &sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn leaves_other_windows_alone() {
        let ctx = context(true);
        for sql in [
            // Not one row per (user, day): events has duplicate days.
            "SELECT sum(amount) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW) FROM events"
                .to_string(),
            // ROWS frames and frames that look ahead are not day ranges.
            format!(
                "{DAILY}SELECT sum(n) OVER (PARTITION BY user_id ORDER BY day \
             ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) FROM daily"
            ),
            format!(
                "{DAILY}SELECT sum(n) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '1' DAY PRECEDING AND INTERVAL '1' DAY FOLLOWING) FROM daily"
            ),
            // avg is not a sum of copies.
            format!(
                "{DAILY}SELECT avg(n) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW) FROM daily"
            ),
        ] {
            assert!(!plan(&ctx, &sql).await.contains("__kiln_offsets"), "{sql}");
        }
    }
}
