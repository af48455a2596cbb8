//! Helpers for testing kiln's optimizer rules: the same SQL in a session
//! with and without a rule must give the same answer, and the rule must
//! (or must not) have changed the plan.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::optimizer::OptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::KilnQueryPlanner;

/// A session holding `batch` as table `name`, with `rule` added if given.
pub fn session_with(
    name: &str,
    batch: RecordBatch,
    rule: Option<Arc<dyn OptimizerRule + Send + Sync>>,
) -> SessionContext {
    // Small batches, so that operators meet batch boundaries in tests.
    let state = SessionStateBuilder::new()
        .with_config(SessionConfig::new().with_batch_size(8))
        .with_default_features()
        .with_query_planner(Arc::new(KilnQueryPlanner::default()))
        .build();
    let ctx = SessionContext::new_with_state(state);
    if let Some(rule) = rule {
        ctx.add_optimizer_rule(rule);
    }
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    ctx.register_table(name, Arc::new(table)).unwrap();
    ctx
}

/// A session's state with kiln's query planner, two partitions, batches of
/// `batch_size` rows and `pool` bytes of memory (none: unbounded), its
/// sorts reserving little, so that a small pool makes operators spill.
pub fn small_state(batch_size: usize, pool: Option<usize>) -> SessionStateBuilder {
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = pool {
        runtime = runtime.with_memory_pool(Arc::new(FairSpillPool::new(bytes)));
    }
    SessionStateBuilder::new()
        .with_config(
            SessionConfig::new()
                .with_target_partitions(2)
                .with_batch_size(batch_size)
                .set_usize("datafusion.execution.sort_spill_reservation_bytes", 64 << 10),
        )
        .with_runtime_env(runtime.build_arc().unwrap())
        .with_default_features()
        .with_query_planner(Arc::new(KilnQueryPlanner::default()))
}

/// The query's result, as a table of text.
pub async fn run(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The optimized logical plan, indented.
pub async fn plan(ctx: &SessionContext, sql: &str) -> String {
    let df = ctx.sql(sql).await.unwrap();
    format!("{}", df.into_optimized_plan().unwrap().display_indent())
}

/// The input rows each SharedSubqueryExec's subquery produced, and the
/// spill files they wrote.
fn rows_computed(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<usize>, spills: &mut usize) {
    if plan.name() == "SharedSubqueryExec" {
        let input = &plan.children()[0];
        out.push(input.metrics().and_then(|m| m.output_rows()).unwrap_or(0));
        *spills += plan.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
    }
    for child in plan.children() {
        rows_computed(child, out, spills);
    }
}

/// The query's result, with what [`rows_computed`] finds in its plan.
pub async fn shared_run(ctx: &SessionContext, sql: &str) -> (String, Vec<usize>, usize) {
    let df = ctx.sql(sql).await.unwrap();
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await.unwrap();
    let batches = datafusion::physical_plan::collect(Arc::clone(&plan), task)
        .await
        .unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    let mut computed = Vec::new();
    let mut spills = 0;
    rows_computed(&plan, &mut computed, &mut spills);
    (text, computed, spills)
}
