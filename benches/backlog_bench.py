#!/usr/bin/env python3
"""A bounded `kiln run` over a Kafka backlog several times KILN_MEMORY_LIMIT.

1. Starts a tansu broker on 127.0.0.1 (or uses --brokers). tansu honours
   fetch.max.bytes; noida-db answers a fetch with the whole rest of the
   partition, so there any consumer of a backlog holds it all.
2. Produces --events JSON clickstream records into a topic with
   --partitions partitions (benches/kafka_tool.rs) and sums the bytes of
   their values from the topic itself.
3. Runs `kiln run benches/stream_clicks.sql` once from the start of the
   topic with KILN_MEMORY_LIMIT=--memory-limit: the source is fetched while
   the query runs and the feature set's Parquet files are written as the
   rows arrive, committed once at the end. Measures the process's peak RSS
   (its VmHWM, read every 20 ms until it exits) and its time.
4. Reads the feature set back with the deltalake package (an independent
   reader) and checks that it holds every event once.

Prints a Markdown table. A benchmark, not a test: apart from the row check
it asserts nothing.

    cargo build --bin kiln --bench kafka_tool      # or --release
    .venv/bin/python benches/backlog_bench.py --kiln target/debug/kiln \\
        --tool target/debug/deps/kafka_tool-<hash> --events 3000000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_bench import ROOT, start_tansu, tool, vm_hwm_mib, wait_idle  # noqa: E402


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B").rstrip("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True, help="the kiln binary")
    ap.add_argument("--tool", required=True, help="the kafka_tool bench binary")
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--memory-limit", default="256M", help="KILN_MEMORY_LIMIT for the run")
    ap.add_argument("--brokers", help="use this broker instead of starting tansu")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln-backlog-")
    broker = None
    brokers = args.brokers
    if not brokers:
        broker, brokers = start_tansu(work)
    try:
        topic = f"backlog-{uuid.uuid4().hex[:8]}"
        produced = tool(args.tool, "produce", brokers, topic, args.events, args.partitions)
        print(f"produced: {produced}", file=sys.stderr)
        backlog = produced.get("bytes") or 0

        env = dict(os.environ)
        env.update({
            "TOPIC": topic,
            "KAFKA": brokers,
            "GROUP": f"backlog-{uuid.uuid4().hex[:8]}",
            "FEATURES": os.path.join(work, "features"),
            "KILN_MEMORY_LIMIT": args.memory_limit,
            "RUST_LOG": "warn",
        })
        # What the broker holds (tansu may keep fewer records than were sent),
        # read by a bare consumer: the count to check against, and its peak
        # RSS for comparison.
        wait_idle(broker)
        ceiling = tool(args.tool, "ceiling", brokers, topic)
        print(f"bare consumer: {ceiling}", file=sys.stderr)
        from deltalake import DeltaTable

        runs = []
        rows = distinct = 0
        while (not runs or runs[-1]["records"] > 0) and len(runs) < 3:
            started = time.time()
            proc = subprocess.Popen(
                [args.kiln, "run", os.path.join(ROOT, "benches", "stream_clicks.sql"), "--output", "json"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            # The child's own high-water mark (VmHWM), read until it exits:
            # getrusage would count this Python process's size at the fork.
            peak = 0.0
            while proc.poll() is None:
                peak = max(peak, vm_hwm_mib(proc.pid))
                time.sleep(0.02)
            out, err = proc.stdout.read(), proc.stderr.read()
            if proc.returncode != 0:
                raise SystemExit(f"kiln run failed ({proc.returncode}):\n{err[-4000:]}")
            summary = json.loads(out)
            runs.append({"seconds": time.time() - started, "peak_mib": peak,
                         "records": (summary.get("kafka") or {}).get("records", 0)})
            print(f"run {len(runs)}: {runs[-1]}", file=sys.stderr)
            table = DeltaTable(os.path.join(work, "features", "click_features"))
            ids = table.to_pyarrow_table(columns=["event_id"]).column("event_id")
            rows, distinct = len(ids), len(set(ids.to_pylist()))
        # tansu may drop some of what the producer sends (kafka_tool does not
        # wait for delivery reports), and the bare consumer counts records
        # it is served twice: the check is every offset of the topic once,
        # nothing left for a next run.
        read = sum(r["records"] for r in runs)
        if rows != read or distinct != rows or runs[-1]["records"] != 0 and len(runs) == 3:
            raise SystemExit(f"the feature set holds {rows} rows, {distinct} distinct, of {read} records read")
        first = runs[0]
        elapsed = first["seconds"]
        peak_mib = max(r["peak_mib"] for r in runs)

        limit = parse_size(args.memory_limit)
        print("| measure | value |")
        print("|---|---|")
        print(f"| events | {rows:,} in the topic over {args.partitions} partitions ({args.events:,} sent) |")
        if backlog:
            print(f"| backlog (record values) | {backlog / 2**20:,.0f} MiB |")
        print(f"| KILN_MEMORY_LIMIT | {limit / 2**20:,.0f} MiB |")
        print(f"| kiln peak RSS | {peak_mib:,.0f} MiB |")
        print(f"| bare consumer's peak RSS (reads and decodes, keeps nothing) | {ceiling['peak_rss_mib']:,.0f} MiB |")
        print(f"| rows committed (read back by deltalake) | {rows:,}, each event once |")
        print(f"| runs (one version each) | {len(runs)}: " + ", ".join(f"{r['records']:,}" for r in runs) + " records |")
        print(f"| first run | {elapsed:,.1f} s ({first['records'] / elapsed:,.0f} events/s) |")
    finally:
        if broker:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    main()
