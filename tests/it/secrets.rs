//! Secrets never appear in anything kiln writes. Known credentials are
//! given every way kiln takes them (a `${VAR}` in a Kafka option, `-X`,
//! `KILN_KAFKA_*`, the AWS variables); runs succeed and fail with debug
//! logging on, librdkafka's own debug logs included; then every byte
//! written is searched: stdout and stderr of every command, the Delta logs,
//! data files and dead letters in the object store, the events topic, and
//! `/metrics`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use crate::common::*;
use crate::kafka::{NOIDA_FETCH, Record, broker, new_topic, produce};
use crate::ops::{free_port, http_get, wait_for_200};
use crate::s3::{create_bucket_with, endpoint};
use crate::stream::{records, signal};

/// One per way in; each is unique enough that a hit is a leak.
const VAR_SECRET: &str = "kiln-var-secret-c0d5e1";
const FLAG_SECRET: &str = "kiln-flag-secret-e61a77";
const ENV_SECRET: &str = "kiln-env-secret-93b0f2";
const AWS_SECRET: &str = "kiln-aws-secret-5d2c8a";
const SECRETS: [&str; 4] = [VAR_SECRET, FLAG_SECRET, ENV_SECRET, AWS_SECRET];
/// librdkafka's debug contexts that touch configuration, connections and
/// authentication (`all` would add every fetch and message).
const DEBUG: &str = "generic,broker,security,conf,metadata,cgrp";

fn source(topic: &str, group: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE clicks (id BIGINT NOT NULL, user_id BIGINT NOT NULL, item VARCHAR)\n\
         STORED AS JSON LOCATION 'kafka://{topic}'\n\
         OPTIONS ('bootstrap.servers' '${{KAFKA}}', {NOIDA_FETCH}, 'group.id' '{group}', 'debug' '{DEBUG}',\n\
         'sasl.username' 'kiln', 'sasl.password' '${{KAFKA_PASSWORD}}',\n\
         'session.timeout.ms' '6000', 'heartbeat.interval.ms' '500', 'max.poll.interval.ms' '10000');\n"
    )
}

/// Every message on `topic`, raw, until none comes for 3 s.
fn raw_messages(brokers: &str, topic: &str) -> Vec<u8> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("kiln-test-raw-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut all = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            all.extend_from_slice(m.key().unwrap_or_default());
            all.extend_from_slice(m.payload().unwrap_or_default());
            for h in m
                .headers()
                .map(|h| h.iter().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                all.extend_from_slice(h.value.unwrap_or_default());
            }
            quiet_since = Instant::now();
        }
    }
    all
}

/// Every object under the bucket, concatenated (boto3).
fn bucket_bytes(endpoint: &str, bucket: &str) -> (usize, Vec<u8>) {
    const SCRIPT: &str = r#"
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="kiln-test", aws_secret_access_key="kiln-test-secret")
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2]) for o in p.get("Contents", [])]
sys.stdout.buffer.write(str(len(keys)).encode() + b"\n")
for k in keys:
    sys.stdout.buffer.write(k.encode() + b"\n" + s3.get_object(Bucket=sys.argv[2], Key=k)["Body"].read())
"#;
    let out = Command::new(python_bin())
        .args(["-c", SCRIPT, endpoint, bucket])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = out.stdout;
    let newline = text.iter().position(|&b| b == b'\n').unwrap();
    let count = std::str::from_utf8(&text[..newline]).unwrap().parse().unwrap();
    (count, text)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn find(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_secret_in_any_output() {
    let brokers = broker();
    let endpoint = endpoint();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bucket = format!("kiln-secrets-{}", uuid::Uuid::new_v4().simple());
    create_bucket_with(&endpoint, &bucket, &[]);
    let topic = new_topic(&brokers, "secrets", 2);
    let events = new_topic(&brokers, "secrets-events", 1);
    let group = format!("kiln-secrets-{}", uuid::Uuid::new_v4().simple());
    let features = format!("s3://{bucket}/features/seen");
    let sink = format!(
        "CREATE EXTERNAL TABLE seen STORED AS FEATURES LOCATION '{features}' OPTIONS ('key' 'id', 'mode' 'append');\n"
    );
    write(
        &d.join("seen.sql"),
        &format!(
            "{}{sink}INSERT INTO seen SELECT id, user_id, item FROM clicks;\n",
            source(&topic, &group)
        ),
    );
    // A syntax error on the line holding the secret.
    write(
        &d.join("broken.sql"),
        &source(&topic, &group).replace("'${KAFKA_PASSWORD}',", "'${KAFKA_PASSWORD}' 'stray',"),
    );
    // Fails planning, after the secret was substituted.
    write(
        &d.join("unplannable.sql"),
        &format!(
            "{}{sink}INSERT INTO seen SELECT id, nope FROM clicks;\n",
            source(&topic, &group)
        ),
    );
    let mut batch: Vec<Record> = records(0, 200, 2);
    batch.push((0, None, Some(b"not json".to_vec())));
    produce(&brokers, &topic, &batch);

    let env: Vec<(&str, String)> = vec![
        ("KAFKA", brokers.clone()),
        ("KAFKA_PASSWORD", VAR_SECRET.to_string()),
        ("KILN_KAFKA_SSL_KEY_PASSWORD", ENV_SECRET.to_string()),
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "kiln-secrets".into()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.into()),
        ("AWS_REGION", "us-east-1".into()),
        ("KILN_LOG", "debug".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let events_url = format!("kafka://{events}");
    let flag = format!("sasl.password={FLAG_SECRET}");
    let with_events = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let debug = format!("debug={DEBUG}");
        all.extend(["--events", &events_url, "-b", &brokers, "-X", &flag, "-X", &debug].map(String::from));
        all
    };
    let mut written: Vec<u8> = Vec::new();
    let mut keep = |run: &Run| {
        written.extend_from_slice(run.stdout.as_bytes());
        written.extend_from_slice(run.stderr.as_bytes());
    };

    keep(&kiln_env(d, &["check", "seen.sql"], &env).ok());
    let ran = kiln_env(
        d,
        &strs(&with_events(&["run", "seen.sql", "--output", "json"])),
        &env,
    )
    .ok();
    keep(&ran);
    assert_eq!(ran.json()["feature_sets"][0]["rows"], 200, "{}", ran.stdout);
    assert_eq!(ran.json()["feature_sets"][0]["dead_letters"], 1, "{}", ran.stdout);
    assert!(
        ran.stderr.contains("rdkafka"),
        "librdkafka's debug log is on: {}",
        &ran.stderr[..ran.stderr.len().min(2000)]
    );
    for args in [
        vec!["show", features.as_str()],
        vec!["show", features.as_str(), "--output", "json"],
        vec!["versions", features.as_str()],
    ] {
        keep(&kiln_env(d, &args, &env).ok());
    }
    for file in ["broken.sql", "unplannable.sql"] {
        let failed = kiln_env(d, &strs(&with_events(&["run", file])), &env).failed();
        keep(&failed);
    }
    // The events producer's settings are wrong: the error names them,
    // not the password beside them.
    let bad_setting = kiln_env(
        d,
        &[
            "run",
            "seen.sql",
            "--events",
            &events_url,
            "-b",
            &brokers,
            "-X",
            &flag,
            "-X",
            "security.protocol=NOPE",
        ],
        &env,
    )
    .failed();
    assert!(
        bad_setting.stderr.contains("security.protocol"),
        "{}",
        bad_setting.stderr
    );
    keep(&bad_setting);

    // A stream worker, scraped while it runs, then stopped.
    produce(&brokers, &topic, &records(200, 100, 2));
    let port = free_port();
    let out = std::fs::File::create(d.join("stream.out")).unwrap();
    let err = std::fs::File::create(d.join("stream.err")).unwrap();
    let stream_args = with_events(&[
        "stream",
        "seen.sql",
        "--batch-interval",
        "300ms",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.current_dir(d)
        .args(&stream_args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_for_200(port, "/readyz", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, text) = http_get(port, "/metrics").unwrap();
        if text.contains("kiln_commits_total{") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no commit by the stream worker:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    written.extend_from_slice(metrics.as_bytes());
    signal(&child, "-TERM");
    assert!(child.wait().unwrap().success());
    for file in ["stream.out", "stream.err"] {
        written.extend(std::fs::read(d.join(file)).unwrap());
    }

    let (objects, stored) = bucket_bytes(&endpoint, &bucket);
    assert!(
        objects >= 6,
        "the feature set and its dead letters: {objects} objects"
    );
    assert!(find(&stored, "_delta_log/"), "the Delta logs were read");
    let announced = raw_messages(&brokers, &events);
    assert!(find(&announced, "dev.kiln.featureset.version") && find(&announced, "dev.kiln.run.failed"));
    for (what, bytes) in [
        ("the commands' output and /metrics", &written),
        ("the object store", &stored),
        ("the events", &announced),
    ] {
        for secret in SECRETS {
            assert!(!find(bytes, secret), "{secret} appears in {what}");
        }
    }
    // The search would have found them: the values were in use.
    assert!(
        written.len() > 100_000,
        "debug logs were written: {} bytes",
        written.len()
    );
}
