//! The physical operator for trailing day windows.
//!
//! It asks DataFusion for its input hash-partitioned on the window's keys
//! and sorted by (keys, day); the sort DataFusion adds is the one memory
//! consumer and spills under the session's pool. The operator itself
//! streams: it holds one key's last n+1 day totals and the rows of the
//! (key, day) group that may continue in the next batch.

use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{TreeNodeIterator, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{
    EquivalenceProperties, LexRequirement, OrderingRequirements, PhysicalExpr, PhysicalSortRequirement,
};
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::sliding::{Inputs, Kind, TrailingDays};
use arrow::compute::SortOptions;

/// One window function as the operator computes it.
#[derive(Debug, Clone)]
pub struct WindowFunction {
    pub kind: Kind,
    /// The argument, already in the working type (`i64` or `f64`).
    pub arg: Arc<dyn PhysicalExpr>,
    pub working_type: DataType,
}

#[derive(Debug)]
pub struct TrailingDaysExec {
    input: Arc<dyn ExecutionPlan>,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    day: Arc<dyn PhysicalExpr>,
    day_order: SortOptions,
    days_back: i32,
    functions: Vec<WindowFunction>,
    /// The input's columns, then one per function in the window's own type.
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TrailingDaysExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        day: Arc<dyn PhysicalExpr>,
        day_order: SortOptions,
        days_back: i32,
        functions: Vec<WindowFunction>,
        schema: SchemaRef,
    ) -> Result<Self> {
        let input_width = input.schema().fields().len();
        if schema.fields().len() != input_width + functions.len() {
            return internal_err!("trailing-days window: schema does not match its input and functions");
        }
        // Rows leave in the order they came, so the input's orderings and
        // equivalences hold for the output's leading columns.
        let equivalences =
            EquivalenceProperties::new(Arc::clone(&schema)).extend(input.equivalence_properties().clone())?;
        let properties = PlanProperties::new(
            equivalences,
            // Output columns keep the input's positions, so its partitioning
            // expressions still hold.
            input.output_partitioning().clone(),
            EmissionType::Incremental,
            input.boundedness(),
        );
        Ok(Self {
            input,
            partition_by,
            day,
            day_order,
            days_back,
            functions,
            schema,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    fn output_types(&self) -> Vec<DataType> {
        let width = self.input.schema().fields().len();
        self.schema.fields()[width..]
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    }
}

impl DisplayAs for TrailingDaysExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let functions: Vec<String> = self
            .functions
            .iter()
            .map(|w| format!("{}({})", w.kind.name(), w.arg))
            .collect();
        let keys: Vec<String> = self.partition_by.iter().map(|e| e.to_string()).collect();
        write!(
            f,
            "TrailingDaysExec: [{}] over days [{} - {}, {}] by [{}]",
            functions.join(", "),
            self.day,
            self.days_back,
            self.day,
            keys.join(", ")
        )
    }
}

impl ExecutionPlan for TrailingDaysExec {
    fn name(&self) -> &str {
        "TrailingDaysExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![if self.partition_by.is_empty() {
            Distribution::SinglePartition
        } else {
            Distribution::KeyPartitioned(self.partition_by.clone())
        }])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        // Any order of the keys groups them; the days must ascend as the
        // window's ORDER BY says, NULLs where it puts them.
        let requirement = self
            .partition_by
            .iter()
            .map(|k| PhysicalSortRequirement::new(Arc::clone(k), None))
            .chain([PhysicalSortRequirement::new(
                Arc::clone(&self.day),
                Some(self.day_order),
            )]);
        vec![LexRequirement::new(requirement).map(OrderingRequirements::new)]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let exprs = self
            .partition_by
            .iter()
            .chain([&self.day])
            .chain(self.functions.iter().map(|w| &w.arg));
        exprs.apply_until_stop(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("TrailingDaysExec takes one input, got {}", children.len());
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.partition_by.clone(),
            Arc::clone(&self.day),
            self.day_order,
            self.days_back,
            self.functions.clone(),
            Arc::clone(&self.schema),
        )?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let key_types = self
            .partition_by
            .iter()
            .map(|k| k.data_type(&self.input.schema()))
            .collect::<Result<Vec<_>>>()?;
        let kinds: Vec<(Kind, DataType)> = self
            .functions
            .iter()
            .map(|w| (w.kind, w.working_type.clone()))
            .collect();
        let window = Window {
            state: TrailingDays::new(self.days_back, &key_types, &kinds)?,
            partition_by: self.partition_by.clone(),
            day: Arc::clone(&self.day),
            args: self.functions.iter().map(|w| Arc::clone(&w.arg)).collect(),
            output_types: self.output_types(),
            schema: Arc::clone(&self.schema),
            pending: None,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        };
        let batches = futures::stream::try_unfold(
            (input, window, false),
            |(mut input, mut window, done)| async move {
                if done {
                    return Ok(None);
                }
                while let Some(batch) = input.next().await {
                    if let Some(out) = window.push(Some(batch?))? {
                        return Ok(Some((out, (input, window, false))));
                    }
                }
                Ok(window.push(None)?.map(|out| (out, (input, window, true))))
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One partition's stream state.
struct Window {
    state: TrailingDays,
    partition_by: Vec<Arc<dyn PhysicalExpr>>,
    day: Arc<dyn PhysicalExpr>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    output_types: Vec<DataType>,
    schema: SchemaRef,
    /// The rows of the last (key, day) group seen, which may go on.
    pending: Option<RecordBatch>,
    metrics: BaselineMetrics,
}

impl Window {
    /// Takes the next batch (None at the end of the input) and returns the
    /// rows whose groups are complete, with their window values.
    fn push(&mut self, batch: Option<RecordBatch>) -> Result<Option<RecordBatch>> {
        let _timer = self.metrics.elapsed_compute().timer();
        let last = batch.is_none();
        let batch = match (self.pending.take(), batch) {
            (None, None) => return Ok(None),
            (Some(b), None) | (None, Some(b)) => b,
            (Some(p), Some(b)) => concat_batches(&b.schema(), [&p, &b])?,
        };
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(None);
        }
        let evaluate = |e: &Arc<dyn PhysicalExpr>| e.evaluate(&batch)?.into_array(rows);
        let keys = self
            .partition_by
            .iter()
            .map(evaluate)
            .collect::<Result<Vec<ArrayRef>>>()?;
        let day = evaluate(&self.day)?;
        let args = self
            .args
            .iter()
            .map(evaluate)
            .collect::<Result<Vec<ArrayRef>>>()?;
        let inputs = Inputs {
            keys: self.state.keys(&keys, rows)?,
            day: day.as_primitive(),
            args: &args,
        };
        let end = if last {
            rows
        } else {
            let mut start = rows - 1;
            while start > 0 && TrailingDays::same_group(&inputs, start - 1, rows - 1) {
                start -= 1;
            }
            start
        };
        if end < rows {
            self.pending = Some(batch.slice(end, rows - end));
        }
        if end == 0 {
            return Ok(None);
        }
        let values = self.state.compute(&inputs, end);
        let mut columns: Vec<ArrayRef> = batch.columns().iter().map(|c| c.slice(0, end)).collect();
        for (value, output_type) in values.iter().zip(&self.output_types) {
            columns.push(cast(value, output_type)?);
        }
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.metrics.record_output(out.num_rows());
        Ok(Some(out))
    }
}
