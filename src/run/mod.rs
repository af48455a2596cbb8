//! A bounded run: plan, execute every INSERT, then commit each feature set.
//!
//! Nothing is committed until every query has run to completion, so a
//! failure anywhere in execution leaves every feature set as it was. The
//! commits themselves are one Delta commit per feature set, made in the
//! order of the INSERTs (Delta has no multi-table transaction).

mod check;
mod explain;
mod progress;

use std::time::Instant;

use futures::StreamExt;
use serde::Serialize;

use crate::engine::{self, PlannedInsert, PlannedPipeline, Resources};
use crate::error::{Context, KilnError, Result};
use crate::featureset::{self, InputFile, Lineage, StagedWrite, StatsCollector};
use crate::pipeline::{Pipeline, SinkMode};

pub use check::{CheckReport, check_paths};
pub use explain::{InsertPlan, explain_pipeline};
use progress::Progress;

/// How a run was started and how it reports.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Recorded in the lineage: `manual`, `demo`, `cronjob`, ...
    pub trigger: String,
    /// Show a progress indicator (only when stderr is a terminal).
    pub progress: bool,
    pub resources: Resources,
}

/// What happened to one feature set in a run.
#[derive(Debug, Clone, Serialize)]
pub struct SinkOutcome {
    pub feature_set: String,
    pub location: String,
    /// The new version, when one was committed.
    pub version: Option<u64>,
    pub rows: u64,
    pub mode: SinkMode,
    /// Why nothing was committed, when nothing was.
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub pipeline: String,
    pub file: String,
    pub run_id: String,
    pub elapsed_ms: u128,
    /// Files read across all sources.
    pub input_files: usize,
    pub feature_sets: Vec<SinkOutcome>,
}

impl RunSummary {
    pub fn committed(&self) -> usize {
        self.feature_sets.iter().filter(|o| o.version.is_some()).count()
    }
}

/// Run `pipeline` once.
pub async fn run_pipeline(pipeline: &Pipeline, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let run_id = uuid::Uuid::new_v4().to_string();
    let ctx = engine::session(&options.resources).context(|| "creating the query session".to_string())?;
    let planned = engine::plan_pipeline(&ctx, pipeline)
        .await
        .map_err(KilnError::Problems)?;

    let summary = |feature_sets, input_files| RunSummary {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        run_id: run_id.clone(),
        elapsed_ms: started.elapsed().as_millis(),
        input_files,
        feature_sets,
    };
    if planned.nothing_new() {
        let outcomes = planned
            .inserts
            .iter()
            .map(|i| skipped(i, "no new input files since the last run"))
            .collect();
        return Ok(summary(outcomes, 0));
    }

    let progress = Progress::new(options.progress);
    let mut staged = Vec::new();
    let mut input_files = 0;
    for (insert, (stmt, _)) in planned.inserts.iter().zip(pipeline.inserts()) {
        progress.start(&insert.feature_set.name);
        let (batches, stats, rows) = execute(insert, &progress)
            .await
            .map_err(|e| with_place(pipeline.problem(stmt, "while running this INSERT").to_string(), e))?;
        let inputs = files_read(&planned);
        input_files += inputs.len();
        let lineage = Lineage {
            pipeline: pipeline.name.clone(),
            sql_sha256: pipeline.sql_sha256.clone(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            run_id: run_id.clone(),
            trigger: options.trigger.clone(),
            mode: insert.feature_set.options.mode.as_str().to_string(),
            inputs,
            rows_written: rows,
            columns: stats,
        };
        staged.push((
            insert,
            StagedWrite {
                name: insert.feature_set.name.clone(),
                location: insert.feature_set.location.clone(),
                mode: insert.feature_set.options.mode,
                schema: insert.target_schema.clone(),
                batches,
                add_columns: insert.add_columns,
                exists: insert.base_version.is_some(),
                lineage,
            },
        ));
    }
    progress.finish();

    let mut outcomes = Vec::new();
    for (insert, write) in staged {
        if write.rows() == 0 && write.mode == SinkMode::Append {
            outcomes.push(skipped(insert, "the query returned no rows"));
            continue;
        }
        let rows = write.rows();
        let version = featureset::commit(write).await?;
        outcomes.push(SinkOutcome {
            feature_set: insert.feature_set.name.clone(),
            location: insert.feature_set.location.clone(),
            version: Some(version),
            rows,
            mode: insert.feature_set.options.mode,
            skipped: None,
        });
    }
    Ok(summary(outcomes, input_files))
}

fn skipped(insert: &PlannedInsert, why: &str) -> SinkOutcome {
    SinkOutcome {
        feature_set: insert.feature_set.name.clone(),
        location: insert.feature_set.location.clone(),
        version: None,
        rows: 0,
        mode: insert.feature_set.options.mode,
        skipped: Some(why.to_string()),
    }
}

fn files_read(planned: &PlannedPipeline) -> Vec<InputFile> {
    planned
        .sources
        .iter()
        .flat_map(|s| s.table.take_files_read())
        .collect()
}

fn with_place(place: String, e: KilnError) -> KilnError {
    KilnError::Run(format!("{place}: {e}"))
}

/// Run one INSERT's query to completion, keeping its rows in storable form.
async fn execute(
    insert: &PlannedInsert,
    progress: &Progress,
) -> Result<(
    Vec<arrow::record_batch::RecordBatch>,
    Vec<featureset::ColumnStats>,
    u64,
)> {
    let mut stream = insert
        .df
        .clone()
        .execute_stream()
        .await
        .context(|| format!("planning the query for '{}'", insert.feature_set.name))?;
    let mut stats = StatsCollector::new(&insert.target_schema);
    let mut batches = Vec::new();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.context(|| format!("computing '{}'", insert.feature_set.name))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let stored = featureset::to_storable(&batch, &insert.target_schema)?;
        stats.update(&stored);
        rows += stored.num_rows() as u64;
        progress.add(stored.num_rows() as u64);
        batches.push(stored);
    }
    Ok((batches, stats.finish(), rows))
}
