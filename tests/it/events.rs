//! `--events`: CloudEvents for every commit and every failed run or
//! trigger, read back from the events topic and checked against the
//! published schema by an independent validator (Python's jsonschema).

use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::Value;

use crate::common::*;
use crate::kafka::{broker, new_topic};

/// Every event on `topic` (one partition), waiting until there are `n`.
pub fn events_on(brokers: &str, topic: &str, n: usize) -> Vec<(String, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("kiln-test-events-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .set("receive.message.max.bytes", "2147483647")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut events = Vec::new();
    while events.len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} events on {topic}: {events:#?}",
            events.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.unwrap();
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
            events.push((key, value));
        }
    }
    // Nothing more than expected.
    if let Some(extra) = consumer.poll(Duration::from_secs(2)) {
        panic!(
            "an event more than {n}: {:?}",
            extra.unwrap().payload_view::<str>()
        );
    }
    events
}

/// Each event's `data` checked against schemas/event-data.schema.json by
/// Python's jsonschema: the errors per event (none when it is valid).
pub fn schema_errors(events: &[(String, Value)]) -> Vec<Vec<String>> {
    const SCRIPT: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema)
events = json.loads(sys.argv[2])
print(json.dumps([[e.message for e in v.iter_errors(ev["data"])] for ev in events]))
"#;
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/event-data.schema.json");
    let values: Vec<&Value> = events.iter().map(|(_, v)| v).collect();
    let errors = python_json(
        SCRIPT,
        &[
            &schema.display().to_string(),
            &serde_json::to_string(&values).unwrap(),
        ],
        &[],
    );
    serde_json::from_value(errors).unwrap()
}

/// The CloudEvents 1.0 attributes every kiln event carries.
pub fn assert_cloud_event(event: &Value, kind: &str) {
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["type"], kind, "{event}");
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    for attribute in ["id", "source", "time", "subject"] {
        assert!(
            event[attribute].as_str().is_some_and(|s| !s.is_empty()),
            "{attribute}: {event}"
        );
    }
    assert!(
        chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).is_ok(),
        "{event}"
    );
}

#[test]
fn a_run_announces_each_version_and_its_failure() {
    let brokers = broker();
    let events = new_topic(&brokers, "events", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        &d.join("landing/a.csv"),
        "id,user_id,value\n1,1,0.5\n2,1,1.5\n3,2,2.5\n",
    );
    write(
        &d.join("p.sql"),
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION '${INPUT:-landing/}' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs' OPTIONS ('key' 'id', 'mode' 'overwrite');\n\
         INSERT INTO fs SELECT id, user_id, value FROM landed;\n",
    );
    let topic = format!("kafka://{events}");
    let args = ["run", "p.sql", "--events", topic.as_str(), "-b", brokers.as_str()];
    kiln(d, &args).ok();
    kiln(d, &[&args[..], &["--trigger-id", "t-7"]].concat()).ok();
    std::fs::create_dir_all(d.join("empty")).unwrap();
    kiln(d, &[&args[..], &["--set", "INPUT=empty/"]].concat()).failed();

    let got = events_on(&brokers, &events, 3);
    assert!(
        schema_errors(&got).iter().all(Vec::is_empty),
        "{:?}\n{got:#?}",
        schema_errors(&got)
    );
    let url = format!(
        "{}/",
        url::Url::from_directory_path(d.join("out/fs").canonicalize().unwrap())
            .unwrap()
            .as_str()
            .trim_end_matches('/')
    );
    for (i, (key, event)) in got[..2].iter().enumerate() {
        assert_cloud_event(event, "dev.kiln.featureset.version");
        assert_eq!(key, &url, "keyed by the feature set's URL");
        assert_eq!(event["subject"], url.as_str());
        assert_eq!(event["id"], format!("{url}@{i}"));
        let data = &event["data"];
        assert_eq!(
            (data["version"].as_u64(), data["rows"].as_u64()),
            (Some(i as u64), Some(3)),
            "{data}"
        );
        assert_eq!(data["pipeline"], "p");
        assert_eq!(data["mode"], "overwrite");
        assert_eq!(data["statistics"][0]["name"], "id");
        assert_eq!(data["statistics"][0]["max"], "3");
    }
    assert_eq!(got[0].1["data"]["trigger_id"], Value::Null);
    assert_eq!(got[1].1["data"]["trigger_id"], "t-7");
    let (_, failed) = &got[2];
    assert_cloud_event(failed, "dev.kiln.run.failed");
    assert!(
        failed["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("no input files found"),
        "{failed}"
    );
    assert_eq!(failed["data"]["pipeline"], "p");
}

/// A run stopped between the commits of its two feature sets announced
/// neither (events follow the whole run): the next run announces the
/// version left behind before its own.
#[test]
fn a_version_left_unannounced_by_a_crash_is_announced_by_the_next_run() {
    let brokers = broker();
    let events = new_topic(&brokers, "events", 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("landing/a.csv"), "id,user_id,value\n1,1,0.5\n2,1,1.5\n");
    write(
        &d.join("p.sql"),
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE first STORED AS FEATURES LOCATION 'out/first' OPTIONS ('key' 'id', 'mode' 'overwrite');\n\
         CREATE EXTERNAL TABLE second STORED AS FEATURES LOCATION 'out/second' OPTIONS ('key' 'id', 'mode' 'overwrite');\n\
         INSERT INTO first SELECT id, value FROM landed;\n\
         INSERT INTO second SELECT id, user_id FROM landed;\n",
    );
    let topic = format!("kafka://{events}");
    let args = ["run", "p.sql", "--events", topic.as_str(), "-b", brokers.as_str()];
    kiln_env(d, &args, &[("FAILPOINTS", "run-between-feature-sets=return")]).failed();
    assert!(d.join("out/first/_delta_log/00000000000000000000.json").exists());
    kiln(d, &args).ok();

    let got = events_on(&brokers, &events, 4);
    assert!(schema_errors(&got).iter().all(Vec::is_empty), "{got:#?}");
    let seen: Vec<(String, Option<u64>)> = got
        .iter()
        .map(|(_, e)| {
            let name = e["data"]["feature_set"]
                .as_str()
                .unwrap_or(e["type"].as_str().unwrap());
            (name.to_string(), e["data"]["version"].as_u64())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("dev.kiln.run.failed".to_string(), None),
            ("first".to_string(), Some(0)),
            ("first".to_string(), Some(1)),
            ("second".to_string(), Some(0)),
        ],
        "{got:#?}"
    );
}
