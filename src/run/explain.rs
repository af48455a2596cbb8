//! `kiln explain`: the plans DataFusion will run for each INSERT, after
//! kiln's rewrites; with `--analyze` the queries run (nothing is committed)
//! and each operator shows its rows, time and memory.

use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use serde::Serialize;

use crate::engine::{self, Resources};
use crate::error::{Context, KilnError, Result};
use crate::featureset::OpenTables;
use crate::functions;
use crate::pipeline::Pipeline;

#[derive(Debug, Clone, Serialize)]
pub struct InsertPlan {
    pub feature_set: String,
    /// (plan type, plan text), as DataFusion's EXPLAIN gives them.
    pub plans: Vec<(String, String)>,
    /// The feature functions the query calls and where each runs.
    pub functions: Vec<FunctionDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FunctionDevice {
    pub function: String,
    pub device: String,
}

pub async fn explain_pipeline(
    pipeline: &Pipeline,
    analyze: bool,
    resources: &Resources,
) -> Result<Vec<InsertPlan>> {
    let ctx = engine::session(resources).context(|| "creating the query session".to_string())?;
    // Kafka sources are planned, not read: `--analyze` runs them empty.
    let problems = super::kafka::register_unread(&ctx, pipeline).await;
    if !problems.is_empty() {
        return Err(KilnError::Problems(problems));
    }
    let planned = engine::plan_pipeline(&ctx, pipeline, &OpenTables::default(), None)
        .await
        .map_err(KilnError::Problems)?;
    let mut out = Vec::new();
    for insert in planned.inserts {
        let name = insert.feature_set.name.clone();
        let devices = functions::device::current();
        let functions = functions::used_in(insert.df.logical_plan())
            .into_iter()
            .map(|f| FunctionDevice {
                device: devices.describe(functions::ON_GPU.contains(&f.as_str())),
                function: f,
            })
            .collect();
        let batches = insert
            .df
            .explain(false, analyze)
            .context(|| format!("explaining '{name}'"))?
            .collect()
            .await
            .context(|| format!("explaining '{name}'"))?;
        out.push(InsertPlan {
            feature_set: name,
            plans: batches.iter().flat_map(plan_rows).collect(),
            functions,
        });
    }
    Ok(out)
}

fn plan_rows(batch: &RecordBatch) -> Vec<(String, String)> {
    let text = |i: usize| batch.column(i).as_any().downcast_ref::<StringArray>().cloned();
    match (text(0), text(1)) {
        (Some(kind), Some(plan)) => (0..batch.num_rows())
            .map(|r| (kind.value(r).to_string(), plan.value(r).to_string()))
            .collect(),
        _ => Vec::new(),
    }
}
