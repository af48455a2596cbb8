//! `ASOF JOIN` in pipeline SQL: the point-in-time match of
//! `kiln training-set`, written in a SELECT.
//!
//! ```sql
//! FROM labels l
//! ASOF JOIN user_daily f
//!   MATCH_CONDITION (l.label_time > f.day)
//!   ON l.user_id = f.user_id
//! ```
//!
//! Every row of the left side appears once, with the right side's latest
//! row of the same keys whose time is before the left row's (`>`), or at
//! or before it (`>=`); with none, the right side's columns are null. It
//! is Snowflake's form, which sqlparser parses; DataFusion has no plan for
//! it, so kiln plans it in three steps:
//!
//! 1. [`fold_asof_joins`] rewrites the parsed statement so that each as-of
//!    join ends a nested join of its own (`a JOIN b ASOF JOIN c JOIN d`
//!    becomes `(a JOIN b ASOF JOIN c) JOIN d`): DataFusion hands nested
//!    joins to relation planners, never single joins;
//! 2. [`AsOfJoinPlanner`] plans such a nested join as an [`AsOfJoinNode`],
//!    checking the condition and reporting what it cannot plan at the
//!    condition's position in the file;
//! 3. [`AsOfJoinExec`] runs it, with both sides partitioned by the keys,
//!    through [`crate::asof::match_rows`] (Polars).

mod exec;
mod matching;
mod node;
mod partition;
#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::{DFSchema, DataFusionError, Diagnostic, Result, Span};
use datafusion::logical_expr::planner::{
    PlannedRelation, RelationPlanner, RelationPlannerContext, RelationPlanning,
};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::sql::sqlparser::ast::{
    Join, JoinConstraint, JoinOperator, Select, Spanned, TableFactor, TableWithJoins, VisitMut, VisitorMut,
};

pub use exec::{AsOfJoinExec, MATCHED_ROWS, RIGHT_ROWS};
pub use node::{AsOfJoinNode, AsOfJoinPhysicalPlanner};

/// Rewrites every as-of join in `statement` into the shape
/// [`AsOfJoinPlanner`] plans. Statements without one are left as they are.
pub fn fold_asof_joins<V: VisitMut>(statement: &mut V) {
    let _ = statement.visit(&mut Folder);
}

struct Folder;

impl VisitorMut for Folder {
    type Break = ();

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
        for from in &mut select.from {
            fold(from, false);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if let TableFactor::NestedJoin { table_with_joins, .. } = factor {
            fold(table_with_joins, true);
        }
        ControlFlow::Continue(())
    }
}

/// Moves the joins up to and including each as-of join into a nested
/// join. A nested join may keep one as-of join as its last: that is the
/// shape being made, so folding twice changes nothing.
fn fold(from: &mut TableWithJoins, nested: bool) {
    loop {
        let keep_last = usize::from(nested);
        let Some(at) = from.joins[..from.joins.len().saturating_sub(keep_last)]
            .iter()
            .position(is_asof)
        else {
            return;
        };
        let rest = from.joins.split_off(at + 1);
        let folded = std::mem::replace(&mut from.joins, rest);
        let relation = std::mem::replace(&mut from.relation, placeholder());
        from.relation = TableFactor::NestedJoin {
            table_with_joins: Box::new(TableWithJoins {
                relation,
                joins: folded,
            }),
            alias: None,
        };
    }
}

fn is_asof(join: &Join) -> bool {
    matches!(join.join_operator, JoinOperator::AsOf { .. })
}

/// A value to hold a relation's place for the moment it is moved.
fn placeholder() -> TableFactor {
    TableFactor::Table {
        name: datafusion::sql::sqlparser::ast::ObjectName(vec![]),
        alias: None,
        args: None,
        with_hints: vec![],
        version: None,
        with_ordinality: false,
        partitions: vec![],
        json_path: None,
        sample: None,
        index_hints: vec![],
    }
}

/// Plans a nested join whose last join is an as-of join; DataFusion plans
/// everything else.
#[derive(Debug, Default)]
pub struct AsOfJoinPlanner;

impl RelationPlanner for AsOfJoinPlanner {
    fn plan_relation(
        &self,
        relation: TableFactor,
        context: &mut dyn RelationPlannerContext,
    ) -> Result<RelationPlanning> {
        let TableFactor::NestedJoin {
            mut table_with_joins,
            alias,
        } = relation
        else {
            return Ok(RelationPlanning::Original(Box::new(relation)));
        };
        if !table_with_joins.joins.last().is_some_and(is_asof) {
            return Ok(RelationPlanning::Original(Box::new(TableFactor::NestedJoin {
                table_with_joins,
                alias,
            })));
        }
        let join = table_with_joins
            .joins
            .pop()
            .expect("checked: an as-of join is last");
        let JoinOperator::AsOf {
            match_condition,
            constraint,
        } = join.join_operator
        else {
            unreachable!("checked: an as-of join is last")
        };
        let left = if table_with_joins.joins.is_empty() {
            context.plan(table_with_joins.relation)?
        } else {
            context.plan(TableFactor::NestedJoin {
                table_with_joins,
                alias: None,
            })?
        };
        let right = context.plan(join.relation)?;
        let joined = left.schema().join(right.schema())?;

        let condition_span = match_condition.span();
        let condition = context.sql_to_expr(match_condition, &joined)?;
        let on = match constraint {
            JoinConstraint::None => None,
            JoinConstraint::On(on) => {
                let span = on.span();
                Some((context.sql_to_expr(on, &joined)?, span))
            }
            JoinConstraint::Using(_) | JoinConstraint::Natural => {
                return Err(at(
                    condition_span,
                    "an ASOF JOIN takes its keys as ON l.key = r.key [AND ...]: USING and NATURAL are not supported",
                ));
            }
        };
        let node = AsOfJoinNode::plan(Arc::new(left), Arc::new(right), (condition, condition_span), on)?;
        Ok(RelationPlanning::Planned(Box::new(PlannedRelation::new(
            LogicalPlan::Extension(Extension { node: Arc::new(node) }),
            alias,
        ))))
    }
}

/// A planning error at a position of the SQL text, which `kiln check`
/// reports as `file:line:col`.
fn at(span: datafusion::sql::sqlparser::tokenizer::Span, message: impl Into<String>) -> DataFusionError {
    let message = message.into();
    DataFusionError::Plan(message.clone()).with_diagnostic(Diagnostic::new_error(
        message,
        Span::try_from_sqlparser_span(span),
    ))
}

/// Whether every column `expr` names is one of `schema`'s.
fn refers_only_to(expr: &datafusion::logical_expr::Expr, schema: &DFSchema) -> bool {
    let columns = expr.column_refs();
    !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
}

/// `left > right, on=[l = r, ...][, max_age=7days]`, as both plans show
/// the join.
fn describe<T: fmt::Display>(
    f: &mut fmt::Formatter,
    left_time: &T,
    inclusive: bool,
    right_time: &T,
    on: &[(T, T)],
    max_age: Option<std::time::Duration>,
) -> fmt::Result {
    let on: Vec<String> = on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
    let op = if inclusive { ">=" } else { ">" };
    write!(f, "{left_time} {op} {right_time}, on=[{}]", on.join(", "))?;
    if let Some(age) = max_age {
        write!(f, ", max_age={}", humantime::format_duration(age))?;
    }
    Ok(())
}
