//! Incremental file sources: each landed file is processed exactly once.

use crate::common::*;

const PIPELINE: &str = "CREATE EXTERNAL TABLE landed STORED AS PARQUET LOCATION 'landing/' OPTIONS ('incremental' 'true');\n\
CREATE EXTERNAL TABLE totals STORED AS FEATURES LOCATION 'out/totals' OPTIONS ('key' 'user_id', 'mode' 'append');\n\
INSERT INTO totals SELECT user_id, count(*) AS events, sum(value) AS total FROM landed GROUP BY user_id;\n";

#[test]
fn runs_read_only_files_no_earlier_run_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("totals.sql"), PIPELINE);
    write_parquet(&d.join("landing/f1.parquet"), &events_batch(0, 100));
    write_parquet(&d.join("landing/f2.parquet"), &events_batch(100, 100));

    let first = kiln(d, &["run", "totals.sql", "--output", "json"]).ok().json();
    assert_eq!(first["feature_sets"][0]["version"], 0);
    assert_eq!(first["input_files"], 2);

    // Nothing landed: nothing read, nothing committed, and it says so.
    let idle = kiln(d, &["run", "totals.sql"]).ok();
    assert!(
        idle.stdout.contains("unchanged: no new input files"),
        "{}",
        idle.stdout
    );
    let versions = kiln(d, &["versions", "out/totals", "--output", "json"])
        .ok()
        .json();
    assert_eq!(versions.as_array().unwrap().len(), 1);

    // A new file lands: only it is read.
    write_parquet(&d.join("landing/f3.parquet"), &events_batch(200, 50));
    let third = kiln(d, &["run", "totals.sql", "--output", "json"]).ok().json();
    assert_eq!(third["feature_sets"][0]["version"], 1);
    assert_eq!(third["input_files"], 1);
    let read = read_delta(
        &d.join("out/totals").display().to_string(),
        None,
        Some("total"),
        &[],
    );
    assert_eq!(read["sum"].as_f64().unwrap(), value_sum(0, 250));
    let inputs = read["commit"]["kiln"]["inputs"].as_array().unwrap().clone();
    assert_eq!(inputs.len(), 1);
    assert!(
        inputs[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("landing/f3.parquet")
    );

    // A copy of the pipeline under another name would read every file a
    // second time into the same feature set: refused, nothing written.
    write(&d.join("other.sql"), PIPELINE);
    let other = kiln(d, &["run", "other.sql"]).failed();
    assert!(
        other.stderr.contains("as pipeline 'totals', never as 'other'")
            && other.stderr.contains("--pipeline totals"),
        "{}",
        other.stderr
    );
    // Run under the old name, it goes on where that one stopped.
    write_parquet(&d.join("landing/f4.parquet"), &events_batch(250, 10));
    let renamed = kiln(
        d,
        &["run", "other.sql", "--pipeline", "totals", "--output", "json"],
    )
    .ok()
    .json();
    assert_eq!(renamed["input_files"], 1, "{renamed}");
    let read = read_delta(
        &d.join("out/totals").display().to_string(),
        None,
        Some("total"),
        &[],
    );
    assert_eq!(read["sum"].as_f64().unwrap(), value_sum(0, 260));
}

#[test]
fn an_empty_landing_folder_is_nothing_new_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("landing")).unwrap();
    write(
        &d.join("t.sql"),
        "CREATE EXTERNAL TABLE landed (user_id BIGINT, value DOUBLE) STORED AS PARQUET LOCATION 'landing/' OPTIONS ('incremental' 'true');\n\
         CREATE EXTERNAL TABLE totals STORED AS FEATURES LOCATION 'out/totals' OPTIONS ('key' 'user_id');\n\
         INSERT INTO totals SELECT user_id, sum(value) AS total FROM landed GROUP BY user_id;\n",
    );
    let out = kiln(d, &["run", "t.sql"]).ok();
    assert!(out.stdout.contains("no new input files"), "{}", out.stdout);
    assert!(!has_delta_log(&d.join("out/totals")));
}
