//! Hash joins build on the side that holds each key once: a group-by's
//! output joined back on its group keys.
//!
//! Feature pipelines join per-group statistics back onto their rows (a
//! category's median, a user's mean). DataFusion's `JoinSelection` picks
//! the build side from estimated sizes, and an aggregate's output has none
//! when the source files carry no distinct counts, so it keeps the side
//! the query wrote first: with `rows JOIN stats`, a hash table of every
//! row (gigabytes at 10 M rows) probed by a few dozen. A side that is an
//! aggregate grouped exactly by its join keys has at most one row per key,
//! never more than the other side's distinct keys: it builds.
//!
//! Runs right after `JoinSelection`, before repartitioning and dynamic
//! filters are added (which fix the sides).

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;

#[derive(Debug, Default)]
pub struct BuildOnGroupedSide;

impl PhysicalOptimizerRule for BuildOnGroupedSide {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let mode = *join.partition_mode();
            let left_keys: Vec<_> = join.on().iter().map(|(l, _)| Arc::clone(l)).collect();
            let right_keys: Vec<_> = join.on().iter().map(|(_, r)| Arc::clone(r)).collect();
            let swap = matches!(mode, PartitionMode::CollectLeft | PartitionMode::Partitioned)
                && join.join_type().supports_swap()
                && !join.null_aware
                && one_row_per_key(join.right(), &right_keys)
                && !one_row_per_key(join.left(), &left_keys);
            if swap {
                Ok(Transformed::yes(join.swap_inputs(mode)?))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kiln_build_on_grouped_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` yields at most one row per value of `keys`: it is a
/// grouping aggregate (seen through projections that only pass columns on)
/// whose every group column is one of the keys.
fn one_row_per_key(
    plan: &Arc<dyn ExecutionPlan>,
    keys: &[Arc<dyn datafusion::physical_expr::PhysicalExpr>],
) -> bool {
    let Some(mut columns) = keys
        .iter()
        .map(|k| k.downcast_ref::<Column>().map(Column::index))
        .collect::<Option<Vec<usize>>>()
    else {
        return false;
    };
    let mut node = Arc::clone(plan);
    loop {
        if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            // Follow each key column to the input column it is.
            let mapped = columns
                .iter()
                .map(|&i| {
                    projection
                        .expr()
                        .get(i)
                        .and_then(|e| e.expr.downcast_ref::<Column>().map(Column::index))
                })
                .collect::<Option<Vec<usize>>>();
            let Some(mapped) = mapped else { return false };
            columns = mapped;
            let input = Arc::clone(projection.input());
            node = input;
            continue;
        }
        let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
            return false;
        };
        // A partial aggregate has a row per group per partition.
        if matches!(aggregate.mode(), AggregateMode::Partial) {
            return false;
        }
        let group = aggregate.group_expr();
        // Grouping sets repeat keys across sets.
        if group.expr().is_empty() || group.groups().len() > 1 {
            return false;
        }
        // The aggregate's output starts with its group columns, in order.
        return (0..group.expr().len()).all(|g| columns.contains(&g));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::SessionStateBuilder;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::super::with_kiln_physical_rules;
    use crate::engine::rule_testing::run;

    async fn context(rule: bool) -> SessionContext {
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2).with_batch_size(16))
            .with_default_features();
        if rule {
            state = with_kiln_physical_rules(state, true, false);
        }
        let ctx = SessionContext::new_with_state(state.build());
        let n = 500;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("category", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter(
                    (0..n).map(|i| (i % 11 != 0).then(|| format!("c{}", i % 7))),
                )),
                Arc::new(Float64Array::from_iter(
                    (0..n).map(|i| (i % 5 != 0).then_some(i as f64)),
                )),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("raw", Arc::new(table)).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("label", DataType::Utf8, false),
        ]));
        let dims = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..3)),
                Arc::new(StringArray::from_iter_values(["a", "b", "c"])),
            ],
        )
        .unwrap();
        let table = MemTable::try_new(schema, vec![vec![dims]]).unwrap();
        ctx.register_table("dims", Arc::new(table)).unwrap();
        // Rows that come out of a join, as enriched events do: DataFusion
        // has no size for them, nor for an aggregate over them.
        ctx.sql("CREATE VIEW rows AS SELECT r.*, d.label FROM raw r JOIN dims d ON r.id % 3 = d.k")
            .await
            .unwrap();
        ctx
    }

    /// The plan under the first hash join's build (first) input.
    async fn build_side(ctx: &SessionContext, sql: &str) -> String {
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let text = displayable(plan.as_ref()).indent(true).to_string();
        let lines: Vec<&str> = text.lines().collect();
        let depth = |l: &str| l.len() - l.trim_start().len();
        let at = lines
            .iter()
            .position(|l| l.contains("HashJoinExec"))
            .expect("a hash join");
        let child = depth(lines[at + 1]);
        let mut subtree = vec![lines[at + 1]];
        subtree.extend(lines[at + 2..].iter().take_while(|l| depth(l) > child));
        subtree.join("\n")
    }

    const QUERIES: &[&str] = &[
        "WITH m AS (SELECT category, median(v) AS med FROM rows GROUP BY category) \
         SELECT r.id, coalesce(r.v, m.med) AS v FROM rows r JOIN m ON r.category IS NOT DISTINCT FROM m.category \
         ORDER BY r.id",
        "WITH m AS (SELECT category, avg(v) AS mean, count(*) AS n FROM rows GROUP BY category) \
         SELECT r.id, m.mean, m.n FROM rows r LEFT JOIN m ON r.category = m.category ORDER BY r.id",
        "WITH m AS (SELECT category, max(v) AS hi FROM rows GROUP BY category) \
         SELECT m.category, r.id FROM m RIGHT JOIN rows r ON r.category = m.category ORDER BY r.id",
    ];

    #[tokio::test]
    async fn grouped_side_builds_and_answers_stay_the_same() {
        let plain = context(false).await;
        let kiln = context(true).await;
        for sql in QUERIES {
            assert_eq!(run(&plain, sql).await, run(&kiln, sql).await, "{sql}");
        }
        // DataFusion builds on the rows; kiln on the per-category statistics.
        let (before, after) = (
            build_side(&plain, QUERIES[0]).await,
            build_side(&kiln, QUERIES[0]).await,
        );
        assert!(!before.contains("AggregateExec"), "{before}");
        assert!(after.contains("AggregateExec"), "{after}");
    }

    #[tokio::test]
    async fn leaves_joins_of_two_groupings_or_none_alone() {
        let ctx = context(true).await;
        let sql = "WITH a AS (SELECT category, count(*) AS n FROM rows GROUP BY category), \
                   b AS (SELECT category, max(v) AS hi FROM rows GROUP BY category) \
                   SELECT a.category, n, hi FROM a JOIN b ON a.category = b.category ORDER BY 1";
        assert_eq!(run(&context(false).await, sql).await, run(&ctx, sql).await);
        let sql = "SELECT a.id FROM rows a JOIN rows b ON a.id = b.id ORDER BY 1 LIMIT 3";
        assert_eq!(run(&context(false).await, sql).await, run(&ctx, sql).await);
    }
}
