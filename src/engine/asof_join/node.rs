//! The logical node of an as-of join, how a parsed `ASOF JOIN` becomes
//! one, and its physical planning.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::DataType;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::type_coercion::binary::comparison_coercion;
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{
    BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use datafusion::sql::sqlparser::tokenizer::Span as SqlSpan;

use super::exec::AsOfJoinExec;
use super::matching::Rule;
use super::{at, describe, refers_only_to};
use crate::engine::widens_to_i64;

/// Each row of `left` with the latest row of `right` whose keys equal its
/// own and whose time is before its time (at or before it when
/// `inclusive`), or nulls for `right`'s columns. The output is `left`'s
/// columns, then `right`'s, all of them nullable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsOfJoinNode {
    pub left: Arc<LogicalPlan>,
    pub right: Arc<LogicalPlan>,
    /// Pairs of equal keys, (left, right), each pair of one type.
    pub on: Vec<(Expr, Expr)>,
    pub left_time: Expr,
    pub right_time: Expr,
    pub inclusive: bool,
    /// A match older than this (left time minus right time) is none.
    pub max_age: Option<Duration>,
    pub schema: DFSchemaRef,
}

impl AsOfJoinNode {
    /// The node for `left ASOF JOIN right MATCH_CONDITION (condition) [ON on]`,
    /// the expressions already planned against both sides' columns. Errors
    /// point at the condition (or the ON clause) in the SQL text.
    pub fn plan(
        left: Arc<LogicalPlan>,
        right: Arc<LogicalPlan>,
        (condition, condition_span): (Expr, SqlSpan),
        on: Option<(Expr, SqlSpan)>,
    ) -> Result<Self> {
        let (left_schema, right_schema) = (left.schema(), right.schema());
        let Expr::BinaryExpr(BinaryExpr {
            left: a,
            op,
            right: b,
        }) = condition
        else {
            return Err(at(
                condition_span,
                format!(
                    "the MATCH_CONDITION of an ASOF JOIN compares a time of each side (l.t > r.t or l.t >= r.t), not {condition}"
                ),
            ));
        };
        let Some((left_time, op, right_time)) = by_side(*a, op, *b, left_schema, right_schema) else {
            return Err(at(
                condition_span,
                "each side of an ASOF JOIN's MATCH_CONDITION must name columns of one side of the join only",
            ));
        };
        let inclusive = match op {
            Operator::Gt => false,
            Operator::GtEq => true,
            Operator::Lt | Operator::LtEq => {
                return Err(at(
                    condition_span,
                    format!(
                        "kiln plans backward as-of joins only: each left row takes the latest right row before it, \
                         so the left time must be the later one ({left_time} > {right_time}, or >= to include equal times)"
                    ),
                ));
            }
            other => {
                return Err(at(
                    condition_span,
                    format!("an ASOF JOIN's MATCH_CONDITION compares times with > or >=, not {other}"),
                ));
            }
        };
        let (lt, rt) = (
            left_time.get_type(left_schema)?,
            right_time.get_type(right_schema)?,
        );
        if !(is_temporal(&lt) && is_temporal(&rt) || widens_to_i64(&lt) && widens_to_i64(&rt)) {
            return Err(at(
                condition_span,
                format!(
                    "the times of an ASOF JOIN must both be TIMESTAMP or DATE (any unit or time zone: they are \
                     compared as instants) or both integers, but {left_time} is {lt} and {right_time} is {rt}"
                ),
            ));
        }

        let mut keys = Vec::new();
        if let Some((on, on_span)) = on {
            for equality in split_conjunction_owned(on) {
                let Expr::BinaryExpr(BinaryExpr {
                    left: a,
                    op: Operator::Eq,
                    right: b,
                }) = equality
                else {
                    return Err(at(
                        on_span,
                        format!(
                            "the ON clause of an ASOF JOIN holds only equal keys (l.k = r.k AND ...), not {equality}: \
                             the time comparison goes in MATCH_CONDITION"
                        ),
                    ));
                };
                let Some((l, _, r)) = by_side(*a, Operator::Eq, *b, left_schema, right_schema) else {
                    return Err(at(
                        on_span,
                        "each side of an equality in an ASOF JOIN's ON clause must name columns of one side of the join only",
                    ));
                };
                let (lt, rt) = (l.get_type(left_schema)?, r.get_type(right_schema)?);
                let Some(common) = comparison_coercion(&lt, &rt) else {
                    return Err(at(
                        on_span,
                        format!("ASOF JOIN keys {l} ({lt}) and {r} ({rt}) cannot be compared"),
                    ));
                };
                keys.push((
                    l.cast_to(&common, left_schema)?,
                    r.cast_to(&common, right_schema)?,
                ));
            }
        }
        Self::new(left, right, keys, left_time, right_time, inclusive, None)
    }

    /// The node over expressions already checked: keys of one type per
    /// pair, times that are both instants or both integers (`max_age`
    /// only with instants).
    pub fn new(
        left: Arc<LogicalPlan>,
        right: Arc<LogicalPlan>,
        on: Vec<(Expr, Expr)>,
        left_time: Expr,
        right_time: Expr,
        inclusive: bool,
        max_age: Option<Duration>,
    ) -> Result<Self> {
        let nullable_right = right
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true))));
        let fields = left
            .schema()
            .iter()
            .map(|(q, f)| (q.cloned(), Arc::clone(f)))
            .chain(nullable_right)
            .collect();
        let schema = Arc::new(DFSchema::new_with_metadata(
            fields,
            left.schema().metadata().clone(),
        )?);
        Ok(Self {
            left,
            right,
            on,
            left_time,
            right_time,
            inclusive,
            max_age,
            schema,
        })
    }
}

/// `a op b` as (left side's expression, the operator as read from the
/// left side, right side's expression), or None when the two do not
/// each belong to one side.
fn by_side(
    a: Expr,
    op: Operator,
    b: Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Option<(Expr, Operator, Expr)> {
    if refers_only_to(&a, left) && refers_only_to(&b, right) {
        Some((a, op, b))
    } else if refers_only_to(&b, left) && refers_only_to(&a, right) {
        Some((b, op.swap()?, a))
    } else {
        None
    }
}

fn is_temporal(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(..) | DataType::Date32 | DataType::Date64)
}

impl PartialOrd for AsOfJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let key = |n: &Self| {
            (
                Arc::clone(&n.left),
                Arc::clone(&n.right),
                n.on.clone(),
                n.left_time.clone(),
                n.right_time.clone(),
                n.inclusive,
                n.max_age,
            )
        };
        // Nodes equal in all but schema are not ordered, so that ordering
        // stays consistent with Eq.
        key(self)
            .partial_cmp(&key(other))
            .filter(|o| *o != Ordering::Equal || self == other)
    }
}

impl UserDefinedLogicalNodeCore for AsOfJoinNode {
    fn name(&self) -> &str {
        "AsOfJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// The key pairs in order, then the two times.
    fn expressions(&self) -> Vec<Expr> {
        self.on
            .iter()
            .flat_map(|(l, r)| [l.clone(), r.clone()])
            .chain([self.left_time.clone(), self.right_time.clone()])
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AsOfJoin: ")?;
        describe(
            f,
            &self.left_time,
            self.inclusive,
            &self.right_time,
            &self.on,
            self.max_age,
        )
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let Ok([left, right]) = <[LogicalPlan; 2]>::try_from(inputs) else {
            return internal_err!("AsOfJoin takes two inputs");
        };
        if exprs.len() != 2 * self.on.len() + 2 {
            return internal_err!("AsOfJoin: wrong number of expressions");
        }
        let right_time = exprs.pop().expect("checked length");
        let left_time = exprs.pop().expect("checked length");
        let on = exprs.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
        // The inputs may have lost columns nobody reads: the schema follows.
        Self::new(
            Arc::new(left),
            Arc::new(right),
            on,
            left_time,
            right_time,
            self.inclusive,
            self.max_age,
        )
    }

    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        let width = self.left.schema().fields().len();
        let (left, right): (Vec<usize>, Vec<usize>) = output_columns.iter().partition(|&&i| i < width);
        Some(vec![left, right.into_iter().map(|i| i - width).collect()])
    }
}

/// Plans [`AsOfJoinNode`] as [`AsOfJoinExec`].
#[derive(Debug)]
pub struct AsOfJoinPhysicalPlanner;

#[async_trait]
impl ExtensionPlanner for AsOfJoinPhysicalPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<AsOfJoinNode>() else {
            return Ok(None);
        };
        let (left_schema, right_schema) = (logical_inputs[0].schema(), logical_inputs[1].schema());
        let left = |e: &Expr| planner.create_physical_expr(e, left_schema, session, planning_ctx);
        let right = |e: &Expr| planner.create_physical_expr(e, right_schema, session, planning_ctx);
        Ok(Some(Arc::new(AsOfJoinExec::try_new(
            Arc::clone(&physical_inputs[0]),
            Arc::clone(&physical_inputs[1]),
            node.on
                .iter()
                .map(|(l, r)| Ok((left(l)?, right(r)?)))
                .collect::<Result<_>>()?,
            left(&node.left_time)?,
            right(&node.right_time)?,
            Rule {
                inclusive: node.inclusive,
                max_age: node.max_age,
            },
            Arc::new(node.schema.as_arrow().clone()),
        )?)))
    }
}
