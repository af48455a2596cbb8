//! Every error `kiln check` promises, reported as file:line:col, and the
//! same pipeline refused by `kiln run` before anything is written.

use std::path::Path;

use crate::common::*;

/// A valid source and sink that the broken pipelines build on.
fn base(dir: &Path) {
    write_parquet(&dir.join("data/events/a.parquet"), &events_batch(0, 50));
}

const SOURCE: &str = "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 'data/events/';\n";
const SINK: &str =
    "CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs' OPTIONS ('key' 'user_id');\n";

/// Check `sql` (the text of p.sql): it must report `expected` (a prefix of
/// `p.sql:L:C: message`), and `kiln run` must fail the same way and write
/// nothing.
fn assert_refused(dir: &Path, sql: &str, expected: &str) {
    write(&dir.join("p.sql"), sql);
    let check = kiln(dir, &["check", "p.sql"]);
    assert_eq!(
        check.code, 1,
        "check should fail for:\n{sql}\nstdout:\n{}",
        check.stdout
    );
    assert!(
        check.stdout.lines().any(|l| l.starts_with(expected)),
        "expected a line starting with {expected:?}, got:\n{}",
        check.stdout
    );
    let json = kiln(dir, &["check", "p.sql", "--output", "json"]).json();
    assert_eq!(json["ok"], false);
    assert!(!json["files"][0]["problems"].as_array().unwrap().is_empty());

    let run = kiln(dir, &["run", "p.sql"]).failed();
    assert!(
        run.stderr.lines().any(|l| l.starts_with(expected)),
        "run: expected {expected:?} on stderr, got:\n{}",
        run.stderr
    );
    assert!(!has_delta_log(&dir.join("out/fs")), "nothing may be committed");
}

#[test]
fn a_good_pipeline_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql =
        format!("{SOURCE}{SINK}INSERT INTO fs SELECT user_id, count(*) AS n FROM events GROUP BY user_id;\n");
    write(&dir.path().join("p.sql"), &sql);
    let out = kiln(dir.path(), &["check", "p.sql"]).ok();
    assert_eq!(out.stdout.trim(), "p.sql: ok");
    assert!(!has_delta_log(&dir.path().join("out/fs")), "check writes nothing");
}

#[test]
fn syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!("{SOURCE}{SINK}INSERT INTO fs SELEC user_id FROM events;\n");
    assert_refused(dir.path(), &sql, "p.sql:3:16: Expected");
}

#[test]
fn unknown_table() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!("{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id FROM evnts;\n");
    assert_refused(dir.path(), &sql, "p.sql:4:21: table 'evnts' not found");
}

#[test]
fn unknown_column() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!("{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id, valeu FROM events;\n");
    assert_refused(dir.path(), &sql, "p.sql:4:17: No field named valeu");
}

#[test]
fn type_mismatch_with_the_existing_feature_set() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let good =
        format!("{SOURCE}{SINK}INSERT INTO fs SELECT user_id, count(*) AS n FROM events GROUP BY user_id;\n");
    write(&dir.path().join("p.sql"), &good);
    kiln(dir.path(), &["run", "p.sql"]).ok();
    let bad = format!("{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id, 'many' AS n FROM events;\n");
    write(&dir.path().join("p.sql"), &bad);
    let check = kiln(dir.path(), &["check", "p.sql"]);
    assert_eq!(check.code, 1);
    assert!(
        check.stdout.starts_with(
            "p.sql:4:27: type mismatch: column 'n' is Int64 in feature set 'fs' but the query gives Utf8"
        ),
        "{}",
        check.stdout
    );
    let run = kiln(dir.path(), &["run", "p.sql"]).failed();
    assert!(run.stderr.contains("type mismatch"), "{}", run.stderr);
    let versions = kiln(dir.path(), &["versions", "out/fs", "--output", "json"])
        .ok()
        .json();
    assert_eq!(
        versions.as_array().unwrap().len(),
        1,
        "no new version after the refused run"
    );
}

#[test]
fn missing_variable() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!(
        "{SOURCE}CREATE EXTERNAL TABLE fs STORED AS FEATURES\n  LOCATION '${{NOPE_UNSET_VAR}}/fs' OPTIONS ('key' 'user_id');\n\
         INSERT INTO fs SELECT user_id FROM events;\n"
    );
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:3:13: variable 'NOPE_UNSET_VAR' is not set",
    );
    // --set supplies it.
    let ok = kiln(dir.path(), &["check", "p.sql", "--set", "NOPE_UNSET_VAR=out"]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
}

#[test]
fn unknown_option() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!(
        "{SOURCE}CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs'\n  OPTIONS ('key' 'user_id', 'mdoe' 'append');\n"
    );
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:3:29: unknown option 'mdoe' for a feature set",
    );
}

#[test]
fn unknown_source_format_option() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!(
        "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 'data/events/'\n  OPTIONS ('colour' 'red');\n{SINK}"
    );
    assert_refused(dir.path(), &sql, "p.sql:2:12: source 'events'");
}

#[test]
fn unsupported_format() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!("CREATE EXTERNAL TABLE events STORED AS AVRO LOCATION 'data/events/';\n{SINK}");
    assert_refused(dir.path(), &sql, "p.sql:1:40: unsupported format 'AVRO'");
}

#[test]
fn unsupported_url_scheme() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql =
        format!("CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 'ftp://host/events/';\n{SINK}");
    assert_refused(dir.path(), &sql, "p.sql:1:57: unsupported URL scheme 'ftp://'");
}

#[test]
fn sink_without_key() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!(
        "{SOURCE}\nCREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs';\nINSERT INTO fs SELECT user_id FROM events;\n"
    );
    assert_refused(dir.path(), &sql, "p.sql:3:1: feature set 'fs' has no key");
}

#[test]
fn missing_input_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data/events")).unwrap();
    let sql = format!("{SOURCE}{SINK}INSERT INTO fs SELECT 1 AS user_id;\n");
    assert_refused(dir.path(), &sql, "p.sql:1:57: source 'events': No files found at");
}

#[test]
fn key_column_missing_from_the_query() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    let sql = format!("{SOURCE}{SINK}INSERT INTO fs SELECT id FROM events;\n");
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:3:1: key column 'user_id' of feature set 'fs' is not in the query's output",
    );
}

#[test]
fn every_problem_in_a_folder_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    write(
        &dir.path().join("pipes/a.sql"),
        &format!("{SOURCE}{SINK}INSERT INTO fs SELECT user_id, nope FROM events;\n"),
    );
    write(
        &dir.path().join("pipes/b.sql"),
        "SELEC 1;\nCREATE EXTERNAL TABLE x STORED AS AVRO LOCATION 'y';\n",
    );
    let out = kiln(dir.path(), &["check", "pipes"]);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("pipes/a.sql:3:32: No field named nope"),
        "{}",
        out.stdout
    );
    assert!(lines[1].starts_with("pipes/b.sql:1:1: "), "{}", out.stdout);
    assert!(
        lines[2].starts_with("pipes/b.sql:2:35: unsupported format"),
        "{}",
        out.stdout
    );
}

#[test]
fn wrong_calls_of_feature_functions_are_reported_at_the_call() {
    let dir = tempfile::tempdir().unwrap();
    base(dir.path());
    // A column where a constant belongs.
    let sql = format!(
        "{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id, hash_bucket(kind, user_id) AS b FROM events;\n"
    );
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:4:17: hash_bucket(value, n): n must be a constant",
    );
    // A type the function has no answer for.
    let sql =
        format!("{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id,\n  minhash(value, 64, 3) AS m FROM events;\n");
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:5:3: minhash(text, num_perm, shingle_len): text must be a string, not Float64",
    );
    // A window function's constant, which only the plan shows.
    let sql = format!(
        "{SOURCE}{SINK}INSERT INTO fs\nSELECT user_id, quantile_bucket(value, 0) OVER (PARTITION BY user_id) AS q FROM events;\n"
    );
    assert_refused(
        dir.path(),
        &sql,
        "p.sql:4:17: quantile_bucket(x, n): n must be between 1 and 2147483647, not 0",
    );
}
