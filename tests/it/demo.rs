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
import json, sys
import duckdb
from deltalake import DeltaTable
raw, table = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.register("k", DeltaTable(table).to_pyarrow_table())
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
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kiln(d, &["demo", "--dir", "demo", "--events", "20000"]).ok();
    let sql = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/event_enriched.sql");
    let raw = d.join("demo/raw").display().to_string();
    let features = d.join("features").display().to_string();
    kiln(
        d,
        &[
            "run",
            sql,
            "--set",
            &format!("RAW={raw}"),
            "--set",
            &format!("FEATURES={features}"),
        ],
    )
    .ok();
    let table = d.join("features/event_enriched").display().to_string();
    let got = python_json(CHECK, &[&raw, &table], &[]);
    assert_eq!(got["rows"], 20000, "{got}");
    assert_eq!(got["events"], 20000, "{got}");
    assert_eq!(got["distinct_ids"], 20000, "{got}");
    assert_eq!(got["mismatches"], 0, "{got}");
    // About 3% of the demo's events have no dwell time.
    let imputed = got["imputed"].as_u64().unwrap();
    assert!((200..1200).contains(&imputed), "{got}");
}
