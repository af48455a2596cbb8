//! `kiln training-set`, and the same training set as a pipeline's `ASOF
//! JOIN`, end to end: feature sets written by `kiln run`, labels written by
//! pyarrow, and the result read back by Python deltalake and checked row by
//! row against a brute-force as-of join written in Python, and against
//! DuckDB's `ASOF JOIN`.

use std::path::Path;

use crate::common::{kiln, python_json, write};

/// Random labels and two feature tables with every awkward case: ties on
/// time within an entity, duplicate rows, nulls in keys, times and values,
/// entities on one side only, unsorted files, nanosecond naive label times
/// against microsecond UTC feature times, and one label exactly at a
/// feature row's time.
const MAKE_DATA: &str = r#"
import json, random, sys, datetime as dt
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
root = Path(sys.argv[1]); random.seed(7)
base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
def maybe(p, v): return None if random.random() < p else v
def at(minutes): return base + dt.timedelta(minutes=minutes)
for name, users, rows, files in [("a", 40, 1500, 3), ("b", 30, 900, 2)]:
    (root / name).mkdir(parents=True)
    for f in range(files):
        n = rows // files
        user = [maybe(0.03, random.randrange(users)) for _ in range(n)]
        t = [maybe(0.03, at(random.randrange(0, 600, 5))) for _ in range(n)]
        score = [maybe(0.1, random.choice([0.5, 1.5, 2.5])) for _ in range(n)]
        tag = [maybe(0.1, random.choice(["x", "y", "z"])) for _ in range(n)]
        key = "user_id" if name == "a" else "uid"
        time = "t" if name == "a" else "t2"
        tab = pa.table({key: pa.array(user, pa.int32()), time: pa.array(t, pa.timestamp("us", "UTC")),
                        name + "_score": pa.array(score, pa.float64()), name + "_tag": pa.array(tag, pa.string())})
        pq.write_table(tab, root / name / f"part-{f}.parquet")
(root / "labels").mkdir()
n = 700
user = [maybe(0.03, random.randrange(45)) for _ in range(n)]
ts = [maybe(0.03, (base + dt.timedelta(minutes=random.randrange(0, 700, 5), seconds=random.choice([0, 0, 1]))).replace(tzinfo=None)) for _ in range(n)]
label = [random.randrange(2) for _ in range(n)]
tab = pa.table({"user_id": pa.array(user, pa.int64()), "ts": pa.array(ts, pa.timestamp("ns")), "label": pa.array(label, pa.int8())})
pq.write_table(tab, root / "labels" / "labels.parquet")
print(json.dumps({"labels": n}))
"#;

const PIPELINE: &str = "
CREATE EXTERNAL TABLE raw_a STORED AS PARQUET LOCATION '${DATA}/a/';
CREATE EXTERNAL TABLE raw_b STORED AS PARQUET LOCATION '${DATA}/b/';
CREATE EXTERNAL TABLE fa STORED AS FEATURES LOCATION '${DATA}/features/fa'
  OPTIONS ('key' 'user_id,t', 'timestamp' 't');
CREATE EXTERNAL TABLE fb STORED AS FEATURES LOCATION '${DATA}/features/fb'
  OPTIONS ('key' 'uid,t2');
INSERT INTO fa SELECT * FROM raw_a;
INSERT INTO fb SELECT * FROM raw_b;
";

/// The rule, in Python, from the definition: for each label, look at every
/// feature row; the latest before (or at) the label time wins, ties broken
/// by the feature set's other columns in order, nulls first.
const CHECK: &str = r#"
import json, sys, datetime as dt
from deltalake import DeltaTable
import pyarrow.parquet as pq
out, data, inclusive, max_age = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
any_order = len(sys.argv) > 5 and sys.argv[5] == "any-order"
max_age = None if max_age == "-" else dt.timedelta(seconds=int(max_age))
utc = dt.timezone.utc
labels = pq.read_table(f"{data}/labels/labels.parquet").to_pylist()
got = DeltaTable(out).to_pyarrow_table().to_pylist()
def feature_rows(name, key, time):
    rows = DeltaTable(f"{data}/features/{name}").to_pyarrow_table().to_pylist()
    return [r for r in rows if r[key] is not None and r[time] is not None]
def best(rows, key, time, user, t, payload):
    if user is None or t is None: return None
    ok = [r for r in rows if r[key] == user and (r[time] <= t if inclusive else r[time] < t)
          and (max_age is None or t - r[time] <= max_age)]
    if not ok: return None
    return max(ok, key=lambda r: (r[time],) + tuple((r[c] is not None, r[c]) for c in payload))
fa = feature_rows("fa", "user_id", "t"); fb = feature_rows("fb", "uid", "t2")
def order(l):
    t = l["ts"]
    return (t is None, t or dt.datetime.min, l["user_id"] is None, l["user_id"] or 0, l["label"])
want = []
for l in sorted(labels, key=order):
    t = None if l["ts"] is None else l["ts"].replace(tzinfo=utc)
    row = dict(l)
    a = best(fa, "user_id", "t", l["user_id"], t, ["a_score", "a_tag"])
    b = best(fb, "uid", "t2", l["user_id"], t, ["b_score", "b_tag"])
    for k in ["t", "a_score", "a_tag"]: row["fa_" + k] = None if a is None else a[k]
    for k in ["t2", "b_score", "b_tag"]: row["fb_" + k] = None if b is None else b[k]
    want.append(row)
def norm(r):
    return {k: (v.replace(tzinfo=None) if isinstance(v, dt.datetime) else v) for k, v in r.items()}
got = [norm(r) for r in got]; want = [norm(r) for r in want]
if any_order: got.sort(key=order)
bad = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
print(json.dumps({"rows": len(got), "want": len(want), "bad": [str(b) for b in bad[:3]],
                  "matched_a": sum(r["fa_t"] is not None for r in want),
                  "matched_b": sum(r["fb_t2"] is not None for r in want),
                  "columns": list(got[0].keys()) if got else []}))
"#;

/// DuckDB's own as-of join on the same files: the matched feature times
/// must agree (the feature values too where the match is not a tie).
const DUCKDB: &str = r#"
import json, sys
import duckdb
from deltalake import DeltaTable
out, data = sys.argv[1], sys.argv[2]
con = duckdb.connect(); con.execute("SET TimeZone = 'UTC'")
con.register("fa", DeltaTable(f"{data}/features/fa").to_pyarrow_table())
con.register("k", DeltaTable(out).to_pyarrow_table())
con.execute(f"CREATE TABLE labels AS SELECT user_id, CAST(ts AS TIMESTAMPTZ) AS ts, label FROM '{data}/labels/labels.parquet'")
rows = con.execute("""
  WITH d AS (
    SELECT l.user_id, l.ts, l.label, f.t AS t
    FROM labels l ASOF LEFT JOIN (SELECT * FROM fa WHERE user_id IS NOT NULL AND t IS NOT NULL) f
      ON l.user_id = f.user_id AND l.ts > f.t),
  kd AS (SELECT user_id, CAST(ts AS TIMESTAMPTZ) AS ts, label, fa_t AS t FROM k)
  SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM kd),
         (SELECT count(*) FROM (SELECT * FROM d EXCEPT ALL SELECT * FROM kd)),
         (SELECT count(*) FROM d WHERE t IS NOT NULL)
""").fetchall()[0]
print(json.dumps({"duckdb": rows[0], "kiln": rows[1], "differ": rows[2], "matched": rows[3]}))
"#;

fn setup(dir: &Path) -> String {
    let data = dir.join("data").display().to_string();
    python_json(MAKE_DATA, &[&data], &[]);
    let pipeline = write(&dir.join("features.sql"), PIPELINE);
    kiln(
        dir,
        &[
            "run",
            pipeline.to_str().unwrap(),
            "--set",
            &format!("DATA={data}"),
        ],
    )
    .ok();
    data
}

fn training_set(dir: &Path, data: &str, out: &str, extra: &[&str]) -> serde_json::Value {
    let labels = format!("{data}/labels/");
    let fa = format!("{data}/features/fa");
    let fb = format!("{data}/features/fb@0");
    let mut args = vec![
        "training-set",
        "--labels",
        &labels,
        "--entity",
        "user_id",
        "--label-time",
        "ts",
        "--features",
        &fa,
        "--prefix",
        "fa_",
        "--features",
        &fb,
        "--feature-time",
        "t2",
        "--entity-map",
        "user_id=uid",
        "--prefix",
        "fb_",
        "--out",
        out,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    kiln(dir, &args).ok().json()
}

#[test]
fn training_sets_match_the_brute_force_rule_and_duckdb() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = setup(dir);
    let out = dir.join("training").display().to_string();

    for (i, (extra, inclusive, max_age)) in [
        (vec![], "0", "-"),
        (vec!["--inclusive"], "1", "-"),
        (vec!["--max-age", "30m"], "0", "1800"),
    ]
    .into_iter()
    .enumerate()
    {
        let summary = training_set(dir, &data, &out, &extra);
        assert_eq!(summary["version"], i as u64, "{summary}");
        assert_eq!(summary["rows"], 700);
        let check = python_json(CHECK, &[&out, &data, inclusive, max_age], &[]);
        assert_eq!(check["rows"], 700, "{check}");
        assert_eq!(check["bad"], serde_json::json!([]), "{extra:?}: {check}");
        assert!(check["matched_a"].as_u64().unwrap() > 300, "{check}");
        assert!(check["matched_b"].as_u64().unwrap() > 200, "{check}");
        let lineage = &summary["lineage"]["training_set"];
        assert_eq!(lineage["features"][0]["matched"], check["matched_a"]);
        assert_eq!(lineage["features"][1]["matched"], check["matched_b"]);
        if extra.is_empty() {
            let duck = python_json(DUCKDB, &[&out, &data], &[]);
            assert_eq!(duck["differ"], 0, "{duck}");
            assert_eq!(duck["matched"], check["matched_a"], "{duck}");
        }
    }

    // The lineage names the labels' files and each feature set's exact version.
    let shown = kiln(dir, &["show", &out, "--output", "json"]).ok().json();
    let lineage = &shown["lineage"];
    assert_eq!(lineage["pipeline"], "training-set");
    assert_eq!(lineage["key"], serde_json::json!(["user_id", "ts"]));
    assert_eq!(lineage["inputs"].as_array().unwrap().len(), 1);
    assert!(lineage["inputs"][0]["size"].as_u64().unwrap() > 0);
    let training = &lineage["training_set"];
    assert_eq!(training["labels"]["rows"], 700);
    assert_eq!(training["max_age"], "30m");
    assert_eq!(training["features"][0]["version"], 0);
    assert_eq!(training["features"][0]["time"], "t", "the declared timestamp");
    assert_eq!(training["features"][1]["entity"], serde_json::json!(["uid"]));
    let text = kiln(dir, &["show", &out]).ok().stdout;
    assert!(
        text.contains("features/fb version 0 (time t2, entity uid, prefix fb_)"),
        "{text}"
    );
}

/// The training set of `training_set` above, written as a pipeline.
const ASOF_PIPELINE: &str = "
CREATE EXTERNAL TABLE labels STORED AS PARQUET LOCATION '${DATA}/labels/';
CREATE EXTERNAL TABLE fa STORED AS FEATURES LOCATION '${DATA}/features/fa';
CREATE EXTERNAL TABLE fb STORED AS FEATURES LOCATION '${DATA}/features/fb'
  OPTIONS ('version' '0');
CREATE EXTERNAL TABLE training STORED AS FEATURES LOCATION '${OUT}'
  OPTIONS ('key' 'user_id,ts', 'timestamp' 'ts', 'mode' 'overwrite');
INSERT INTO training
SELECT l.*, a.t AS fa_t, a.a_score AS fa_a_score, a.a_tag AS fa_a_tag,
       b.t2 AS fb_t2, b.b_score AS fb_b_score, b.b_tag AS fb_b_tag
FROM labels l
ASOF JOIN fa a MATCH_CONDITION (l.ts ${OP} a.t) ON l.user_id = a.user_id
ASOF JOIN fb b MATCH_CONDITION (b.t2 ${REVERSED} l.ts) ON b.uid = l.user_id;
";

#[test]
fn a_pipelines_asof_join_builds_the_same_training_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = setup(dir);
    let out = dir.join("training").display().to_string();
    let pipeline = write(&dir.join("train.sql"), ASOF_PIPELINE);
    let pipeline = pipeline.to_str().unwrap();
    // `kiln COMMAND train.sql` with the variables, the time comparisons
    // of the two joins among them.
    let kiln_with = |command: &str, op: &str, reversed: &str| {
        let vars = [
            format!("DATA={data}"),
            format!("OUT={out}"),
            format!("OP={op}"),
            format!("REVERSED={reversed}"),
        ];
        let mut args = vec![command, pipeline];
        for v in &vars {
            args.extend(["--set", v.as_str()]);
        }
        kiln(dir, &args)
    };
    for (op, reversed, inclusive) in [(">", "<", "0"), (">=", "<=", "1")] {
        kiln_with("run", op, reversed).ok();
        let check = python_json(CHECK, &[&out, &data, inclusive, "-", "any-order"], &[]);
        assert_eq!(check["rows"], 700, "{check}");
        assert_eq!(check["bad"], serde_json::json!([]), "{op}: {check}");
        assert!(check["matched_a"].as_u64().unwrap() > 300, "{check}");
        if op == ">" {
            let duck = python_json(DUCKDB, &[&out, &data], &[]);
            assert_eq!(duck["differ"], 0, "{duck}");
        }
    }

    // The lineage names the exact version of each feature set read.
    let shown = kiln(dir, &["show", &out, "--output", "json"]).ok().json();
    let read = &shown["lineage"]["feature_sets_read"];
    assert_eq!(read.as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(read[0]["name"], "fa");
    assert_eq!(read[0]["version"], 0);
    assert_eq!(read[1]["name"], "fb");
    let text = kiln(dir, &["show", &out]).ok().stdout;
    assert!(text.contains("read:       feature set fb at"), "{text}");

    // `kiln explain` shows the as-of join, and `kiln check` points at what
    // it cannot plan.
    let plan = kiln_with("explain", ">", "<").ok().stdout;
    assert!(
        plan.contains("AsOfJoin: l.ts > a.t, on=[l.user_id = CAST(a.user_id AS Int64)]"),
        "{plan}"
    );
    assert!(plan.contains("AsOfJoinExec"), "{plan}");
    let e = kiln_with("check", "<", "<").failed().stdout;
    assert!(e.contains("train.sql:12:33: "), "{e}");
    assert!(e.contains("backward as-of joins only"), "{e}");
}

/// Features several times the memory limit, written straight into a
/// feature set's folder by pyarrow and committed by a pipeline.
const MAKE_LARGE: &str = r#"
import json, sys, datetime as dt, random
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
root = Path(sys.argv[1]); random.seed(3)
n, users = 600_000, 20_000
base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
(root / "raw").mkdir(parents=True)
user = [random.randrange(users) for _ in range(n)]
t = [base + dt.timedelta(seconds=random.randrange(0, 86400 * 30)) for _ in range(n)]
tab = pa.table({"user_id": pa.array(user, pa.int64()), "t": pa.array(t, pa.timestamp("us", "UTC")),
                "a": pa.array([random.random() for _ in range(n)]), "b": pa.array([random.randrange(1000) for _ in range(n)], pa.int64()),
                "c": pa.array([random.random() for _ in range(n)])})
for i in range(4):
    pq.write_table(tab.slice(i * n // 4, n // 4), root / "raw" / f"part-{i}.parquet")
(root / "labels").mkdir()
m = 40_000
labels = pa.table({"user_id": pa.array([random.randrange(users + 500) for _ in range(m)], pa.int64()),
                   "ts": pa.array([base + dt.timedelta(seconds=random.randrange(0, 86400 * 31)) for _ in range(m)], pa.timestamp("us", "UTC")),
                   "label": pa.array([random.randrange(2) for _ in range(m)], pa.int8())})
pq.write_table(labels, root / "labels" / "labels.parquet")
print(json.dumps({"bytes": tab.nbytes}))
"#;

const SAME_ROWS: &str = r#"
import json, sys
from deltalake import DeltaTable
a = DeltaTable(sys.argv[1]).to_pyarrow_table().to_pylist()
b = DeltaTable(sys.argv[2]).to_pyarrow_table().to_pylist()
print(json.dumps({"rows": len(a), "same": a == b, "matched": sum(r["f_t"] is not None for r in a)}))
"#;

#[test]
fn a_training_set_larger_than_the_memory_limit_builds_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data").display().to_string();
    let made = python_json(MAKE_LARGE, &[&data], &[]);
    write(
        &dir.join("f.sql"),
        "CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '${DATA}/raw/';\n\
         CREATE EXTERNAL TABLE f STORED AS FEATURES LOCATION '${DATA}/features/f' OPTIONS ('key' 'user_id,t', 'timestamp' 't');\n\
         INSERT INTO f SELECT * FROM raw;\n",
    );
    kiln(dir, &["run", "f.sql", "--set", &format!("DATA={data}")]).ok();
    let build = |out: &str, env: &[(&str, &str)]| {
        let labels = format!("{data}/labels/");
        let features = format!("{data}/features/f");
        let args = [
            "training-set",
            "--labels",
            &labels,
            "--entity",
            "user_id",
            "--label-time",
            "ts",
            "--features",
            &features,
            "--prefix",
            "f_",
            "--max-age",
            "7d",
            "--out",
            out,
        ];
        crate::common::kiln_env(dir, &args, env).ok();
    };
    build("whole", &[]);
    // A pool of about 5 MiB against features of about 24 MiB in memory.
    let limit = 8 << 20;
    assert!(made["bytes"].as_u64().unwrap() > 2 * limit, "{made}");
    build("bounded", &[("KILN_MEMORY_LIMIT", "8M")]);
    let whole = dir.join("whole").display().to_string();
    let bounded = dir.join("bounded").display().to_string();
    let same = python_json(SAME_ROWS, &[&whole, &bounded], &[]);
    assert_eq!(same["rows"], 40_000, "{same}");
    assert_eq!(same["same"], true, "{same}");
    assert!(same["matched"].as_u64().unwrap() > 20_000, "{same}");
}

#[test]
fn no_future_row_leaks_and_ties_are_broken_by_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(
        &dir.join("raw/f.csv"),
        "user,t,v\nu1,2026-03-01T10:00:00Z,early\nu1,2026-03-01T12:00:00Z,at-label\n\
         u1,2026-03-01T11:00:00Z,tie-a\nu1,2026-03-01T11:00:00Z,tie-b\nu2,2026-03-01T09:00:00Z,other\n",
    );
    write(
        &dir.join("f.sql"),
        "CREATE EXTERNAL TABLE raw STORED AS CSV LOCATION '${DIR}/raw/' OPTIONS ('format.has_header' 'true');\n\
         CREATE EXTERNAL TABLE f STORED AS FEATURES LOCATION '${DIR}/features/f' OPTIONS ('key' 'user,t', 'timestamp' 't');\n\
         INSERT INTO f SELECT user, CAST(t AS TIMESTAMP) AS t, v FROM raw;\n",
    );
    kiln(dir, &["run", "f.sql", "--set", &format!("DIR={}", dir.display())]).ok();
    // Labels as JSON lines with times in another zone: 12:00Z written as 13:00+01:00.
    let labels = "{\"user\": \"u1\", \"at\": \"2026-03-01T13:00:00+01:00\"}\n{\"user\": \"u3\", \"at\": \"2026-03-02T00:00:00Z\"}\n";
    write(&dir.join("labels.json"), labels);
    write(&dir.join("nd/part-0.ndjson"), labels);
    let read_from = |labels: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec![
            "training-set",
            "--labels",
            labels,
            "--entity",
            "user",
            "--label-time",
            "at",
            "--features",
            "features/f",
            "--prefix",
            "f_",
            "--out",
            "ts",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        kiln(dir, &args).ok();
        let rows = python_json(
            "import json, sys\nfrom deltalake import DeltaTable\n\
             t = DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
             print(json.dumps([{k: str(v) for k, v in r.items()} for r in t.to_pylist()]))",
            &[&dir.join("ts").display().to_string()],
            &[],
        );
        rows.as_array().unwrap().clone()
    };
    let read = |extra: &[&str]| read_from("labels.json", extra);
    let strict = read(&[]);
    assert_eq!(strict.len(), 2, "every label row once: {strict:?}");
    // The row exactly at the label time is not seen; of the two at 11:00
    // the one whose value sorts last wins, whatever the file order.
    assert_eq!(strict[0]["f_v"], "tie-b", "{strict:?}");
    assert_eq!(
        strict[1]["f_v"], "None",
        "an entity with no features gets nulls: {strict:?}"
    );
    let inclusive = read(&["--inclusive"]);
    assert_eq!(inclusive[0]["f_v"], "at-label", "{inclusive:?}");
    let young = read(&["--max-age", "30m"]);
    assert_eq!(
        young[0]["f_v"], "None",
        "an hour-old row is older than 30m: {young:?}"
    );
    // A folder of .ndjson files (DataFusion lists only *.json by itself).
    assert_eq!(read_from("nd", &[]), strict);
}

#[test]
fn training_set_mistakes_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(&dir.join("raw/f.csv"), "user,t,v\nu1,2026-03-01T10:00:00Z,1\n");
    write(
        &dir.join("f.sql"),
        "CREATE EXTERNAL TABLE raw STORED AS CSV LOCATION '${DIR}/raw/' OPTIONS ('format.has_header' 'true');\n\
         CREATE EXTERNAL TABLE f STORED AS FEATURES LOCATION '${DIR}/features/f' OPTIONS ('key' 'user');\n\
         INSERT INTO f SELECT user, CAST(t AS TIMESTAMP) AS t, v FROM raw;\n",
    );
    kiln(dir, &["run", "f.sql", "--set", &format!("DIR={}", dir.display())]).ok();
    write(
        &dir.join("labels.csv"),
        "user,t,label\nu1,2026-03-02T00:00:00Z,1\n",
    );
    let base = [
        "training-set",
        "--labels",
        "labels.csv",
        "--entity",
        "user",
        "--label-time",
        "t",
    ];
    let fails = |extra: &[&str]| -> String {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        kiln(dir, &args).failed().stderr
    };
    let e = fails(&["--features", "features/f", "--out", "ts"]);
    assert!(
        e.contains("declares no timestamp column: give --feature-time"),
        "{e}"
    );
    let e = fails(&["--features", "features/f", "--feature-time", "t", "--out", "ts"]);
    assert!(
        e.contains("column 't' comes from both the labels and feature set 'features/f'"),
        "{e}"
    );
    assert!(e.contains("--prefix"), "{e}");
    let e = fails(&["--prefix", "p_", "--features", "features/f", "--out", "ts"]);
    assert!(e.contains("--prefix must come after the --features"), "{e}");
    let e = fails(&[
        "--features",
        "features/f",
        "--feature-time",
        "when",
        "--prefix",
        "f_",
        "--out",
        "ts",
    ]);
    assert!(e.contains("no column 'when' (given by --feature-time"), "{e}");
    assert!(e.contains("in feature set 'features/f'"), "{e}");
    assert!(e.contains("user, t, v"), "the columns there are listed: {e}");
    let e = fails(&[
        "--features",
        "features/f@4",
        "--feature-time",
        "t",
        "--prefix",
        "f_",
        "--out",
        "ts",
    ]);
    assert!(e.contains("has no version 4"), "{e}");
    let e = fails(&[
        "--features",
        "features/f",
        "--feature-time",
        "t",
        "--prefix",
        "f_",
        "--out",
        "features/f",
    ]);
    assert!(e.contains("holds feature set versions of pipeline 'f'"), "{e}");
    assert!(!dir.join("ts").exists(), "nothing is written by a failed build");
}
