#!/usr/bin/env python3
"""`kiln stream` beside the ceiling of a bare Kafka consumer.

1. Starts a noida-db broker on 127.0.0.1 (or uses --brokers), creates a
   topic with 4 partitions and produces --events JSON clickstream records
   (benches/kafka_tool.rs).
2. Ceiling: a bare rdkafka consumer reads the whole topic and decodes every
   value with arrow's JSON decoder; no pipeline, no commit.
3. kiln: `kiln stream benches/stream_clicks.sql` (decode, derived columns,
   one Delta commit per micro-batch, --batch-interval 1s) from the start of
   the topic until every record is committed: events/s (to the last
   commit) and the worker's peak RSS.
4. Latency: with that worker caught up, --latency-events more records at
   --latency-rate per second; for each, the time from being produced to the
   commit of the version holding it (matched through the Kafka offset ranges
   in each commit's lineage): p50, p99, max.

Prints a Markdown table. A benchmark, not a test: it asserts nothing.

    cargo build --release && cargo bench --bench kafka_tool --no-run
    .venv/bin/python benches/stream_bench.py --kiln target/release/kiln --events 5000000
"""
import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_noida(work):
    binary = os.path.join(sysconfig.get_paths()["purelib"], "noida_db", "noida-db")
    port = free_port()
    data = os.path.join(work, "noida")
    os.makedirs(data)
    log = open(os.path.join(work, "noida.log"), "w")
    proc = subprocess.Popen(
        [binary, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("noida-db did not start")


def kafka_tool_path(target):
    found = sorted(glob.glob(os.path.join(target, "release", "deps", "kafka_tool-*")), key=os.path.getmtime)
    found = [f for f in found if os.access(f, os.X_OK) and not f.endswith(".d")]
    if not found:
        raise SystemExit("build it first: cargo bench --bench kafka_tool --no-run")
    return found[-1]


def tool(binary, *args):
    out = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kafka_tool {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def vm_hwm_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Commits:
    """The feature set's commits, read from its _delta_log as they appear
    (a directory listing and the new files only, so watching costs the
    measured worker next to no CPU)."""

    def __init__(self, location):
        self.log = os.path.join(location, "_delta_log")
        self.seen = set()
        self.rows = 0
        self.last_ms = 0
        self.count = 0

    def refresh(self):
        try:
            names = sorted(n for n in os.listdir(self.log) if n.endswith(".json") and n not in self.seen)
        except FileNotFoundError:
            return
        for name in names:
            with open(os.path.join(self.log, name)) as f:
                for line in f:
                    info = json.loads(line).get("commitInfo")
                    if info:
                        kiln = info.get("kiln") or {}
                        if isinstance(kiln, str):
                            kiln = json.loads(kiln)
                        self.rows += kiln.get("rows_written", 0)
                        self.last_ms = max(self.last_ms, info.get("timestamp", 0))
                        self.count += 1
            self.seen.add(name)


def wait_rows(commits, rows, proc, limit_s, samples):
    deadline = time.time() + limit_s
    while time.time() < deadline:
        samples.append(vm_hwm_mib(proc.pid))
        commits.refresh()
        if commits.rows >= rows:
            return
        if proc.poll() is not None:
            raise SystemExit(f"kiln stream exited early with {proc.returncode}")
        time.sleep(0.5)
    raise SystemExit(f"not all {rows} rows committed within {limit_s}s")


LATENCY = r"""
import bisect, json, sys
import pyarrow.compute as pc
from deltalake import DeltaTable
t = DeltaTable(sys.argv[1])
since = int(sys.argv[2])
data = t.to_pyarrow_table(columns=["sent_ms", "kafka_partition", "kafka_offset"])
data = data.filter(pc.greater_equal(data["sent_ms"], since))
ranges = {}
for h in t.history():
    k = h.get("kiln")
    if isinstance(k, str):
        k = json.loads(k)
    for r in (k or {}).get("kafka", []):
        ranges.setdefault(r["partition"], []).append((r["from"], r["to"], h["timestamp"]))
for p in ranges.values():
    p.sort()
lat = []
for part, off, sent in zip(*(data[c].to_pylist() for c in ["kafka_partition", "kafka_offset", "sent_ms"])):
    rs = ranges.get(part, [])
    i = bisect.bisect_right(rs, (off, float("inf"), 0)) - 1
    if i >= 0 and rs[i][0] <= off < rs[i][1]:
        lat.append((rs[i][2] - sent) / 1000.0)
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(json.dumps({"n": len(lat), "p50": pick(0.5), "p99": pick(0.99), "max": lat[-1]}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"))
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--brokers", help="a running broker (default: start noida-db here)")
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--latency-events", type=int, default=300_000)
    ap.add_argument("--latency-rate", type=float, default=20_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    kiln = os.path.abspath(args.kiln)
    kt = kafka_tool_path(args.target_dir)
    work = args.dir or tempfile.mkdtemp(prefix="kiln-stream-bench-")
    broker = None
    brokers = args.brokers
    if not brokers:
        broker, brokers = start_noida(work)
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        produced = tool(kt, "produce", brokers, topic, args.events, 4)
        print(f"produced {args.events:,} events in {produced['seconds']:.1f}s", file=sys.stderr)

        ceiling = tool(kt, "ceiling", brokers, topic)
        print(f"ceiling: {ceiling['events_per_s']:,.0f} events/s, {ceiling['peak_rss_mib']:.0f} MiB", file=sys.stderr)

        features = os.path.join(work, "features")
        location = os.path.join(features, "click_features")
        env = dict(os.environ, KAFKA=brokers, TOPIC=topic, GROUP=f"kiln-bench-{topic}", FEATURES=features)
        log = open(os.path.join(work, "stream.log"), "w")
        started = time.time()
        proc = subprocess.Popen(
            [kiln, "stream", os.path.join(HERE, "stream_clicks.sql"), "--batch-interval", "1s"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        samples = []
        commits = Commits(location)
        wait_rows(commits, args.events, proc, 1800, samples)
        kiln_s = commits.last_ms / 1000.0 - started
        kiln_rss = max(samples + [vm_hwm_mib(proc.pid)])
        print(f"kiln stream: {args.events / kiln_s:,.0f} events/s, {kiln_rss:.0f} MiB, {commits.count} versions",
              file=sys.stderr)

        since = int(time.time() * 1000)
        tool(kt, "produce", brokers, topic, args.latency_events, 0, args.latency_rate)
        wait_rows(commits, args.events + args.latency_events, proc, 600, samples)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        latency = json.loads(
            subprocess.run([sys.executable, "-c", LATENCY, location, str(since)], check=True,
                           capture_output=True, text=True).stdout
        )
        rss_all = max(samples)

        print("| measure | ceiling (rdkafka + arrow JSON decode) | kiln stream | kiln / ceiling |")
        print("|---|---:|---:|---:|")
        print(f"| events/s, {args.events:,} events backlog | {ceiling['events_per_s']:,.0f} | "
              f"{args.events / kiln_s:,.0f} | {args.events / kiln_s / ceiling['events_per_s']:.2f} |")
        print(f"| peak RSS | {ceiling['peak_rss_mib']:,.0f} MiB | {rss_all:,.0f} MiB | |")
        print()
        print(f"Event to committed version at {args.latency_rate:,.0f} events/s, --batch-interval 1s "
              f"({latency['n']:,} events): p50 {latency['p50']:.2f} s, p99 {latency['p99']:.2f} s, "
              f"max {latency['max']:.2f} s")
    finally:
        if broker:
            broker.kill()
            broker.wait()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
