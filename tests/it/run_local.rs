//! Bounded runs over local files, read back by an independent reader.

use sha2::{Digest, Sha256};

use crate::common::*;

const PIPELINE: &str = "-- events per user\n\
CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '${DATA}/events/';\n\
CREATE EXTERNAL TABLE per_user STORED AS FEATURES LOCATION '${OUT}/per_user'\n\
  OPTIONS ('key' 'user_id', 'mode' '${MODE:-append}');\n\
INSERT INTO per_user\n\
SELECT user_id, count(*) AS events, sum(value) AS total, count(DISTINCT kind) AS kinds\n\
FROM events GROUP BY user_id;\n";

fn setup() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(&dir.path().join("data/events/a.parquet"), &events_batch(0, 700));
    write_parquet(&dir.path().join("data/events/b.parquet"), &events_batch(700, 300));
    write(&dir.path().join("per_user.sql"), PIPELINE);
    let data = dir.path().join("data").display().to_string();
    let out = dir.path().join("features").display().to_string();
    (dir, data, out)
}

#[test]
fn run_commits_versions_with_lineage_that_an_independent_reader_sees() {
    let (dir, data, out) = setup();
    let set_data = format!("DATA={data}");
    let set_out = format!("OUT={out}");
    let args = [
        "run",
        "per_user.sql",
        "--set",
        &set_data,
        "--set",
        &set_out,
        "--output",
        "json",
    ];

    let first = kiln(dir.path(), &args).ok().json();
    assert_eq!(first["pipeline"], "per_user");
    assert_eq!(first["feature_sets"][0]["version"], 0);
    assert_eq!(first["feature_sets"][0]["rows"], 7);
    assert_eq!(first["input_files"], 2);

    let fs = format!("{out}/per_user");
    let read = read_delta(&fs, None, Some("total"), &[]);
    assert_eq!(read["version"], 0);
    assert_eq!(read["rows"], 7);
    assert_eq!(read["sum"].as_f64().unwrap(), value_sum(0, 1000));
    assert_eq!(
        read["columns"],
        serde_json::json!(["user_id", "events", "total", "kinds"])
    );
    // Plain Delta: readers that know only protocol 1 can open it.
    assert_eq!(read["min_reader"], 1);

    // The lineage is in the Delta commit info, where any reader finds it.
    let lineage = &read["commit"]["kiln"];
    assert_eq!(lineage["pipeline"], "per_user");
    assert_eq!(lineage["rows_written"], 7);
    assert_eq!(lineage["run_id"], first["run_id"]);
    // The hash covers the file's text and, in order, each variable's name
    // and value (none of these is a credential).
    let mut hasher = Sha256::new();
    hasher.update(PIPELINE.as_bytes());
    for part in PIPELINE.split("${").skip(1) {
        let inner = part.split('}').next().unwrap();
        let name = inner.split(":-").next().unwrap();
        let value = match name {
            "DATA" => data.as_str(),
            "OUT" => out.as_str(),
            "MODE" => "append",
            other => panic!("unexpected variable {other}"),
        };
        hasher.update(format!("\0{name}={value}").as_bytes());
    }
    assert_eq!(lineage["sql_sha256"], format!("{:x}", hasher.finalize()));
    let inputs = lineage["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    assert!(
        inputs
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("events/a.parquet"))
    );
    assert!(inputs.iter().all(|f| f["size"].as_u64().unwrap() > 0));
    let total = lineage["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "total")
        .unwrap();
    assert_eq!(total["count"], 7);
    assert_eq!(total["null_count"], 0);
    let mean = total["mean"].as_f64().unwrap();
    assert!((mean - value_sum(0, 1000) / 7.0).abs() < 1e-6, "{mean}");

    // A second run is a second version; the first stays readable.
    let second = kiln(dir.path(), &args).ok().json();
    assert_eq!(second["feature_sets"][0]["version"], 1);
    assert_ne!(second["run_id"], first["run_id"]);
    assert_eq!(read_delta(&fs, None, None, &[])["rows"], 14);
    let old = read_delta(&fs, Some(0), Some("total"), &[]);
    assert_eq!(old["rows"], 7);
    assert_eq!(old["version"], 0);

    // versions and show agree with the reader.
    let versions = kiln(dir.path(), &["versions", &fs, "--output", "json"])
        .ok()
        .json();
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["version"], 1);
    assert_eq!(versions[1]["rows"], 7);
    assert_eq!(versions[1]["pipeline"], "per_user");
    assert_eq!(versions[1]["run_id"], second["run_id"]);
    let show = kiln(dir.path(), &["show", &format!("{fs}@0"), "--output", "json"])
        .ok()
        .json();
    assert_eq!(show["version"], 0);
    assert_eq!(show["total_rows"], 7);
    assert_eq!(show["lineage"]["run_id"], first["run_id"]);
    let text = kiln(dir.path(), &["show", &fs]).ok().stdout;
    assert!(
        text.contains("version 1") && text.contains("pipeline:   per_user"),
        "{text}"
    );
}

#[test]
fn overwrite_replaces_the_snapshot() {
    let (dir, data, out) = setup();
    let set_data = format!("DATA={data}");
    let set_out = format!("OUT={out}");
    let args = [
        "run",
        "per_user.sql",
        "--set",
        &set_data,
        "--set",
        &set_out,
        "--set",
        "MODE=overwrite",
    ];
    kiln(dir.path(), &args).ok();
    let text = kiln(dir.path(), &args).ok().stdout;
    assert!(
        text.contains("committed per_user version 1 (7 rows, overwrite)"),
        "{text}"
    );
    let fs = format!("{out}/per_user");
    let read = read_delta(&fs, None, Some("total"), &[]);
    assert_eq!(read["rows"], 7);
    assert_eq!(read["sum"].as_f64().unwrap(), value_sum(0, 1000));
}

#[test]
fn csv_json_globs_and_hive_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("raw/csv/part-1.csv"), "user_id,amount\n1,10.5\n2,3\n");
    write(&d.join("raw/csv/part-2.csv"), "user_id,amount\n1,1.5\n");
    write(&d.join("raw/csv/ignored.txt"), "not,csv\n");
    write(
        &d.join("raw/json/x.json"),
        "{\"user_id\": 1, \"tag\": \"a\"}\n{\"user_id\": 2, \"tag\": \"b\"}\n",
    );
    write(&d.join("raw/hive/day=2026-01-01/f.csv"), "user_id,clicks\n1,4\n");
    write(
        &d.join("raw/hive/day=2026-01-02/f.csv"),
        "user_id,clicks\n1,6\n2,1\n",
    );
    // The JSON source is named by a file:// URL, the others by paths.
    let json_url = format!("file://{}/raw/json/", d.display());
    write(
        &d.join("mixed.sql"),
        "CREATE EXTERNAL TABLE spend (user_id BIGINT NOT NULL, amount DOUBLE)\n\
           STORED AS CSV LOCATION 'raw/csv/*.csv' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE tags STORED AS JSON LOCATION '${JSON_URL}';\n\
         CREATE EXTERNAL TABLE clicks STORED AS CSV LOCATION 'raw/hive/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE mixed STORED AS FEATURES LOCATION 'out/mixed' OPTIONS ('key' 'user_id');\n\
         INSERT INTO mixed\n\
         SELECT s.user_id, s.spent, t.tag, c.clicks, c.days\n\
         FROM (SELECT user_id, sum(amount) AS spent FROM spend GROUP BY user_id) s\n\
         JOIN tags t ON t.user_id = s.user_id\n\
         JOIN (SELECT user_id, sum(clicks) AS clicks, count(DISTINCT day) AS days FROM clicks GROUP BY user_id) c\n\
           ON c.user_id = s.user_id;\n",
    );
    let set_json = format!("JSON_URL={json_url}");
    let summary = kiln(d, &["run", "mixed.sql", "--set", &set_json, "--output", "json"])
        .ok()
        .json();
    assert_eq!(summary["feature_sets"][0]["rows"], 2);
    // Two CSVs, one JSON, two hive files; the .txt is not read.
    assert_eq!(summary["input_files"], 5);
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
rows = DeltaTable(sys.argv[1]).to_pyarrow_table().sort_by("user_id").to_pylist()
print(json.dumps(rows))
"#;
    let rows = python_json(SCRIPT, &[&d.join("out/mixed").display().to_string()], &[]);
    assert_eq!(
        rows,
        serde_json::json!([
            {"user_id": 1, "spent": 12.0, "tag": "a", "clicks": 10, "days": 2},
            {"user_id": 2, "spent": 3.0, "tag": "b", "clicks": 1, "days": 1},
        ])
    );
}

#[test]
fn a_failing_run_commits_nothing_to_any_feature_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("raw/a.csv"), "id,n\n1,5\n2,x7\n");
    // The first INSERT succeeds, the second fails while reading row 2.
    write(
        &d.join("two.sql"),
        "CREATE EXTERNAL TABLE raw (id BIGINT, n VARCHAR) STORED AS CSV LOCATION 'raw/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE good STORED AS FEATURES LOCATION 'out/good' OPTIONS ('key' 'id');\n\
         CREATE EXTERNAL TABLE bad STORED AS FEATURES LOCATION 'out/bad' OPTIONS ('key' 'id');\n\
         INSERT INTO good SELECT id, n FROM raw;\n\
         INSERT INTO bad SELECT id, CAST(n AS BIGINT) AS n FROM raw;\n",
    );
    let run = kiln(d, &["run", "two.sql"]).failed();
    assert!(run.stderr.contains("two.sql:5:1"), "{}", run.stderr);
    assert!(run.stderr.contains("x7"), "{}", run.stderr);
    assert!(
        !has_delta_log(&d.join("out/good")),
        "the first feature set must not be committed"
    );
    assert!(!has_delta_log(&d.join("out/bad")));
}

#[test]
fn explain_shows_kilns_rewrites_and_writes_nothing() {
    let (dir, data, out) = setup();
    let set_data = format!("DATA={data}");
    let set_out = format!("OUT={out}");
    let args = ["explain", "per_user.sql", "--set", &set_data, "--set", &set_out];
    let text = kiln(dir.path(), &args).ok().stdout;
    assert!(text.contains("== INSERT INTO per_user =="), "{text}");
    // count(DISTINCT kind) beside count(*) and sum(value): kiln's grouped
    // distinct count, in one stage.
    assert!(
        text.contains("count_distinct(events.kind)")
            && text.contains("AggregateExec: mode=SinglePartitioned"),
        "{text}"
    );
    let mut analyze = args.to_vec();
    analyze.push("--analyze");
    let analyzed = kiln(dir.path(), &analyze).ok().stdout;
    assert!(analyzed.contains("output_rows=7"), "{analyzed}");
    assert!(
        !has_delta_log(&dir.path().join("features/per_user")),
        "explain commits nothing"
    );
}

#[test]
fn new_columns_need_allow_new_columns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_parquet(&d.join("data/events/a.parquet"), &events_batch(0, 70));
    let pipeline = |select: &str, allow: &str| {
        format!(
            "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 'data/events/';\n\
             CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs'\n\
               OPTIONS ('key' 'user_id', 'allow_new_columns' '{allow}');\n\
             INSERT INTO fs {select};\n"
        )
    };
    let narrow = "SELECT user_id, count(*) AS n FROM events GROUP BY user_id";
    let wide = "SELECT user_id, count(*) AS n, max(value) AS top FROM events GROUP BY user_id";
    write(&d.join("p.sql"), &pipeline(narrow, "false"));
    kiln(d, &["run", "p.sql"]).ok();

    write(&d.join("p.sql"), &pipeline(wide, "false"));
    let refused = kiln(d, &["run", "p.sql"]).failed();
    assert!(
        refused
            .stderr
            .contains("the query adds column 'top' to feature set 'fs'"),
        "{}",
        refused.stderr
    );

    write(&d.join("p.sql"), &pipeline(wide, "true"));
    let summary = kiln(d, &["run", "p.sql", "--output", "json"]).ok().json();
    assert_eq!(summary["feature_sets"][0]["version"], 1);
    let read = read_delta(&d.join("out/fs").display().to_string(), None, Some("top"), &[]);
    assert_eq!(read["columns"], serde_json::json!(["user_id", "n", "top"]));
    assert_eq!(read["rows"], 14);
    // Rows from before the column existed read it as null; the sum is the new rows' maxima.
    let expected: f64 = (0..7)
        .map(|u| (0..70).filter(|i| i % 7 == u).max().unwrap() as f64 * 0.5)
        .sum();
    assert_eq!(read["sum"].as_f64().unwrap(), expected);
}

#[test]
fn pipelines_chain_through_feature_sets_pinned_or_latest() {
    let (dir, data, out) = setup();
    let d = dir.path();
    let set_data = format!("DATA={data}");
    let set_out = format!("OUT={out}");
    // Two versions of per_user: 7 rows, then 14.
    for _ in 0..2 {
        kiln(d, &["run", "per_user.sql", "--set", &set_data, "--set", &set_out]).ok();
    }
    let chained = |version_option: &str| {
        format!(
            "CREATE EXTERNAL TABLE per_user STORED AS FEATURES LOCATION '{out}/per_user'{version_option};\n\
             CREATE EXTERNAL TABLE summary STORED AS FEATURES LOCATION '{out}/summary'\n\
               OPTIONS ('key' 'rows', 'mode' 'overwrite');\n\
             INSERT INTO summary SELECT count(*) AS rows, sum(events) AS events FROM per_user;\n"
        )
    };
    write(&d.join("summary.sql"), &chained(" OPTIONS ('version' '0')"));
    kiln(d, &["run", "summary.sql"]).ok();
    let pinned = read_delta(&format!("{out}/summary"), None, Some("events"), &[]);
    assert_eq!(pinned["sum"], 1000, "version 0 holds each event once");

    write(&d.join("summary.sql"), &chained(""));
    kiln(d, &["run", "summary.sql"]).ok();
    let latest = read_delta(&format!("{out}/summary"), None, Some("events"), &[]);
    assert_eq!(latest["sum"], 2000, "the latest version holds two appends");

    write(&d.join("summary.sql"), &chained(" OPTIONS ('version' '9')"));
    let missing = kiln(d, &["check", "summary.sql"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stdout.starts_with("summary.sql:1:")
            && missing
                .stdout
                .contains("has no version 9: its latest version is 1"),
        "{}",
        missing.stdout
    );
}
