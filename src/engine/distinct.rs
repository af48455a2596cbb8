//! Plan-time rewrite of DISTINCT aggregates that sit beside other aggregates.
//!
//! DataFusion 55 answers `count(DISTINCT item_id)` next to `count(*)`,
//! `avg(..)` or a `FILTER` with a row accumulator per group, each holding a
//! pre-sized hash set: on clickstream data that is tens of GiB that the
//! memory pool never sees (see `shared/notes/datafusion-engine.md`). Its own
//! `SingleDistinctToGroupBy` rule only fires when every other aggregate is
//! SUM, MIN or MAX without FILTER.
//!
//! This rule splits such an aggregate into plain ones joined on the group
//! keys:
//!
//! ```text
//! Aggregate(G; count(*), count(DISTINCT x))
//!   =>  Aggregate(G; count(*))                                  AS l
//!       JOIN Aggregate(G; count(x)) <- Aggregate(G, x; )        AS r0
//!       ON l.G IS NOT DISTINCT FROM r0.G
//! ```
//!
//! Both sides group the same input by the same keys, so every group is on
//! both sides and the inner join loses nothing. Each distinct argument gets
//! its own side, and a DISTINCT aggregate over the de-duplicated (G, x) pairs
//! is the plain aggregate of x.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchemaRef, NullEquality, Result};
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Aggregates whose DISTINCT form equals the plain form over distinct values.
const SPLITTABLE: &[&str] = &["count", "sum", "avg", "min", "max"];

#[derive(Debug, Default)]
pub struct SplitDistinctAggregates;

/// A DISTINCT aggregate this rule can take apart.
struct DistinctAgg<'a> {
    func: &'a Arc<datafusion::logical_expr::AggregateUDF>,
    arg: &'a Expr,
}

fn as_aggregate(expr: &Expr) -> Option<&AggregateFunction> {
    match expr {
        Expr::AggregateFunction(f) => Some(f),
        Expr::Alias(a) => as_aggregate(&a.expr),
        _ => None,
    }
}

fn splittable_distinct(f: &AggregateFunction) -> Option<DistinctAgg<'_>> {
    let AggregateFunctionParams {
        args,
        distinct,
        filter,
        order_by,
        ..
    } = &f.params;
    (*distinct
        && filter.is_none()
        && order_by.is_empty()
        && args.len() == 1
        && SPLITTABLE.contains(&f.func.name().to_lowercase().as_str()))
    .then(|| DistinctAgg {
        func: &f.func,
        arg: &args[0],
    })
}

/// DataFusion has a grouped accumulator for `count(DISTINCT <integer>)`,
/// which is cheap; everything else goes through the per-group sets.
fn is_costly(agg: &DistinctAgg, schema: &DFSchemaRef) -> bool {
    let integer = matches!(
        agg.arg.get_type(schema),
        Ok(DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64)
    );
    !(agg.func.name().eq_ignore_ascii_case("count") && integer)
}

/// Should `aggregate` be split? Only when every aggregate is understood,
/// the DISTINCT ones are splittable, at least one of them is costly, and
/// DataFusion's own single-distinct rewrite does not apply.
fn should_split(aggregate: &Aggregate) -> bool {
    if matches!(aggregate.group_expr.first(), Some(Expr::GroupingSet(_))) {
        return false;
    }
    let input_schema = aggregate.input.schema();
    let mut distinct = Vec::new();
    let mut plain = 0;
    for expr in &aggregate.aggr_expr {
        let Some(f) = as_aggregate(expr) else { return false };
        if f.params.distinct {
            match splittable_distinct(f) {
                Some(d) => distinct.push(d),
                None => return false,
            }
        } else {
            plain += 1;
        }
    }
    let args: std::collections::HashSet<String> =
        distinct.iter().map(|d| d.arg.schema_name().to_string()).collect();
    !distinct.is_empty()
        && (plain > 0 || args.len() > 1)
        && distinct.iter().any(|d| is_costly(d, input_schema))
}

fn column(relation: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(relation), name))
}

impl OptimizerRule for SplitDistinctAggregates {
    fn name(&self) -> &str {
        "kiln_split_distinct_aggregates"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if !should_split(aggregate) {
            return Ok(Transformed::no(plan));
        }
        split(aggregate).map(Transformed::yes)
    }
}

fn split(aggregate: &Aggregate) -> Result<LogicalPlan> {
    let input = &aggregate.input;
    let keys: Vec<Expr> = aggregate
        .group_expr
        .iter()
        .enumerate()
        .map(|(i, g)| g.clone().alias(format!("__kiln_g{i}")))
        .collect();
    let key_names: Vec<String> = (0..keys.len()).map(|i| format!("__kiln_g{i}")).collect();

    // The plain aggregates on one side; each distinct argument on its own.
    let mut plain = Vec::new();
    let mut by_arg: BTreeMap<String, (Expr, Vec<Expr>)> = BTreeMap::new();
    // For output column k: which side holds it.
    let mut side_of: Vec<String> = Vec::new();
    for (k, expr) in aggregate.aggr_expr.iter().enumerate() {
        let f = as_aggregate(expr).expect("checked by should_split");
        let name = format!("__kiln_a{k}");
        match splittable_distinct(f) {
            Some(d) => {
                let arg_key = d.arg.schema_name().to_string();
                let entry = by_arg
                    .entry(arg_key)
                    .or_insert_with(|| (d.arg.clone(), Vec::new()));
                let plain_form = Expr::AggregateFunction(AggregateFunction::new_udf(
                    Arc::clone(d.func),
                    vec![Expr::Column(Column::from_name("__kiln_d"))],
                    false,
                    None,
                    vec![],
                    None,
                ));
                entry.1.push(plain_form.alias(&name));
                side_of.push(String::new()); // filled below
            }
            None => {
                plain.push(strip_alias(expr).alias(&name));
                side_of.push("__kiln_l".to_string());
            }
        }
    }

    let mut plan = LogicalPlanBuilder::from(Arc::clone(input))
        .aggregate(keys.clone(), plain)?
        .alias("__kiln_l")?;
    for (j, (_, (arg, aggs))) in by_arg.iter().enumerate() {
        let side = format!("__kiln_r{j}");
        for agg in aggs {
            let Expr::Alias(alias) = agg else {
                unreachable!("aliased above")
            };
            let k: usize = alias.name["__kiln_a".len()..].parse().expect("our own alias");
            side_of[k] = side.clone();
        }
        let mut pair_keys = keys.clone();
        pair_keys.push(arg.clone().alias("__kiln_d"));
        let outer_keys: Vec<Expr> = key_names
            .iter()
            .map(|n| Expr::Column(Column::from_name(n)))
            .collect();
        let right = LogicalPlanBuilder::from(Arc::clone(input))
            .aggregate(pair_keys, Vec::<Expr>::new())?
            .aggregate(outer_keys, aggs.clone())?
            .alias(&side)?
            .build()?;
        plan = if key_names.is_empty() {
            plan.cross_join(right)?
        } else {
            let on_left: Vec<Column> = key_names
                .iter()
                .map(|n| Column::new(Some("__kiln_l"), n))
                .collect();
            let on_right: Vec<Column> = key_names
                .iter()
                .map(|n| Column::new(Some(side.as_str()), n))
                .collect();
            plan.join_detailed(
                right,
                JoinType::Inner,
                (on_left, on_right),
                None,
                NullEquality::NullEqualsNull,
            )?
        };
    }

    // Same names, qualifiers and order as the aggregate it replaces.
    let schema = &aggregate.schema;
    let outputs: Vec<Expr> = key_names
        .iter()
        .map(|n| column("__kiln_l", n))
        .chain(
            side_of
                .iter()
                .enumerate()
                .map(|(k, side)| column(side, &format!("__kiln_a{k}"))),
        )
        .enumerate()
        .map(|(i, e)| {
            let (qualifier, field) = schema.qualified_field(i);
            e.alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    plan.project(outputs)?.build()
}

fn strip_alias(expr: &Expr) -> Expr {
    match expr {
        Expr::Alias(a) => strip_alias(&a.expr),
        e => e.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::engine::rule_testing::{plan, run, session_with};

    fn context(with_rule: bool) -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::Int64, true),
            Field::new("item", DataType::Utf8, true),
            Field::new("kind", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let g: Vec<Option<i64>> = (0..200)
            .map(|i| if i % 17 == 0 { None } else { Some(i % 5) })
            .collect();
        let item: Vec<Option<String>> = (0..200)
            .map(|i| {
                if i % 11 == 0 {
                    None
                } else {
                    Some(format!("i{}", (i * 7) % 13))
                }
            })
            .collect();
        let kind: Vec<&str> = (0..200)
            .map(|i| if i % 3 == 0 { "buy" } else { "view" })
            .collect();
        let v: Vec<i64> = (0..200).map(|i| i % 9).collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(g)),
                Arc::new(StringArray::from(item)),
                Arc::new(StringArray::from(kind)),
                Arc::new(Int64Array::from(v)),
            ],
        )
        .unwrap();
        let rule: Option<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> =
            with_rule.then(|| Arc::new(SplitDistinctAggregates) as _);
        session_with("t", batch, rule)
    }

    const QUERIES: &[&str] = &[
        // The feature-pipeline shape: distinct strings beside count, avg, FILTER.
        "SELECT g, count(*) AS n, count(DISTINCT item) AS items, avg(v) AS av, \
         count(*) FILTER (WHERE kind = 'buy') AS buys FROM t GROUP BY g ORDER BY g NULLS FIRST",
        // Two distinct arguments, an expression key, no plain aggregate.
        "SELECT g % 2 AS parity, count(DISTINCT item) AS items, count(DISTINCT kind) AS kinds, \
         sum(DISTINCT v) AS sv FROM t GROUP BY g % 2 ORDER BY parity NULLS FIRST",
        // No GROUP BY at all.
        "SELECT count(*) AS n, count(DISTINCT item) AS items, max(v) AS mx FROM t",
    ];

    #[tokio::test]
    async fn split_plans_give_the_same_answers() {
        let plain = context(false);
        let split = context(true);
        for sql in QUERIES {
            assert!(
                plan(&split, sql).await.contains("__kiln_r0"),
                "not rewritten: {sql}"
            );
            assert!(!plan(&plain, sql).await.contains("__kiln_"));
            assert_eq!(run(&plain, sql).await, run(&split, sql).await, "{sql}");
        }
    }

    #[tokio::test]
    async fn leaves_cheap_or_unsplittable_aggregates_alone() {
        let ctx = context(true);
        for sql in [
            // Integer distinct counts have DataFusion's own grouped accumulator.
            "SELECT g, count(*), count(DISTINCT v) FROM t GROUP BY g",
            // A DISTINCT with a FILTER is not rewritten.
            "SELECT g, count(*), count(DISTINCT item) FILTER (WHERE v > 2) FROM t GROUP BY g",
            // No DISTINCT at all.
            "SELECT g, count(*) FROM t GROUP BY g",
        ] {
            assert!(!plan(&ctx, sql).await.contains("__kiln_"), "{sql}");
        }
    }
}
