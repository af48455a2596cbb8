//! The physical operator of an as-of join.
//!
//! It asks DataFusion for both sides hash-partitioned on the keys (one
//! partition when there are none), so each partition joins on its own,
//! within the session's memory pool, spilling when it must (see
//! [`super::partition`]). The match runs in Polars ([`crate::asof`]); only
//! the keys and times cross to it.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNodeIterator, TreeNodeRecursion};
use datafusion::common::{Result, internal_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, SpillMetrics,
};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;

use super::describe;
use super::matching::Rule;
use super::partition::{Expr, Partition, SideExprs, SideLimit};

/// The metric counting the rows the right side gave.
pub const RIGHT_ROWS: &str = "right_rows";
/// The metric counting the left rows that found a match.
pub const MATCHED_ROWS: &str = "matched_rows";
/// The metric counting the buckets a partition too large to match whole
/// was split into and matched one by one.
pub const BUCKETS: &str = "buckets";

#[derive(Debug)]
pub struct AsOfJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    on: Vec<(Expr, Expr)>,
    left_time: Expr,
    right_time: Expr,
    rule: Rule,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl AsOfJoinExec {
    pub(super) fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        on: Vec<(Expr, Expr)>,
        left_time: Expr,
        right_time: Expr,
        rule: Rule,
        schema: SchemaRef,
    ) -> Result<Self> {
        if schema.fields().len() != left.schema().fields().len() + right.schema().fields().len() {
            return internal_err!("as-of join: schema does not match its inputs");
        }
        if left.boundedness().is_unbounded() || right.boundedness().is_unbounded() {
            return plan_err!("an ASOF JOIN reads both sides whole: it cannot join an unbounded input");
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            // The left side's columns keep their positions, so its
            // partitioning holds for the output.
            left.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            left,
            right,
            on,
            left_time,
            right_time,
            rule,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl DisplayAs for AsOfJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "AsOfJoinExec: ")?;
        describe(
            f,
            &self.left_time,
            self.rule.inclusive,
            &self.right_time,
            &self.on,
            self.rule.max_age,
        )?;
        write!(f, ", in Polars")
    }
}

impl ExecutionPlan for AsOfJoinExec {
    fn name(&self) -> &str {
        "AsOfJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        if self.on.is_empty() {
            return InputDistributionRequirements::new(vec![
                Distribution::SinglePartition,
                Distribution::SinglePartition,
            ]);
        }
        let (left, right) = self
            .on
            .iter()
            .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
            .unzip();
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(left),
            Distribution::KeyPartitioned(right),
        ])
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let exprs = self
            .on
            .iter()
            .flat_map(|(l, r)| [l, r])
            .chain([&self.left_time, &self.right_time]);
        exprs.apply_until_stop(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Ok([left, right]) = <[Arc<dyn ExecutionPlan>; 2]>::try_from(children) else {
            return internal_err!("AsOfJoinExec takes two inputs");
        };
        Ok(Arc::new(Self::try_new(
            left,
            right,
            self.on.clone(),
            Arc::clone(&self.left_time),
            Arc::clone(&self.right_time),
            self.rule,
            Arc::clone(&self.schema),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let memory = |side: &str| {
            MemoryConsumer::new(format!("AsOfJoinExec[{partition}] {side} side"))
                .with_can_spill(true)
                .register(context.memory_pool())
        };
        let spill = |input: &Arc<dyn ExecutionPlan>| {
            Arc::new(SpillManager::new(
                context.runtime_env(),
                SpillMetrics::new(&self.metrics, partition),
                input.schema(),
            ))
        };
        let job = Partition {
            left: SideExprs {
                keys: self.on.iter().map(|(l, _)| Arc::clone(l)).collect(),
                time: Arc::clone(&self.left_time),
            },
            right: SideExprs {
                keys: self.on.iter().map(|(_, r)| Arc::clone(r)).collect(),
                time: Arc::clone(&self.right_time),
            },
            rule: self.rule,
            schema: Arc::clone(&self.schema),
            left_memory: memory("left"),
            right_memory: memory("right"),
            left_spill: spill(&self.left),
            right_spill: spill(&self.right),
            metrics: BaselineMetrics::new(&self.metrics, partition),
            right_rows: MetricBuilder::new(&self.metrics).counter(RIGHT_ROWS, partition),
            matched_rows: MetricBuilder::new(&self.metrics).counter(MATCHED_ROWS, partition),
            buckets: MetricBuilder::new(&self.metrics).counter(BUCKETS, partition),
            batch_size: context.session_config().batch_size(),
            side_bytes: SideLimit::of(context.session_config()),
        };
        let joined = job.run(
            self.left.execute(partition, Arc::clone(&context))?,
            self.right.execute(partition, Arc::clone(&context))?,
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::stream::once(joined).try_flatten(),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
