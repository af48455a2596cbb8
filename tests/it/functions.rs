//! The feature functions' SQL behaviour, in sqllogictest files
//! (`tests/sqllogictest/*.slt`) run against a kiln session, as DataFusion
//! tests its own functions: nulls, empty strings, NaN, empty and unequal
//! lists, wrong types.

use std::path::PathBuf;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

use crate::common::*;

struct Kiln {
    ctx: SessionContext,
}

fn column_type(t: &DataType) -> DefaultColumnType {
    if t.is_integer() {
        DefaultColumnType::Integer
    } else if t.is_floating() {
        DefaultColumnType::FloatingPoint
    } else {
        DefaultColumnType::Text
    }
}

#[async_trait::async_trait]
impl AsyncDB for Kiln {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let df = self.ctx.sql(sql).await?;
        let types: Vec<_> = df
            .schema()
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        let batches = df.collect().await?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &batches {
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .zip(batch.columns())
                        .map(|(f, c)| {
                            let text = f.value(row).to_string();
                            // An empty string would vanish from the expected output.
                            if text.is_empty() && c.is_valid(row) {
                                "(empty)".to_string()
                            } else {
                                text
                            }
                        })
                        .collect(),
                );
            }
        }
        if types.is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "kiln"
    }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sqllogictest");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn feature_functions_behave_as_their_sqllogictest_files_say() {
    let files = slt_files();
    assert!(
        files.len() >= 5,
        "expected the feature functions' .slt files, found {files:?}"
    );
    let mut failures = Vec::new();
    for file in &files {
        let mut runner = Runner::new(|| async {
            let ctx = kiln::engine::session(&kiln::engine::Resources::detect())?;
            Ok(Kiln { ctx })
        });
        runner.with_column_validator(sqllogictest::strict_column_validator);
        if let Err(e) = runner.run_file_async(file).await {
            failures.push(format!("{}: {e}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Source rows with the awkward cases: an empty and a null text, non-ASCII
/// text, NaN and null scores, a null and a zero embedding.
const MAKE_DOCS: &str = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
bodies = ["the quick brown fox", "the quick brown fix", "", None, "naïve café", "日本語のテキスト", "ab", "x" * 300]
n = 64
rows = {
    "id": list(range(n)),
    "grp": [i % 3 for i in range(n)],
    "body": [bodies[i % len(bodies)] for i in range(n)],
    "score": [None if i % 11 == 5 else float("nan") if i % 13 == 7 else (i * 37 % 101) / 100 for i in range(n)],
    "embedding": [None if i % 9 == 4 else [0.0, 0.0, 0.0, 0.0, 0.0] if i % 9 == 6 else [((i * 7 + j * 3) % 17 - 8) / 4 for j in range(5)] for i in range(n)],
}
schema = pa.schema([("id", pa.int64()), ("grp", pa.int32()), ("body", pa.string()), ("score", pa.float64()), ("embedding", pa.list_(pa.float32()))])
pq.write_table(pa.table(rows, schema=schema), sys.argv[1])
print(json.dumps({"rows": n}))
"#;

const PIPELINE: &str = "CREATE EXTERNAL TABLE docs STORED AS PARQUET LOCATION '${DATA}/';\n\
CREATE EXTERNAL TABLE doc_features STORED AS FEATURES LOCATION '${OUT}/doc_features' OPTIONS ('key' 'id');\n\
INSERT INTO doc_features\n\
SELECT id,\n\
  hash_bucket(body, 1000) AS body_bucket, hash_bucket(id, 97) AS id_bucket, hash_bucket(grp, 5) AS grp_bucket,\n\
  bucketize(score, 0.25, 0.5, 0.5, 0.75) AS score_band,\n\
  standard_scale(score) OVER (PARTITION BY grp) AS score_z,\n\
  min_max_scale(score) OVER () AS score_01,\n\
  quantile_bucket(score, 4) OVER (PARTITION BY grp) AS score_q,\n\
  minhash(body, 32, 3) AS signature,\n\
  minhash_jaccard(minhash(body, 32, 3), minhash('the quick brown fox', 32, 3)) AS like_fox,\n\
  l2_normalize(embedding) AS unit, dot(embedding, embedding) AS sq_norm,\n\
  cosine_similarity(embedding, [1.0, 0.0, 0.0, 0.0, 0.0]) AS cos_x,\n\
  random_projection(embedding, 3, 42) AS projected\n\
FROM docs;\n";

/// Recomputes every column from the source with the Python of
/// docs/functions.md (its code blocks, run as written) and numpy.
const CHECK: &str = r#"
import json, math, re, sys
import numpy as np
import pyarrow.parquet as pq
from deltalake import DeltaTable
doc = open(sys.argv[1], encoding="utf-8").read()
reference = {}
exec("\n".join(re.findall(r"```python\n(.*?)```", doc, re.S)), reference)
src = {r["id"]: r for r in pq.read_table(sys.argv[2]).to_pylist()}
out = {r["id"]: r for r in DeltaTable(sys.argv[3]).to_pyarrow_table().to_pylist()}
assert sorted(out) == sorted(src), "every row once"
bad = []
def expect(i, col, want, got, tol=0.0):
    same = (want is None and got is None) or (want is not None and got is not None and (
        (isinstance(want, float) and math.isnan(want) and math.isnan(got)) or abs(want - got) <= tol * max(1.0, abs(want))))
    if not same:
        bad.append(f"row {i} {col}: want {want!r}, got {got!r}")
def known(v):
    return v is not None and not math.isnan(v)
groups = {}
for r in src.values():
    groups.setdefault(r["grp"], []).append(r["score"])
everyone = [r["score"] for r in src.values()]
for i, s in src.items():
    o = out[i]
    expect(i, "body_bucket", None if s["body"] is None else reference["hash_bucket"](s["body"], 1000), o["body_bucket"])
    expect(i, "id_bucket", reference["hash_bucket"](s["id"], 97), o["id_bucket"])
    expect(i, "grp_bucket", reference["hash_bucket"](s["grp"], 5), o["grp_bucket"])
    expect(i, "score_band", None if s["score"] is None else reference["bucketize"](s["score"], 0.25, 0.5, 0.5, 0.75), o["score_band"])
    x = s["score"]
    g = np.array([v for v in groups[s["grp"]] if known(v)])
    z = None if x is None else x if math.isnan(x) else float((x - g.mean()) / g.std()) if g.std() > 0 else 0.0
    expect(i, "score_z", z, o["score_z"], 1e-12)
    a = np.array([v for v in everyone if known(v)])
    expect(i, "score_01", None if x is None else x if math.isnan(x) else float((x - a.min()) / (a.max() - a.min())), o["score_01"], 1e-12)
    q = None if not known(x) else (4 * sum(1 for v in g if v < x)) // len(g)
    expect(i, "score_q", q, o["score_q"])
    sig = None if s["body"] is None else reference["minhash"](s["body"], 32, 3)
    if sig != o["signature"]:
        bad.append(f"row {i} signature: want {sig}, got {o['signature']}")
    fox = reference["minhash"]("the quick brown fox", 32, 3)
    expect(i, "like_fox", None if sig is None else sum(p == q for p, q in zip(sig, fox)) / 32, o["like_fox"])
    e = s["embedding"]
    v = None if e is None else np.array(e, dtype=np.float32)
    norm = None if v is None else float(np.sqrt(np.dot(v, v)))
    unit = None if v is None else (v / norm if norm > 0 else v)
    if (unit is None) != (o["unit"] is None) or (unit is not None and not np.allclose(unit, o["unit"], rtol=1e-6, atol=1e-7)):
        bad.append(f"row {i} unit: want {unit}, got {o['unit']}")
    expect(i, "sq_norm", None if v is None else float(np.dot(v, v)), o["sq_norm"], 1e-6)
    expect(i, "cos_x", None if v is None or norm == 0 else float(v[0] / norm), o["cos_x"], 1e-6)
    p = None if v is None else reference["random_projection"](e, 3, 42)
    if (p is None) != (o["projected"] is None) or (p is not None and not np.allclose(p, o["projected"], rtol=1e-5, atol=1e-6)):
        bad.append(f"row {i} projected: want {p}, got {o['projected']}")
print(json.dumps({"rows": len(out), "bad": bad[:20]}))
"#;

#[test]
fn a_pipeline_computes_what_the_reference_defines() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let docs = data.join("docs.parquet");
    python_json(MAKE_DOCS, &[docs.to_str().unwrap()], &[]);
    write(&dir.path().join("docs.sql"), PIPELINE);
    let out = dir.path().join("features");
    let (set_data, set_out) = (
        format!("DATA={}", data.display()),
        format!("OUT={}", out.display()),
    );
    let run = kiln(
        dir.path(),
        &[
            "run", "docs.sql", "--set", &set_data, "--set", &set_out, "--output", "json",
        ],
    )
    .ok();
    assert_eq!(run.json()["feature_sets"][0]["rows"], 64);

    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/functions.md");
    let table = out.join("doc_features");
    let checked = python_json(
        CHECK,
        &[reference, docs.to_str().unwrap(), table.to_str().unwrap()],
        &[],
    );
    assert_eq!(checked["rows"], 64);
    assert_eq!(
        checked["bad"],
        serde_json::json!([]),
        "kiln and the reference disagree"
    );
}

#[test]
fn explain_shows_where_each_function_runs_and_gpu_fails_clearly_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    python_json(MAKE_DOCS, &[data.join("docs.parquet").to_str().unwrap()], &[]);
    write(&dir.path().join("docs.sql"), PIPELINE);
    let out = dir.path().join("features");
    let (set_data, set_out) = (
        format!("DATA={}", data.display()),
        format!("OUT={}", out.display()),
    );
    let sets = ["--set", set_data.as_str(), "--set", set_out.as_str()];

    let explain = kiln(
        dir.path(),
        &[&["--device", "cpu", "explain", "docs.sql"], &sets[..]].concat(),
    )
    .ok();
    let listed: Vec<&str> = explain
        .stdout
        .lines()
        .skip_while(|l| *l != "-- feature functions")
        .skip(1)
        .collect();
    assert!(
        listed.contains(&"hash_bucket: cpu (--device cpu)"),
        "{}",
        explain.stdout
    );
    assert!(
        listed.contains(&"quantile_bucket: cpu (--device cpu)"),
        "{}",
        explain.stdout
    );
    assert_eq!(
        listed.len(),
        11,
        "every kiln function the pipeline calls, once: {listed:?}"
    );
    let json = kiln(
        dir.path(),
        &[&["explain", "docs.sql", "--output", "json"], &sets[..]].concat(),
    )
    .ok()
    .json();
    assert_eq!(json[0]["functions"].as_array().unwrap().len(), 11);

    let run = [&["run", "docs.sql"], &sets[..]].concat();
    let bad = kiln_env(dir.path(), &run, &[("KILN_GPU_MIN_ROWS", "lots")]).failed();
    assert!(
        bad.stderr
            .contains("KILN_GPU_MIN_ROWS must be a number of rows, not 'lots'"),
        "{}",
        bad.stderr
    );

    let gpu = kiln_env(
        dir.path(),
        &[&["run", "docs.sql"], &sets[..]].concat(),
        &[("KILN_DEVICE", "gpu")],
    );
    if kiln_kernels::gpu::driver_present() {
        gpu.ok();
    } else {
        let failed = gpu.failed();
        assert!(
            failed.stderr.contains("error: --device gpu: no CUDA driver"),
            "{}",
            failed.stderr
        );
        assert!(
            !has_delta_log(&out.join("doc_features")),
            "nothing may be written"
        );
    }
}
