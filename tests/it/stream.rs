//! `kiln stream` against real brokers: exactly once under SIGKILL, through a
//! rebalance, and a clean stop on SIGTERM. Run against noida-db
//! (KILN_TEST_KAFKA) and tansu (KILN_TEST_KAFKA_TANSU), two independent
//! implementations of the Kafka protocol.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::events::{events_on, schema_errors};
use crate::kafka::{NOIDA_FETCH, Record, assert_group_offsets, broker, new_topic, produce};

pub fn tansu() -> String {
    std::env::var("KILN_TEST_KAFKA_TANSU").expect(
        "KILN_TEST_KAFKA_TANSU is not set: run the suite through scripts/test.sh, which starts the tansu broker",
    )
}

/// How workers of a test identify themselves to the group.
#[derive(Clone, Copy, PartialEq)]
pub enum Membership {
    /// A new member each start: a killed one is dropped when its session
    /// times out.
    Dynamic,
    /// `group.instance.id` (a StatefulSet pod's name): a restarted worker
    /// takes its dead predecessor's place at once. noida-db never expires a
    /// member whose session timed out (a killed worker would keep its
    /// partitions for ever), so the kill test runs static members there.
    Static,
}

/// A stream pipeline over `topic`: every record becomes one row.
pub fn pipeline(topic: &str, membership: Membership) -> String {
    let group = format!("kiln-test-{}", uuid::Uuid::new_v4().simple());
    let instance = match membership {
        Membership::Dynamic => String::new(),
        Membership::Static => ", 'group.instance.id' 'worker-0'".to_string(),
    };
    format!(
        "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, user_id BIGINT NOT NULL, item VARCHAR)\n\
         STORED AS JSON LOCATION 'kafka://{topic}'\n\
         OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH}, 'group.id' '{group}'{instance},\n\
         -- a killed worker's partitions move after this long; joins wait no longer than this\n\
         'session.timeout.ms' '6000', 'heartbeat.interval.ms' '500', 'max.poll.interval.ms' '10000');\n\
         CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION 'out/seen' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO seen SELECT id, user_id, item, _partition AS part, _offset AS kafka_offset FROM clicks;\n"
    )
}

pub fn records(first: i64, n: i64, partitions: i32) -> Vec<Record> {
    (first..first + n)
        .map(|id| {
            let value = format!(
                r#"{{"id": {id}, "user_id": {}, "item": "i{}"}}"#,
                id % 13,
                id % 29
            );
            ((id % partitions as i64) as i32, None, Some(value.into_bytes()))
        })
        .collect()
}

pub fn start_stream(dir: &Path, brokers: &str, log: &str, extra: &[&str]) -> Child {
    let out = std::fs::File::create(dir.join(format!("{log}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{log}.err"))).unwrap();
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir)
        .args(["stream", "seen.sql", "--batch-interval", "300ms"])
        .args(extra)
        .env("KAFKA", brokers)
        .env("KILN_LOG", "info")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("kiln stream starts")
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Rows committed so far (the sum over the feature set's versions).
pub fn committed_rows(dir: &Path) -> u64 {
    if !has_delta_log(&dir.join("out/seen")) {
        return 0;
    }
    let versions = kiln(dir, &["versions", "out/seen", "--output", "json"])
        .ok()
        .json();
    versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["rows"].as_u64().unwrap_or(0))
        .sum()
}

pub fn wait_for_rows(dir: &Path, rows: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let now = committed_rows(dir);
        if now >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {rows} rows after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Stop with SIGTERM; it must exit 0 on its own. How long it took.
pub fn stop(mut child: Child, dir: &Path, log: &str) -> Duration {
    let asked = Instant::now();
    signal(&child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::fs::read_to_string(dir.join(format!("{log}.err"))).unwrap_or_default();
            assert!(
                status.success(),
                "kiln stream exited {status} after SIGTERM:\n{err}"
            );
            return asked.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "kiln stream did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Row count, distinct ids, smallest and largest id, read by Python's deltalake.
pub fn id_census(dir: &Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.compute as pc
from deltalake import DeltaTable
ids = DeltaTable(sys.argv[1]).to_pyarrow_table(columns=["id"]).column("id")
print(json.dumps({"rows": len(ids), "distinct": pc.count_distinct(ids).as_py(),
                  "min": pc.min(ids).as_py(), "max": pc.max(ids).as_py()}))
"#;
    python_json(SCRIPT, &[&dir.join("out/seen").display().to_string()], &[])
}

pub fn assert_every_id_once(dir: &Path, n: i64) {
    let census = id_census(dir);
    assert_eq!(census["rows"], n, "{census}");
    assert_eq!(census["distinct"], n, "{census}");
    assert_eq!(census["min"], 0);
    assert_eq!(census["max"], n - 1);
}

fn stream_stops_cleanly_and_resumes(brokers: &str) {
    let topic = new_topic(brokers, "stream", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    produce(brokers, &topic, &records(0, 3000, 4));
    let worker = start_stream(d, brokers, "w1", &[]);
    wait_for_rows(d, 3000, Duration::from_secs(60));
    stop(worker, d, "w1");
    let out = std::fs::read_to_string(d.join("w1.out")).unwrap();
    assert!(out.contains("batch of"), "{out}");
    assert!(out.contains("stopped after"), "{out}");

    // Records produced while no worker runs are read by the next one,
    // which announces each version it commits, after the newest one before
    // it (its events topic had none of this feature set: it may never have
    // been announced).
    let before = versions(d);
    let events = new_topic(brokers, "events", 1);
    produce(brokers, &topic, &records(3000, 2000, 4));
    let to = format!("kafka://{events}");
    let worker = start_stream(
        d,
        brokers,
        "w2",
        &["--output", "json", "--events", &to, "-b", brokers],
    );
    wait_for_rows(d, 5000, Duration::from_secs(60));
    stop(worker, d, "w2");
    assert_every_id_once(d, 5000);
    let after = versions(d);
    let got = events_on(brokers, &events, after - before + 1);
    assert!(schema_errors(&got).iter().all(Vec::is_empty), "{got:#?}");
    let announced: Vec<u64> = got
        .iter()
        .map(|(_, e)| e["data"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(announced, (before as u64 - 1..after as u64).collect::<Vec<_>>());
    let rows: u64 = got[1..]
        .iter()
        .map(|(_, e)| e["data"]["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 2000);

    // The group sees the committed positions too, for lag monitors: 1250
    // records per partition.
    let sql = std::fs::read_to_string(d.join("seen.sql")).unwrap();
    let group = sql
        .split("'group.id' '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert_group_offsets(brokers, group, &topic, 4, 1250);
}

/// How many versions `out/seen` has.
fn versions(dir: &Path) -> usize {
    kiln(dir, &["versions", "out/seen", "--output", "json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .len()
}

/// Wait until the worker's log (KILN_LOG=info) has a line with `text`.
pub fn wait_for_log(dir: &Path, log: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(dir.join(format!("{log}.err")))
        .unwrap_or_default()
        .contains(text)
    {
        assert!(Instant::now() < deadline, "no '{text}' in {log}.err");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ids_in(dir: &Path, name: &str) -> Vec<i64> {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
print(json.dumps(sorted(DeltaTable(sys.argv[1]).to_pyarrow_table(columns=["id"]).column("id").to_pylist())))
"#;
    let ids = python_json(SCRIPT, &[&dir.join("out").join(name).display().to_string()], &[]);
    ids.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// `'start' 'latest'`, then an INSERT added while the worker was down: the
/// feature set that has positions resumes from them, the new one starts at
/// the end.
fn a_feature_set_added_later_starts_latest_alone(brokers: &str) {
    let topic = new_topic(brokers, "latest", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sql = pipeline(&topic, Membership::Dynamic).replace("'group.id'", "'start' 'latest', 'group.id'");
    write(&d.join("seen.sql"), &sql);
    produce(brokers, &topic, &records(0, 100, 2));
    let worker = start_stream(d, brokers, "w1", &[]);
    wait_for_log(d, "w1", "partitions assigned");
    produce(brokers, &topic, &records(100, 100, 2));
    wait_for_rows(d, 100, Duration::from_secs(60));
    stop(worker, d, "w1");

    // Records arrive while no worker runs, and the pipeline gains an INSERT.
    produce(brokers, &topic, &records(200, 100, 2));
    write(
        &d.join("seen.sql"),
        &format!(
            "{sql}CREATE EXTERNAL TABLE later STORED AS FEATURES LOCATION 'out/later' OPTIONS ('key' 'id', 'mode' 'append');
             INSERT INTO later SELECT id FROM clicks;
"
        ),
    );
    let worker = start_stream(d, brokers, "w2", &[]);
    wait_for_rows(d, 200, Duration::from_secs(60));
    wait_for_log(d, "w2", "partitions assigned");
    produce(brokers, &topic, &records(300, 50, 2));
    wait_for_rows(d, 250, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_delta_log(&d.join("out/later")) || ids_in(d, "later").len() < 50 {
        assert!(Instant::now() < deadline, "the new feature set got no rows");
        std::thread::sleep(Duration::from_millis(300));
    }
    stop(worker, d, "w2");
    assert_eq!(ids_in(d, "seen"), (100..350).collect::<Vec<_>>());
    assert_eq!(ids_in(d, "later"), (300..350).collect::<Vec<_>>());
}

fn exactly_once_through_kills(brokers: &str, membership: Membership) {
    const N: i64 = 200_000;
    let topic = new_topic(brokers, "kills", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, membership));
    produce(brokers, &topic, &records(0, N, 4));
    // Pseudo-random but reproducible kill moments, 0.3 to 2.5 s into each life.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..10 {
        let worker = start_stream(d, brokers, &format!("k{round}"), &["--batch-rows", "2000"]);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 2200));
        signal(&worker, "-KILL");
        let mut worker = worker;
        worker.wait().unwrap();
    }
    eprintln!(
        "{} of {N} rows committed before the last start",
        committed_rows(d)
    );
    let worker = start_stream(d, brokers, "last", &["--batch-rows", "2000"]);
    wait_for_rows(d, N as u64, Duration::from_secs(300));
    stop(worker, d, "last");
    assert_every_id_once(d, N);
}

fn exactly_once_through_a_rebalance(brokers: &str) {
    const N: i64 = 60_000;
    let topic = new_topic(brokers, "rebalance", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    produce(brokers, &topic, &records(0, N / 2, 4));
    let a = start_stream(d, brokers, "a", &["--batch-rows", "2000"]);
    let b = start_stream(d, brokers, "b", &["--batch-rows", "2000"]);
    produce(brokers, &topic, &records(N / 2, N / 4, 4));
    wait_for_rows(d, (N / 4) as u64, Duration::from_secs(120));
    // One worker leaves halfway; its partitions move to the other.
    stop(a, d, "a");
    produce(brokers, &topic, &records(N / 2 + N / 4, N / 4, 4));
    wait_for_rows(d, N as u64, Duration::from_secs(180));
    stop(b, d, "b");
    assert_every_id_once(d, N);
}

/// Two workers started together on a feature set that does not exist yet:
/// both plan against no table, and only one may commit each record.
fn two_workers_start_together_on_a_new_feature_set(brokers: &str) {
    const N: i64 = 40_000;
    let topic = new_topic(brokers, "together", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    produce(brokers, &topic, &records(0, N, 4));
    let a = start_stream(d, brokers, "a", &["--batch-rows", "2000"]);
    let b = start_stream(d, brokers, "b", &["--batch-rows", "2000"]);
    wait_for_rows(d, N as u64, Duration::from_secs(120));
    stop(a, d, "a");
    stop(b, d, "b");
    assert_every_id_once(d, N);
}

#[test]
fn noida_two_workers_start_together_on_a_new_feature_set() {
    two_workers_start_together_on_a_new_feature_set(&broker());
}

#[test]
fn tansu_two_workers_start_together_on_a_new_feature_set() {
    two_workers_start_together_on_a_new_feature_set(&tansu());
}

#[test]
fn noida_stream_stops_cleanly_and_resumes() {
    stream_stops_cleanly_and_resumes(&broker());
}

#[test]
fn noida_stream_is_exactly_once_through_kills() {
    exactly_once_through_kills(&broker(), Membership::Static);
}

#[test]
fn noida_stream_is_exactly_once_through_a_rebalance() {
    exactly_once_through_a_rebalance(&broker());
}

#[test]
fn noida_a_feature_set_added_later_starts_latest_alone() {
    a_feature_set_added_later_starts_latest_alone(&broker());
}

#[test]
fn tansu_stream_stops_cleanly_and_resumes() {
    stream_stops_cleanly_and_resumes(&tansu());
}

#[test]
fn tansu_stream_is_exactly_once_through_kills() {
    exactly_once_through_kills(&tansu(), Membership::Dynamic);
}

#[test]
fn tansu_stream_is_exactly_once_through_a_rebalance() {
    exactly_once_through_a_rebalance(&tansu());
}

/// A noida-db broker of the test's own, to restart under a running worker.
struct OwnBroker {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

impl OwnBroker {
    fn start(port: u16, data: tempfile::TempDir) -> Self {
        let child = Self::spawn(port, data.path());
        OwnBroker { child, port, data }
    }

    fn spawn(port: u16, data: &Path) -> Child {
        let bin = std::env::var("KILN_TEST_NOIDA_BIN")
            .expect("KILN_TEST_NOIDA_BIN is not set: run the suite through scripts/test.sh");
        let child = Command::new(bin)
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
                "--data-dir",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("noida-db starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "noida-db did not open its port");
            std::thread::sleep(Duration::from_millis(100));
        }
        child
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A clean stop (it writes its data out), then the same broker again.
    fn restart(&mut self, down_for: Duration) {
        signal(&self.child, "-TERM");
        self.child.wait().unwrap();
        std::thread::sleep(down_for);
        self.child = Self::spawn(self.port, self.data.path());
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stream_rides_out_a_broker_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = OwnBroker::start(port, tempfile::tempdir().unwrap());
    let brokers = broker.address();
    let topic = new_topic(&brokers, "restart", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    produce(&brokers, &topic, &records(0, 1000, 2));
    let worker = start_stream(d, &brokers, "w", &[]);
    wait_for_rows(d, 1000, Duration::from_secs(60));

    broker.restart(Duration::from_secs(3));
    produce(&brokers, &topic, &records(1000, 1000, 2));
    wait_for_rows(d, 2000, Duration::from_secs(120));
    stop(worker, d, "w");
    assert_every_id_once(d, 2000);
    drop(broker);
}
