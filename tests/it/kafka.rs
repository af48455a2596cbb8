//! Kafka sources against a real broker (scripts/test.sh starts noida-db on
//! 127.0.0.1 and passes its address in KILN_TEST_KAFKA): bounded runs that
//! pick up exactly where the last one stopped, offsets kept in the feature
//! set's own commits, bad records in the dead letters.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use crate::common::*;

/// The broker every Kafka test talks to.
pub fn broker() -> String {
    std::env::var("KILN_TEST_KAFKA").expect(
        "KILN_TEST_KAFKA is not set: run the suite through scripts/test.sh, which starts a Kafka-protocol broker",
    )
}

/// A topic of its own for one test, with `partitions` partitions.
pub fn new_topic(brokers: &str, prefix: &str, partitions: i32) -> String {
    let topic = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
    topic
}

/// A record to produce: partition, key, value.
pub type Record = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// Produce `records` and wait until all are acknowledged.
pub fn produce(brokers: &str, topic: &str, records: &[Record]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    for (partition, key, value) in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(*partition);
        if let Some(k) = key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = value {
            record = record.payload(v.as_slice());
        }
        let mut pending = record;
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e.rdkafka_error_code(),
                            Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                        ),
                        "produce: {e}"
                    );
                    producer.poll(Duration::from_millis(50));
                    pending = back;
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("all records acknowledged");
}

/// JSON click events with ids `first..first+n`, spread over `partitions`.
fn clicks(first: i64, n: i64, partitions: i32) -> Vec<Record> {
    (first..first + n)
        .map(|id| {
            let value = format!(
                r#"{{"id": {id}, "user_id": {}, "item": "i{}", "dwell_ms": {}.5}}"#,
                id % 13,
                id % 29,
                id % 1000
            );
            (
                (id % partitions as i64) as i32,
                Some(format!("u{}", id % 13).into_bytes()),
                Some(value.into_bytes()),
            )
        })
        .collect()
}

/// Reads a dead-letter table with Python's deltalake, sorted by offset:
/// column name to values (bytes as latin-1 text).
pub const DEAD: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1]).to_pyarrow_table().sort_by([("partition", "ascending"), ("offset", "ascending")])
print(json.dumps({c: [v if not isinstance(v, bytes) else v.decode("latin-1") for v in t.column(c).to_pylist()]
                  for c in ["offset", "error", "key", "value", "topic", "partition"]}, default=str))
"#;

/// noida-db ignores fetch size limits and answers a fetch with everything
/// from the asked offset on; librdkafka then needs room for that response.
pub const NOIDA_FETCH: &str = "'receive.message.max.bytes' '2147483647'";

fn pipeline(topic: &str, extra_options: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, user_id BIGINT NOT NULL, item VARCHAR, dwell_ms DOUBLE)\n\
         STORED AS JSON LOCATION 'kafka://{topic}'\n\
         OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH}{extra_options});\n\
         CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION 'out/seen' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO seen SELECT id, user_id, item, dwell_ms * 2 AS dwell2, _partition AS part, _offset AS kafka_offset, \
         CAST(_key AS VARCHAR) AS k, _topic AS topic FROM clicks;\n"
    )
}

/// One test's topic and working folder.
pub struct Case {
    pub brokers: String,
    pub topic: String,
    pub dir: tempfile::TempDir,
}

impl Case {
    pub fn new(prefix: &str, partitions: i32) -> Self {
        let brokers = broker();
        let topic = new_topic(&brokers, prefix, partitions);
        Case {
            brokers,
            topic,
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// `kiln run FILE --output json` with `${KAFKA}` set, which must succeed.
pub fn run_json(dir: &std::path::Path, file: &str, brokers: &str) -> Value {
    kiln_env(dir, &["run", file, "--output", "json"], &[("KAFKA", brokers)])
        .ok()
        .json()
}

/// The sorted ids of the feature set `out/NAME`.
pub fn ids_of(dir: &std::path::Path, name: &str) -> Vec<i64> {
    let read = read_ids(&dir.join("out").join(name).display().to_string(), &[]);
    read["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

/// Every `id` in the feature set, its row count, and the recorded position of each partition.
fn read_ids(location: &str, app_ids: &[String]) -> Value {
    const SCRIPT: &str = r#"
import json, sys
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
data = t.to_pyarrow_table()
ids = sorted(data.column("id").to_pylist())
out = {"version": t.version(), "ids": ids, "rows": data.num_rows,
       "positions": [t.transaction_version(a) for a in sys.argv[2:]]}
if "k" in data.column_names:
    out["keys_ok"] = all(k == "u%d" % u for k, u in zip(data.column("k").to_pylist(), data.column("user_id").to_pylist()))
print(json.dumps(out))
"#;
    let mut args = vec![location];
    args.extend(app_ids.iter().map(String::as_str));
    python_json(SCRIPT, &args, &[])
}

fn app_ids(pipeline: &str, topic: &str, partitions: i32) -> Vec<String> {
    (0..partitions)
        .map(|p| format!("kiln/{pipeline}/kafka/{topic}/{p}"))
        .collect()
}

#[test]
fn bounded_runs_pick_up_exactly_where_the_last_stopped() {
    let case = Case::new("bounded", 4);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(&d.join("seen.sql"), &pipeline(topic, ""));
    let env = [("KAFKA", brokers)];
    produce(brokers, topic, &clicks(0, 1000, 4));

    let first = run_json(d, "seen.sql", brokers);
    assert_eq!(first["feature_sets"][0]["version"], 0, "{first}");
    assert_eq!(first["feature_sets"][0]["rows"], 1000);
    assert_eq!(first["kafka"]["records"], 1000);

    // Nothing new: nothing committed, and it says so.
    let idle = kiln_env(d, &["run", "seen.sql"], &env).ok();
    assert!(
        idle.stdout.contains("unchanged: no new records"),
        "{}",
        idle.stdout
    );

    produce(brokers, topic, &clicks(1000, 500, 4));
    let third = run_json(d, "seen.sql", brokers);
    assert_eq!(third["feature_sets"][0]["version"], 1, "{third}");
    assert_eq!(third["feature_sets"][0]["rows"], 500);

    let ids = app_ids("seen", topic, 4);
    let read = read_ids(&d.join("out/seen").display().to_string(), &ids);
    assert_eq!(read["version"], 1);
    let got: Vec<i64> = read["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..1500).collect::<Vec<_>>(), "every id exactly once");
    assert_eq!(read["keys_ok"], true, "the record key is the _key column");
    // Each partition's position is the next offset: 1500 records over 4 partitions.
    let positions: Vec<i64> = read["positions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(positions, vec![375, 375, 375, 375]);

    // The lineage names the offset ranges the second version read.
    let lineage = read_delta(&d.join("out/seen").display().to_string(), None, None, &[]);
    let ranges = lineage["commit"]["kiln"]["kafka"].as_array().unwrap().clone();
    assert_eq!(ranges.len(), 4);
    assert!(
        ranges.iter().all(|r| r["from"] == 250 && r["to"] == 375),
        "{ranges:?}"
    );

    // The consumer group sees the progress too (for lag monitors).
    assert_group_offsets(brokers, "kiln.seen", topic, 4, 375);
}

/// Every partition of `topic` shows `offset` as `group`'s committed offset.
pub fn assert_group_offsets(brokers: &str, group: &str, topic: &str, partitions: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    assert_eq!(committed.count(), partitions as usize);
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            rdkafka::Offset::Offset(offset),
            "group offset of partition {}",
            e.partition()
        );
    }
}

#[test]
fn start_latest_reads_only_records_after_the_first_run() {
    let case = Case::new("latest", 2);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(&d.join("seen.sql"), &pipeline(topic, ", 'start' 'latest'"));
    let env = [("KAFKA", brokers)];
    produce(brokers, topic, &clicks(0, 100, 2));
    // The first run records where "latest" was, with no rows.
    let first = run_json(d, "seen.sql", brokers);
    assert_eq!(first["feature_sets"][0]["rows"], 0, "{first}");
    produce(brokers, topic, &clicks(100, 50, 2));
    kiln_env(d, &["run", "seen.sql"], &env).ok();
    let got = ids_of(d, "seen");
    assert_eq!(got, (100..150).collect::<Vec<_>>());
}

#[test]
fn bad_records_go_to_the_dead_letters_and_good_ones_on() {
    let case = Case::new("dead", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(
        &d.join("seen.sql"),
        &pipeline(topic, ", 'max.record.bytes' '2000'"),
    );
    let env = [("KAFKA", brokers)];
    let good =
        |id: i64| Some(format!(r#"{{"id": {id}, "user_id": 1, "item": "x", "dwell_ms": 1.0}}"#).into_bytes());
    let bad: Vec<(&str, Option<Vec<u8>>)> = vec![
        (
            "truncated JSON",
            Some(br#"{"id": 100, "user_id": 1, "it"#.to_vec()),
        ),
        (
            "wrong type",
            Some(br#"{"id": "one hundred", "user_id": 1}"#.to_vec()),
        ),
        (
            "null in NOT NULL",
            Some(br#"{"id": null, "user_id": 1}"#.to_vec()),
        ),
        ("missing NOT NULL", Some(br#"{"user_id": 1}"#.to_vec())),
        (
            "invalid UTF-8",
            Some(b"{\"id\": 7, \"user_id\": 1, \"item\": \"\xff\xfe\"}".to_vec()),
        ),
        (
            "oversized",
            Some(format!(r#"{{"id": 8, "user_id": 1, "item": "{}"}}"#, "x".repeat(5000)).into_bytes()),
        ),
        ("empty message", Some(Vec::new())),
        ("tombstone", None),
        ("not an object", Some(b"[1, 2, 3]".to_vec())),
    ];
    let mut records = Vec::new();
    let mut bad_offsets = Vec::new();
    let mut offset = 0;
    for (i, (_, value)) in bad.iter().enumerate() {
        for id in 0..10 {
            records.push((0, None, good(i as i64 * 10 + id)));
            offset += 1;
        }
        records.push((0, Some(b"bad".to_vec()), value.clone()));
        bad_offsets.push(offset);
        offset += 1;
    }
    produce(brokers, topic, &records);

    let run = run_json(d, "seen.sql", brokers);
    assert_eq!(run["kafka"]["bad_records"], bad.len(), "{run}");
    assert_eq!(run["feature_sets"][0]["dead_letters"], bad.len());
    let got = ids_of(d, "seen");
    assert_eq!(
        got,
        (0..bad.len() as i64 * 10).collect::<Vec<_>>(),
        "every good record is a row"
    );

    let dead = python_json(
        DEAD,
        &[&d.join("out/seen/_dead_letters").display().to_string()],
        &[],
    );
    let offsets: Vec<i64> = dead["offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(offsets, bad_offsets);
    for (i, (what, value)) in bad.iter().enumerate() {
        let error = dead["error"][i].as_str().unwrap();
        assert!(!error.is_empty(), "{what}: no reason");
        assert_eq!(dead["key"][i], "bad", "{what}: key kept");
        assert_eq!(dead["topic"][i], topic);
        match value {
            Some(v) => assert_eq!(
                dead["value"][i].as_str().unwrap(),
                v.iter().map(|&b| b as char).collect::<String>(),
                "{what}: value kept byte for byte"
            ),
            None => assert!(dead["value"][i].is_null(), "{what}: a tombstone has no value"),
        }
    }
    assert!(dead["error"][5].as_str().unwrap().contains("max.record.bytes"));
    assert!(dead["error"][6].as_str().unwrap().contains("empty message"));

    // A second run with nothing new writes no dead letters twice.
    kiln_env(d, &["run", "seen.sql"], &env).ok();
    let again = python_json(
        DEAD,
        &[&d.join("out/seen/_dead_letters").display().to_string()],
        &[],
    );
    assert_eq!(again["offset"].as_array().unwrap().len(), bad.len());
}

#[test]
fn bad_records_can_go_to_a_dead_letter_topic() {
    let case = Case::new("dlq-src", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let dead_topic = new_topic(brokers, "dlq", 1);
    write(
        &d.join("seen.sql"),
        &pipeline(topic, &format!(", 'dead_letter.topic' '{dead_topic}'")),
    );
    let mut records = clicks(0, 20, 1);
    records.insert(5, (0, Some(b"k1".to_vec()), Some(b"{oops".to_vec())));
    records.insert(12, (0, None, Some(br#"{"id": "twelve", "user_id": 1}"#.to_vec())));
    produce(brokers, topic, &records);
    let run = run_json(d, "seen.sql", brokers);
    assert_eq!(run["kafka"]["bad_records"], 2, "{run}");
    assert_eq!(run["feature_sets"][0]["rows"], 20);
    assert!(
        !has_delta_log(&d.join("out/seen/_dead_letters")),
        "the topic replaces the table"
    );

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("receive.message.max.bytes", "2147483647")
        .set("group.id", "test-reader")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&dead_topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            use rdkafka::message::{Headers, Message};
            let headers: std::collections::HashMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0.as_deref(), Some(&b"k1"[..]));
    assert_eq!(got[0].1.as_deref(), Some(&b"{oops"[..]));
    assert_eq!(got[0].2["kiln.offset"], "5");
    assert_eq!(got[0].2["kiln.topic"], topic);
    assert!(!got[0].2["kiln.error"].is_empty());
    assert_eq!(got[1].2["kiln.offset"], "12");
    assert_eq!(got[1].2["kiln.pipeline"], "seen");
}

#[test]
fn too_many_bad_records_fail_the_run_before_anything_commits() {
    let case = Case::new("limit", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(
        &d.join("seen.sql"),
        &pipeline(topic, ", 'max.bad.records' '0.01'"),
    );
    let env = [("KAFKA", brokers)];
    let mut records = clicks(0, 100, 1);
    records.push((0, None, Some(b"{not json".to_vec())));
    records.push((0, None, Some(b"{\"id\": \"x\"}".to_vec())));
    produce(brokers, topic, &records);
    let failed = kiln_env(d, &["run", "seen.sql"], &env).failed();
    assert!(
        failed.stderr.contains("max.bad.records") && failed.stderr.contains("nothing was committed"),
        "{}",
        failed.stderr
    );
    assert!(!has_delta_log(&d.join("out/seen")));
    assert!(!has_delta_log(&d.join("out/seen/_dead_letters")));
}

#[test]
fn a_feature_set_added_later_catches_up_without_repeating_the_other() {
    let case = Case::new("catchup", 2);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let env = [("KAFKA", brokers)];
    let one = pipeline(topic, "");
    write(&d.join("p.sql"), &one);
    produce(brokers, topic, &clicks(0, 200, 2));
    kiln_env(d, &["run", "p.sql"], &env).ok();
    produce(brokers, topic, &clicks(200, 100, 2));
    // The same pipeline now also writes per-user counts.
    let two = format!(
        "{one}CREATE EXTERNAL TABLE per_user STORED AS FEATURES LOCATION 'out/per_user' OPTIONS ('key' 'user_id', 'mode' 'append');\n\
         INSERT INTO per_user SELECT user_id, count(*) AS clicks, min(id) AS first_id, max(id) AS last_id FROM clicks GROUP BY user_id;\n"
    );
    write(&d.join("p.sql"), &two);
    let run = run_json(d, "p.sql", brokers);
    let got = ids_of(d, "seen");
    assert_eq!(got, (0..300).collect::<Vec<_>>(), "{run}");
    const COUNT: &str = r#"
import json, sys
import pyarrow.compute as pc
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1]).to_pyarrow_table()
print(json.dumps({"clicks": pc.sum(t.column("clicks")).as_py()}))
"#;
    let per_user = python_json(COUNT, &[&d.join("out/per_user").display().to_string()], &[]);
    assert_eq!(
        per_user["clicks"], 300,
        "the new feature set read every record once"
    );
}

#[test]
fn kafka_declarations_are_checked_without_a_broker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Mistakes found while reading the file...
    let parsed = "CREATE EXTERNAL TABLE b (id BIGINT) STORED AS PARQUET LOCATION 'kafka://t2';\n\
               CREATE EXTERNAL TABLE e (id BIGINT) STORED AS JSON LOCATION 'kafka://t4' OPTIONS ('start' 'middle');\n\
               CREATE EXTERNAL TABLE f (id BIGINT) STORED AS JSON LOCATION 'kafka://bad topic';\n";
    write(&d.join("k.sql"), parsed);
    // ... and while planning it.
    let planned = "CREATE EXTERNAL TABLE a (id BIGINT) STORED AS JSON LOCATION 'kafka://t1'\n\
               OPTIONS ('bootstrap.servers' '127.0.0.1:1', 'no.such.property' 'x');\n\
               CREATE EXTERNAL TABLE c STORED AS JSON LOCATION 'kafka://t3';\n\
               CREATE EXTERNAL TABLE g (id BIGINT, _offset BIGINT) STORED AS CSV LOCATION 'kafka://t5';\n\
               CREATE EXTERNAL TABLE out STORED AS FEATURES LOCATION 'out/x' OPTIONS ('key' 'id');\n\
               INSERT INTO out SELECT id FROM g;\n";
    write(&d.join("p.sql"), planned);
    let check = kiln(d, &["check", "k.sql", "p.sql"]).failed();
    let lines: Vec<&str> = check.stdout.lines().chain(check.stderr.lines()).collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in {lines:?}"))
            .to_string()
    };
    assert!(find("unsupported format 'PARQUET' for a Kafka source").starts_with("k.sql:1:"));
    assert!(find("'earliest' or 'latest'").starts_with("k.sql:2:"));
    assert!(find("is not a Kafka topic name").starts_with("k.sql:3:"));
    assert!(find("no.such.property").starts_with("p.sql:2:"), "{lines:?}");
    assert!(find("needs its columns declared").starts_with("p.sql:3:"));
    assert!(find("metadata columns").starts_with("p.sql:4:"));
}

/// Move the start of every partition of `topic` to `offset`, as retention
/// does (the DeleteRecords request).
fn delete_records_before(brokers: &str, topic: &str, partitions: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(offset))
            .unwrap();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let done = runtime
        .block_on(admin.delete_records(
            &tpl,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("delete_records");
    for e in done.elements() {
        assert!(
            e.error().is_ok(),
            "delete_records {}: {:?}",
            e.partition(),
            e.error()
        );
    }
}

#[test]
fn two_first_runs_at_once_commit_every_record_once() {
    let case = Case::new("race", 4);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(&d.join("seen.sql"), &pipeline(topic, ""));
    produce(brokers, topic, &clicks(0, 50_000, 4));
    // And a bad record in each partition, for the dead letters.
    let bad: Vec<Record> = (0..4).map(|p| (p, None, Some(b"{not json".to_vec()))).collect();
    produce(brokers, topic, &bad);
    // Two CronJob pods of a new feature set, started together.
    let runs: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
                .current_dir(d)
                .args(["run", "seen.sql"])
                .env("KAFKA", brokers)
                .env("KILN_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let got = ids_of(d, "seen");
    assert_eq!(got.len(), 50_000, "every record once, not twice");
    assert_eq!(got, (0..50_000).collect::<Vec<_>>());
    let dead = python_json(
        DEAD,
        &[&d.join("out/seen/_dead_letters").display().to_string()],
        &[],
    );
    assert_eq!(
        dead["offset"].as_array().unwrap().len(),
        4,
        "each dead letter once: {dead}"
    );
}

#[test]
fn a_position_retention_deleted_fails_or_is_skipped_on_request() {
    let case = Case::new("retention", 2);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let env = [("KAFKA", brokers)];
    write(&d.join("seen.sql"), &pipeline(topic, ""));
    produce(brokers, topic, &clicks(0, 200, 2));
    run_json(d, "seen.sql", brokers);
    // Positions are at 100 in both partitions; retention deletes up to 150.
    produce(brokers, topic, &clicks(200, 200, 2));
    delete_records_before(brokers, topic, 2, 150);
    let lost = kiln_env(d, &["run", "seen.sql"], &env).failed();
    assert!(
        lost.stderr.contains(&format!("{topic}/0")) && lost.stderr.contains("100..150"),
        "names the partition and the lost range: {}",
        lost.stderr
    );
    assert_eq!(ids_of(d, "seen").len(), 200, "nothing committed");

    // With 'on_data_loss' 'skip' the run goes on from 150 and says what it lost.
    write(&d.join("seen.sql"), &pipeline(topic, ", 'on_data_loss' 'skip'"));
    let skipped = run_json(d, "seen.sql", brokers);
    assert_eq!(skipped["feature_sets"][0]["rows"], 100, "{skipped}");
    let read = read_delta(&d.join("out/seen").display().to_string(), None, None, &[]);
    let mut gaps: Vec<(i64, i64, i64)> = read["commit"]["kiln"]["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["partition"].as_i64().unwrap(),
                g["from"].as_i64().unwrap(),
                g["to"].as_i64().unwrap(),
            )
        })
        .collect();
    gaps.sort();
    assert_eq!(gaps, vec![(0, 100, 150), (1, 100, 150)]);
}

#[test]
fn a_recreated_topic_is_an_error_not_a_fresh_start() {
    let case = Case::new("recreated", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let env = [("KAFKA", brokers)];
    write(&d.join("seen.sql"), &pipeline(topic, ""));
    produce(brokers, topic, &clicks(0, 100, 1));
    run_json(d, "seen.sql", brokers);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for r in runtime
        .block_on(admin.delete_topics(&[topic], &AdminOptions::new()))
        .expect("delete_topics")
    {
        r.expect("topic deleted");
    }
    // The same name again, with fewer records than the feature set read.
    let recreated = (0..50).any(|_| {
        let made = runtime
            .block_on(admin.create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            ))
            .expect("create_topics");
        let ok = made.iter().all(|r| r.is_ok());
        if !ok {
            std::thread::sleep(Duration::from_millis(200));
        }
        ok
    });
    assert!(recreated, "the topic could be created again");
    produce(brokers, topic, &clicks(1000, 10, 1));
    let run = kiln_env(d, &["run", "seen.sql"], &env).failed();
    assert!(run.stderr.contains("created again"), "{}", run.stderr);
    assert_eq!(ids_of(d, "seen").len(), 100, "nothing committed");
}

#[test]
fn a_backfill_runs_in_capped_steps() {
    let case = Case::new("capped", 2);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let env = [("KAFKA", brokers)];
    write(&d.join("seen.sql"), &pipeline(topic, ""));
    produce(brokers, topic, &clicks(0, 1000, 2));
    let step = |extra: &[&str]| {
        let mut args = vec!["run", "seen.sql", "--output", "json"];
        args.extend(extra);
        kiln_env(d, &args, &env).ok().json()["feature_sets"][0]["rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(step(&["--max-records", "300"]), 300);
    assert_eq!(step(&["--max-records", "300"]), 300);
    assert_eq!(
        ids_of(d, "seen"),
        (0..600).collect::<Vec<_>>(),
        "150 a partition each time"
    );
    assert_eq!(step(&[]), 400);
    assert_eq!(ids_of(d, "seen"), (0..1000).collect::<Vec<_>>());
    let zero = kiln_env(d, &["run", "seen.sql", "--max-records", "0"], &env).failed();
    assert!(zero.stderr.contains("max-records"), "{}", zero.stderr);
}

#[test]
fn a_query_that_stops_reading_early_still_consumes_its_whole_range() {
    let case = Case::new("limit", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(
        &d.join("first.sql"),
        &format!(
            "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, user_id BIGINT NOT NULL, item VARCHAR, dwell_ms DOUBLE)\n\
             STORED AS JSON LOCATION 'kafka://{topic}'\n\
             OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH});\n\
             CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION 'out/seen' OPTIONS ('key' 'id', 'mode' 'append');\n\
             INSERT INTO seen SELECT id FROM clicks LIMIT 5;\n"
        ),
    );
    // Far more records than the query needs, and a bad one at the very end:
    // the query stops the fetch early, and the run still reads the rest.
    let mut records = clicks(0, 30_000, 1);
    records.push((0, Some(b"bad".to_vec()), Some(b"not json".to_vec())));
    produce(brokers, topic, &records);

    let run = run_json(d, "first.sql", brokers);
    assert_eq!(run["feature_sets"][0]["rows"], 5, "{run}");
    assert_eq!(run["kafka"]["records"], 30_001, "{run}");
    assert_eq!(run["kafka"]["bad_records"], 1, "{run}");
    assert_eq!(run["feature_sets"][0]["dead_letters"], 1, "{run}");
    assert_eq!(ids_of(d, "seen").len(), 5);

    // The whole range is consumed: the next run has nothing to read.
    let again = run_json(d, "first.sql", brokers);
    assert_eq!(again["feature_sets"][0]["rows"], 0, "{again}");
    assert!(again["feature_sets"][0]["skipped"].is_string(), "{again}");
}
