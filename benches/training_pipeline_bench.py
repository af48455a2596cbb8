#!/usr/bin/env python3
"""A training set from raw events in one go: kiln's pipeline against DuckDB's
one query.

Over the click stream `kiln demo --events N` makes (its `raw/events/`), and
LABELS label rows (user id, a label time over the same 30 days, a label)
made once, seeded, in one Parquet file, each engine in a fresh process:
  - kiln:   one pipeline, `kiln run`: per-user daily features from the raw
            events in a WITH, then `ASOF JOIN` of the labels to them (a
            day's row counts once the day is over), committed as a Delta
            version with statistics and lineage
  - DuckDB: the same as one query, `ASOF LEFT JOIN`, to Parquet
each --repeat times (medians reported), and prints a Markdown table of wall
time and peak RSS, kiln's over DuckDB's, and whether the outputs agree
(rows, matched rows, the sums of the feature columns).

    .venv/bin/python benches/training_pipeline_bench.py --kiln target/release/kiln --raw data/raw --labels 1000000

Needs duckdb and deltalake in the Python running it. This is a benchmark,
not a test: it asserts nothing.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench import child_peak_rss_after  # noqa: E402
from training_bench import summarize  # noqa: E402

MAKE_LABELS = r"""
import duckdb, sys
raw, out, labels = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
users, start, span = con.execute(f'''
  SELECT max(user_id) + 1, epoch_us(min(event_time)), epoch_us(max(event_time)) - epoch_us(min(event_time))
  FROM read_parquet('{raw}/events/*/*.parquet')''').fetchall()[0]
con.execute(f'''COPY (
  SELECT (hash(i * 13 + 5) % {users})::BIGINT AS user_id,
         make_timestamptz({start} + (hash(i * 13 + 6) % {span})::BIGINT) AS ts,
         (hash(i * 13 + 7) % 2)::TINYINT AS label
  FROM range({labels}) r(i)
) TO '{out}' (FORMAT PARQUET)''')
"""

DAILY = """
    SELECT user_id, CAST(event_time AS DATE) AS day,
           count(*) AS events, count(DISTINCT item_id) AS distinct_items,
           avg(dwell_ms) AS avg_dwell_ms,
           count(*) FILTER (WHERE event_type = 'purchase') AS purchases
    FROM events GROUP BY 1, 2"""

PIPELINE = f"""
CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '${{RAW}}/events/';
CREATE EXTERNAL TABLE labels STORED AS PARQUET LOCATION '${{LABELS}}';
CREATE EXTERNAL TABLE training STORED AS FEATURES LOCATION '${{OUT}}'
  OPTIONS ('key' 'user_id,ts', 'timestamp' 'ts', 'mode' 'overwrite');
INSERT INTO training
WITH daily AS ({DAILY})
SELECT l.user_id, l.ts, l.label, d.day, d.events, d.distinct_items, d.avg_dwell_ms, d.purchases
FROM labels l
ASOF JOIN daily d MATCH_CONDITION (l.ts >= d.day + INTERVAL '1 day') ON l.user_id = d.user_id;
"""

DUCKDB = r"""
import duckdb, sys
raw, labels, out, daily = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute("SET enable_progress_bar = false")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{raw}/events/*/*.parquet', hive_partitioning = false)")
con.execute(f'''COPY (
  WITH daily AS ({daily}),
  available AS (SELECT *, CAST(day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS at FROM daily)
  SELECT l.user_id, l.ts, l.label, d.day, d.events, d.distinct_items, d.avg_dwell_ms, d.purchases
  FROM read_parquet('{labels}') l
  ASOF LEFT JOIN available d ON l.user_id = d.user_id AND l.ts >= d.at
) TO '{out}' (FORMAT PARQUET)''')
"""

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--raw", required=True, help="the raw/ folder `kiln demo` made")
    parser.add_argument("--labels", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default="/tmp/kiln-training-pipeline-bench")
    args = parser.parse_args()
    kiln, raw = os.path.abspath(args.kiln), os.path.abspath(args.raw)
    py = sys.executable
    os.makedirs(args.dir, exist_ok=True)
    labels = os.path.join(args.dir, f"labels-{args.labels}.parquet")
    if not os.path.exists(labels):
        subprocess.run([py, "-c", MAKE_LABELS, raw, labels, str(args.labels)], check=True)
    pipeline = os.path.join(args.dir, "training.sql")
    with open(pipeline, "w") as f:
        f.write(PIPELINE)
    kiln_out = os.path.join(args.dir, "out-kiln")
    duck_out = os.path.join(args.dir, "out-duckdb.parquet")
    engines = {
        "kiln": ([kiln, "run", pipeline, "--set", f"RAW={raw}", "--set", f"LABELS={labels}",
                  "--set", f"OUT={kiln_out}"], "delta", kiln_out),
        "duckdb": ([py, "-c", DUCKDB, raw, labels, duck_out, DAILY], "parquet", duck_out),
    }
    result = {}
    for name, (cmd, kind, out) in engines.items():
        runs = []
        for r in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True) if kind == "delta" else (os.path.exists(out) and os.remove(out))
            runs.append(child_peak_rss_after(cmd))
            print(f"{name} run {r + 1}: {runs[-1][0]:.2f} s, {runs[-1][1]:.0f} MiB", file=sys.stderr)
        summary = summarize(kind, out, "count(*), count(day), sum(events), sum(distinct_items), "
                            "round(sum(avg_dwell_ms), 0), sum(purchases)")
        result[name] = (statistics.median(t for t, _ in runs), statistics.median(m for _, m in runs), summary)
    (kt, km, ks), (dt, dm, ds) = result["kiln"], result["duckdb"]
    agree = "yes" if ks == ds else f"kiln {ks} duckdb {ds}"
    print("| labels | DuckDB | kiln | kiln / DuckDB (time) | kiln / DuckDB (memory) | outputs agree |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    print(f"| {args.labels / 1e6:g} M | {dt:.2f} s · {dm:,.0f} MiB | {kt:.2f} s · {km:,.0f} MiB "
          f"| {kt / dt:.2f} | {km / dm:.2f} | {agree} |")


if __name__ == "__main__":
    main()
