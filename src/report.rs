//! Text renderings of command results for a person at a terminal. Machines
//! get the same structures as JSON (`--output json`).

use std::fmt::Write;

use crate::featureset::{TrainingSetLineage, VersionDetail, VersionInfo};
use crate::run::{
    CheckReport, InsertPlan, RunSummary, SinkOutcome, StreamSummary, TriggerReport, TriggerStatus,
    WorkerSummary,
};
use crate::training::TrainingSetSummary;

pub fn run_summary(s: &RunSummary) -> String {
    let mut out = String::new();
    for o in &s.feature_sets {
        match (o.version, &o.skipped) {
            (Some(v), _) => writeln!(
                out,
                "{}: committed {} version {} ({} rows, {})",
                s.pipeline,
                o.feature_set,
                v,
                o.rows,
                o.mode.as_str()
            ),
            (None, Some(why)) => writeln!(out, "{}: {} unchanged: {why}", s.pipeline, o.feature_set),
            (None, None) => writeln!(out, "{}: {} unchanged", s.pipeline, o.feature_set),
        }
        .expect("writing to a String");
        if o.dead_letters > 0 {
            writeln!(
                out,
                "{}: {} bad records written to {}/_dead_letters",
                s.pipeline, o.dead_letters, o.location
            )
            .expect("writing to a String");
        }
    }
    if let Some(k) = &s.kafka {
        let partitions = k.ranges.iter().filter(|r| r.to > r.from).count();
        writeln!(
            out,
            "{}: {} Kafka records from {} partitions, {} bad",
            s.pipeline, k.records, partitions, k.bad_records
        )
        .expect("writing to a String");
    }
    writeln!(
        out,
        "{}: {} input files, {:.2}s, run {}",
        s.pipeline,
        s.input_files,
        s.elapsed_ms as f64 / 1000.0,
        s.run_id
    )
    .expect("writing to a String");
    out
}

/// One line per committed micro-batch of `kiln stream`.
pub fn batch_line(s: &RunSummary) -> String {
    let (records, bad) = s.kafka.as_ref().map_or((0, 0), |k| (k.records, k.bad_records));
    format!(
        "{}: batch of {records} records ({bad} bad) -> {} in {:.2}s\n",
        s.pipeline,
        versions_text(&s.feature_sets),
        s.elapsed_ms as f64 / 1000.0
    )
}

pub fn stream_summary(s: &StreamSummary) -> String {
    format!(
        "{}: stopped after {} batches, {} records ({} bad), {} batches read again{}\n",
        s.pipeline,
        s.batches,
        s.records,
        s.bad_records,
        s.retried_batches,
        if s.abandoned_at_shutdown {
            "; the batch in flight at shutdown was abandoned"
        } else {
            ""
        }
    )
}

/// One line per message a worker finished with.
pub fn trigger_line(r: &TriggerReport) -> String {
    let what = match (&r.status, &r.reason) {
        (TriggerStatus::Failed, Some(reason)) => format!("failed: {reason}"),
        (TriggerStatus::AlreadyRun, _) => "already run; acknowledged".to_string(),
        (TriggerStatus::Skipped, _) => format!("no pipeline covers {}", r.uncovered.join(", ")),
        _ => {
            let versions: Vec<String> = r
                .run
                .iter()
                .chain(&r.runs)
                .map(|run| versions_text(&run.feature_sets))
                .collect();
            format!("-> {}", versions.join(", "))
        }
    };
    let what_message = match (&r.id, &r.pipeline) {
        (Some(id), Some(p)) => format!("trigger {id} ({p}"),
        (Some(id), None) => format!("trigger {id} ("),
        _ if !r.objects.is_empty() => format!("{} created objects (", r.objects.len()),
        _ => "message (".to_string(),
    };
    format!(
        "{what_message}{}partition {} offset {}): {what} in {:.2}s\n",
        if what_message.ends_with('(') { "" } else { ", " },
        r.partition,
        r.offset,
        r.elapsed_ms as f64 / 1000.0
    )
}

/// `fs v3 (+120 rows), other unchanged`.
fn versions_text(outcomes: &[SinkOutcome]) -> String {
    outcomes
        .iter()
        .map(|o| match o.version {
            Some(v) => format!("{} v{v} (+{} rows)", o.feature_set, o.rows),
            None => format!("{} unchanged", o.feature_set),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn worker_summary(s: &WorkerSummary) -> String {
    format!(
        "worker on {}: stopped after {} triggers: {} committed, {} already run, {} failed{}\n",
        s.topic,
        s.triggers,
        s.committed,
        s.already_run,
        s.failed,
        if s.abandoned_at_shutdown > 0 {
            format!(
                "; {} runs abandoned at shutdown (their triggers run again on the next worker)",
                s.abandoned_at_shutdown
            )
        } else {
            String::new()
        }
    )
}

pub fn check_report(r: &CheckReport) -> String {
    let mut out = String::new();
    for f in &r.files {
        if f.problems.is_empty() {
            writeln!(out, "{}: ok", f.file).expect("writing to a String");
        }
        for p in &f.problems {
            writeln!(out, "{p}").expect("writing to a String");
        }
    }
    out
}

pub fn versions(list: &[VersionInfo]) -> String {
    let mut out = format!(
        "{:>7}  {:<24}  {:<12}  {:>10}  {:<20}  {}\n",
        "VERSION", "TIME", "OPERATION", "ROWS", "PIPELINE", "RUN"
    );
    for v in list {
        writeln!(
            out,
            "{:>7}  {:<24}  {:<12}  {:>10}  {:<20}  {}",
            v.version,
            v.timestamp.as_deref().unwrap_or("-"),
            v.operation.as_deref().unwrap_or("-"),
            v.rows.map_or("-".to_string(), |r| r.to_string()),
            v.pipeline.as_deref().unwrap_or("-"),
            v.run_id.as_deref().unwrap_or("-"),
        )
        .expect("writing to a String");
    }
    out
}

pub fn version_detail(d: &VersionDetail) -> String {
    let mut out = String::new();
    let w = &mut out;
    let line = |w: &mut String, s: String| writeln!(w, "{s}").expect("writing to a String");
    line(
        w,
        format!("feature set {} version {}", d.location, d.info.version),
    );
    line(
        w,
        format!("  time:       {}", d.info.timestamp.as_deref().unwrap_or("-")),
    );
    line(
        w,
        format!("  operation:  {}", d.info.operation.as_deref().unwrap_or("-")),
    );
    line(
        w,
        format!(
            "  rows:       {} in this version ({} files)",
            d.total_rows, d.files
        ),
    );
    line(w, "schema:".to_string());
    for (name, t) in &d.schema {
        line(w, format!("  {name:<24} {t}"));
    }
    let Some(l) = &d.lineage else {
        line(w, "lineage: none (not written by kiln)".to_string());
        return out;
    };
    line(w, "lineage:".to_string());
    line(w, format!("  pipeline:   {}", l.pipeline));
    line(w, format!("  sql sha256: {}", l.sql_sha256));
    line(w, format!("  kiln:       {}", l.kiln_version));
    let trigger = match &l.trigger_id {
        Some(id) => format!("{} {id}", l.trigger),
        None => l.trigger.clone(),
    };
    line(
        w,
        format!(
            "  run:        {} (trigger: {trigger}, mode: {})",
            l.run_id, l.mode
        ),
    );
    if !l.key.is_empty() || l.timestamp.is_some() {
        line(
            w,
            format!(
                "  key:        {} (timestamp: {})",
                if l.key.is_empty() {
                    "-".to_string()
                } else {
                    l.key.join(", ")
                },
                l.timestamp.as_deref().unwrap_or("-")
            ),
        );
    }
    if let Some(t) = &l.training_set {
        out.push_str(&training_set_inputs(t));
    }
    let w = &mut out;
    for read in &l.feature_sets_read {
        line(
            w,
            format!(
                "  read:       feature set {} at {} version {}",
                read.name, read.location, read.version
            ),
        );
    }
    line(w, format!("  rows written: {}", l.rows_written));
    line(w, format!("  inputs:     {} files", l.inputs.len()));
    for f in l.inputs.iter().take(10) {
        line(
            w,
            format!("    {} ({} bytes, {})", f.path, f.size, f.last_modified),
        );
    }
    if l.inputs.len() > 10 {
        line(w, format!("    ... and {} more", l.inputs.len() - 10));
    }
    line(w, "statistics:".to_string());
    line(
        w,
        format!(
            "  {:<24} {:>10} {:>8} {:>27} {:>27} {:>14}",
            "column", "count", "nulls", "min", "max", "mean"
        ),
    );
    for c in &l.columns {
        line(
            w,
            format!(
                "  {:<24} {:>10} {:>8} {:>27} {:>27} {:>14}",
                c.name,
                c.count,
                c.null_count,
                truncate(c.min.as_deref().unwrap_or("-")),
                truncate(c.max.as_deref().unwrap_or("-")),
                c.mean.map_or("-".to_string(), |m| format!("{m:.4}")),
            ),
        );
    }
    out
}

/// What a training set joined, as `kiln show` and `kiln training-set` print it.
fn training_set_inputs(t: &TrainingSetLineage) -> String {
    let mut out = String::new();
    let labels_version = t
        .labels
        .version
        .map_or(String::new(), |v| format!(" version {v}"));
    writeln!(
        out,
        "  labels:     {}{labels_version} ({}, {} rows), entity {}, time {}",
        t.labels.location,
        t.labels.format,
        t.labels.rows,
        t.entity.join(", "),
        t.label_time
    )
    .expect("writing to a String");
    let rule = if t.inclusive {
        "at or before"
    } else {
        "strictly before"
    };
    let age = t
        .max_age
        .as_ref()
        .map_or(String::new(), |a| format!(", at most {a} old"));
    writeln!(
        out,
        "  match:      the latest feature row {rule} the label time{age}"
    )
    .expect("writing to a String");
    for f in &t.features {
        let prefix = f
            .prefix
            .as_ref()
            .map_or(String::new(), |p| format!(", prefix {p}"));
        writeln!(
            out,
            "  features:   {} version {} (time {}, entity {}{prefix}): {} rows, {} label rows matched",
            f.location,
            f.version,
            f.time,
            f.entity.join(", "),
            f.rows,
            f.matched
        )
        .expect("writing to a String");
    }
    out
}

pub fn training_set(s: &TrainingSetSummary) -> String {
    let mut out = format!(
        "committed training set {} version {} ({} rows, {:.1} s)\n",
        s.location,
        s.version,
        s.rows,
        s.elapsed_ms as f64 / 1000.0
    );
    if let Some(t) = &s.lineage.training_set {
        out.push_str(&training_set_inputs(t));
    }
    out
}

/// At most 27 characters: a microsecond UTC time in full.
fn truncate(s: &str) -> String {
    if s.chars().count() <= 27 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(26).collect::<String>())
    }
}

pub fn explain(plans: &[InsertPlan]) -> String {
    let mut out = String::new();
    for p in plans {
        writeln!(out, "== INSERT INTO {} ==", p.feature_set).expect("writing to a String");
        for (kind, plan) in &p.plans {
            writeln!(out, "-- {kind}\n{plan}").expect("writing to a String");
        }
        if !p.functions.is_empty() {
            writeln!(out, "-- feature functions").expect("writing to a String");
            for f in &p.functions {
                writeln!(out, "{}: {}", f.function, f.device).expect("writing to a String");
            }
        }
    }
    out
}
