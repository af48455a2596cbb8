//! Aggregates over every row (`avg(x) OVER ()`) within the memory pool.
//!
//! A window with no `PARTITION BY` and no `ORDER BY` gives every row the
//! same value: an aggregate of the whole input. DataFusion plans it as a
//! `WindowAggExec` that gathers the whole input into one partition and
//! holds it in memory the pool does not see, then emits it from one thread.
//! On a z-score over 38 M user-days (100 M events) that took kiln's process
//! to 8.8 GB under a 4 GiB limit.
//!
//! [`WindowsOverAll`] plans it as the aggregate joined to every row instead:
//! `Projection(CrossJoin(Aggregate(input), input))`, the input a
//! [`SharedSubqueryNode`] computed once. The aggregate reads it first; the
//! rows wait for the join in the shared subquery's queue, which is counted
//! by the pool and spills past its share. The rows then stream out in every
//! partition.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, Projection, Window, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition,
};
use datafusion::optimizer::AnalyzerRule;

use super::shared::SharedSubqueryNode;

/// Plans each window of aggregates over every row as one aggregate joined
/// to the rows. It runs after [`super::ShareRepeatedSubqueries`], so that
/// the input it shares is not shared again inside.
#[derive(Debug, Default)]
pub struct WindowsOverAll;

impl AnalyzerRule for WindowsOverAll {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| match node {
            LogicalPlan::Window(window) => as_join(window),
            other => Ok(Transformed::no(other)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "kiln_windows_over_all"
    }
}

/// The column of the `i`th aggregate, between the join and the projection
/// that gives it the window's name.
fn total_name(i: usize) -> String {
    format!("__kiln_over_all_{i}")
}

fn as_join(window: Window) -> Result<Transformed<LogicalPlan>> {
    let totals: Option<Vec<Expr>> = window
        .window_expr
        .iter()
        .enumerate()
        .map(|(i, e)| over_all(e).map(|a| a.alias(total_name(i))))
        .collect();
    let Some(totals) = totals else {
        return Ok(Transformed::no(LogicalPlan::Window(window)));
    };
    let input = Arc::unwrap_or_clone(window.input);
    let columns: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
    let [for_totals, for_rows] =
        <[LogicalPlan; 2]>::try_from(SharedSubqueryNode::readers_of(input, 2)).expect("two readers");
    // The one-row aggregate on the left: a cross join builds its left side
    // and streams its right one in each of its partitions.
    let joined = LogicalPlanBuilder::from(for_totals)
        .aggregate(Vec::<Expr>::new(), totals)?
        .cross_join(for_rows)?
        .build()?;
    let named = window.window_expr.iter().enumerate().map(|(i, e)| {
        Expr::Column(Column::new_unqualified(total_name(i))).alias(e.schema_name().to_string())
    });
    let projection = Projection::try_new(columns.into_iter().chain(named).collect(), Arc::new(joined))?;
    Ok(Transformed::yes(LogicalPlan::Projection(projection)))
}

/// A window expression that is an aggregate over every row, as that
/// aggregate.
fn over_all(expr: &Expr) -> Option<Expr> {
    let Expr::WindowFunction(f) = expr else {
        return None;
    };
    let WindowFunction {
        fun: WindowFunctionDefinition::AggregateUDF(udaf),
        params:
            WindowFunctionParams {
                args,
                partition_by,
                order_by,
                window_frame,
                filter,
                null_treatment,
                distinct,
            },
    } = f.as_ref()
    else {
        return None;
    };
    // DataFusion orders a `RANGE` frame without `ORDER BY` by a constant.
    let unordered = order_by.iter().all(|s| matches!(s.expr, Expr::Literal(..)));
    let whole = partition_by.is_empty()
        && unordered
        && is_whole_partition(window_frame)
        && !ORDER_DEPENDENT.contains(&udaf.name());
    whole.then(|| {
        Expr::AggregateFunction(AggregateFunction::new_udf(
            Arc::clone(udaf),
            args.clone(),
            *distinct,
            filter.clone(),
            vec![],
            *null_treatment,
        ))
    })
}

/// Aggregates whose answer follows the order rows reach them, which a
/// window keeps and the join does not. (DataFusion's order sensitivity
/// speaks of an aggregate's own `ORDER BY`, and says every aggregate but
/// the few that declare otherwise has a hard requirement.)
const ORDER_DEPENDENT: &[&str] = &[
    "array_agg",
    "string_agg",
    "first_value",
    "last_value",
    "nth_value",
];

/// Whether a frame without `ORDER BY` holds every row of the partition:
/// unbounded both ways, or (as `RANGE` and `GROUPS` count every row a peer
/// of every other when nothing orders them) bounded only by the current
/// row's peers.
fn is_whole_partition(frame: &WindowFrame) -> bool {
    let peers = frame.units != WindowFrameUnits::Rows;
    let start = match &frame.start_bound {
        WindowFrameBound::Preceding(v) => v.is_null(),
        WindowFrameBound::CurrentRow => peers,
        WindowFrameBound::Following(_) => false,
    };
    let end = match &frame.end_bound {
        WindowFrameBound::Following(v) => v.is_null(),
        WindowFrameBound::CurrentRow => peers,
        WindowFrameBound::Preceding(_) => false,
    };
    start && end
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::engine::ShareRepeatedSubqueries;
    use crate::engine::rule_testing::{run, shared_run, small_state};

    /// `n` rows of `t(id, k, x, s)` in three partitions, with kiln's rules
    /// or without; `pool` bytes of memory (none: unbounded).
    fn context(kiln: bool, n: i64, pool: Option<usize>) -> SessionContext {
        let mut state = small_state(64, pool);
        if kiln {
            state = state
                .with_analyzer_rule(Arc::new(ShareRepeatedSubqueries))
                .with_analyzer_rule(Arc::new(WindowsOverAll));
        }
        let ctx = SessionContext::new_with_state(state.build());
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("k", DataType::Int64, false),
                Field::new("x", DataType::Float64, true),
                Field::new("s", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| i * 7 % 13))),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 9 != 0).then_some((i % 113) as f64)),
                )),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 11 != 0).then(|| ["a", "b", "c"][(i % 3) as usize])),
                )),
            ],
        )
        .unwrap();
        let len = (n as usize).div_ceil(3);
        let parts = (0..3)
            .map(|p| {
                let start = (p * len).min(batch.num_rows());
                vec![batch.slice(start, len.min(batch.num_rows() - start))]
            })
            .collect();
        ctx.register_table("t", Arc::new(MemTable::try_new(batch.schema(), parts).unwrap()))
            .unwrap();
        ctx
    }

    async fn physical(ctx: &SessionContext, sql: &str) -> String {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string()
    }

    /// Windows over every row, each with DataFusion's answer.
    const REWRITTEN: &[&str] = &[
        "SELECT id, x, round((x - avg(x) OVER ()) / stddev(x) OVER (), 9) AS z FROM t ORDER BY id",
        "SELECT id, count(*) OVER () AS n, sum(x) FILTER (WHERE s = 'a') OVER () AS sa, \
         count(x) OVER () AS cx, max(s) OVER () AS m, min(x) OVER () AS lo FROM t ORDER BY id",
        "SELECT * FROM (SELECT id, x, avg(x) OVER () AS a FROM t) WHERE x > 50 ORDER BY id",
        "SELECT k, n, round(n * 1.0 / sum(n) OVER (), 12) AS share \
         FROM (SELECT k, count(*) AS n FROM t GROUP BY k) ORDER BY k",
        "SELECT id, avg(x) OVER () AS a FROM t WHERE id < 0",
        "SELECT id, sum(x) OVER (RANGE BETWEEN CURRENT ROW AND CURRENT ROW) AS a FROM t ORDER BY id",
        "SELECT id, avg(x) OVER () AS a, sum(x) OVER (PARTITION BY k) AS b FROM t ORDER BY id",
        // Over a join of a subquery that is itself shared.
        "WITH d AS (SELECT k, count(*) AS n, avg(x) AS a FROM t GROUP BY k) \
         SELECT p.k, p.n, q.a, sum(p.n) OVER () AS total, round(avg(q.a) OVER (), 9) AS mean \
         FROM d p JOIN d q ON p.k = q.k + 1 ORDER BY p.k",
    ];

    #[tokio::test]
    async fn gives_datafusions_answers_without_a_whole_input_window() {
        for sql in REWRITTEN {
            let want = run(&context(false, 500, None), sql).await;
            let kiln = context(true, 500, None);
            assert_eq!(run(&kiln, sql).await, want, "{sql}");
            let shown = physical(&kiln, sql).await;
            assert!(shown.contains("CrossJoinExec"), "{sql}: {shown}");
            // Only the partitioned window is left a window.
            assert_eq!(
                shown.contains("WindowAggExec"),
                sql.contains("PARTITION BY"),
                "{sql}: {shown}"
            );
        }
    }

    #[tokio::test]
    async fn running_ordered_and_order_sensitive_windows_are_left_alone() {
        let kiln = context(true, 50, None);
        for sql in [
            "SELECT id, sum(x) OVER (ORDER BY id) AS a FROM t",
            "SELECT id, sum(x) OVER (ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS a FROM t",
            "SELECT id, row_number() OVER () AS r FROM t",
            "SELECT id, array_agg(x) OVER () AS a FROM t",
            "SELECT id, avg(x) OVER (PARTITION BY k) AS a FROM t",
        ] {
            let shown = physical(&kiln, sql).await;
            assert!(!shown.contains("CrossJoinExec"), "{sql}: {shown}");
        }
    }

    #[tokio::test]
    async fn the_rows_are_computed_once_and_spill_within_a_small_pool() {
        // Summed rather than sorted, which would need memory of its own.
        let sql = "SELECT count(*) AS n, abs(round(sum(z), 6)) AS s, round(sum(z * z), 6) AS q \
                   FROM (SELECT id, (x - avg(x) OVER ()) / stddev(x) OVER () AS z FROM t WHERE k > 2)";
        let want = run(&context(false, 30_000, None), sql).await;
        let (got, computed, spills) = shared_run(&context(true, 30_000, Some(1 << 20)), sql).await;
        assert_eq!(got, want);
        assert_eq!(computed.len(), 2, "{computed:?}");
        assert_eq!(computed.iter().filter(|&&n| n > 0).count(), 1, "{computed:?}");
        // The rows wait on disk while the aggregate reads them all.
        assert!(spills > 0, "{spills}");
    }
}
