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
