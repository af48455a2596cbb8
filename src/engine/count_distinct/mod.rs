//! `count(DISTINCT x)` with a grouped accumulator of kiln's own.
//!
//! DataFusion 55 has a grouped accumulator for distinct counts of integers
//! only, and that one cannot give its memory back once it has grown: after
//! a spill it keeps the capacity of its table, so a one-stage aggregate over
//! 100 M events cannot stay within a 4 GiB pool. For strings, each group
//! gets a row accumulator holding its own pre-sized hash set (see
//! `SplitDistinctAggregates` for what that costs).
//!
//! [`GroupedCountDistinct`] instead replaces each `count(DISTINCT x)` of a
//! string or an integer by [`CountDistinct`] over `x` as `Utf8View` or
//! `Int64`, whose accumulator keeps one hash table of the (group, value)
//! pairs seen by every group (the strings' bytes in one buffer): no
//! allocation per group or per value, and all of it freed when a spill
//! emits every group. [`SingleStageCountDistinct`] then runs such an
//! aggregate in one stage.

mod accumulator;
mod pairs;

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, AggregateUDFImpl, Expr, ExprSchemable, GroupsAccumulator,
    LogicalPlan, Signature, Volatility, cast,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};

use crate::engine::types::widens_to_i64;
use accumulator::DistinctCounts;
use pairs::{IntegerPairs, PairTable, StringPairs};

/// What a [`CountDistinct`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Values {
    Strings,
    Integers,
}

/// The number of distinct non-null values per group, of `Utf8View` or of
/// `Int64`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CountDistinct {
    signature: Signature,
    values: Values,
}

impl CountDistinct {
    fn udaf(values: Values) -> Arc<AggregateUDF> {
        fn make(values: Values, of: DataType) -> Arc<AggregateUDF> {
            Arc::new(AggregateUDF::from(CountDistinct {
                signature: Signature::exact(vec![of], Volatility::Immutable),
                values,
            }))
        }
        static STRINGS: LazyLock<Arc<AggregateUDF>> =
            LazyLock::new(|| make(Values::Strings, StringPairs::VALUE_TYPE));
        static INTEGERS: LazyLock<Arc<AggregateUDF>> =
            LazyLock::new(|| make(Values::Integers, IntegerPairs::VALUE_TYPE));
        match values {
            Values::Strings => Arc::clone(&STRINGS),
            Values::Integers => Arc::clone(&INTEGERS),
        }
    }
}

impl AggregateUDFImpl for CountDistinct {
    fn name(&self) -> &str {
        "count_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    /// Without grouping (or wherever DataFusion asks for a row
    /// accumulator), DataFusion's own distinct count, whose state is the
    /// same list of values.
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        count_udaf().accumulator(AccumulatorArgs {
            is_distinct: true,
            ..args
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        count_udaf().state_fields(StateFieldsArgs {
            is_distinct: true,
            ..args
        })
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(match self.values {
            Values::Strings => Box::new(DistinctCounts::<StringPairs>::default()),
            Values::Integers => Box::new(DistinctCounts::<IntegerPairs>::default()),
        })
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// Replaces `count(DISTINCT x)` over a string or integer `x` by
/// [`CountDistinct`], keeping the aggregate's output names.
#[derive(Debug, Default)]
pub struct GroupedCountDistinct;

impl OptimizerRule for GroupedCountDistinct {
    fn name(&self) -> &str {
        "kiln_grouped_count_distinct"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let input_schema = aggregate.input.schema();
        let mut changed = false;
        let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len());
        for expr in &aggregate.aggr_expr {
            match kiln_count_distinct(expr, input_schema) {
                Some(replacement) => {
                    changed = true;
                    aggr_expr.push(replacement.alias(expr.schema_name().to_string()));
                }
                None => aggr_expr.push(expr.clone()),
            }
        }
        if !changed {
            return Ok(Transformed::no(plan));
        }
        let rewritten = Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
    }
}

/// `count(DISTINCT x)` of one string or integer `x`, with no ORDER BY, as
/// `count_distinct(CAST(x AS Utf8View))` or `count_distinct(CAST(x AS
/// Int64))` with the same FILTER. Casting is one to one for these types, so
/// the count is the same.
fn kiln_count_distinct(expr: &Expr, schema: &datafusion::common::DFSchema) -> Option<Expr> {
    let Expr::AggregateFunction(f) = expr else {
        return None;
    };
    let p = &f.params;
    if !(f.func.name() == "count" && p.distinct && p.order_by.is_empty() && p.args.len() == 1) {
        return None;
    }
    let from = p.args[0].get_type(schema).ok()?;
    let (values, to) = match &from {
        DataType::Utf8View | DataType::Utf8 | DataType::LargeUtf8 => {
            (Values::Strings, StringPairs::VALUE_TYPE)
        }
        t if widens_to_i64(t) => (Values::Integers, IntegerPairs::VALUE_TYPE),
        _ => return None,
    };
    let arg = if from == to {
        p.args[0].clone()
    } else {
        cast(p.args[0].clone(), to)
    };
    Some(Expr::AggregateFunction(AggregateFunction::new_udf(
        CountDistinct::udaf(values),
        vec![arg],
        false,
        p.filter.clone(),
        vec![],
        p.null_treatment,
    )))
}

/// Runs an aggregate holding a [`CountDistinct`] in one stage over
/// rows hashed to their group's partition, instead of a partial stage per
/// input partition and a final one.
///
/// A distinct count cannot shrink in a partial stage: every distinct
/// (group, value) pair goes on to the final stage as a list, where it is
/// looked up again. On feature data the groups are small and the pairs
/// nearly as many as the rows, so the partial stage is a second pass of
/// hash lookups for nothing. It runs before `EnforceDistribution`, which
/// then hashes the input on the group keys.
#[derive(Debug, Default)]
pub struct SingleStageCountDistinct;

impl PhysicalOptimizerRule for SingleStageCountDistinct {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(last) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let single = match last.mode() {
                AggregateMode::Final => AggregateMode::Single,
                AggregateMode::FinalPartitioned => AggregateMode::SinglePartitioned,
                _ => return Ok(Transformed::no(node)),
            };
            let Some(first) = last.input().downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let counts_distinct = first
                .aggr_expr()
                .iter()
                .any(|a| a.fun().inner().downcast_ref::<CountDistinct>().is_some());
            if *first.mode() != AggregateMode::Partial
                || !counts_distinct
                || first.group_expr().has_grouping_set()
                || last.limit_options().is_some()
            {
                return Ok(Transformed::no(node));
            }
            let merged = AggregateExec::try_new(
                single,
                first.group_expr().clone(),
                first.aggr_expr().to_vec(),
                first.filter_expr().to_vec(),
                Arc::clone(first.input()),
                first.input_schema(),
            )?;
            Ok(Transformed::yes(Arc::new(merged) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kiln_single_stage_count_distinct"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, StringArray, UInt32Array, UInt64Array};
    use arrow::datatypes::Field;
    use arrow::datatypes::Schema;
    use arrow::record_batch::RecordBatch;

    use super::*;
    use crate::engine::rule_testing::{plan, run, session_with};

    /// 600 rows of group `g` (0..12), a string `item` (a null now and
    /// then, some longer than a view's inline bytes), an `Int32` `n` (nulls
    /// and negatives), a `UInt64` `u` and a `kind`.
    fn events() -> RecordBatch {
        let mut state = 5u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let (g, item): (Vec<u32>, Vec<Option<String>>) = (0..600)
            .map(|_| {
                let item = match next() % 40 {
                    0 => None,
                    1 => Some(String::new()),
                    v if v % 3 == 0 => Some(format!("a value longer than twelve bytes {v}")),
                    v => Some(format!("v{v}")),
                };
                (next() % 12, item)
            })
            .unzip();
        let n: Vec<Option<i32>> = (0..600)
            .map(|_| match next() % 30 {
                0 => None,
                v => Some(v as i32 - 15),
            })
            .collect();
        let u: Vec<u64> = (0..600).map(|_| u64::from(next() % 25) << 40).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::UInt32, false),
            Field::new("item", DataType::Utf8, true),
            Field::new("n", DataType::Int32, true),
            Field::new("u", DataType::UInt64, false),
            Field::new("kind", DataType::Utf8, false),
        ]));
        let kind: StringArray = (0..600)
            .map(|i| Some(if i % 3 == 0 { "buy" } else { "view" }))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt32Array::from(g)),
                Arc::new(StringArray::from(item)),
                Arc::new(Int32Array::from(n)),
                Arc::new(UInt64Array::from(u)),
                Arc::new(kind),
            ],
        )
        .unwrap()
    }

    const QUERIES: &[&str] = &[
        "SELECT g, count(DISTINCT item) AS d, count(*) AS n, avg(g) AS a FROM t GROUP BY g ORDER BY g",
        "SELECT g, count(DISTINCT item) FILTER (WHERE kind = 'buy') AS d, count(DISTINCT kind) AS k \
         FROM t GROUP BY g ORDER BY g",
        "SELECT count(DISTINCT item) AS d, count(*) AS n FROM t",
        "SELECT kind, count(DISTINCT g) AS d, count(*) AS n, avg(g) AS a FROM t GROUP BY kind ORDER BY kind",
        "SELECT g % 3 AS h, count(DISTINCT upper(item)) AS d, count(*) AS n FROM t WHERE g > 2 \
         GROUP BY g % 3 ORDER BY h",
        "SELECT g, count(DISTINCT n) AS d, count(DISTINCT n) FILTER (WHERE kind = 'view') AS v, \
         count(DISTINCT n * 1000000000000) AS big, sum(n) AS s FROM t GROUP BY g ORDER BY g",
        "SELECT kind, count(DISTINCT u) AS d, count(*) AS c FROM t GROUP BY kind ORDER BY kind",
    ];

    /// `UInt64` does not fit `Int64`, so its distinct count stays
    /// DataFusion's.
    fn rewritten(sql: &str) -> bool {
        !sql.contains("DISTINCT u)")
    }

    #[tokio::test]
    async fn gives_datafusions_answers() {
        let rule: Arc<dyn OptimizerRule + Send + Sync> = Arc::new(GroupedCountDistinct);
        for sql in QUERIES {
            let plain = session_with("t", events(), None);
            let kiln = session_with("t", events(), Some(Arc::clone(&rule)));
            assert_eq!(run(&kiln, sql).await, run(&plain, sql).await, "{sql}");
            assert_eq!(
                plan(&kiln, sql).await.contains("count_distinct("),
                rewritten(sql),
                "{sql}"
            );
        }
    }

    /// A session with both rules, two partitions and small batches.
    fn single_stage_session() -> datafusion::prelude::SessionContext {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(
                datafusion::prelude::SessionConfig::new()
                    .with_target_partitions(2)
                    .with_batch_size(8),
            )
            .with_default_features();
        let state = crate::engine::with_kiln_physical_rules(state, false, true)
            .with_optimizer_rule(Arc::new(GroupedCountDistinct))
            .build();
        let ctx = datafusion::prelude::SessionContext::new_with_state(state);
        let batch = events();
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    #[tokio::test]
    async fn one_stage_gives_datafusions_answers() {
        for sql in QUERIES {
            let plain = session_with("t", events(), None);
            let kiln = single_stage_session();
            assert_eq!(run(&kiln, sql).await, run(&plain, sql).await, "{sql}");
            let physical = kiln.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let shown = datafusion::physical_plan::displayable(physical.as_ref())
                .indent(false)
                .to_string();
            let stages = rewritten(sql);
            assert_eq!(!shown.contains("mode=Partial"), stages, "{sql}: {shown}");
            assert_eq!(!shown.contains("mode=Final"), stages, "{sql}: {shown}");
        }
    }

    #[tokio::test]
    async fn leaves_other_distinct_aggregates_alone() {
        let kiln = session_with("t", events(), Some(Arc::new(GroupedCountDistinct)));
        let sql = "SELECT g, count(DISTINCT u) AS c, sum(DISTINCT n) AS s FROM t GROUP BY g";
        assert!(!plan(&kiln, sql).await.contains("count_distinct("));
    }
}
