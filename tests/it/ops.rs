//! The operations endpoints and logs of the long-running commands, against
//! a real broker: `/readyz` once the group is joined, `/metrics` parsed by
//! Python's prometheus_client showing what was read and committed,
//! `/healthz`, JSON log lines carrying the run's span, and a stop on
//! SIGTERM within a pod's grace period.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::kafka::{Record, broker, new_topic, produce};
use crate::stream::{Membership, pipeline, records, signal, start_stream, stop, wait_for_rows};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port`: the status and the body, or None when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Wait until `path` answers 200; its body.
pub fn wait_for_200(port: u16, path: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last = None;
    while Instant::now() < deadline {
        last = http_get(port, path);
        if let Some((200, body)) = &last {
            return body.clone();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{path} did not answer 200 within {limit:?}; last answer: {last:?}");
}

/// The samples of a Prometheus text exposition, parsed by
/// prometheus_client: (name, labels, value).
pub fn parse_metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(python_bin())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    samples
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// Poll /metrics until `ready` holds for its samples; the last samples.
fn wait_for_metrics(
    port: u16,
    limit: Duration,
    ready: impl Fn(&[(String, BTreeMap<String, String>, f64)]) -> bool,
) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let deadline = Instant::now() + limit;
    loop {
        let text = wait_for_200(port, "/metrics", Duration::from_secs(10));
        let samples = parse_metrics(&text);
        if ready(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "metrics never got there:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn stream_serves_probes_metrics_and_json_logs() {
    let brokers = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let topic = new_topic(&brokers, "ops", 2);
    write(&d.join("seen.sql"), &pipeline(&topic, Membership::Dynamic));
    let mut batch: Vec<Record> = records(0, 300, 2);
    for i in 0..5 {
        batch.push((i % 2, None, Some(format!("not json {i}").into_bytes())));
    }
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let worker = start_stream(
        d,
        &brokers,
        "s",
        &[
            "--metrics-addr",
            &addr,
            "--log-format",
            "json",
            "--output",
            "json",
        ],
    );
    // Ready once it is in the group and a broker is up (librdkafka's first
    // statistics come after 5 s).
    wait_for_200(port, "/readyz", Duration::from_secs(60));
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    assert_eq!(http_get(port, "/nowhere").map(|(s, _)| s), Some(404));
    produce(&brokers, &topic, &batch);
    wait_for_rows(d, 300, Duration::from_secs(60));

    let labels = [("pipeline", "seen")];
    let set = [("pipeline", "seen"), ("feature_set", "seen")];
    let samples = wait_for_metrics(port, Duration::from_secs(30), |s| {
        sample(s, "kiln_records_read_total", &labels) == Some(305.0)
            && [0, 1].iter().all(|p| {
                sample(
                    s,
                    "kiln_consumer_lag",
                    &[("topic", topic.as_str()), ("partition", p.to_string().as_str())],
                ) == Some(0.0)
            })
    });
    let m = |name: &str, l: &[(&str, &str)]| sample(&samples, name, l);
    assert_eq!(
        m(
            "kiln_bad_records_total",
            &[("pipeline", "seen"), ("reason", "undecodable")]
        ),
        Some(5.0)
    );
    assert_eq!(m("kiln_rows_committed_total", &set), Some(300.0));
    let versions = kiln(d, &["versions", "out/seen", "--output", "json"]).ok().json();
    let last = versions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .max()
        .unwrap();
    assert_eq!(m("kiln_feature_set_version", &set), Some(last as f64));
    assert!(m("kiln_commits_total", &set).unwrap() >= 1.0);
    assert_eq!(m("kiln_failed_commits_total", &set), None);
    assert!(m("kiln_commit_duration_seconds_count", &set).unwrap() >= 1.0);
    assert!(m("kiln_batch_duration_seconds_count", &labels).unwrap() >= 1.0);
    assert!(m("kiln_event_to_commit_lag_seconds_count", &set).unwrap() >= 1.0);
    assert_eq!(m("kiln_running_pipelines", &labels), Some(1.0));
    assert!(m("kiln_memory_pool_reserved_bytes", &[]).is_some());
    assert!(m("kiln_spill_bytes", &[]).is_some());

    let took = stop(worker, d, "s");
    assert!(took < Duration::from_secs(10), "stopped {took:?} after SIGTERM");

    // Every log line is JSON; those of a batch carry its pipeline and run
    // id, one of the committed batches'.
    let runs: Vec<String> = std::fs::read_to_string(d.join("s.out"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["run_id"].as_str().map(String::from))
        .collect();
    assert!(!runs.is_empty());
    let log = std::fs::read_to_string(d.join("s.err")).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let dead: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "record sent to the dead letters")
        .collect();
    assert!(!dead.is_empty(), "{log}");
    for line in dead {
        assert_eq!(line["span"]["pipeline"], "seen", "{line}");
        let run = line["span"]["run_id"].as_str().unwrap_or_default();
        assert!(runs.iter().any(|r| r == run), "{line}");
    }
}

#[test]
fn worker_serves_probes_and_trigger_metrics() {
    let brokers = broker();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("landing/a.csv"), "id,value\n1,1.5\n2,2.5\n");
    write(
        &d.join("pipelines/daily.sql"),
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/daily' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO fs SELECT id, value, '${DATE}' AS day FROM landed;\n",
    );
    let topic = new_topic(&brokers, "ops-triggers", 1);
    let group = format!("kiln-ops-{}", uuid::Uuid::new_v4().simple());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let start = |log: &str| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(d)
            .args([
                "worker",
                "--triggers",
                &format!("kafka://{topic}"),
                "--pipelines",
                "pipelines",
            ])
            .args([
                "-b",
                &brokers,
                "-X",
                &format!("group.id={group}"),
                "--metrics-addr",
                &addr,
            ])
            .env("KILN_LOG", "info")
            .stdout(Stdio::from(
                std::fs::File::create(d.join(format!("{log}.out"))).unwrap(),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(d.join(format!("{log}.err"))).unwrap(),
            ))
            .spawn()
            .unwrap()
    };
    let worker = start("w");
    wait_for_200(port, "/readyz", Duration::from_secs(60));
    // A second process cannot take the port: it says so and stops.
    let clash = start("clash").wait_with_output().unwrap();
    assert!(!clash.status.success());
    let said = std::fs::read_to_string(d.join("clash.err")).unwrap();
    assert!(
        said.contains(&format!("--metrics-addr {addr}: cannot listen there")),
        "{said}"
    );

    kiln(
        d,
        &[
            "trigger",
            "daily",
            "--topic",
            &topic,
            "-b",
            &brokers,
            "--set",
            "DATE=2026-12-01",
            "--id",
            "t1",
        ],
    )
    .ok();
    let samples = wait_for_metrics(port, Duration::from_secs(60), |s| {
        sample(
            s,
            "kiln_triggers_total",
            &[("pipeline", "daily"), ("status", "committed")],
        ) == Some(1.0)
    });
    assert_eq!(
        sample(
            &samples,
            "kiln_rows_committed_total",
            &[("pipeline", "daily"), ("feature_set", "fs")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&samples, "kiln_running_pipelines", &[("pipeline", "daily")]),
        Some(0.0)
    );
    wait_for_metrics(port, Duration::from_secs(30), |s| {
        sample(
            s,
            "kiln_consumer_lag",
            &[("group", group.as_str()), ("topic", topic.as_str())],
        ) == Some(0.0)
    });
    assert_eq!(http_get(port, "/healthz").map(|(s, _)| s), Some(200));
    let took = stop(worker, d, "w");
    assert!(took < Duration::from_secs(10), "stopped {took:?} after SIGTERM");
}

#[test]
fn bounded_commands_stop_on_sigterm() {
    // `kiln wait` blocks until a version arrives; SIGTERM stops it at once
    // (as PID 1 in a container, nothing else would).
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(dir.path())
        .args(["wait", "out/none", "--after-version", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, "-TERM");
    let asked = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(out.status.code(), Some(143));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped by SIGTERM"));
}
