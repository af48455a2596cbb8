//! Records that decode but make the pipeline's SQL fail: set aside into
//! the dead letters with the SQL's error, by bounded runs and by stream
//! workers, while the rest of their pass commits.

use std::time::Duration;

use crate::common::*;
use crate::kafka::{Case, DEAD, NOIDA_FETCH, Record, broker, ids_of, new_topic, produce, run_json};
use crate::stream::{id_census, start_stream, stop, wait_for_rows};

/// JSON records with ids `0..n` over `partitions`, whose `code` is the id
/// as text except at `poisoned` ids, where it is not a number.
fn coded(n: i64, partitions: i32, poisoned: &[i64]) -> Vec<Record> {
    (0..n)
        .map(|id| {
            let code = if poisoned.contains(&id) {
                format!("x{id}")
            } else {
                id.to_string()
            };
            let value = format!(r#"{{"id": {id}, "code": "{code}"}}"#);
            (
                (id % partitions as i64) as i32,
                Some(b"k".to_vec()),
                Some(value.into_bytes()),
            )
        })
        .collect()
}

/// A pipeline whose SELECT casts `code` to a number.
fn casting_pipeline(topic: &str, extra: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, code VARCHAR)\n\
         STORED AS JSON LOCATION 'kafka://{topic}'\n\
         OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH}{extra});\n\
         CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION 'out/seen' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO seen SELECT id, CAST(code AS INT) AS code FROM clicks;\n"
    )
}

/// The poisoned records are the dead letters, with the SQL's error and
/// their value byte for byte.
fn assert_poison_in_dead_letters(d: &std::path::Path, topic: &str, poisoned: &[i64], partitions: i32) {
    let dead = python_json(
        DEAD,
        &[&d.join("out/seen/_dead_letters").display().to_string()],
        &[],
    );
    let values: Vec<String> = dead["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    // Dead letters are sorted by partition, then offset (that is, id).
    let mut expected: Vec<(i64, i64)> = poisoned.iter().map(|&id| (id % partitions as i64, id)).collect();
    expected.sort();
    let expected: Vec<String> = expected
        .into_iter()
        .map(|(_, id)| format!(r#"{{"id": {id}, "code": "x{id}"}}"#))
        .collect();
    assert_eq!(values, expected, "{dead}");
    for (i, error) in dead["error"].as_array().unwrap().iter().enumerate() {
        let error = error.as_str().unwrap();
        assert!(
            error.contains("SQL failed on this record") && error.contains("Cast"),
            "{error}"
        );
        assert_eq!(dead["topic"][i], topic);
        assert_eq!(dead["key"][i], "k");
    }
}

#[test]
fn records_the_sql_cannot_handle_go_to_the_dead_letters() {
    let case = Case::new("poison", 2);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    let env = [("KAFKA", brokers)];
    write(&d.join("seen.sql"), &casting_pipeline(topic, ""));
    let poisoned = [17, 500, 501, 999];
    produce(brokers, topic, &coded(1000, 2, &poisoned));
    let run = run_json(d, "seen.sql", brokers);
    assert_eq!(run["feature_sets"][0]["rows"], 996, "{run}");
    assert_eq!(run["feature_sets"][0]["dead_letters"], 4, "{run}");
    let expected: Vec<i64> = (0..1000).filter(|i| !poisoned.contains(i)).collect();
    assert_eq!(ids_of(d, "seen"), expected);
    assert_poison_in_dead_letters(d, topic, &poisoned, 2);
    // Nothing new: nothing read again, no dead letter twice.
    kiln_env(d, &["run", "seen.sql"], &env).ok();
    assert_eq!(ids_of(d, "seen").len(), 996);
    assert_poison_in_dead_letters(d, topic, &poisoned, 2);

    // They count as bad records: past max.bad.records nothing commits.
    let case = Case::new("poison-limit", 1);
    let (topic, d) = (case.topic.as_str(), case.dir.path());
    write(
        &d.join("seen.sql"),
        &casting_pipeline(topic, ", 'max.bad.records' '1'"),
    );
    produce(brokers, topic, &coded(100, 1, &[3, 4]));
    let failed = kiln_env(d, &["run", "seen.sql"], &env).failed();
    assert!(failed.stderr.contains("max.bad.records"), "{}", failed.stderr);
    assert!(!has_delta_log(&d.join("out/seen")));
}

/// A record the SQL cannot handle does not stop the worker: it goes to the
/// dead letters and the rest of its batch commits.
#[test]
fn noida_stream_sets_poison_records_aside() {
    let brokers = broker();
    let topic = new_topic(&brokers, "poison-stream", 2);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = format!(", 'group.id' 'kiln-test-{}'", uuid::Uuid::new_v4().simple());
    write(&d.join("seen.sql"), &casting_pipeline(&topic, &group));
    let poisoned = [3, 1500, 2999];
    produce(&brokers, &topic, &coded(3000, 2, &poisoned));
    let worker = start_stream(d, &brokers, "w", &[]);
    wait_for_rows(d, 2997, Duration::from_secs(90));
    stop(worker, d, "w");
    assert_eq!(id_census(d)["distinct"], 2997);
    assert_poison_in_dead_letters(d, &topic, &poisoned, 2);
}

/// A query that fails on every record is a broken query, not a batch of
/// bad records: the run fails and nothing goes to the dead letters.
#[test]
fn a_query_that_fails_on_every_record_fails_the_run() {
    let case = Case::new("poison-all", 1);
    let (brokers, topic, d) = (case.brokers.as_str(), case.topic.as_str(), case.dir.path());
    write(&d.join("seen.sql"), &casting_pipeline(topic, ""));
    let all: Vec<i64> = (0..50).collect();
    produce(brokers, topic, &coded(50, 1, &all));
    let run = kiln_env(d, &["run", "seen.sql"], &[("KAFKA", brokers)]).failed();
    assert!(run.stderr.contains("Cast"), "{}", run.stderr);
    assert!(!has_delta_log(&d.join("out/seen")));
    assert!(!has_delta_log(&d.join("out/seen/_dead_letters")));
}
