#!/usr/bin/env python3
"""Latency of `kiln worker`: from a trigger produced to its version committed.

1. Starts a broker on 127.0.0.1 (noida-db, or tansu with --broker tansu; or
   uses --brokers) and creates a trigger topic (benches/kafka_tool.rs).
2. Starts `kiln worker` over a folder with one small pipeline (200 rows of
   CSV into an append feature set, the trigger's ${DATE} in every row) and
   waits until it holds the topic's partitions.
3. Sends --triggers triggers with `kiln trigger`, one at a time: each is sent
   once the previous one's version is committed, so every figure is the
   latency of an idle worker, not of a queue.
4. For each trigger: latency = the Delta commit's timestamp (its commitInfo,
   in the feature set's log) - the trigger message's timestamp (set by the
   producer, printed by `kiln trigger --output json`), split at the
   broker's acknowledgement (`kiln trigger` is a fresh producer each time:
   it connects and sets up its idempotent session before the first send is
   acknowledged). All from this machine's clock. Also when the worker took
   the trigger off the topic and how long its run took (both from the
   worker's report).

Prints a Markdown table (median, p90, p99, max). A benchmark, not a test:
it asserts only that every trigger committed once.

    cargo build --bin kiln --bench kafka_tool      # or --release
    .venv/bin/python benches/trigger_latency.py --kiln target/debug/kiln \\
        --tool target/debug/deps/kafka_tool-<hash> --triggers 100
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_bench import start_noida, start_tansu, tool  # noqa: E402

PIPELINE = """CREATE EXTERNAL TABLE landed (id BIGINT NOT NULL, user_id BIGINT NOT NULL, value DOUBLE)
STORED AS CSV LOCATION '{landing}' OPTIONS ('has_header' 'true');
CREATE EXTERNAL TABLE fs STORED AS FEATURES LOCATION '{out}' OPTIONS ('key' 'id', 'mode' 'append');
INSERT INTO fs SELECT id, user_id, value, '${{DATE}}' AS day FROM landed;
"""


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def commit_timestamp_ms(table, version):
    with open(os.path.join(table, "_delta_log", f"{version:020}.json")) as f:
        for line in f:
            action = json.loads(line)
            if "commitInfo" in action:
                return action["commitInfo"]["timestamp"]
    raise SystemExit(f"no commitInfo in version {version} of {table}")


def reports(path):
    out = {}
    with open(path) as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "status" in r:
                out.setdefault(r["id"], []).append(r)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kiln", required=True, help="the kiln binary")
    ap.add_argument("--tool", required=True, help="the kafka_tool bench binary")
    ap.add_argument("--triggers", type=int, default=100)
    ap.add_argument("--broker", choices=["noida", "tansu"], default="noida")
    ap.add_argument("--brokers", help="use this broker instead of starting one")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln-trigger-latency-")
    broker = None
    brokers = args.brokers
    if not brokers:
        broker, brokers = (start_noida if args.broker == "noida" else start_tansu)(work)
    worker = None
    try:
        topic = f"triggers-{uuid.uuid4().hex[:8]}"
        tool(args.tool, "produce", brokers, topic, 0, 1)
        landing = os.path.join(work, "landing")
        os.makedirs(landing)
        with open(os.path.join(landing, "a.csv"), "w") as f:
            f.write("id,user_id,value\n" + "".join(f"{i},{i % 7},{i}.5\n" for i in range(200)))
        table = os.path.join(work, "features", "small")
        os.makedirs(os.path.join(work, "pipelines"))
        with open(os.path.join(work, "pipelines", "small.sql"), "w") as f:
            f.write(PIPELINE.format(landing=landing + "/", out=table))

        out_path = os.path.join(work, "worker.out")
        err_path = os.path.join(work, "worker.err")
        env = dict(os.environ, KILN_LOG="info")
        worker = subprocess.Popen(
            [args.kiln, "--log-format", "json", "worker", "--triggers", f"kafka://{topic}",
             "--pipelines", os.path.join(work, "pipelines"), "-b", brokers,
             "-X", "receive.message.max.bytes=2147483647", "--output", "json"],
            stdout=open(out_path, "w"), stderr=open(err_path, "w"), env=env, cwd=work,
        )
        deadline = time.time() + 60
        while "trigger partitions assigned" not in open(err_path).read():
            if time.time() > deadline or worker.poll() is not None:
                raise SystemExit(f"the worker never joined:\n{open(err_path).read()[-3000:]}")
            time.sleep(0.1)

        latencies, from_ack, acks, waits, runs = [], [], [], [], []
        for i in range(args.triggers):
            sent = subprocess.run(
                [args.kiln, "trigger", "small", "--set", f"DATE=d{i}", "--id", f"t-{i}",
                 "--topic", topic, "-b", brokers, "--output", "json"],
                capture_output=True, text=True, check=True,
            )
            sent = json.loads(sent.stdout)
            deadline = time.time() + 120
            while True:
                done = reports(out_path).get(f"t-{i}")
                if done:
                    break
                if time.time() > deadline:
                    raise SystemExit(f"trigger t-{i} did not commit:\n{open(err_path).read()[-3000:]}")
                time.sleep(0.005)
            report = done[0]
            if report["status"] != "committed":
                raise SystemExit(f"trigger t-{i}: {report}")
            version = report["run"]["feature_sets"][0]["version"]
            committed = commit_timestamp_ms(table, version)
            latencies.append(committed - sent["timestamp_ms"])
            from_ack.append(committed - sent["acked_ms"])
            acks.append(sent["acked_ms"] - sent["timestamp_ms"])
            started = datetime.datetime.fromisoformat(report["started_at"].replace("Z", "+00:00"))
            waits.append(started.timestamp() * 1000 - sent["acked_ms"])
            runs.append(report["run"]["elapsed_ms"])
        counts = {k: len(v) for k, v in reports(out_path).items()}
        assert all(n == 1 for n in counts.values()) and len(counts) == args.triggers, counts

        print(f"| {args.triggers} triggers, one at a time | median | p90 | p99 | max |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, values in [("trigger produced to version committed (ms)", latencies),
                             ("of which `kiln trigger` waiting for the broker's ack (ms)", acks),
                             ("broker's ack to version committed (ms)", from_ack),
                             ("of which ack to the worker taking it (ms)", waits),
                             ("the run, start to end (ms; its commit lands before it ends)", runs)]:
            print(f"| {name} | {statistics.median(values):.0f} | {percentile(values, 90):.0f} | "
                  f"{percentile(values, 99):.0f} | {max(values):.0f} |")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=30)


if __name__ == "__main__":
    main()
