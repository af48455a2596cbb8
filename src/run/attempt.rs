//! One try at a bounded run: read each feature set's ledger, plan where
//! each starts and which run together, then run and commit each group
//! over its own ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::pass::{Pass, ReadAt, run_group, skipped_set};
use super::{KafkaSummary, RunOptions, RunSummary, kafka, session};
use crate::engine;
use crate::error::{KilnError, Result};
use crate::featureset::OpenTables;
use crate::ledger;
use crate::ledger::plan::{self, Group, Standing};
use crate::pipeline::Pipeline;
use crate::source::kafka::TopicPartition;

/// One try at a bounded run: read the ledgers, plan, then run and commit
/// each group of feature sets.
pub(super) struct Attempt<'a> {
    pub pipeline: &'a Pipeline,
    pub options: &'a RunOptions,
    pub tables: &'a OpenTables,
    pub run_id: &'a str,
    pub started: Instant,
    pub kafka_sources: &'a [kafka::KafkaSource],
    pub ends: &'a BTreeMap<String, kafka::Watermarks>,
}

impl Attempt<'_> {
    pub(super) async fn run(&self, summary: &mut RunSummary) -> Result<()> {
        let pipeline = self.pipeline;
        let has_incremental = pipeline.sources().any(|(_, d)| d.options.incremental);
        let listed = if has_incremental {
            let ctx = session(self.options)?;
            let listed = engine::list_incremental_files(&ctx, pipeline)
                .await
                .map_err(KilnError::Problems)?;
            match &self.options.objects {
                // Named objects that are there; any other file waits for
                // its own notification or a plain run.
                Some(only) => listed.intersection(only).cloned().collect(),
                None => listed,
            }
        } else {
            BTreeSet::new()
        };
        let mut standings = Vec::new();
        let mut read_at = BTreeMap::new();
        for (name, location) in targets(pipeline) {
            let table = self.tables.latest(&location).await?;
            let ledger = ledger::read(table.as_ref(), &pipeline.name)
                .await
                .map_err(|e| e.context(format!("reading what feature set '{name}' consumed")))?;
            let partitions = self.ends.values().flat_map(|m| m.keys().map(ledger::kafka_key));
            let files = listed.iter().map(|f| ledger::file_key(f));
            ledger::refuse_other_pipelines(&ledger, &name, &pipeline.name, partitions.chain(files))?;
            if let Some(id) = &self.options.trigger_id
                && ledger.triggers.contains(id)
            {
                summary.record(skipped_set(pipeline, &name, super::ALREADY_COMMITTED));
                continue;
            }
            let mut kafka = BTreeMap::new();
            for source in self.kafka_sources {
                kafka.extend(
                    kafka::starts(&name, source, &ledger.kafka, &self.ends[&source.decl.name]).await?,
                );
            }
            standings.push(Standing {
                name: name.clone(),
                kafka,
                new_files: listed.difference(&ledger.files).cloned().collect(),
            });
            read_at.insert(name, ReadAt::at(ledger.version));
        }
        let has_kafka = !self.kafka_sources.is_empty();
        let end_of = |tp: &TopicPartition| {
            self.ends
                .values()
                .find_map(|m| m.get(tp))
                .map_or(i64::MIN, |&(_, high)| high)
        };
        let work = |g: &Group| {
            let kafka_work = g.first_positions || g.kafka.iter().any(|(tp, &from)| from < end_of(tp));
            let file_work = !g.new_files.is_empty();
            (!has_kafka && !has_incremental) || (has_kafka && kafka_work) || (has_incremental && file_work)
        };
        if standings.is_empty() && !summary.feature_sets.is_empty() {
            // Every feature set has this trigger's commit.
            return Ok(());
        }
        let (busy, idle): (Vec<Group>, Vec<Group>) = plan::group(&standings).into_iter().partition(work);
        let why = if has_kafka {
            "no new records since the last run"
        } else {
            "no new input files since the last run"
        };
        for g in &idle {
            for name in &g.targets {
                summary.record(skipped_set(pipeline, name, why));
            }
        }
        if busy.is_empty() {
            // Nothing to read, but a broken pipeline still says so.
            let ctx = session(self.options)?;
            for source in self.kafka_sources {
                source
                    .register(&ctx, Vec::new())
                    .map_err(|e| KilnError::Run(format!("registering source '{}': {e}", source.decl.name)))?;
            }
            engine::plan_pipeline(&ctx, pipeline, self.tables, Some(&BTreeSet::new()))
                .await
                .map_err(KilnError::Problems)?;
            return Ok(());
        }
        let from = plan::read_from(&busy);
        let ends = match self.options.max_records {
            Some(cap) => capped(self.ends, &from, cap),
            None => self.ends.clone(),
        };
        let reads = kafka::ranges_to_read(self.kafka_sources, &from, &ends);
        let mut read = Vec::new();
        for g in busy {
            if g.targets.len() < standings.len() {
                tracing::info!(feature_sets = ?g.targets, "feature sets that stand apart from the others run on their own");
            }
            let pass = Pass {
                reads: kafka::slice_from(&reads, &g.kafka),
                files: has_incremental.then(|| g.new_files.clone()),
                read_at: g
                    .targets
                    .iter()
                    .map(|t| (t.clone(), read_at[t].clone()))
                    .collect(),
                lost: g.lost.clone(),
                first_positions: g.first_positions,
                has_kafka,
            };
            let (done, group_read) = run_group(
                &pipeline.only_inserts_into(&g.targets),
                self.options,
                self.tables,
                self.run_id,
                self.started,
                pass,
            )
            .await?;
            summary.input_files += done.input_files;
            if let Some(k) = done.kafka {
                summary.kafka.get_or_insert_with(KafkaSummary::default).add(k);
            }
            for outcome in done.feature_sets {
                summary.record(outcome);
            }
            read.extend(group_read);
        }
        kafka::report_to_groups(&read).await;
        Ok(())
    }
}

/// `ends` moved in so that reading from `from` takes at most `cap` records,
/// shared out evenly over the partitions that have any to read.
fn capped(
    ends: &BTreeMap<String, kafka::Watermarks>,
    from: &ledger::Positions,
    cap: u64,
) -> BTreeMap<String, kafka::Watermarks> {
    let start = |tp: &TopicPartition, low: i64| from.get(tp).copied().unwrap_or(low);
    let behind = ends
        .values()
        .flatten()
        .filter(|(tp, (low, high))| start(tp, *low) < *high)
        .count()
        .max(1) as u64;
    let share = (cap / behind).max(1) as i64;
    ends.iter()
        .map(|(source, marks)| {
            let marks = marks
                .iter()
                .map(|(tp, &(low, high))| (tp.clone(), (low, high.min(start(tp, low).saturating_add(share)))))
                .collect();
            (source.clone(), marks)
        })
        .collect()
}

/// The feature sets the INSERTs of `pipeline` write: (name, location), once each.
fn targets(pipeline: &Pipeline) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (_, insert) in pipeline.inserts() {
        let decl = pipeline
            .feature_set(&insert.target)
            .expect("inserts target declared feature sets (checked when parsed)");
        if !out.iter().any(|(n, _)| n == &decl.name) {
            out.push((decl.name.clone(), decl.location.clone()));
        }
    }
    out
}
