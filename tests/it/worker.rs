//! `kiln worker` and `kiln trigger` against real brokers: every trigger
//! commits once (two workers, repeated ids, kills, a crash between the
//! Delta commit and the offset commit), runs of one pipeline never overlap,
//! and bad triggers are reported while the worker goes on.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::events::{assert_cloud_event, events_on, schema_errors};
use crate::kafka::{Record, assert_group_offsets, broker, new_topic, produce};
use crate::stream::{signal, stop, tansu};

/// A pipeline over the CSV files in `landing/` into `out/<name>`, with the
/// trigger's `${DATE}` in every row.
fn daily(name: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/{name}' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO fs SELECT id, user_id, value, '${{DATE}}' AS day FROM landed;\n"
    )
}

/// One pipeline into two feature sets, `out/first` then `out/second`.
const PAIR: &str = "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
     STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true');\n\
     CREATE EXTERNAL TABLE first STORED AS FEATURES LOCATION 'out/first' OPTIONS ('key' 'id', 'mode' 'append');\n\
     CREATE EXTERNAL TABLE second STORED AS FEATURES LOCATION 'out/second' OPTIONS ('key' 'id', 'mode' 'append');\n\
     INSERT INTO first SELECT id, '${DATE}' AS day FROM landed;\n\
     INSERT INTO second SELECT id, user_id, '${DATE}' AS day FROM landed;\n";

/// A folder with landed data and the pipelines `names` (each `daily`).
fn workspace(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,user_id,value\n");
    for id in 0..200 {
        csv.push_str(&format!("{id},{},{}.5\n", id % 7, id));
    }
    write(&dir.path().join("landing/a.csv"), &csv);
    for name in names {
        write(&dir.path().join(format!("pipelines/{name}.sql")), &daily(name));
    }
    dir
}

/// One test's broker, trigger topic and consumer group.
struct Triggers {
    brokers: String,
    topic: String,
    group: String,
}

impl Triggers {
    fn new(brokers: &str, partitions: i32) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: new_topic(brokers, "triggers", partitions),
            group: format!("kiln-test-workers-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// `kiln worker` in the background, JSON reports in `<name>.out`, its
    /// log in `<name>.err`: a static member of the group named `name`, so
    /// that a restarted worker takes its killed predecessor's place at once
    /// (noida-db never expires a member whose session timed out).
    fn start(&self, dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        let member = format!("group.instance.id={name}");
        self.start_member(dir, name, &[&["-X", member.as_str()][..], extra].concat(), env)
    }

    /// `kiln worker` as a new member of the group each time it starts.
    fn start_member(&self, dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Running {
        // Appended to: a restarted worker's reports follow its predecessor's.
        let append = |path: std::path::PathBuf| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
        };
        let out = append(dir.join(format!("{name}.out")));
        let err = append(dir.join(format!("{name}.err")));
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(dir)
            .args(["worker", "--triggers", &format!("kafka://{}", self.topic)])
            .args([
                "--pipelines",
                "pipelines",
                "--output",
                "json",
                "-b",
                &self.brokers,
            ])
            .args(["-X", &format!("group.id={}", self.group)])
            .args(["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"])
            // A join waits for the other members at most this long (noida-db
            // waits all of it when a member rejoins after a revocation).
            .args(["-X", "max.poll.interval.ms=15000", "--shutdown-timeout", "10s"])
            // noida-db answers a fetch with everything it has.
            .args(["-X", "receive.message.max.bytes=2147483647"])
            .args(extra)
            .envs(env.iter().copied())
            .env("KILN_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("kiln worker starts")
            .into()
    }

    /// `kiln trigger`; returns the id it printed.
    fn send(&self, dir: &Path, pipeline: &str, id: Option<&str>, date: &str) -> String {
        let set = format!("DATE={date}");
        let mut args = vec![
            "trigger",
            pipeline,
            "--set",
            &set,
            "--topic",
            &self.topic,
            "-b",
            &self.brokers,
        ];
        if let Some(id) = id {
            args.extend(["--id", id]);
        }
        let sent = kiln(dir, &args).ok().stdout.trim().to_string();
        assert!(!sent.is_empty());
        sent
    }
}

/// A running worker, killed when a test fails before it stopped it.
struct Running(Option<Child>);

impl From<Child> for Running {
    fn from(child: Child) -> Self {
        Self(Some(child))
    }
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }

    /// SIGTERM; it must exit 0 on its own.
    fn stop(mut self, dir: &Path, log: &str) {
        stop(self.0.take().expect("still running"), dir, log);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The trigger reports a worker printed so far.
fn reports(dir: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{name}.out")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("status").is_some())
        .collect()
}

/// Wait until the workers `names` have reported `n` triggers between them.
fn wait_for_reports(dir: &Path, names: &[&str], n: usize, limit: Duration) -> Vec<Value> {
    wait_for(dir, names, limit, &format!("{n} trigger reports"), |all| {
        all.len() >= n
    })
}

/// Wait until the reports of the workers `names` satisfy `done`.
fn wait_for(
    dir: &Path,
    names: &[&str],
    limit: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let all: Vec<Value> = names.iter().flat_map(|w| reports(dir, w)).collect();
        if done(&all) {
            return all;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = names
                .iter()
                .map(|w| std::fs::read_to_string(dir.join(format!("{w}.err"))).unwrap_or_default())
                .collect();
            panic!("no {what} after {limit:?}:\n{all:#?}\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Commits per trigger id over every feature set under `out/`, read from
/// the Delta logs' commit info directly.
fn commits_by_trigger(dir: &Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    let Ok(tables) = std::fs::read_dir(dir.join("out")) else {
        return counts;
    };
    for table in tables.flatten() {
        let Ok(log) = std::fs::read_dir(table.path().join("_delta_log")) else {
            continue;
        };
        for commit in log.flatten() {
            if commit.path().extension().is_none_or(|e| e != "json") {
                continue;
            }
            for line in std::fs::read_to_string(commit.path()).unwrap().lines() {
                let action: Value = serde_json::from_str(line).unwrap();
                if let Some(id) = action["commitInfo"]["kiln"]["trigger_id"].as_str() {
                    *counts.entry(id.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    counts
}

fn status_of<'a>(reports: &'a [Value], id: &str) -> Vec<&'a str> {
    reports
        .iter()
        .filter(|r| r["id"] == id)
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

/// Twenty triggers of four pipelines over two workers with two runs each
/// at once, the second joining while the first runs: each trigger commits
/// once, and no two runs of one pipeline overlap in time.
fn twenty_triggers_over_two_workers(brokers: &str) {
    let names = ["p0", "p1", "p2", "p3"];
    let dir = workspace(&names);
    let d = dir.path();
    let t = Triggers::new(brokers, 4);
    let a = t.start_member(d, "worker-a", &["--concurrency", "2"], &[]);
    for i in 0..10 {
        t.send(
            d,
            names[i % 4],
            Some(&format!("t-{i}")),
            &format!("2026-11-{:02}", i + 1),
        );
    }
    wait_for_reports(d, &["worker-a"], 2, Duration::from_secs(120));
    let b = t.start_member(d, "worker-b", &["--concurrency", "2"], &[]);
    for i in 10..20 {
        t.send(
            d,
            names[i % 4],
            Some(&format!("t-{i}")),
            &format!("2026-11-{:02}", i + 1),
        );
    }
    // A trigger whose partition moved before its offset was committed is
    // delivered again, and reported as already run: wait for every one to
    // have committed somewhere.
    let ids: Vec<String> = (0..20).map(|i| format!("t-{i}")).collect();
    let all = wait_for(
        d,
        &["worker-a", "worker-b"],
        Duration::from_secs(180),
        "commit of every trigger",
        |all| {
            ids.iter().all(|id| {
                all.iter()
                    .any(|r| r["id"] == id.as_str() && r["status"] == "committed")
            })
        },
    );
    a.stop(d, "worker-a");
    b.stop(d, "worker-b");

    let commits = commits_by_trigger(d);
    for id in &ids {
        assert_eq!(
            commits.get(id),
            Some(&1),
            "commits of {id}: {commits:?}\n{all:#?}"
        );
        let statuses = status_of(&all, id);
        let committed = statuses.iter().filter(|s| **s == "committed").count();
        let again = statuses.iter().filter(|s| **s == "already_run").count();
        assert_eq!(
            (committed, committed + again),
            (1, statuses.len()),
            "{id}: {statuses:?}"
        );
    }
    assert_eq!(commits.len(), 20, "{commits:?}");
    // Runs of one pipeline, on either worker, never overlap.
    for name in names {
        let mut runs: Vec<(String, String)> = all
            .iter()
            .filter(|r| r["pipeline"] == name && r["status"] == "committed")
            .map(|r| {
                (
                    r["started_at"].as_str().unwrap().into(),
                    r["ended_at"].as_str().unwrap().into(),
                )
            })
            .collect();
        runs.sort();
        for pair in runs.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "runs of {name} overlap: {pair:?}");
        }
    }
    // Each pipeline's feature set has all five of its triggers' rows.
    let read = read_delta(&d.join("out/p0").display().to_string(), None, None, &[]);
    assert_eq!(read["rows"], 5 * 200, "{read}");
}

#[test]
fn twenty_triggers_over_two_workers_each_commit_once_on_noida() {
    twenty_triggers_over_two_workers(&broker());
}

#[test]
fn twenty_triggers_over_two_workers_each_commit_once_on_tansu() {
    twenty_triggers_over_two_workers(&tansu());
}

#[test]
fn a_trigger_sent_twice_commits_once_and_bad_triggers_are_acknowledged() {
    let dir = workspace(&["daily"]);
    let d = dir.path();
    write(
        &d.join("pipelines/broken.sql"),
        &daily("broken").replace("'landing/'", "'nowhere/'"),
    );
    std::fs::create_dir_all(d.join("nowhere")).unwrap();
    let t = Triggers::new(&broker(), 1);
    let raw = |key: Option<&str>, value: &[u8]| -> Record {
        (0, key.map(|k| k.as_bytes().to_vec()), Some(value.to_vec()))
    };
    let id = t.send(d, "daily", None, "2026-11-28");
    t.send(d, "daily", Some(&id), "2026-11-28");
    produce(
        &t.brokers,
        &t.topic,
        &[
            raw(Some("daily"), b"run daily please"),
            raw(Some("daily"), br#"{"pipeline": "daily"}"#),
            raw(Some("nope"), br#"{"id": "unknown", "pipeline": "nope"}"#),
            raw(Some("daily"), br#"{"id": "no-date", "pipeline": "daily"}"#),
            raw(
                Some("other"),
                br#"{"id": "wrong-key", "pipeline": "daily", "set": {"DATE": "x"}}"#,
            ),
            raw(
                Some("broken"),
                br#"{"id": "fails", "pipeline": "broken", "set": {"DATE": "x"}}"#,
            ),
        ],
    );
    t.send(d, "daily", Some("after"), "2026-11-29");
    let events = new_topic(&t.brokers, "events", 1);
    // Credentials given both ways (unused on a PLAINTEXT listener) never
    // show in what the worker writes.
    let w = t.start(
        d,
        "worker",
        &[
            "--events",
            &format!("kafka://{events}"),
            "-X",
            "sasl.password=kiln-flag-secret-51d3",
        ],
        &[("KILN_KAFKA_SSL_KEY_PASSWORD", "kiln-env-secret-9a7e")],
    );
    let all = wait_for_reports(d, &["worker"], 9, Duration::from_secs(120));
    w.stop(d, "worker");
    for file in ["worker.out", "worker.err"] {
        let written = std::fs::read_to_string(d.join(file)).unwrap();
        assert!(
            !written.contains("kiln-flag-secret-51d3") && !written.contains("kiln-env-secret-9a7e"),
            "{file}"
        );
    }

    assert_eq!(status_of(&all, &id), ["committed", "already_run"], "{all:#?}");
    assert_eq!(status_of(&all, "after"), ["committed"], "{all:#?}");
    let commits = commits_by_trigger(d);
    assert_eq!(commits, BTreeMap::from([(id.clone(), 1), ("after".into(), 1)]));
    // Bad messages are reported on arrival, failed runs when they end.
    let mut failed: Vec<&Value> = all.iter().filter(|r| r["status"] == "failed").collect();
    failed.sort_by_key(|r| r["offset"].as_i64());
    assert_eq!(failed.len(), 6, "{all:#?}");
    let reason = |i: usize| failed[i]["reason"].as_str().unwrap();
    assert!(reason(0).starts_with("not JSON"), "{}", reason(0));
    assert!(
        reason(1).contains("\"id\" is a required property"),
        "{}",
        reason(1)
    );
    assert!(
        reason(2).contains("unknown pipeline 'nope'") && reason(2).contains("(found: broken, daily)"),
        "{}",
        reason(2)
    );
    assert!(reason(3).contains("variable 'DATE' is not set"), "{}", reason(3));
    assert!(reason(4).contains("message key"), "{}", reason(4));
    assert_eq!(failed[5]["id"], "fails");
    assert!(
        reason(5).contains("no input files found at 'nowhere/'"),
        "{}",
        reason(5)
    );
    // Every message is acknowledged: nothing is run again by the next worker.
    assert_group_offsets(&t.brokers, &t.group, &t.topic, 1, 9);
    let read = read_delta(&d.join("out/daily").display().to_string(), None, None, &[]);
    assert_eq!(read["rows"], 400, "two runs of 200 rows: {read}");

    // Two versions, the first announced again when its trigger came again
    // (the same event id: consumers de-duplicate), and six failures.
    let got = events_on(&t.brokers, &events, 9);
    assert!(
        !format!("{got:?}").contains("secret-"),
        "no credential in the events"
    );
    let errors = schema_errors(&got);
    assert!(errors.iter().all(Vec::is_empty), "{errors:?}\n{got:#?}");
    let versions: Vec<&Value> = got
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["type"] == "dev.kiln.featureset.version")
        .collect();
    let ids: Vec<(&str, &str)> = versions
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap(),
                e["data"]["trigger_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids.len(), 3, "{versions:#?}");
    assert!(ids[0].0.ends_with("/out/daily/@0") && ids[0] == ids[1], "{ids:?}");
    assert!(
        ids[2].0.ends_with("/out/daily/@1") && ids[2].1 == "after",
        "{ids:?}"
    );
    let failures: Vec<&Value> = got
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["type"] == "dev.kiln.run.failed")
        .collect();
    assert_eq!(failures.len(), 6, "{got:#?}");
    for f in &failures {
        assert_cloud_event(f, "dev.kiln.run.failed");
        let offset = f["data"]["message"]["offset"].as_i64().unwrap();
        assert!((2..=7).contains(&offset), "{f}");
    }
}

#[test]
fn a_worker_killed_between_two_commits_finishes_only_the_second() {
    let dir = workspace(&[]);
    let d = dir.path();
    write(&d.join("pipelines/pair.sql"), PAIR);
    let t = Triggers::new(&broker(), 1);
    t.send(d, "pair", Some("t-pair"), "2026-11-28");
    // The first feature set commits, then the run stops for a long while.
    let w = t.start(
        d,
        "worker",
        &[],
        &[("FAILPOINTS", "run-between-feature-sets=sleep(60000)")],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.join("out/first/_delta_log/00000000000000000000.json").exists() {
        assert!(Instant::now() < deadline, "the first feature set never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut w = w;
    signal(w.child(), "-KILL");
    w.child().wait().unwrap();
    assert!(!has_delta_log(&d.join("out/second")));
    assert!(
        reports(d, "worker").is_empty(),
        "the killed worker reported nothing"
    );

    let again = t.start(d, "worker", &[], &[]);
    let all = wait_for_reports(d, &["worker"], 1, Duration::from_secs(120));
    again.stop(d, "worker");
    assert_eq!(all[0]["status"], "committed", "{all:#?}");
    let outcomes = all[0]["run"]["feature_sets"].as_array().unwrap();
    let first = outcomes.iter().find(|o| o["feature_set"] == "first").unwrap();
    assert!(first["skipped"].as_str().unwrap().contains("already"), "{first}");
    assert_eq!(
        commits_by_trigger(d),
        BTreeMap::from([("t-pair".to_string(), 2)]),
        "one commit in each feature set"
    );
    for fs in ["first", "second"] {
        let read = read_delta(&d.join("out").join(fs).display().to_string(), None, None, &[]);
        assert_eq!(
            (read["version"].as_u64(), read["rows"].as_u64()),
            (Some(0), Some(200)),
            "{fs}: {read}"
        );
    }
}

#[test]
fn a_crash_between_the_delta_commit_and_the_offset_commit_does_not_run_again() {
    let dir = workspace(&["daily"]);
    let d = dir.path();
    let t = Triggers::new(&broker(), 1);
    t.send(d, "daily", Some("t-crash"), "2026-11-28");
    let mut crashing = t.start(
        d,
        "worker",
        &[],
        &[("FAILPOINTS", "worker-before-offset-commit=return")],
    );
    let status = crashing.child().wait().unwrap();
    assert_eq!(status.code(), Some(137), "the failpoint ends the worker");
    assert_eq!(
        commits_by_trigger(d),
        BTreeMap::from([("t-crash".to_string(), 1)])
    );

    let w = t.start(d, "worker", &[], &[]);
    let all = wait_for_reports(d, &["worker"], 2, Duration::from_secs(120));
    w.stop(d, "worker");
    // The crashed worker printed its report before the crash point.
    assert_eq!(
        status_of(&all, "t-crash"),
        ["committed", "already_run"],
        "{all:#?}"
    );
    assert_eq!(
        commits_by_trigger(d),
        BTreeMap::from([("t-crash".to_string(), 1)])
    );
    assert_group_offsets(&t.brokers, &t.group, &t.topic, 1, 1);
}

/// An S3 event notification of objects created in `bucket`, as S3 sends it.
fn notification(bucket: &str, keys: &[&str]) -> Vec<u8> {
    let records: Vec<Value> = keys
        .iter()
        .map(|key| {
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 40}}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
}

#[test]
fn s3_notifications_run_the_covering_pipelines_over_exactly_the_named_objects() {
    let endpoint = crate::s3::endpoint();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bucket = format!("kiln-notify-{}", uuid::Uuid::new_v4().simple());
    let csv = |name: &str, first: i64| {
        let path = d.join(name);
        let rows: String = (first..first + 10)
            .map(|id| format!("{id},{},{id}.5\n", id % 3))
            .collect();
        std::fs::write(&path, format!("id,user_id,value\n{rows}")).unwrap();
        path
    };
    let (a, b, c, x) = (
        csv("a.csv", 0),
        csv("b.csv", 100),
        csv("c.csv", 200),
        csv("x.csv", 300),
    );
    crate::s3::create_bucket_with(
        &endpoint,
        &bucket,
        &[
            ("landing/day=1/a.csv", &a),
            ("landing/day=1/b.csv", &b),
            ("landing/day=2/c d.csv", &c),
            ("elsewhere/x.csv", &x),
        ],
    );
    write(
        &d.join("pipelines/landed.sql"),
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION 's3://${BUCKET}/landing/' OPTIONS ('has_header' 'true', 'incremental' 'true');\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/landed' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO fs SELECT id, user_id, value FROM landed;\n",
    );
    // A pipeline that needs a trigger's variable is not one notifications run.
    write(&d.join("pipelines/daily.sql"), &daily("daily"));
    let t = Triggers::new(&broker(), 1);
    let first = notification(&bucket, &["landing/day%3D1/a.csv"]);
    let second = notification(&bucket, &["landing/day%3D2/c+d.csv", "elsewhere/x.csv"]);
    let message = |value: &[u8]| -> Record { (0, Some(b"landing".to_vec()), Some(value.to_vec())) };
    produce(
        &t.brokers,
        &t.topic,
        &[message(&first), message(&first), message(&second)],
    );
    let mut env: Vec<(&str, String)> = crate::s3::s3_env(&endpoint);
    env.push(("BUCKET", bucket.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let w = t.start(d, "worker", &[], &env);
    let all = wait_for_reports(d, &["worker"], 3, Duration::from_secs(120));
    w.stop(d, "worker");

    let statuses: Vec<&str> = all.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["committed", "nothing_to_commit", "committed"],
        "{all:#?}"
    );
    let a_url = format!("s3://{bucket}/landing/day=1/a.csv");
    let c_url = format!("s3://{bucket}/landing/day=2/c d.csv");
    assert_eq!(all[0]["objects"], serde_json::json!([a_url]));
    assert_eq!(
        all[2]["uncovered"],
        serde_json::json!([format!("s3://{bucket}/elsewhere/x.csv")])
    );
    assert_eq!(all[2]["runs"][0]["pipeline"], "landed");
    // Exactly the named objects, each once: b.csv was never notified.
    let read = read_delta(&d.join("out/landed").display().to_string(), None, None, &[]);
    assert_eq!(
        (read["version"].as_u64(), read["rows"].as_u64()),
        (Some(1), Some(20)),
        "{read}"
    );
    let inputs: Vec<&str> = read["commit"]["kiln"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, [c_url.as_str()]);
    assert!(!has_delta_log(&d.join("out/daily")));
}
