//! The input ledger of file sources: every landed file reaches every
//! feature set once, through overlapping runs, a failure between two
//! commits, and the Delta log's own cleanup.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::*;

/// `files` CSV files of `rows` events each, ids from `first`.
fn land_csv(dir: &Path, first_file: usize, files: usize, rows: usize) {
    for f in first_file..first_file + files {
        let mut text = String::from("id,user_id,value\n");
        for r in 0..rows {
            let id = f * rows + r;
            text.push_str(&format!("{id},{},{}.5\n", id % 7, id % 100));
        }
        write(&dir.join(format!("landing/f{f:04}.csv")), &text);
    }
}

fn csv_source() -> &'static str {
    "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
     STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true', 'incremental' 'true');\n"
}

fn feature_set(name: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE {name} STORED AS FEATURES LOCATION 'out/{name}' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO {name} SELECT id, user_id, value FROM landed;\n"
    )
}

/// Rows, distinct ids, smallest and largest id of a feature set, read by
/// Python's deltalake.
fn census(dir: &Path, name: &str) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.compute as pc
from deltalake import DeltaTable
ids = DeltaTable(sys.argv[1]).to_pyarrow_table(columns=["id"]).column("id")
print(json.dumps({"rows": len(ids), "distinct": pc.count_distinct(ids).as_py(),
                  "min": pc.min(ids).as_py(), "max": pc.max(ids).as_py()}))
"#;
    python_json(SCRIPT, &[&dir.join("out").join(name).display().to_string()], &[])
}

fn assert_each_id_once(dir: &Path, name: &str, n: u64) {
    let c = census(dir, name);
    assert_eq!(c["rows"], n, "{name}: {c}");
    assert_eq!(c["distinct"], n, "{name}: {c}");
}

/// Start two `kiln run`s of `file` at once; both must succeed.
fn two_runs_at_once(dir: &Path, file: &str) -> Vec<String> {
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_kiln"))
                .current_dir(dir)
                .args(["run", file])
                .env("KILN_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kiln runs")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "a run failed:\n{text}");
            text
        })
        .collect()
}

#[test]
fn overlapping_runs_read_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        &format!("{}{}", csv_source(), feature_set("seen")),
    );
    land_csv(d, 0, 50, 200);
    // A new feature set: both runs plan against no table at all.
    two_runs_at_once(d, "p.sql");
    assert_each_id_once(d, "seen", 50 * 200);
    // And on the feature set that now exists.
    land_csv(d, 50, 50, 200);
    two_runs_at_once(d, "p.sql");
    assert_each_id_once(d, "seen", 100 * 200);
}

#[test]
fn a_failure_between_two_commits_is_made_good_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        &format!(
            "{}{}{}",
            csv_source(),
            feature_set("first"),
            feature_set("second")
        ),
    );
    land_csv(d, 0, 5, 100);
    // The second feature set cannot be committed (a file stands where its
    // log folder would go): the run fails after the first one committed.
    write(&d.join("out/second/_delta_log"), "in the way");
    let failed = kiln(d, &["run", "p.sql"]).failed();
    assert!(failed.stderr.contains("out/second"), "{}", failed.stderr);
    assert_each_id_once(d, "first", 500);
    std::fs::remove_file(d.join("out/second/_delta_log")).unwrap();

    // More files land before the rerun: the first feature set reads only
    // those, the second every file, each once.
    land_csv(d, 5, 2, 100);
    let rerun = kiln(d, &["run", "p.sql", "--output", "json"]).ok().json();
    assert_each_id_once(d, "first", 700);
    assert_each_id_once(d, "second", 700);
    let rows: Vec<u64> = rerun["feature_sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, vec![200, 700], "{rerun}");

    // From now on they move together.
    land_csv(d, 7, 1, 100);
    let next = kiln(d, &["run", "p.sql", "--output", "json"]).ok().json();
    assert_eq!(
        next["input_files"], 2,
        "one new file, read for each feature set: {next}"
    );
    assert_each_id_once(d, "first", 800);
    assert_each_id_once(d, "second", 800);
}

#[test]
fn files_read_stay_known_after_the_log_is_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("p.sql"),
        &format!("{}{}", csv_source(), feature_set("seen")),
    );
    land_csv(d, 0, 1, 10);
    kiln(d, &["run", "p.sql"]).ok();
    // Checkpoint every 3 commits and keep no log history: delta-rs cleans
    // up the commits behind each checkpoint as it goes.
    const ALTER: &str = r#"
import json, sys
from deltalake import DeltaTable
DeltaTable(sys.argv[1]).alter.set_table_properties({
    "delta.checkpointInterval": "3",
    "delta.logRetentionDuration": "interval 0 seconds",
    "delta.enableExpiredLogCleanup": "true",
})
print(json.dumps({}))
"#;
    python_json(ALTER, &[&d.join("out/seen").display().to_string()], &[]);
    for f in 1..12 {
        land_csv(d, f, 1, 10);
        kiln(d, &["run", "p.sql"]).ok();
    }
    let log = d.join("out/seen/_delta_log");
    assert!(
        !log.join(format!("{:020}.json", 0)).exists(),
        "the first commits were cleaned up"
    );
    assert!(
        std::fs::read_dir(&log).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".checkpoint.")),
        "a checkpoint was written"
    );
    let idle = kiln(d, &["run", "p.sql"]).ok();
    assert!(idle.stdout.contains("no new input files"), "{}", idle.stdout);
    land_csv(d, 12, 1, 10);
    let last = kiln(d, &["run", "p.sql", "--output", "json"]).ok().json();
    assert_eq!(last["input_files"], 1, "{last}");
    assert_each_id_once(d, "seen", 130);
}
