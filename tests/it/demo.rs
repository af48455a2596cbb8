//! `kiln demo`: sample data, the sample pipelines, new versions on re-run.

use crate::common::*;

#[test]
fn demo_commits_feature_sets_and_a_second_run_adds_versions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = kiln(d, &["demo", "--dir", "demo", "--events", "30000"])
        .ok()
        .stdout;
    assert!(first.contains("made 30000 events"), "{first}");
    for fs in ["user_daily", "item_daily", "user_trailing_7d"] {
        assert!(first.contains(&format!("committed {fs} version 0")), "{first}");
    }
    assert!(first.contains("kiln show demo/features/user_daily"), "{first}");
    assert!(
        first.contains("lineage of user_daily version 0, from its Delta log: pipeline user_daily"),
        "{first}"
    );

    let second = kiln(d, &["demo", "--dir", "demo", "--events", "30000"])
        .ok()
        .stdout;
    assert!(second.contains("reusing the sample data"), "{second}");
    assert!(second.contains("committed user_daily version 1"), "{second}");
    assert!(second.contains("lineage of user_daily version 1"), "{second}");
    // item_daily is incremental: the same files are not read twice.
    assert!(
        second.contains("item_daily unchanged: no new input files"),
        "{second}"
    );

    let daily = read_delta(
        &d.join("demo/features/user_daily").display().to_string(),
        None,
        Some("events"),
        &[],
    );
    assert_eq!(daily["version"], 1);
    assert_eq!(daily["sum"], 30000, "every event is counted once in user_daily");
    let items = read_delta(
        &d.join("demo/features/item_daily").display().to_string(),
        None,
        Some("views"),
        &[],
    );
    assert!(items["rows"].as_u64().unwrap() > 100);
    let trailing = read_delta(
        &d.join("demo/features/user_trailing_7d").display().to_string(),
        None,
        None,
        &[],
    );
    assert_eq!(
        trailing["rows"], daily["rows"],
        "one trailing row per active user-day"
    );
}

/// `pipelines/event_enriched.sql` over the demo's data, against DuckDB's
/// answer to the same question over the same files: every event once, its
/// attributes, and a missing dwell time filled with its category's median.
#[test]
fn the_enrichment_sample_pipeline_agrees_with_duckdb() {
    const CHECK: &str = r#"
con.execute(f"""
CREATE TABLE want AS
WITH e AS (SELECT * FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = false)),
     u AS (SELECT * FROM read_parquet('{raw}/users/*.parquet')),
     i AS (SELECT * FROM read_parquet('{raw}/items/*.parquet')),
     x AS (SELECT e.*, u.segment, u.country, i.category, i.price FROM e JOIN u USING (user_id) JOIN i USING (item_id)),
     m AS (SELECT category, median(dwell_ms) AS med FROM x GROUP BY category)
SELECT x.event_id, x.category, coalesce(x.dwell_ms, m.med) AS dwell_ms, x.dwell_ms IS NULL AS imputed,
       date_part('dow', x.event_time) AS dow, date_part('hour', x.event_time) AS hour
FROM x JOIN m USING (category)
""")
print(json.dumps({
    "rows": con.execute("SELECT count(*) FROM k").fetchone()[0],
    "events": con.execute("SELECT count(*) FROM want").fetchone()[0],
    "distinct_ids": con.execute("SELECT count(DISTINCT event_id) FROM k").fetchone()[0],
    "imputed": con.execute("SELECT count(*) FROM k WHERE dwell_imputed").fetchone()[0],
    "mismatches": con.execute(
        "SELECT count(*) FROM k JOIN want w USING (event_id) WHERE k.category <> w.category "
        "OR abs(k.dwell_ms - w.dwell_ms) > 1e-9 OR k.dwell_imputed <> w.imputed "
        "OR k.day_of_week <> w.dow OR k.hour_of_day <> w.hour"
    ).fetchone()[0],
}))
"#;
    let sample = run_sample("event_enriched");
    let (raw, features) = (&sample.raw, &sample.features);
    let table = format!("{features}/event_enriched");
    let got = against_duckdb(CHECK, raw, &table);
    assert_eq!(got["rows"], 20000, "{got}");
    assert_eq!(got["events"], 20000, "{got}");
    assert_eq!(got["distinct_ids"], 20000, "{got}");
    assert_eq!(got["mismatches"], 0, "{got}");
    // About 3% of the demo's events have no dwell time.
    let imputed = got["imputed"].as_u64().unwrap();
    assert!((200..1200).contains(&imputed), "{got}");
}

/// `pipelines/activity_totals.sql`: three INSERTs over shared sources, run
/// at once and committed each, every feature set equal to DuckDB's answer
/// over the same files, and each version's lineage naming the sources its
/// own query read.
#[test]
fn the_multi_insert_sample_pipeline_agrees_with_duckdb() {
    const CHECK: &str = r#"
import json, os, sys
import duckdb
from deltalake import DeltaTable
raw, features = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f"CREATE VIEW e AS SELECT * FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = false)")
con.execute(f"CREATE VIEW i AS SELECT * FROM read_parquet('{raw}/items/*.parquet')")
want = {
    "user_totals": ("user_id", """SELECT e.user_id, count(*) AS events,
        count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
        sum(CASE WHEN event_type = 'purchase' THEN price ELSE 0 END) AS revenue,
        avg(dwell_ms) AS avg_dwell_ms, min(event_time) AS first_seen, max(event_time) AS last_seen
        FROM e JOIN i USING (item_id) GROUP BY e.user_id"""),
    "item_totals": ("item_id", """SELECT item_id, count(*) AS events,
        count(*) FILTER (WHERE event_type = 'view') AS views,
        count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
        avg(dwell_ms) AS avg_dwell_ms, max(event_time) AS last_seen
        FROM e GROUP BY item_id"""),
    "category_hourly": ("category, hour_of_day", """SELECT category,
        CAST(date_part('hour', event_time) AS BIGINT) AS hour_of_day, count(*) AS events,
        count(DISTINCT user_id) AS users,
        sum(CASE WHEN event_type = 'purchase' THEN price ELSE 0 END) AS revenue
        FROM e JOIN i USING (item_id) GROUP BY 1, 2"""),
}
out = {}
for name, (key, sql) in want.items():
    con.register(f"k_{name}", DeltaTable(os.path.join(features, name)).to_pyarrow_table())
    con.execute(f"CREATE TABLE w_{name} AS {sql}")
    probe = con.execute(f"SELECT * FROM w_{name} LIMIT 0")
    cols = [c[0] for c in probe.description]
    probe.fetchall()
    differs = " OR ".join(
        f"(k.{c} IS DISTINCT FROM w.{c} AND NOT (abs(k.{c} - w.{c}) <= 1e-9 * greatest(1, abs(w.{c}))))"
        if c in ("revenue", "avg_dwell_ms") else f"k.{c} IS DISTINCT FROM w.{c}"
        for c in cols
    )
    keys = [k.strip() for k in key.split(",")]
    on = " AND ".join(f"k.{k} = w.{k}" for k in keys)
    out[name] = {
        "rows": con.execute(f"SELECT count(*) FROM k_{name}").fetchall()[0][0],
        "want": con.execute(f"SELECT count(*) FROM w_{name}").fetchall()[0][0],
        "mismatches": con.execute(
            f"SELECT count(*) FROM k_{name} k FULL JOIN w_{name} w ON {on} WHERE {differs}"
        ).fetchall()[0][0],
    }
print(json.dumps(out))
os._exit(0)
"#;
    let sample = run_sample("activity_totals");
    let (raw, features, run) = (&sample.raw, &sample.features, &sample.summary);
    let sets = run["feature_sets"].as_array().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s["feature_set"].as_str().unwrap()).collect();
    assert_eq!(names, ["user_totals", "item_totals", "category_hourly"], "{run}");
    assert!(sets.iter().all(|s| s["version"] == 0), "{run}");

    let got = python_json(CHECK, &[raw, features], &[]);
    for name in names {
        let g = &got[name];
        assert!(g["rows"].as_u64().unwrap() > 10, "{name}: {g}");
        assert_eq!(g["rows"], g["want"], "{name}: {g}");
        assert_eq!(g["mismatches"], 0, "{name}: {g}");
        // Each version's lineage lists the files its own query read: the
        // INSERTs ran at once, but their inputs are not pooled.
        let read = read_delta(&format!("{features}/{name}"), None, None, &[]);
        let sources: std::collections::BTreeSet<&str> = read["commit"]["kiln"]["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["source"].as_str().unwrap())
            .collect();
        let expected: &[&str] = if name == "item_totals" {
            &["events"]
        } else {
            &["events", "items"]
        };
        assert_eq!(sources.into_iter().collect::<Vec<_>>(), expected, "{name}");
    }
}

/// `pipelines/user_vs_usual.sql`: a daily aggregate read twice, computed
/// once (the plan shows the shared subquery), every row equal to DuckDB's.
#[test]
fn the_shared_subquery_sample_pipeline_agrees_with_duckdb() {
    const CHECK: &str = r#"
con.execute(f"""
CREATE TABLE want AS
WITH e AS (SELECT * FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = false)),
     d AS (SELECT user_id, CAST(event_time AS DATE) AS day, count(*) AS events, sum(dwell_ms) AS dwell_ms
           FROM e GROUP BY 1, 2),
     u AS (SELECT user_id, avg(events) AS ue, avg(dwell_ms) AS ud, count(*) AS n FROM d GROUP BY 1)
SELECT d.user_id, d.day, d.events, d.events - u.ue AS ev, d.dwell_ms - u.ud AS dv, u.n
FROM d JOIN u USING (user_id)
""")
print(json.dumps({
    "rows": con.execute("SELECT count(*) FROM k").fetchall()[0][0],
    "want": con.execute("SELECT count(*) FROM want").fetchall()[0][0],
    "mismatches": con.execute(
        "SELECT count(*) FROM k FULL JOIN want w ON k.user_id = w.user_id AND k.day = w.day "
        "WHERE k.events IS DISTINCT FROM w.events OR k.active_days IS DISTINCT FROM w.n "
        "OR abs(k.events_vs_usual - w.ev) > 1e-9 "
        "OR (k.dwell_vs_usual IS DISTINCT FROM w.dv AND NOT abs(k.dwell_vs_usual - w.dv) <= 1e-6)"
    ).fetchall()[0][0],
}))
os._exit(0)
"#;
    let sample = run_sample("user_vs_usual");
    let (raw, features) = (&sample.raw, &sample.features);
    let got = against_duckdb(CHECK, raw, &format!("{features}/user_vs_usual"));
    assert!(got["rows"].as_u64().unwrap() > 1000, "{got}");
    assert_eq!(got["rows"], got["want"], "{got}");
    assert_eq!(got["mismatches"], 0, "{got}");

    let plan = sample.explain("user_vs_usual");
    assert!(
        plan.contains("SharedSubqueryExec: id=") && plan.contains("reader 2 of 2"),
        "{plan}"
    );
}

/// `pipelines/user_daily.sql`: every column of every user-day equal to
/// DuckDB's, the z-score over all of them included, which kiln plans as
/// one aggregate joined to the rows rather than as a window.
#[test]
fn the_user_daily_sample_pipeline_agrees_with_duckdb() {
    const CHECK: &str = r#"
con.execute(f"""
CREATE TABLE want AS
WITH e AS (SELECT * FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = false)),
     d AS (SELECT user_id, CAST(event_time AS DATE) AS day, count(*) AS events,
                  count(DISTINCT item_id) AS distinct_items, avg(dwell_ms) AS avg_dwell_ms,
                  count(*) FILTER (WHERE event_type = 'purchase') AS purchases
           FROM e GROUP BY 1, 2)
SELECT d.*, u.segment, u.country,
       (d.events - avg(d.events) OVER ()) / stddev_samp(d.events) OVER () AS z
FROM d JOIN read_parquet('{raw}/users/*.parquet') u USING (user_id)
""")
print(json.dumps({
    "rows": con.execute("SELECT count(*) FROM k").fetchall()[0][0],
    "want": con.execute("SELECT count(*) FROM want").fetchall()[0][0],
    "mismatches": con.execute(
        "SELECT count(*) FROM k FULL JOIN want w ON k.user_id = w.user_id AND k.day = w.day "
        "WHERE k.events IS DISTINCT FROM w.events OR k.distinct_items IS DISTINCT FROM w.distinct_items "
        "OR k.purchases IS DISTINCT FROM w.purchases OR k.segment IS DISTINCT FROM w.segment "
        "OR k.country IS DISTINCT FROM w.country "
        "OR (k.avg_dwell_ms IS DISTINCT FROM w.avg_dwell_ms AND NOT abs(k.avg_dwell_ms - w.avg_dwell_ms) <= 1e-6) "
        "OR NOT abs(k.events_zscore - w.z) <= 1e-9"
    ).fetchall()[0][0],
}))
os._exit(0)
"#;
    let sample = run_sample("user_daily");
    let got = against_duckdb(CHECK, &sample.raw, &format!("{}/user_daily", sample.features));
    assert!(got["rows"].as_u64().unwrap() > 1000, "{got}");
    assert_eq!(got["rows"], got["want"], "{got}");
    assert_eq!(got["mismatches"], 0, "{got}");

    let plan = sample.explain("user_daily");
    assert!(
        plan.contains("CrossJoinExec") && !plan.contains("WindowAggExec"),
        "{plan}"
    );
}

/// Runs `check` (Python that prints one JSON answer) after a prelude that
/// gives it `con`, a DuckDB connection in UTC, `raw`, the demo's raw data
/// folder, and kiln's feature set at `table` registered as `k`.
fn against_duckdb(check: &str, raw: &str, table: &str) -> serde_json::Value {
    const PRELUDE: &str = r#"
import json, os, sys
import duckdb
from deltalake import DeltaTable
raw, table = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.register("k", DeltaTable(table).to_pyarrow_table())
"#;
    python_json(&format!("{PRELUDE}{check}"), &[raw, table], &[])
}

/// A sample pipeline from `pipelines/`, run over 20,000 demo events.
struct SampleRun {
    _dir: tempfile::TempDir,
    raw: String,
    features: String,
    /// The run's `--output json` summary.
    summary: serde_json::Value,
}

impl SampleRun {
    /// `kiln explain` of `pipelines/<pipeline>.sql` over the same data.
    fn explain(&self, pipeline: &str) -> String {
        let sql = format!("{}/pipelines/{pipeline}.sql", env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let raw = format!("RAW={}", self.raw);
        let features = format!("FEATURES={}", self.features);
        kiln(dir.path(), &["explain", &sql, "--set", &raw, "--set", &features])
            .ok()
            .stdout
    }
}

fn run_sample(pipeline: &str) -> SampleRun {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kiln(d, &["demo", "--dir", "demo", "--events", "20000"]).ok();
    let sql = format!("{}/pipelines/{pipeline}.sql", env!("CARGO_MANIFEST_DIR"));
    let raw = d.join("demo/raw").display().to_string();
    let features = d.join("features").display().to_string();
    let summary = kiln(
        d,
        &[
            "run",
            &sql,
            "--set",
            &format!("RAW={raw}"),
            "--set",
            &format!("FEATURES={features}"),
            "--output",
            "json",
        ],
    )
    .ok()
    .json();
    SampleRun {
        _dir: dir,
        raw,
        features,
        summary,
    }
}
