//! `kiln wait`: a new version, a trigger's commit (before or after the
//! wait starts, on a feature set that does not exist yet), and timeouts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn pipeline(dir: &Path) {
    write(&dir.join("landing/a.csv"), "id,user_id,value\n1,1,0.5\n2,1,1.5\n");
    write(
        &dir.join("p.sql"),
        "CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)\n\
         STORED AS CSV LOCATION 'landing/' OPTIONS ('has_header' 'true');\n\
         CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION 'out/fs' OPTIONS ('key' 'id', 'mode' 'append');\n\
         INSERT INTO fs SELECT id, user_id, value FROM landed;\n",
    );
}

/// `kiln wait ARGS` started in the background.
fn start_wait(dir: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("wait")
        .args(args)
        .current_dir(dir)
        .env("KILN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln wait starts")
}

fn finished(child: Child) -> (i32, String, String) {
    let out = child.wait_with_output().expect("kiln wait ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn wait_returns_on_a_new_version_or_a_triggers_commit_and_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pipeline(d);
    let fast = ["--poll-interval", "100ms", "--timeout", "60s"];

    // Started before the feature set exists: it waits for version 1.
    let newer = start_wait(d, &[&["out/fs", "--after-version", "0"][..], &fast].concat());
    let trigger_later = start_wait(
        d,
        &[&["out/fs", "--for-trigger", "t-2", "--output", "json"][..], &fast].concat(),
    );
    std::thread::sleep(Duration::from_millis(500));
    kiln(d, &["run", "p.sql"]).ok();
    kiln(d, &["run", "p.sql", "--trigger", "t-1"]).ok();
    let (code, stdout, stderr) = finished(newer);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "1");

    // A trigger that committed before the wait began is found at once.
    let run = kiln(d, &["wait", "out/fs", "--for-trigger", "t-1", "--timeout", "5s"]).ok();
    assert_eq!(run.stdout.trim(), "1");

    // One that commits while it waits.
    kiln(d, &["run", "p.sql", "--trigger", "t-2"]).ok();
    let (code, stdout, stderr) = finished(trigger_later);
    assert_eq!(code, 0, "{stderr}");
    let arrived: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(arrived["version"], 2, "{arrived}");
    assert_eq!(arrived["trigger"], "t-2", "{arrived}");

    // Nothing newer, no such trigger: exit 3 once the timeout passes.
    for args in [
        &["wait", "out/fs", "--after-version", "2", "--timeout", "1s"][..],
        &["wait", "out/fs", "--for-trigger", "never", "--timeout", "1s"][..],
        &["wait", "out/none", "--after-version", "0", "--timeout", "1s"][..],
    ] {
        let started = Instant::now();
        let run = kiln(d, args);
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("timed out"), "{}", run.stderr);
        assert!(started.elapsed() >= Duration::from_secs(1), "{args:?}");
    }

    // One of the two is required.
    let run = kiln(d, &["wait", "out/fs"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
}
