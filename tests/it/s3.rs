//! s3:// sources and feature sets against a real S3-compatible server
//! (moto, started by scripts/test.sh on 127.0.0.1).

use crate::common::*;

pub fn endpoint() -> String {
    std::env::var("KILN_TEST_S3_ENDPOINT").expect(
        "KILN_TEST_S3_ENDPOINT is not set: run the suite with scripts/test.sh, which starts the S3 server",
    )
}

pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".to_string()),
        ("AWS_ACCESS_KEY_ID", "kiln-test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "kiln-test-secret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

/// Create `bucket` and upload `objects` (key, bytes file path) with boto3.
pub fn create_bucket_with(endpoint: &str, bucket: &str, objects: &[(&str, &std::path::Path)]) {
    const SCRIPT: &str = r#"
import json, sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="kiln-test", aws_secret_access_key="kiln-test-secret")
s3.create_bucket(Bucket=sys.argv[2])
args = sys.argv[3:]
for key, path in zip(args[::2], args[1::2]):
    s3.upload_file(path, sys.argv[2], key)
print(json.dumps(len(args) // 2))
"#;
    let mut args = vec![endpoint.to_string(), bucket.to_string()];
    for (key, path) in objects {
        args.push(key.to_string());
        args.push(path.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python_json(SCRIPT, &args, &[]);
}

#[test]
fn s3_sources_and_feature_sets_round_trip() {
    let endpoint = endpoint();
    let env = s3_env(&endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bucket = format!("kiln-{}", std::process::id());
    std::fs::write(d.join("a.parquet"), parquet_bytes(&events_batch(0, 400))).unwrap();
    std::fs::write(d.join("b.parquet"), parquet_bytes(&events_batch(400, 200))).unwrap();
    create_bucket_with(
        &endpoint,
        &bucket,
        &[
            ("raw/events/a.parquet", &d.join("a.parquet")),
            ("raw/events/b.parquet", &d.join("b.parquet")),
        ],
    );
    write(
        &d.join("s3.sql"),
        "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 's3://${BUCKET}/raw/events/';\n\
         CREATE EXTERNAL TABLE per_user STORED AS FEATURES LOCATION 's3://${BUCKET}/features/per_user'\n\
           OPTIONS ('key' 'user_id', 'mode' 'append');\n\
         INSERT INTO per_user SELECT user_id, count(*) AS events, sum(value) AS total FROM events GROUP BY user_id;\n",
    );
    let set = format!("BUCKET={bucket}");
    let first = kiln_env(d, &["run", "s3.sql", "--set", &set, "--output", "json"], &env)
        .ok()
        .json();
    assert_eq!(first["feature_sets"][0]["version"], 0);
    assert_eq!(first["input_files"], 2);
    kiln_env(d, &["run", "s3.sql", "--set", &set], &env).ok();

    let url = format!("s3://{bucket}/features/per_user");
    let latest = read_delta(&url, None, Some("total"), &env);
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["rows"], 14);
    assert_eq!(latest["sum"].as_f64().unwrap(), 2.0 * value_sum(0, 600));
    let inputs = latest["commit"]["kiln"]["inputs"].as_array().unwrap().clone();
    assert!(
        inputs.iter().all(|f| f["path"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/raw/events/"))),
        "{inputs:?}"
    );
    let v0 = read_delta(&url, Some(0), None, &env);
    assert_eq!(v0["rows"], 7);

    let versions = kiln_env(d, &["versions", &url, "--output", "json"], &env)
        .ok()
        .json();
    assert_eq!(versions.as_array().unwrap().len(), 2);
    let show = kiln_env(d, &["show", &format!("{url}@0"), "--output", "json"], &env)
        .ok()
        .json();
    assert_eq!(show["total_rows"], 7);
}

#[test]
fn a_missing_bucket_is_a_clear_error_and_writes_nothing() {
    let endpoint = endpoint();
    let env = s3_env(&endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.sql"),
        "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION 's3://no-such-bucket-kiln/raw/';\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs' OPTIONS ('key' 'user_id');\n\
         INSERT INTO fs SELECT user_id FROM events;\n",
    );
    let run = kiln_env(dir.path(), &["run", "p.sql"], &env).failed();
    assert!(
        run.stderr.starts_with("p.sql:1:57: source 'events'"),
        "{}",
        run.stderr
    );
    assert!(!has_delta_log(&dir.path().join("out/fs")));
}
