//! The DataFusion session kiln runs a pipeline in, and the planning of a
//! pipeline against it.

mod asof_join;
mod count_distinct;
mod day_cast;
mod distinct;
mod join_sides;
mod over_all;
mod plan;
mod planner;
mod range_window;
mod resources;
#[cfg(test)]
mod rule_testing;
mod shared;
mod time_parts;
mod types;

use std::sync::Arc;

use datafusion::error::Result;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use asof_join::{AsOfJoinExec, AsOfJoinNode, AsOfJoinPlanner, MATCHED_ROWS, RIGHT_ROWS, fold_asof_joins};
pub use count_distinct::{CountDistinct, GroupedCountDistinct, SingleStageCountDistinct};
pub use distinct::SplitDistinctAggregates;
pub use join_sides::BuildOnGroupedSide;
pub use over_all::WindowsOverAll;
pub use plan::{PlannedInsert, PlannedPipeline, list_incremental_files, plan_pipeline};
pub use planner::KilnQueryPlanner;
pub use range_window::DailyRangeWindows;
pub use resources::{Resources, parse_bytes};
pub use shared::ShareRepeatedSubqueries;
pub(crate) use types::widens_to_i64;

/// One session per run, sized to the container.
pub fn session(resources: &Resources) -> Result<SessionContext> {
    // DataFusion's own options can be set as `DATAFUSION_*` variables (for
    // example `DATAFUSION_EXECUTION_BATCH_SIZE`); the parallelism is the
    // container's.
    let mut config = SessionConfig::from_env()?
        .with_target_partitions(resources.target_partitions)
        .with_information_schema(true);
    // Column positions in planning errors, for `file:line:col` messages.
    config.options_mut().sql_parser.collect_spans = true;
    // A join's build side of up to this size is built once and read by
    // every partition, instead of hashing both sides across partitions:
    // DataFusion's 1 MiB and 128 k rows leave a 200 k-row dimension table
    // partitioned, and repartitioning 10 M events around it cost the
    // enrichment pipeline a fifth of its time.
    let optimizer = &mut config.options_mut().optimizer;
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD").is_none() {
        optimizer.hash_join_single_partition_threshold =
            (resources.memory_pool_bytes / 32).clamp(1 << 20, 128 << 20);
    }
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD_ROWS").is_none() {
        optimizer.hash_join_single_partition_threshold_rows = 4_000_000;
    }
    // A sort sets this much aside to merge its spill files; DataFusion's
    // 10 MiB is more than all of a small pool (a `KILN_MEMORY_LIMIT` of a
    // few MiB), where every sort would fail instead of spilling.
    if std::env::var_os("DATAFUSION_EXECUTION_SORT_SPILL_RESERVATION_BYTES").is_none() {
        config.options_mut().execution.sort_spill_reservation_bytes =
            (resources.memory_pool_bytes / 32).clamp(256 << 10, 10 << 20);
    }
    let mut runtime =
        RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(resources.memory_pool_bytes)));
    if let Some(dir) = &resources.spill_dir {
        runtime = runtime.with_temp_file_path(dir);
    }
    let runtime = runtime.build_arc()?;
    crate::ops::metrics::track_engine(&runtime);
    // Where DataFusion's defaults lose to peers on feature workloads.
    let rewrites = std::env::var("KILN_REWRITES").unwrap_or_else(|_| "all".to_string());
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        // `ASOF JOIN` (see `fold_asof_joins`, which every statement goes
        // through first).
        .with_relation_planners(vec![Arc::new(AsOfJoinPlanner)])
        .with_query_planner(Arc::new(KilnQueryPlanner::new(rewrite_enabled(
            &rewrites,
            "date_cast",
        ))));
    if rewrite_enabled(&rewrites, "shared_subqueries") {
        state = state.with_analyzer_rule(Arc::new(ShareRepeatedSubqueries));
    }
    if rewrite_enabled(&rewrites, "over_all") {
        state = state.with_analyzer_rule(Arc::new(WindowsOverAll));
    }
    // Before the split below, which it leaves only the DISTINCT aggregates
    // it does not handle.
    if rewrite_enabled(&rewrites, "count_distinct") {
        state = state.with_optimizer_rule(Arc::new(GroupedCountDistinct));
    }
    if rewrite_enabled(&rewrites, "distinct") {
        state = state.with_optimizer_rule(Arc::new(SplitDistinctAggregates));
    }
    if rewrite_enabled(&rewrites, "range_window") {
        state = state.with_optimizer_rule(Arc::new(DailyRangeWindows));
    }
    state = with_kiln_physical_rules(
        state,
        rewrite_enabled(&rewrites, "join_sides"),
        rewrite_enabled(&rewrites, "count_distinct"),
    );
    let ctx = SessionContext::new_with_state(state.build());
    crate::functions::register(&ctx);
    Ok(ctx)
}

/// DataFusion's physical optimizer rules with kiln's right after
/// `JoinSelection`: [`BuildOnGroupedSide`] must see the join sides
/// DataFusion chose, and [`SingleStageCountDistinct`] the aggregates' two
/// stages, before `EnforceDistribution` fixes how rows are partitioned.
pub(crate) fn with_kiln_physical_rules(
    state: SessionStateBuilder,
    join_sides: bool,
    count_distinct: bool,
) -> SessionStateBuilder {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let mut at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(0, |i| i + 1);
    if join_sides {
        rules.insert(at, Arc::new(BuildOnGroupedSide));
        at += 1;
    }
    if count_distinct {
        rules.insert(at, Arc::new(SingleStageCountDistinct));
    }
    state.with_physical_optimizer_rules(rules)
}

/// `KILN_REWRITES`: `all` (the default), `none`, or a comma-separated list
/// of `count_distinct`, `distinct`, `range_window`, `join_sides`,
/// `shared_subqueries`, `over_all`, `date_cast`. A switch for benchmarks and for ruling
/// kiln's rewrites in or out when a result looks wrong.
fn rewrite_enabled(setting: &str, rule: &str) -> bool {
    match setting.trim() {
        "all" | "" => true,
        "none" => false,
        list => list.split(',').any(|r| r.trim() == rule),
    }
}
