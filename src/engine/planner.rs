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
use super::day_cast::dates_by_arithmetic;
use super::range_window::TrailingDaysPlanner;
use super::shared::SharedPlanner;

/// Plans kiln's trailing-day windows, as-of joins and shared subqueries beside
/// DataFusion's own nodes.
#[derive(Debug)]
pub struct KilnQueryPlanner {
    /// Timestamps cast to dates by arithmetic (see `day_cast`), in the plan
    /// the optimizer has finished with.
    arithmetic_dates: bool,
}

impl KilnQueryPlanner {
    pub fn new(arithmetic_dates: bool) -> Self {
        Self { arithmetic_dates }
    }
}

impl Default for KilnQueryPlanner {
    fn default() -> Self {
        Self::new(true)
    }
}

#[async_trait]
impl QueryPlanner for KilnQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let rewritten;
        let logical_plan = if self.arithmetic_dates {
            rewritten = dates_by_arithmetic(logical_plan.clone())?;
            &rewritten
        } else {
            logical_plan
        };
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
