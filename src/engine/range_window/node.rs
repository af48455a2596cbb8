//! The logical plan node for trailing day windows and its physical planning.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::{Field, Schema};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DFSchema, DFSchemaRef, Result, internal_err};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, ExprSchemable, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::exec::{TrailingDaysExec, WindowFunction};
use super::sliding::Kind;

/// `kind(arg) OVER (PARTITION BY keys ORDER BY day RANGE BETWEEN INTERVAL
/// 'days_back' DAY PRECEDING AND CURRENT ROW)` for each function, appended
/// to the input's columns. Arguments are input columns already in the
/// working type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrailingDaysNode {
    pub input: Arc<LogicalPlan>,
    pub partition_by: Vec<Expr>,
    pub day: Expr,
    pub nulls_first: bool,
    pub days_back: i32,
    pub kinds: Vec<Kind>,
    pub args: Vec<Expr>,
    pub schema: DFSchemaRef,
}

impl PartialOrd for TrailingDaysNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let key = |n: &Self| {
            (
                Arc::clone(&n.input),
                n.partition_by.clone(),
                n.day.clone(),
                n.nulls_first,
                n.days_back,
                n.kinds.clone(),
                n.args.clone(),
            )
        };
        // Nodes equal in all but schema are not ordered (as DataFusion's own
        // nodes do it), so that ordering stays consistent with Eq.
        key(self)
            .partial_cmp(&key(other))
            .filter(|o| *o != Ordering::Equal || self == other)
    }
}

impl UserDefinedLogicalNodeCore for TrailingDaysNode {
    fn name(&self) -> &str {
        "TrailingDays"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        self.partition_by
            .iter()
            .chain([&self.day])
            .chain(&self.args)
            .cloned()
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let functions: Vec<String> = self
            .kinds
            .iter()
            .zip(&self.args)
            .map(|(k, a)| format!("{}({a})", k.name()))
            .collect();
        let keys: Vec<String> = self.partition_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "TrailingDays: [{}] over {} days back from {} by [{}]",
            functions.join(", "),
            self.days_back,
            self.day,
            keys.join(", ")
        )
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let keys = self.partition_by.len();
        if inputs.len() != 1 || exprs.len() != keys + 1 + self.args.len() {
            return internal_err!("TrailingDays: wrong number of inputs or expressions");
        }
        let args = exprs.split_off(keys + 1);
        let day = exprs.pop().expect("checked length");
        Ok(Self {
            input: Arc::new(inputs.swap_remove(0)),
            partition_by: exprs,
            day,
            args,
            ..self.clone()
        })
    }
}

/// Plans [`TrailingDaysNode`] as [`TrailingDaysExec`].
#[derive(Debug)]
pub struct TrailingDaysPlanner;

#[async_trait]
impl ExtensionPlanner for TrailingDaysPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<TrailingDaysNode>() else {
            return Ok(None);
        };
        let input_schema = logical_inputs[0].schema();
        let physical = |e: &Expr| planner.create_physical_expr(e, input_schema, session, planning_ctx);
        let functions = node
            .kinds
            .iter()
            .zip(&node.args)
            .map(|(kind, arg)| {
                Ok(WindowFunction {
                    kind: *kind,
                    arg: physical(arg)?,
                    working_type: arg.get_type(input_schema)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let schema: Schema = node.schema.as_arrow().clone();
        Ok(Some(Arc::new(TrailingDaysExec::try_new(
            Arc::clone(&physical_inputs[0]),
            node.partition_by.iter().map(physical).collect::<Result<_>>()?,
            physical(&node.day)?,
            SortOptions {
                descending: false,
                nulls_first: node.nulls_first,
            },
            node.days_back,
            functions,
            Arc::new(schema),
        )?)))
    }
}

/// The node's schema: its input's columns, then `outputs`.
pub fn node_schema(input: &DFSchema, outputs: Vec<Field>) -> Result<DFSchemaRef> {
    let mut fields: Vec<_> = input.iter().map(|(q, f)| (q.cloned(), Arc::clone(f))).collect();
    fields.extend(outputs.into_iter().map(|f| (None, Arc::new(f))));
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )?))
}
