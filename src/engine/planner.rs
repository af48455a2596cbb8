//! DataFusion's physical planner, taught kiln's own plan nodes.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use super::asof_join::AsOfJoinPhysicalPlanner;
use super::range_window::TrailingDaysPlanner;
use super::shared::SharedPlanner;

/// Plans kiln's trailing-day windows, as-of joins and shared subqueries beside
/// DataFusion's own nodes.
#[derive(Debug, Default)]
pub struct KilnQueryPlanner;

#[async_trait]
impl QueryPlanner for KilnQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A fresh SharedPlanner: the copies of a shared subquery share one
        // execution per physical plan, never across plans.
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(TrailingDaysPlanner),
            Arc::new(AsOfJoinPhysicalPlanner),
            Arc::new(SharedPlanner::default()),
        ])
        .create_physical_plan(logical_plan, session)
        .await
    }
}
