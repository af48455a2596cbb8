#!/usr/bin/env python3
"""kiln beside DuckDB and Polars on the sample pipelines.

For each event count, makes the demo data once (`kiln demo`), then for each
sample pipeline runs, as separate processes on the same files:
  - kiln:   `kiln run pipelines/X.sql` (plan, execute, commit a Delta version
            with statistics and lineage)
  - DuckDB: the same SELECT over the same Parquet files, written to Parquet
  - Polars: the same pipeline in Polars' lazy API (benches/polars_pipelines.py),
            sunk to Parquet
each --repeat times (the median is reported), and prints a Markdown table
of wall time and peak RSS per engine, kiln's time over the faster peer's,
and whether the outputs agree (row count and the sum of every numeric
column, kiln against each peer). Incremental sources are read in full.

At the sizes given by --baseline-events it also runs kiln with its planner
rewrites off (KILN_REWRITES=none), to show what they are worth.

    .venv/bin/python benches/bench.py --kiln target/release/kiln --events 1000000 10000000

Run it with a Python that has duckdb and deltalake
(scripts/requirements-test.txt) and polars (pip install polars==2.1.0). This is a benchmark, not a test: it
asserts nothing.
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINES = os.path.join(HERE, "..", "pipelines")
NAMES = ["user_daily", "item_daily", "user_trailing_7d", "event_enriched", "activity_totals", "user_vs_usual"]
POLARS_RUNNER = os.path.join(HERE, "polars_pipelines.py")

DUCKDB_RUNNER = r"""
import duckdb, sys
sql, out, limit, targets = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
if limit:
    con.execute(f"SET memory_limit = '{limit}'")
con.execute("SET preserve_insertion_order = false")
con.execute(sql)
for t in targets:
    con.execute(f"COPY (SELECT * FROM result_{t}) TO '{out}/{t}.parquet' (FORMAT PARQUET)")
"""


def outputs_agree(kiln_table, duckdb_file):
    """Same rows and, per numeric column, the same sum (within 1e-9 of the
    column's summed magnitude)."""
    import duckdb
    from deltalake import DeltaTable

    k = DeltaTable(kiln_table).to_pyarrow_table()
    d = duckdb.sql(f"SELECT * FROM read_parquet('{duckdb_file}')").arrow()
    if hasattr(d, "read_all"):
        d = d.read_all()
    if k.num_rows != d.num_rows:
        return f"rows {k.num_rows} vs {d.num_rows}"
    import pyarrow.compute as pc
    import pyarrow as pa

    for name in k.column_names:
        col = k[name]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            continue
        a = pc.sum(col).as_py() or 0
        b = pc.sum(d[name]).as_py() or 0
        # Relative to the magnitude summed: a column of deviations sums to
        # about zero, and rounding alone moves that sum.
        scale = pc.sum(pc.abs(col)).as_py() or 0
        if abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b), scale):
            return f"sum({name}) {a} vs {b}"
    return "yes"


def child_peak_rss_after(cmd, env=None):
    """Run cmd; return (seconds, peak RSS in MiB of that child)."""
    # ru_maxrss of RUSAGE_CHILDREN is the max over all waited-for children,
    # so each measurement runs in a fresh intermediate process.
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
        "dt = time.perf_counter() - t\n"
        "if r.returncode != 0:\n"
        "    sys.stderr.write(r.stderr.decode()); sys.exit(r.returncode)\n"
        "print(json.dumps([dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe] + cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def duckdb_sql(pipeline_text, raw):
    """The pipeline's SELECTs as tables result_TARGET, with its sources as
    DuckDB views; and the targets, in order."""
    text = re.sub(r"--[^\n]*", "", pipeline_text)
    stmts = [s.strip() for s in text.split(";") if s.strip()]
    views = []
    tables = []
    targets = []
    for s in stmts:
        m = re.match(r"CREATE EXTERNAL TABLE (\w+).*?STORED AS (\w+)\s+LOCATION '([^']+)'", s, re.S | re.I)
        if m and m.group(2).upper() == "PARQUET":
            loc = m.group(3).replace("${RAW:-data/raw}", raw).rstrip("/")
            glob = f"{loc}/*/*.parquet" if m.group(1) == "events" else f"{loc}/*.parquet"
            views.append(
                f"CREATE VIEW {m.group(1)} AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
            )
        elif s.upper().startswith("INSERT INTO"):
            target = re.match(r"INSERT INTO (\w+)", s, re.I).group(1)
            query = re.sub(r"^INSERT INTO \w+\s*", "", s, flags=re.I)
            tables.append(f"CREATE TABLE result_{target} AS {query}")
            targets.append(target)
    return ";\n".join(views + tables), targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(HERE, "..", "target", "release", "kiln"))
    ap.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--python", default=sys.executable, help="a Python with duckdb installed")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir)")
    ap.add_argument(
        "--memory-limit",
        default="",
        help="one memory budget for both engines, e.g. 1GB (KILN_MEMORY_LIMIT and DuckDB's memory_limit); "
        "default: each engine's own default",
    )
    ap.add_argument(
        "--baseline-events",
        type=int,
        nargs="*",
        default=[1_000_000],
        help="sizes at which kiln also runs without its rewrites (DataFusion's own plans)",
    )
    ap.add_argument("--repeat", type=int, default=2, help="runs per engine and pipeline; the median is reported")
    ap.add_argument("--only", nargs="*", default=NAMES, help="the pipelines to run")
    ap.add_argument(
        "--kiln-only",
        action="store_true",
        help="run kiln alone (sizes the peers cannot hold in memory, with --memory-limit)",
    )
    args = ap.parse_args()
    kiln = os.path.abspath(args.kiln)
    work = args.dir or tempfile.mkdtemp(prefix="kiln-bench-")
    rows = []
    baseline = []
    alone = []

    def median_of(cmd, env=None, before=None):
        runs = []
        for _ in range(args.repeat):
            if before:
                before()
            runs.append(child_peak_rss_after(cmd, env=env))
        return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)

    kiln_env = dict(os.environ)
    if args.memory_limit:
        kiln_env["KILN_MEMORY_LIMIT"] = args.memory_limit.upper().removesuffix("B")
    for n in args.events:
        base = os.path.join(work, f"e{n}")
        subprocess.run(
            [kiln, "demo", "--dir", base, "--events", str(n)], check=True, stdout=subprocess.DEVNULL, env=kiln_env
        )
        raw = os.path.join(base, "raw")
        for name in args.only:
            path = os.path.join(PIPELINES, f"{name}.sql")
            feats = os.path.join(base, "bench-features")
            # Incremental sources would read nothing on a second run: bench a
            # copy that reads everything, as the peers do.
            text = open(path).read().replace("OPTIONS ('incremental' 'true')", "")
            copy = os.path.join(base, f"bench-{name}.sql")
            open(copy, "w").write(text)
            run = [kiln, "run", copy, "--set", f"RAW={raw}", "--set", f"FEATURES={feats}"]
            fresh = lambda: shutil.rmtree(feats, ignore_errors=True)
            k_s, k_mb = median_of(run, env=kiln_env, before=fresh)
            if args.kiln_only:
                alone.append((name, n, k_s, k_mb))
                print(f"{name} @ {n}: kiln {k_s:.2f}s {k_mb:.0f} MiB", file=sys.stderr)
                continue
            sql, targets = duckdb_sql(text, raw)
            duck_out = os.path.join(base, f"duck-{name}")
            polars_out = os.path.join(base, f"polars-{name}")
            for d in (duck_out, polars_out):
                os.makedirs(d, exist_ok=True)
            d_s, d_mb = median_of([args.python, "-c", DUCKDB_RUNNER, sql, duck_out, args.memory_limit, ",".join(targets)])
            p_s, p_mb = median_of([args.python, POLARS_RUNNER, name, raw, polars_out])
            disagree = []
            for t in targets:
                table = os.path.join(feats, t)
                for peer, out in (("DuckDB", duck_out), ("Polars", polars_out)):
                    verdict = outputs_agree(table, os.path.join(out, f"{t}.parquet"))
                    if verdict != "yes":
                        disagree.append(f"{peer} {t}: {verdict}")
            agree = "; ".join(disagree) or "yes"
            rows.append((name, n, k_s, k_mb, d_s, d_mb, p_s, p_mb, agree))
            print(
                f"{name} @ {n}: kiln {k_s:.2f}s {k_mb:.0f} MiB, duckdb {d_s:.2f}s {d_mb:.0f} MiB, "
                f"polars {p_s:.2f}s {p_mb:.0f} MiB, agree: {agree}",
                file=sys.stderr,
            )
            if n in args.baseline_events:
                env = dict(kiln_env, KILN_REWRITES="none")
                b_s, b_mb = median_of(run, env=env, before=fresh)
                baseline.append((name, n, k_s, k_mb, b_s, b_mb))
                print(f"{name} @ {n}: kiln without rewrites {b_s:.2f}s {b_mb:.0f} MiB", file=sys.stderr)
    if alone:
        limit = args.memory_limit or "none"
        print("| pipeline | events | KILN_MEMORY_LIMIT | kiln s | kiln peak RSS |")
        print("|---|---:|---:|---:|---:|")
        for name, n, k_s, k_mb in alone:
            print(f"| {name} | {n:,} | {limit} | {k_s:.2f} | {k_mb:,.0f} MiB |")
        return
    print(
        "| pipeline | events | kiln s | DuckDB s | Polars s | kiln / faster peer | kiln peak RSS | DuckDB peak RSS "
        "| Polars peak RSS | RSS kiln / lower peer | outputs agree |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, n, k_s, k_mb, d_s, d_mb, p_s, p_mb, agree in rows:
        print(
            f"| {name} | {n:,} | {k_s:.2f} | {d_s:.2f} | {p_s:.2f} | {k_s / min(d_s, p_s):.2f} | {k_mb:,.0f} MiB "
            f"| {d_mb:,.0f} MiB | {p_mb:,.0f} MiB | {k_mb / min(d_mb, p_mb):.2f} | {agree} |"
        )
    if baseline:
        print()
        print("| pipeline | events | kiln s | kiln peak RSS | without rewrites s | without rewrites peak RSS |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, n, k_s, k_mb, b_s, b_mb in baseline:
            print(f"| {name} | {n:,} | {k_s:.2f} | {k_mb:,.0f} MiB | {b_s:.2f} | {b_mb:,.0f} MiB |")

if __name__ == "__main__":
    main()
