//! What a trigger message asks a worker to run, and running it.
//!
//! A trigger runs its one pipeline. An S3 notification runs every pipeline
//! in the folder with an incremental source whose LOCATION covers one of
//! the created objects, each over exactly the objects it covers: the file
//! ledger then keeps each object read once per feature set, so a
//! notification delivered twice commits nothing the second time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::consumer::Delivery;
use super::{TriggerReport, TriggerStatus};
use crate::engine::Resources;
use crate::error::Fault;
use crate::events::Events;
use crate::pipeline::{Pipeline, Variables};
use crate::run::retry::Retries;
use crate::run::{ALREADY_COMMITTED, RunOptions, RunSummary, run_pipeline};
use crate::trigger::{BadTrigger, Message, Trigger};

/// One message's work.
#[derive(Debug, Clone)]
pub(super) struct Job {
    /// The pipelines it runs: none of them may be running anywhere else.
    pub pipelines: Vec<String>,
    pub work: Work,
}

#[derive(Debug, Clone)]
pub(super) enum Work {
    Trigger(Trigger),
    /// A notification's created objects, per pipeline that covers them,
    /// and those that no pipeline covers.
    Created {
        objects: Vec<String>,
        runs: Vec<(String, BTreeSet<String>)>,
        uncovered: Vec<String>,
    },
}

impl Job {
    pub fn id(&self) -> Option<&str> {
        match &self.work {
            Work::Trigger(t) => Some(&t.id),
            Work::Created { .. } => None,
        }
    }

    /// What it is, for a log line.
    pub fn describe(&self) -> String {
        match &self.work {
            Work::Trigger(t) => format!("trigger {} of {}", t.id, t.pipeline),
            Work::Created { objects, .. } => format!(
                "{} created objects for {}",
                objects.len(),
                self.pipelines.join(", ")
            ),
        }
    }
}

/// The job in `delivery`, or why it is none. A trigger's key must be its
/// pipeline: that is what keeps two runs of one pipeline apart.
pub(super) fn accept(delivery: &Delivery, dir: &Path) -> Result<Job, BadTrigger> {
    match Message::parse(delivery.payload.as_deref())? {
        Message::Run(trigger) => {
            if delivery.key.as_deref() != Some(trigger.pipeline.as_bytes()) {
                return Err(BadTrigger {
                    id: Some(trigger.id),
                    pipeline: Some(trigger.pipeline),
                    reason: "the message key is not the pipeline's name: a trigger is sent with its pipeline \
                             as the key (as `kiln trigger` does), so that one worker at a time runs a pipeline"
                        .into(),
                });
            }
            Ok(Job {
                pipelines: vec![trigger.pipeline.clone()],
                work: Work::Trigger(trigger),
            })
        }
        Message::Created(objects) => {
            let (runs, uncovered) = cover(dir, &objects);
            Ok(Job {
                pipelines: runs.iter().map(|(p, _)| p.clone()).collect(),
                work: Work::Created {
                    objects,
                    runs,
                    uncovered,
                },
            })
        }
    }
}

/// The pipelines in `dir` with an incremental source whose LOCATION covers
/// some of `objects`, each with the objects it covers; and the objects none
/// covers. A pipeline that cannot be read without a trigger's variables is
/// passed over.
fn cover(dir: &Path, objects: &[String]) -> (Vec<(String, BTreeSet<String>)>, Vec<String>) {
    let mut runs = Vec::new();
    let mut covered = BTreeSet::new();
    for name in pipeline_names(dir) {
        let path = dir.join(format!("{name}.sql"));
        let pipeline = match Pipeline::load(&path, &Variables::from_env(BTreeMap::new())) {
            Ok(p) => p,
            Err(problems) => {
                tracing::debug!(pipeline = %name, problem = %problems[0], "not considered for notifications");
                continue;
            }
        };
        let prefixes: Vec<String> = pipeline
            .sources()
            .filter(|(_, d)| d.options.incremental)
            .map(|(_, d)| folder_prefix(&d.location))
            .collect();
        let mine: BTreeSet<String> = objects
            .iter()
            .filter(|o| prefixes.iter().any(|p| o.starts_with(p.as_str())))
            .cloned()
            .collect();
        if !mine.is_empty() {
            covered.extend(mine.iter().cloned());
            runs.push((name, mine));
        }
    }
    let uncovered = objects
        .iter()
        .filter(|o| !covered.contains(*o))
        .cloned()
        .collect();
    (runs, uncovered)
}

/// The part of a LOCATION every object under it starts with: up to its
/// first glob character, a folder ending in `/`.
fn folder_prefix(location: &str) -> String {
    let fixed = location.split(['*', '?', '[', '{']).next().unwrap_or(location);
    if fixed.len() < location.len() || fixed.ends_with('/') {
        fixed.to_string()
    } else {
        format!("{fixed}/")
    }
}

/// When something began, by the clock (for reports) and monotonically.
#[derive(Debug, Clone, Copy)]
pub(super) struct Started {
    at: chrono::DateTime<chrono::Utc>,
    instant: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            at: chrono::Utc::now(),
            instant: Instant::now(),
        }
    }
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How the runs of one job ended.
pub(super) struct JobEnd {
    pub runs: Vec<RunSummary>,
    /// Why a run failed (any other runs of the job still ran).
    pub failed: Option<String>,
}

impl JobEnd {
    fn failed(reason: String) -> Self {
        Self {
            runs: Vec::new(),
            failed: Some(reason),
        }
    }

    pub fn report(self, delivery: &Delivery, job: &Job, started: Started) -> TriggerReport {
        let committed = self.runs.iter().any(|r| r.committed() > 0);
        let status = if self.failed.is_some() {
            TriggerStatus::Failed
        } else if committed {
            TriggerStatus::Committed
        } else if matches!(job.work, Work::Created { .. }) && self.runs.is_empty() {
            TriggerStatus::Skipped
        } else if matches!(job.work, Work::Trigger(_))
            && self.runs.iter().all(|r| {
                r.feature_sets
                    .iter()
                    .all(|o| o.skipped.as_deref() == Some(ALREADY_COMMITTED))
            })
        {
            TriggerStatus::AlreadyRun
        } else {
            TriggerStatus::NothingToCommit
        };
        if let Some(reason) = &self.failed {
            tracing::warn!(job = %job.describe(), reason = %reason, "failed; acknowledged without running again");
        }
        let mut report = report_of(delivery, started, status, self.failed);
        match &job.work {
            Work::Trigger(t) => {
                report.id = Some(t.id.clone());
                report.pipeline = Some(t.pipeline.clone());
                report.run = self.runs.into_iter().next();
            }
            Work::Created {
                objects, uncovered, ..
            } => {
                if !uncovered.is_empty() {
                    tracing::info!(objects = ?uncovered, "created objects no pipeline's incremental source covers; skipped");
                }
                report.objects = objects.clone();
                report.uncovered = uncovered.clone();
                report.runs = self.runs;
            }
        }
        report
    }
}

/// A report of `status` for the message in `delivery`, begun at `started`.
pub(super) fn report_of(
    delivery: &Delivery,
    started: Started,
    status: TriggerStatus,
    reason: Option<String>,
) -> TriggerReport {
    TriggerReport {
        id: None,
        pipeline: None,
        topic: delivery.tp.topic.clone(),
        partition: delivery.tp.partition,
        offset: delivery.offset,
        status,
        reason,
        run: None,
        objects: Vec::new(),
        uncovered: Vec::new(),
        runs: Vec::new(),
        started_at: rfc3339(started.at),
        ended_at: rfc3339(chrono::Utc::now()),
        elapsed_ms: started.instant.elapsed().as_millis(),
    }
}

/// What every run of the worker shares.
pub(super) struct Runner {
    pub dir: PathBuf,
    /// Recorded in the lineage as what started the run.
    pub trigger: String,
    pub resources: Resources,
    pub events: Option<Events>,
}

/// Waits between tries of a run that failed on a broker or store.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Runner {
    pub async fn run(&self, job: &Job) -> JobEnd {
        match &job.work {
            Work::Trigger(trigger) => match self.load(&trigger.pipeline, &trigger.set) {
                Ok(pipeline) => self.run_one(&pipeline, Some(trigger.id.clone()), None).await,
                Err(reason) => JobEnd::failed(reason),
            },
            Work::Created { runs, .. } => {
                let mut end = JobEnd {
                    runs: Vec::new(),
                    failed: None,
                };
                for (name, objects) in runs {
                    let one = match self.load(name, &BTreeMap::new()) {
                        Ok(pipeline) => self.run_one(&pipeline, None, Some(objects.clone())).await,
                        Err(reason) => JobEnd::failed(reason),
                    };
                    end.runs.extend(one.runs);
                    if let Some(reason) = one.failed {
                        end.failed = Some(match end.failed {
                            Some(earlier) => format!("{earlier}; {name}: {reason}"),
                            None => format!("{name}: {reason}"),
                        });
                    }
                }
                end
            }
        }
    }

    /// The pipeline `name` of the folder, with `set` over the environment.
    fn load(&self, name: &str, set: &BTreeMap<String, String>) -> Result<Pipeline, String> {
        let path = self.dir.join(format!("{name}.sql"));
        if !path.is_file() {
            return Err(format!(
                "unknown pipeline '{name}': there is no {name}.sql in {} (found: {})",
                self.dir.display(),
                pipeline_names(&self.dir).join(", ")
            ));
        }
        Pipeline::load(&path, &Variables::from_env(set.clone())).map_err(|problems| {
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Run `pipeline` once; a broker or store failure is tried again (with
    /// backoff, for as long as the worker holds the message), any other
    /// failure ends it.
    async fn run_one(
        &self,
        pipeline: &Pipeline,
        trigger_id: Option<String>,
        objects: Option<BTreeSet<String>>,
    ) -> JobEnd {
        let options = RunOptions {
            trigger: self.trigger.clone(),
            trigger_id,
            progress: false,
            resources: self.resources.clone(),
            max_records: None,
            events: self.events.clone(),
            objects,
        };
        let mut retries = Retries::new(RETRY_MIN, RETRY_MAX, usize::MAX);
        loop {
            match run_pipeline(pipeline, &options).await {
                Ok(summary) => {
                    return JobEnd {
                        runs: vec![summary],
                        failed: None,
                    };
                }
                Err(e) if matches!(e.fault(), Fault::External | Fault::Conflict) => {
                    let wait = retries.next_wait().unwrap_or(RETRY_MAX);
                    tracing::warn!(
                        pipeline = %pipeline.name, error = %e, wait_ms = wait.as_millis() as u64,
                        "the run failed on a broker or store; trying it again"
                    );
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return JobEnd::failed(e.one_line()),
            }
        }
    }
}

/// The pipelines in `dir`: its `*.sql` files' names.
pub(super) fn pipeline_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            (path.extension()? == "sql" && path.is_file())
                .then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_covers_the_objects_under_it() {
        assert_eq!(folder_prefix("s3://b/landing/"), "s3://b/landing/");
        assert_eq!(folder_prefix("s3://b/landing"), "s3://b/landing/");
        assert_eq!(folder_prefix("s3://b/landing/day=*/"), "s3://b/landing/day=");
    }
}
