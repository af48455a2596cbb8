//! Crashes and races forced at the exact points where exactly once could
//! break, through the failpoints compiled into the test build (the
//! `failpoints` feature, set with `FAILPOINTS=name=action`).

use std::time::Duration;

use crate::common::*;
use crate::kafka::{DEAD, NOIDA_FETCH, broker, new_topic, produce};
use crate::stream::{
    Membership, assert_every_id_once, committed_rows, ids_in, pipeline, records, signal, start_stream, stop,
    wait_for_rows,
};

/// A Kafka pipeline into two feature sets; records with `"id": -1` are bad.
fn two_feature_sets(topic: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, user_id BIGINT NOT NULL, item VARCHAR)\n\
         STORED AS JSON LOCATION 'kafka://{topic}'\n\
         OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH});\n\
         CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION 'out/seen' OPTIONS ('key' 'id', 'mode' 'append');\n\
         CREATE EXTERNAL TABLE also STORED AS FEATURES LOCATION 'out/also' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO seen SELECT id, user_id, item FROM clicks;\n\
         INSERT INTO also SELECT id FROM clicks;\n"
    )
}

/// `kiln run p.sql` with one failpoint set to `name=return`; it must fail.
fn run_failing_at(dir: &std::path::Path, brokers: &str, failpoint: &str) -> Run {
    kiln_env(
        dir,
        &["run", "p.sql"],
        &[("KAFKA", brokers), ("FAILPOINTS", failpoint)],
    )
    .failed()
}

fn dead_offsets(dir: &std::path::Path) -> usize {
    let dead = python_json(
        DEAD,
        &[&dir.join("out/seen/_dead_letters").display().to_string()],
        &[],
    );
    dead["offset"].as_array().unwrap().len()
}

#[test]
fn a_run_stopped_between_two_commits_is_made_good_by_the_next() {
    let brokers = broker();
    let topic = new_topic(&brokers, "fp-between", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("p.sql"), &two_feature_sets(&topic));
    produce(&brokers, &topic, &records(0, 1000, 2));
    let env = [("KAFKA", brokers.as_str())];
    let failed = run_failing_at(d, &brokers, "run-between-feature-sets=return");
    assert!(failed.stderr.contains("failpoint"), "{}", failed.stderr);
    assert_eq!(ids_in(d, "seen").len(), 1000, "the first feature set committed");
    assert!(!has_delta_log(&d.join("out/also")), "the second did not");
    produce(&brokers, &topic, &records(1000, 500, 2));
    kiln_env(d, &["run", "p.sql"], &env).ok();
    assert_eq!(ids_in(d, "seen"), (0..1500).collect::<Vec<_>>());
    assert_eq!(ids_in(d, "also"), (0..1500).collect::<Vec<_>>());
}

#[test]
fn dead_letters_committed_before_a_crash_are_not_written_twice() {
    let brokers = broker();
    let topic = new_topic(&brokers, "fp-dead", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("p.sql"), &two_feature_sets(&topic));
    let mut batch = records(0, 100, 1);
    batch.push((0, None, Some(b"{not json".to_vec())));
    batch.push((0, None, Some(b"{\"id\": \"x\"}".to_vec())));
    produce(&brokers, &topic, &batch);
    let env = [("KAFKA", brokers.as_str())];

    // Stopped before the dead letters: nothing committed anywhere.
    run_failing_at(d, &brokers, "run-before-dead-letters=return");
    assert!(!has_delta_log(&d.join("out/seen")) && !has_delta_log(&d.join("out/seen/_dead_letters")));

    // Stopped right after them: the dead letters are in, the rows are not.
    run_failing_at(d, &brokers, "run-after-dead-letters=return");
    assert_eq!(dead_offsets(d), 2);
    assert!(!has_delta_log(&d.join("out/seen")));

    kiln_env(d, &["run", "p.sql"], &env).ok();
    assert_eq!(ids_in(d, "seen"), (0..100).collect::<Vec<_>>());
    assert_eq!(ids_in(d, "also"), (0..100).collect::<Vec<_>>());
    assert_eq!(dead_offsets(d), 2, "the dead letters once");
}

#[test]
fn a_worker_killed_between_its_delta_commit_and_the_group_commit_repeats_nothing() {
    let brokers = broker();
    let topic = new_topic(&brokers, "fp-after-commit", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Static));
    produce(&brokers, &topic, &records(0, 20_000, 2));
    // The first batch commits to Delta, then the worker hangs before the
    // group hears of it, and is killed there.
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(d)
        .args(["stream", "seen.sql", "--batch-rows", "3000"])
        .env("KAFKA", &brokers)
        .env("FAILPOINTS", "stream-after-commit=sleep(60000)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_rows(d, 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    signal(&worker, "-KILL");
    worker.wait().unwrap();
    let before = committed_rows(d);
    assert!(before > 0 && before < 20_000, "{before}");
    let worker = start_stream(d, &brokers, "after", &["--batch-rows", "3000"]);
    wait_for_rows(d, 20_000, Duration::from_secs(120));
    stop(worker, d, "after");
    assert_every_id_once(d, 20_000);
}

#[test]
fn an_owner_that_commits_after_losing_its_partitions_repeats_nothing() {
    let brokers = broker();
    const N: i64 = 60_000;
    let topic = new_topic(&brokers, "fp-late", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    produce(&brokers, &topic, &records(0, N / 2, 4));
    // Every batch of this worker whose partitions are revoked while it runs
    // is held 4 s before it commits: the partitions' new owner reads them
    // and commits meanwhile.
    let out = std::fs::File::create(d.join("late.err")).unwrap();
    let late = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(d)
        .args([
            "stream",
            "seen.sql",
            "--batch-rows",
            "2000",
            "--batch-interval",
            "300ms",
        ])
        .env("KAFKA", &brokers)
        .env("KILN_LOG", "info")
        .env("FAILPOINTS", "stream-revoked-before-commit=sleep(4000)")
        .stdout(std::process::Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    wait_for_rows(d, 2000, Duration::from_secs(60));
    let other = start_stream(d, &brokers, "other", &["--batch-rows", "2000"]);
    produce(&brokers, &topic, &records(N / 2, N / 2, 4));
    wait_for_rows(d, N as u64, Duration::from_secs(180));
    stop(late, d, "late");
    stop(other, d, "other");
    assert_every_id_once(d, N);
    let log = std::fs::read_to_string(d.join("late.err")).unwrap();
    assert!(
        log.contains("partitions revoked"),
        "the late worker lost partitions:\n{log}"
    );
}

#[test]
fn a_run_over_a_live_topic_ends_and_brings_feature_sets_level() {
    let brokers = broker();
    let topic = new_topic(&brokers, "fp-live", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("p.sql"), &two_feature_sets(&topic));
    produce(&brokers, &topic, &records(0, 5000, 2));
    // The feature sets stand apart: the first has 5,000 records, the second none.
    run_failing_at(d, &brokers, "run-between-feature-sets=return");
    // Records keep arriving while the next run reads.
    let producer = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        std::thread::spawn(move || {
            for chunk in 0..150 {
                produce(&brokers, &topic, &records(5000 + chunk * 100, 100, 2));
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    kiln_env(d, &["run", "p.sql"], &[("KAFKA", &brokers)]).ok();
    assert!(
        !producer.is_finished(),
        "the run ended while records kept arriving"
    );
    producer.join().unwrap();
    // Both stood level after that run; one more reads the rest for both.
    kiln_env(d, &["run", "p.sql"], &[("KAFKA", &brokers)]).ok();
    assert_eq!(ids_in(d, "seen"), (0..20_000).collect::<Vec<_>>());
    assert_eq!(ids_in(d, "also"), (0..20_000).collect::<Vec<_>>());
}
