//! Helpers shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

/// The result of one `kiln` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "kiln failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn failed(self) -> Self {
        assert_ne!(self.code, 0, "kiln should have failed\nstdout:\n{}", self.stdout);
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `kiln ARGS` in `dir` with extra environment variables.
pub fn kiln_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args).current_dir(dir).env("KILN_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    finish(cmd.output().expect("kiln binary runs"))
}

pub fn kiln(dir: &Path, args: &[&str]) -> Run {
    kiln_env(dir, args, &[])
}

/// The Python with the independent readers: scripts/test.sh sets KILN_PYTHON.
pub fn python_bin() -> String {
    std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Run a Python snippet with `args` in sys.argv[1:]; its stdout is JSON.
pub fn python_json(script: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    // deltalake 1.6 with pyarrow can abort in interpreter teardown
    // ("terminate called without an active exception") after its work is
    // done; leave without the teardown once the answer is printed.
    let script = format!("{script}\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_os._exit(0)\n");
    let mut cmd = Command::new(python_bin());
    cmd.arg("-c").arg(script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "python failed (run the suite through scripts/test.sh, which installs the readers):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python printed JSON")
}

/// Read a Delta table with the deltalake Python package (delta-rs's Python
/// binding, with pyarrow): version, row count, columns, the commit info of
/// the latest version (when no version is asked for), and the sum of
/// `sum_column` if given.
pub fn read_delta(
    location: &str,
    version: Option<u64>,
    sum_column: Option<&str>,
    env: &[(&str, &str)],
) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.compute as pc
from deltalake import DeltaTable
loc, version, col = sys.argv[1], sys.argv[2], sys.argv[3]
t = DeltaTable(loc, version=int(version) if version else None)
data = t.to_pyarrow_table()
# history() of a table loaded at an older version misnumbers commits (and
# can abort the interpreter) in deltalake 1.6, so read it at the latest only.
commit = [h for h in t.history() if h.get("version") == t.version()] if not version else []
out = {
    "version": t.version(),
    "rows": data.num_rows,
    "columns": data.column_names,
    "types": [str(f.type) for f in data.schema],
    "commit": commit[0] if commit else None,
    "min_reader": t.protocol().min_reader_version,
}
if col:
    out["sum"] = pc.sum(data[col]).as_py()
print(json.dumps(out, default=str))
"#;
    let v = version.map(|v| v.to_string()).unwrap_or_default();
    python_json(SCRIPT, &[location, &v, sum_column.unwrap_or("")], env)
}

/// A small event table: `n` rows, ids from `first_id`.
pub fn events_batch(first_id: i64, n: usize) -> RecordBatch {
    let ids: Vec<i64> = (first_id..first_id + n as i64).collect();
    let users: Vec<i64> = ids.iter().map(|i| i % 7).collect();
    let values: Vec<f64> = ids.iter().map(|i| (*i as f64) * 0.5).collect();
    let kinds: Vec<&str> = ids
        .iter()
        .map(|i| if i % 3 == 0 { "buy" } else { "view" })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("value", DataType::Float64, false),
        Field::new("kind", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids)) as ArrayRef,
            Arc::new(Int64Array::from(users)),
            Arc::new(Float64Array::from(values)),
            Arc::new(StringArray::from(kinds)),
        ],
    )
    .unwrap()
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// Parquet bytes of a batch, for uploading.
pub fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf
}

pub fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Sum of `value` over ids `first..first+n`, as events_batch makes them.
pub fn value_sum(first: i64, n: i64) -> f64 {
    (first..first + n).map(|i| i as f64 * 0.5).sum()
}

/// True when a Delta log exists at `dir`.
pub fn has_delta_log(dir: &Path) -> bool {
    dir.join("_delta_log").is_dir()
}
