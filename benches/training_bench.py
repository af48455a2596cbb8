#!/usr/bin/env python3
"""`kiln training-set` beside DuckDB's ASOF JOIN and Polars' join_asof.

For each size LABELSxFEATURES, makes once (seeded): a feature set of
FEATURES rows (user_id, a microsecond UTC time over 30 days, three feature
columns) committed by `kiln run` from Parquet, and LABELS label rows
(user_id, a label time, a label) in one Parquet file. Then, as separate
processes on the same files, each --repeat times (medians reported):
  - kiln:   `kiln training-set` (reads the Delta version, joins, writes and
            commits a new Delta version with statistics and lineage)
  - DuckDB: ASOF LEFT JOIN over the feature set's Parquet files, to Parquet
  - Polars: sort both sides, join_asof(by=user_id, backward, strict), to Parquet
  - kiln under --memory-limit (when given): the same command with
            KILN_MEMORY_LIMIT set, for inputs larger than the limit
and prints a Markdown table of wall time and peak RSS per engine, kiln's
time and memory over the faster peer's, and whether the outputs agree
(rows, matched rows, and the sum of every numeric feature column).

    .venv/bin/python benches/training_bench.py --kiln target/release/kiln --sizes 1000000x10000000

Needs duckdb, deltalake and polars (2.1.0) in the Python running it. This
is a benchmark, not a test: it asserts nothing.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import child_peak_rss_after  # noqa: E402

# Seeded by the row number: hash() is deterministic, whatever the threads.
MAKE = r"""
import duckdb, os, sys
root, labels, features = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
users = max(1000, features // 50)
os.makedirs(f"{root}/raw", exist_ok=True)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
span = 30 * 86_400_000_000
con.execute(f'''COPY (
  SELECT (hash(i) % {users})::BIGINT AS user_id,
         make_timestamptz(1767225600000000 + (hash(i * 7 + 1) % {span})::BIGINT) AS t,
         (hash(i * 7 + 2) % 500)::BIGINT AS clicks_7d,
         (hash(i * 7 + 3) % 1000000) / 10000.0 AS spend_7d,
         ['new', 'casual', 'loyal', 'lapsed'][(hash(i * 7 + 4) % 4)::INT + 1] AS segment
  FROM range({features}) r(i)
) TO '{root}/raw' (FORMAT PARQUET, PER_THREAD_OUTPUT true)''')
con.execute(f'''COPY (
  SELECT (hash(i * 13 + 5) % {int(users * 1.1)})::BIGINT AS user_id,
         make_timestamptz(1767225600000000 + (hash(i * 13 + 6) % {span})::BIGINT) AS ts,
         (hash(i * 13 + 7) % 2)::TINYINT AS label
  FROM range({labels}) r(i)
) TO '{root}/labels.parquet' (FORMAT PARQUET)''')
"""

PIPELINE = """
CREATE EXTERNAL TABLE raw STORED AS PARQUET LOCATION '${ROOT}/raw/';
CREATE EXTERNAL TABLE user_features STORED AS FEATURES LOCATION '${ROOT}/user_features'
  OPTIONS ('key' 'user_id,t', 'timestamp' 't', 'mode' 'overwrite');
INSERT INTO user_features SELECT * FROM raw;
"""

DUCKDB = r"""
import duckdb, sys
root, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
con.execute(f'''COPY (
  SELECT l.*, f.t AS f_t, f.clicks_7d AS f_clicks_7d, f.spend_7d AS f_spend_7d, f.segment AS f_segment
  FROM read_parquet('{root}/labels.parquet') l
  ASOF LEFT JOIN read_parquet('{root}/user_features/*.parquet') f
    ON l.user_id = f.user_id AND l.ts > f.t
) TO '{out}' (FORMAT PARQUET)''')
"""

POLARS = r"""
import polars as pl, sys
root, out = sys.argv[1], sys.argv[2]
labels = pl.scan_parquet(f"{root}/labels.parquet").sort("ts")
features = (pl.scan_parquet(f"{root}/user_features/*.parquet").sort("t")
            .rename({"clicks_7d": "f_clicks_7d", "spend_7d": "f_spend_7d", "segment": "f_segment"}))
joined = labels.join_asof(features, left_on="ts", right_on="t", by="user_id",
                          strategy="backward", allow_exact_matches=False, check_sortedness=False)
joined.rename({"t": "f_t"}).sink_parquet(out)
"""

SUMMARY = r"""
import duckdb, json, sys
from deltalake import DeltaTable
kind, path, select = sys.argv[1], sys.argv[2], sys.argv[3]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
if kind == "delta":
    con.register("r", DeltaTable(path).to_pyarrow_table())
else:
    con.execute(f"CREATE VIEW r AS SELECT * FROM read_parquet('{path}')")
row = con.execute(f"SELECT {select} FROM r").fetchall()[0]
print(json.dumps([float(v) if v is not None else None for v in row]))
"""


def summarize(kind, path, select):
    """`SELECT select FROM` the output (a Delta table or a Parquet file), as
    floats, to compare engines' outputs by."""
    out = subprocess.run([sys.executable, "-c", SUMMARY, kind, path, select], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--sizes", nargs="+", default=["1000000x10000000"], help="LABELSxFEATURES")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/kiln-training-bench")
    parser.add_argument("--memory-limit", help="also run kiln with KILN_MEMORY_LIMIT set to this (e.g. 256M)")
    args = parser.parse_args()
    kiln = os.path.abspath(args.kiln)
    py = sys.executable
    rows = []
    for size in args.sizes:
        labels, features = (int(x) for x in size.split("x"))
        root = os.path.join(args.dir, size)
        if not os.path.exists(os.path.join(root, "labels.parquet")):
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            print(f"making {size}", file=sys.stderr)
            subprocess.run([py, "-c", MAKE, root, str(labels), str(features)], check=True)
            with open(os.path.join(root, "features.sql"), "w") as f:
                f.write(PIPELINE)
            subprocess.run([kiln, "run", os.path.join(root, "features.sql"), "--set", f"ROOT={root}"],
                           check=True, stdout=subprocess.DEVNULL)
        engines = {
            "kiln": (lambda out: [kiln, "training-set", "--labels", f"{root}/labels.parquet", "--entity", "user_id",
                                  "--label-time", "ts", "--features", f"{root}/user_features", "--prefix", "f_",
                                  "--out", out], "delta"),
            "duckdb": (lambda out: [py, "-c", DUCKDB, root, out], "parquet"),
            "polars": (lambda out: [py, "-c", POLARS, root, out], "parquet"),
        }
        envs = {name: None for name in engines}
        if args.memory_limit:
            engines["kiln bounded"] = engines["kiln"]
            envs["kiln bounded"] = dict(os.environ, KILN_MEMORY_LIMIT=args.memory_limit)
        result = {}
        for name, (cmd, kind) in engines.items():
            runs = []
            for r in range(args.repeat):
                out = os.path.join(root, f"out-{name.replace(' ', '-')}" + ("" if kind == "delta" else ".parquet"))
                shutil.rmtree(out, ignore_errors=True) if kind == "delta" else (os.path.exists(out) and os.remove(out))
                runs.append(child_peak_rss_after(cmd(out), envs[name]))
                print(f"{size} {name} run {r + 1}: {runs[-1][0]:.2f} s, {runs[-1][1]:.0f} MiB", file=sys.stderr)
            summary = summarize(kind, out, "count(*), count(f_t), sum(f_clicks_7d), round(sum(f_spend_7d), 3), "
                                "count(f_segment)")
            result[name] = (statistics.median(t for t, _ in runs), statistics.median(m for _, m in runs), summary)
        rows.append((labels, features, result))

    print("| labels × feature rows | DuckDB | Polars | kiln | kiln / faster peer (time) | kiln / lower peer (memory) | outputs agree |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for labels, features, r in rows:
        (kt, km, ks), (dt, dm, ds), (pt, pm, ps) = r["kiln"], r["duckdb"], r["polars"]
        agree = "yes" if ks == ds == ps else f"kiln {ks} duckdb {ds} polars {ps}"
        print(f"| {labels / 1e6:g} M × {features / 1e6:g} M | {dt:.2f} s · {dm:,.0f} MiB | {pt:.2f} s · {pm:,.0f} MiB "
              f"| {kt:.2f} s · {km:,.0f} MiB | {kt / min(dt, pt):.2f} | {km / min(dm, pm):.2f} | {agree} |")
        if "kiln bounded" in r:
            bt, bm, bs = r["kiln bounded"]
            same = "yes" if bs == ks else f"bounded {bs} kiln {ks}"
            print(f"| ... kiln with KILN_MEMORY_LIMIT={args.memory_limit} | | | {bt:.2f} s · {bm:,.0f} MiB | "
                  f"{bt / min(dt, pt):.2f} | {bm / min(dm, pm):.2f} | {same} |")


if __name__ == "__main__":
    main()
