//! Exactly once while the group changes under load: a steady producer, one
//! worker that runs throughout, and others joining and leaving a dozen
//! times, cleanly (SIGTERM) or not (SIGKILL). Partitions move between live
//! workers with batches in flight; every id must still be committed once.

use std::time::Duration;

use crate::common::*;
use crate::kafka::{broker, new_topic, produce};
use crate::stream::{
    Membership, assert_every_id_once, committed_rows, pipeline, records, signal, start_stream, stop, tansu,
    wait_for_rows,
};

const EVENTS: i64 = 300_000;
const PARTITIONS: i32 = 8;
const CYCLES: u64 = 12;

/// `leave_with` is the signal joiners leave with; at least `min_given` of
/// them must have been given partitions (a killed member holds its own
/// until its session times out, which slows the joins after it).
fn churn(brokers: &str, leave_with: &str, min_given: u64) {
    let topic = new_topic(brokers, "churn", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    let producer = {
        let (brokers, topic) = (brokers.to_string(), topic.clone());
        // 1,000 events every 150 ms, while the churn goes on.
        std::thread::spawn(move || {
            for chunk in 0..EVENTS / 1000 {
                produce(&brokers, &topic, &records(chunk * 1000, 1000, PARTITIONS));
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let batch = ["--batch-rows", "5000"];
    let steady = start_stream(d, brokers, "steady", &batch);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for cycle in 0..CYCLES {
        let log = format!("churn{cycle}");
        let mut worker = start_stream(d, brokers, &log, &batch);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // Until the group gives it partitions (tansu takes half the session
        // timeout to join), then a while of batches in flight.
        let log_path = d.join(format!("{log}.err"));
        let joined = std::time::Instant::now();
        while joined.elapsed() < Duration::from_secs(20)
            && !std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("partitions assigned")
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(1000 + seed % 2000));
        if leave_with == "-TERM" {
            stop(worker, d, &log);
        } else {
            signal(&worker, leave_with);
            worker.wait().unwrap();
        }
    }
    producer.join().unwrap();
    // The churn really moved partitions: most joiners were given some.
    let logs: Vec<String> = (0..CYCLES)
        .map(|c| std::fs::read_to_string(d.join(format!("churn{c}.err"))).unwrap_or_default())
        .collect();
    let given = logs.iter().filter(|l| l.contains("partitions assigned")).count() as u64;
    assert!(
        given >= min_given,
        "only {given} of {CYCLES} joiners were given partitions within 20 s"
    );
    let races = logs
        .iter()
        .map(|l| l.matches("reading them again").count())
        .sum::<usize>();
    eprintln!("{given} of {CYCLES} joiners were given partitions; {races} of their batches lost a race");
    eprintln!(
        "{} of {EVENTS} rows committed when the producer finished",
        committed_rows(d)
    );
    wait_for_rows(d, EVENTS as u64, Duration::from_secs(240));
    stop(steady, d, "steady");
    assert_every_id_once(d, EVENTS);
}

#[test]
fn noida_exactly_once_while_workers_join_and_leave() {
    churn(&broker(), "-TERM", CYCLES * 3 / 4);
}

#[test]
fn tansu_exactly_once_while_workers_join_and_leave() {
    churn(&tansu(), "-TERM", CYCLES * 3 / 4);
}

#[test]
fn tansu_exactly_once_while_workers_join_and_die() {
    churn(&tansu(), "-KILL", CYCLES / 3);
}
