//! Trailing day-range windows computed by sliding over sorted days.
//!
//! `sum(x) OVER (PARTITION BY k ORDER BY day RANGE BETWEEN INTERVAL 'n' DAY
//! PRECEDING AND CURRENT ROW)` is the feature engineer's "last n+1 days".
//! DataFusion 55 computes its frame bounds row by row with `ScalarValue`
//! arithmetic, about five times DuckDB's time on our workload (see
//! `shared/notes/datafusion-engine.md`). This rule replaces such a window
//! node with [`TrailingDaysNode`]: DataFusion hash-partitions and sorts the
//! input by (k, day) as for any window, and the operator then walks each
//! key's days keeping one partial aggregate per day inside the frame. Rows
//! of one day are peers and share the whole day's value, as RANGE frames
//! require, so the input need not be one row per day.
//!
//! It applies when every window function of the node is `sum`, `count`,
//! `min` or `max` (integers and floats; `count` of anything) over one frame
//! of whole days ending at the current row, ordered ascending by a DATE.

mod exec;
mod node;
mod sliding;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, IntervalDayTime, IntervalMonthDayNano};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::{
    Expr, ExprSchemable, Extension, LogicalPlan, LogicalPlanBuilder, Window, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition, cast, col, lit, when,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

pub use node::TrailingDaysPlanner;
use node::{TrailingDaysNode, node_schema};
use sliding::{Kind, working_type};

/// Longest frame (in days, current day included): every output row folds
/// one partial per day of its frame.
const MAX_FRAME_DAYS: i32 = 92;

#[derive(Debug, Default)]
pub struct DailyRangeWindows;

/// The shape shared by every window function of a node.
struct Frame {
    partition_by: Vec<Column>,
    day: Column,
    nulls_first: bool,
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
        nulls_first: params.order_by[0].nulls_first,
        days_back,
    })
}

/// The window function of a node's expression and its kind, if the
/// operator computes it.
fn supported(expr: &Expr) -> Option<(&WindowFunction, Kind)> {
    let w = match expr {
        Expr::WindowFunction(w) => w,
        Expr::Alias(alias) => return supported(&alias.expr),
        _ => return None,
    };
    let WindowFunctionDefinition::AggregateUDF(udf) = &w.fun else {
        return None;
    };
    let kind = Kind::from_name(udf.name())?;
    (w.params.args.len() <= 1).then_some((w, kind))
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
            Some((frame, arguments)) => rewrite(window, &frame, arguments).map(Transformed::yes),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// Per function: its kind and its argument as a working-type expression.
type Arguments = Vec<(Kind, Expr)>;

fn applicable(window: &Window) -> Option<(Frame, Arguments)> {
    let functions = window
        .window_expr
        .iter()
        .map(supported)
        .collect::<Option<Vec<_>>>()?;
    let frame = frame_of(&functions.first()?.0.params)?;
    let same_spec = functions.iter().all(|(w, _)| {
        frame_of(&w.params).is_some_and(|f| {
            f.partition_by == frame.partition_by
                && f.day == frame.day
                && f.nulls_first == frame.nulls_first
                && f.days_back == frame.days_back
        })
    });
    let schema = window.input.schema();
    let (_, day_field) = schema.qualified_field_from_column(&frame.day).ok()?;
    if !same_spec || day_field.data_type() != &DataType::Date32 {
        return None;
    }
    let arguments = functions
        .iter()
        .map(|(w, kind)| {
            let arg = w.params.args.first().cloned().unwrap_or_else(|| lit(1i64));
            let arg = match kind {
                // Counting needs only whether the value is there.
                Kind::Count => when(arg.is_not_null(), lit(1i64)).end().ok()?,
                _ => {
                    let working = working_type(&arg.get_type(schema.as_ref()).ok()?)?;
                    cast(arg, working)
                }
            };
            Some((*kind, arg))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((frame, arguments))
}

fn rewrite(window: &Window, frame: &Frame, arguments: Arguments) -> Result<LogicalPlan> {
    let input_schema = window.input.schema();
    let input_width = input_schema.fields().len();

    // The input's columns, then each argument in its working type.
    let mut projection: Vec<Expr> = input_schema.columns().into_iter().map(Expr::Column).collect();
    let mut kinds = Vec::new();
    let mut args = Vec::new();
    for (k, (kind, arg)) in arguments.into_iter().enumerate() {
        projection.push(arg.alias(format!("__kiln_v{k}")));
        kinds.push(kind);
        args.push(col(format!("__kiln_v{k}")));
    }
    let projected = LogicalPlanBuilder::from(window.input.as_ref().clone())
        .project(projection)?
        .build()?;

    // One output per function, typed as DataFusion's window would type it.
    let outputs = (0..kinds.len())
        .map(|k| {
            let field = window.schema.field(input_width + k);
            Field::new(format!("__kiln_w{k}"), field.data_type().clone(), true)
        })
        .collect();
    let node = TrailingDaysNode {
        schema: node_schema(projected.schema(), outputs)?,
        input: Arc::new(projected),
        partition_by: frame.partition_by.iter().cloned().map(Expr::Column).collect(),
        day: Expr::Column(frame.day.clone()),
        nulls_first: frame.nulls_first,
        days_back: frame.days_back,
        kinds,
        args,
    };
    let computed = LogicalPlan::Extension(Extension { node: Arc::new(node) });

    // Back to the window's schema: input columns, then one per function.
    let outputs: Vec<Expr> = input_schema
        .columns()
        .into_iter()
        .map(Expr::Column)
        .chain((0..window.window_expr.len()).map(|k| {
            let (qualifier, field) = window.schema.qualified_field(input_width + k);
            col(format!("__kiln_w{k}")).alias_qualified(qualifier.cloned(), field.name())
        }))
        .collect();
    LogicalPlanBuilder::from(computed).project(outputs)?.build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::engine::rule_testing::{plan, run, session_with};

    /// Events over 40 days for a few users, with gaps, duplicate days,
    /// NULL users, NULL days and NULL values.
    fn context(with_rule: bool) -> SessionContext {
        let n = 400;
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int64, true),
            Field::new("day", DataType::Date32, true),
            Field::new("amount", DataType::Float64, true),
            Field::new("clicks", DataType::Int32, true),
            Field::new("tag", DataType::Utf8, true),
        ]));
        let user: Vec<Option<i64>> = (0..n)
            .map(|i| if i % 23 == 0 { None } else { Some(i % 4) })
            .collect();
        let day: Vec<Option<i32>> = (0..n)
            .map(|i| 20_000 + ((i * 7) % 40) as i32)
            .filter(|d| d % 5 != 1)
            .enumerate()
            .map(|(i, d)| (i % 31 != 0).then_some(d))
            .collect();
        let len = day.len();
        let amount: Vec<Option<f64>> = (0..len)
            .map(|i| (i % 13 != 0).then_some((i % 9) as f64 * 1.5))
            .collect();
        let clicks: Vec<Option<i32>> = (0..len)
            .map(|i| (i % 11 != 0).then_some((i % 7) as i32 - 2))
            .collect();
        let tag: Vec<Option<String>> = (0..len)
            .map(|i| (i % 5 != 0).then(|| format!("t{}", i % 3)))
            .collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(user[..len].to_vec())),
                Arc::new(Date32Array::from(day)),
                Arc::new(Float64Array::from(amount)),
                Arc::new(Int32Array::from(clicks)),
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
        for sql in [
            // The demo's shape: one row per (user, day).
            format!(
                "{DAILY}SELECT user_id, day, tag, sum(n) OVER w AS n7, sum(amount) OVER w AS a7, \
                 count(*) OVER w AS d7, min(amount) OVER w AS lo, max(n) OVER w AS hi FROM daily \
                 WINDOW w AS (PARTITION BY user_id ORDER BY day RANGE BETWEEN INTERVAL '6' DAY PRECEDING \
                 AND CURRENT ROW) ORDER BY user_id NULLS FIRST, day NULLS FIRST"
            ),
            // No PARTITION BY.
            format!(
                "{DAILY}SELECT day, sum(n) OVER (ORDER BY day RANGE BETWEEN INTERVAL '2' DAY PRECEDING \
                 AND CURRENT ROW) AS s FROM (SELECT day, sum(n) AS n FROM daily GROUP BY day) \
                 ORDER BY day NULLS FIRST"
            ),
            // Raw events: several rows per day (peers), NULL days, integer,
            // float and string arguments, NULLs sorted first.
            "SELECT user_id, day, amount, clicks, tag, sum(clicks) OVER w AS c, sum(amount) OVER w AS a, \
             count(tag) OVER w AS t, count(*) OVER w AS r, min(clicks) OVER w AS lo, max(amount) OVER w AS hi \
             FROM events WINDOW w AS (PARTITION BY user_id ORDER BY day NULLS FIRST \
             RANGE BETWEEN INTERVAL '3' DAY PRECEDING AND CURRENT ROW) \
             ORDER BY user_id NULLS FIRST, day NULLS FIRST, amount NULLS FIRST, clicks NULLS FIRST, tag NULLS FIRST"
                .to_string(),
            // The current day alone.
            "SELECT user_id, day, clicks, amount, tag, sum(clicks) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '0' DAY PRECEDING AND CURRENT ROW) AS c FROM events \
             ORDER BY user_id NULLS FIRST, day NULLS FIRST, amount NULLS FIRST, clicks NULLS FIRST, tag NULLS FIRST"
                .to_string(),
        ] {
            assert!(plan(&fast, &sql).await.contains("TrailingDays:"), "not rewritten: {sql}");
            assert_eq!(run(&plain, &sql).await, run(&fast, &sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn leaves_other_windows_alone() {
        let ctx = context(true);
        for tail in [
            // ROWS frames and frames that look ahead are not day ranges.
            "SELECT sum(n) OVER (PARTITION BY user_id ORDER BY day \
             ROWS BETWEEN 6 PRECEDING AND CURRENT ROW) FROM daily",
            "SELECT sum(n) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '1' DAY PRECEDING AND INTERVAL '1' DAY FOLLOWING) FROM daily",
            // Descending days look the other way.
            "SELECT sum(n) OVER (PARTITION BY user_id ORDER BY day DESC \
             RANGE BETWEEN INTERVAL '1' DAY PRECEDING AND CURRENT ROW) FROM daily",
            // avg is not computed by the operator; neither are strings summed.
            "SELECT avg(n) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW) FROM daily",
            "SELECT max(tag) OVER (PARTITION BY user_id ORDER BY day \
             RANGE BETWEEN INTERVAL '6' DAY PRECEDING AND CURRENT ROW) FROM daily",
        ] {
            let sql = format!("{DAILY}{tail}");
            assert!(!plan(&ctx, &sql).await.contains("TrailingDays:"), "{sql}");
        }
    }
}
