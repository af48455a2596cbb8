"""The feature functions on one CPU core: kiln's loops against the nearest
built-in of DuckDB and of Polars, over the same data shapes.

    cargo build --release -p kiln-kernels --bin cpu-bench
    python benches/functions_bench.py [--rows 10000000] [--bin PATH]

kiln: `cpu-bench`, each function's loop over Arrow-laid-out buffers (what
kiln's SQL functions run per batch), output allocated inside the timing.
DuckDB (threads = 1): each function in `SELECT sum(f(x)) FROM t` over a
table in DuckDB's own storage, less the same query with the function's
cost removed (for example `sum(length(s))` against `sum(hash(s) % 1000)`),
so the figure is the function's, not the scan's. Polars
(POLARS_MAX_THREADS = 1): the expression on an eager DataFrame, its output
column materialised. Best of five each; rows per second; the ratio is
kiln's over the faster peer (above 1: kiln is faster).

Data (same shapes on every side, generated independently): ROWS words of
4 to 20 lowercase letters, ROWS 64-bit integers, ROWS doubles in [0, 100)
(10 equal buckets), ROWS / 10 texts of 30 to 50 letters (MinHash with 64
permutations of 5-character shingles), ROWS / 10 pairs of 128-float
vectors (ROWS / 100 for the projection to 64).
"""

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("POLARS_MAX_THREADS", "1")

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402


def words(rng, n, lo, hi):
    lengths = rng.integers(lo, hi + 1, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    letters = rng.integers(97, 123, int(offsets[-1]), dtype=np.uint8)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(letters))


def best(f, times=5):
    out = float("inf")
    for _ in range(times):
        t = time.perf_counter()
        f()
        out = min(out, time.perf_counter() - t)
    return out


def vectors(rng, n, width):
    flat = (rng.random(n * width, dtype=np.float32) - 0.5).astype(np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--bin", default=os.path.join(target, "release", "cpu-bench"))
    args = ap.parse_args()
    n = args.rows

    kiln = {}
    out = subprocess.run([args.bin, str(n)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        row = json.loads(line)
        kiln[row["function"]] = row["rows"] / row["seconds"]

    rng = np.random.default_rng(42)
    strs = pa.table({"s": words(rng, n, 4, 20)})
    ints = pa.table({"i": rng.integers(-(2**62), 2**62, n)})
    nums = pa.table({"x": rng.random(n) * 100.0})
    vecs = pa.table({"a": vectors(rng, n // 10, 128), "b": vectors(rng, n // 10, 128)})

    db = duckdb.connect()
    db.execute("SET threads = 1")
    for name, table in [("strs", strs), ("ints", ints), ("nums", nums), ("vecs", vecs)]:
        db.register(f"{name}_arrow", table)
        db.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_arrow")
    db.execute("CREATE TABLE vec_arrays AS SELECT a::FLOAT[128] AS a, b::FLOAT[128] AS b FROM vecs")

    def duck(query, baseline, rows):
        t = best(lambda: db.execute(query).fetchall())
        t0 = best(lambda: db.execute(baseline).fetchall())
        return rows / max(t - t0, 1e-9)

    def over(expr):
        # DuckDB does not take a window function inside an aggregate.
        return f"SELECT sum(z) FROM (SELECT {expr} AS z FROM nums)"

    duckdb_rates = {
        "hash_bucket_string": duck("SELECT sum(hash(s) % 1000) FROM strs", "SELECT sum(length(s)) FROM strs", n),
        "hash_bucket_int": duck("SELECT sum(hash(i) % 1000) FROM ints", "SELECT sum(i % 1000) FROM ints", n),
        "standard_scale": duck(over("(x - avg(x) OVER ()) / stddev_pop(x) OVER ()"), over("x"), n),
        "min_max_scale": duck(over("(x - min(x) OVER ()) / (max(x) OVER () - min(x) OVER ())"), over("x"), n),
        "quantile_bucket": duck(over("ntile(10) OVER (ORDER BY x)"), over("x"), n),
        "dot": duck(
            "SELECT sum(array_inner_product(a, b)) FROM vec_arrays", "SELECT sum(a[1] + b[1]) FROM vec_arrays", n // 10
        ),
        "cosine_similarity": duck(
            "SELECT sum(array_cosine_similarity(a, b)) FROM vec_arrays",
            "SELECT sum(a[1] + b[1]) FROM vec_arrays",
            n // 10,
        ),
    }
    # The peers hold strings one way; kiln's two layouts meet the same figure.
    duckdb_rates["hash_bucket_string_view"] = duckdb_rates["hash_bucket_string"]

    ps, pi, px = pl.from_arrow(strs), pl.from_arrow(ints), pl.from_arrow(nums)
    breaks = [10.0 * k for k in range(1, 10)]

    def polars(df, expr, rows):
        return rows / best(lambda: df.select(expr))

    x = pl.col("x")
    polars_rates = {
        "hash_bucket_string": polars(ps, pl.col("s").hash() % 1000, n),
        "hash_bucket_int": polars(pi, pl.col("i").hash() % 1000, n),
        "bucketize": polars(px, x.cut(breaks, left_closed=True).to_physical(), n),
        "standard_scale": polars(px, (x - x.mean()) / x.std(ddof=0), n),
        "min_max_scale": polars(px, (x - x.min()) / (x.max() - x.min()), n),
        "quantile_bucket": polars(px, x.qcut(10).to_physical(), n),
    }
    polars_rates["hash_bucket_string_view"] = polars_rates["hash_bucket_string"]

    names = {
        "hash_bucket_string": "`hash_bucket` (strings, `Utf8`: CSV and JSON input)",
        "hash_bucket_string_view": "`hash_bucket` (strings, `Utf8View`: Parquet input)",
        "hash_bucket_int": "`hash_bucket` (BIGINT)",
        "bucketize": "`bucketize` (9 boundaries)",
        "standard_scale": "`standard_scale` (`OVER ()`)",
        "min_max_scale": "`min_max_scale` (`OVER ()`)",
        "quantile_bucket": "`quantile_bucket(x, 10)` (`OVER ()`)",
        "minhash": "`minhash` (64, shingles of 5, 30-50 chars)",
        "dot": "`dot` (128 floats)",
        "cosine_similarity": "`cosine_similarity` (128 floats)",
        "l2_normalize": "`l2_normalize` (128 floats)",
        "random_projection": "`random_projection` (128 -> 64)",
    }
    peers = {
        "hash_bucket_string": "`hash(s) % 1000` / `hash() % 1000`",
        "hash_bucket_string_view": "`hash(s) % 1000` / `hash() % 1000`",
        "hash_bucket_int": "`hash(i) % 1000` / `hash() % 1000`",
        "bucketize": "— / `cut`",
        "standard_scale": "`avg`, `stddev_pop` `OVER ()` / `mean`, `std`",
        "min_max_scale": "`min`, `max` `OVER ()` / `min`, `max`",
        "quantile_bucket": "`ntile(10) OVER (ORDER BY x)` / `qcut(10)`",
        "dot": "`array_inner_product` / —",
        "cosine_similarity": "`array_cosine_similarity` / —",
    }
    fmt = lambda v: f"{v / 1e6:,.1f} M" if v is not None else "—"  # noqa: E731
    print(f"rows: {n:,}; one core each; rows per second of the function alone\n")
    print("| function | kiln | DuckDB | Polars | peer (DuckDB / Polars) | kiln / faster peer |")
    print("| --- | ---: | ---: | ---: | --- | ---: |")
    for key, label in names.items():
        k, d, p = kiln.get(key), duckdb_rates.get(key), polars_rates.get(key)
        faster = max([v for v in (d, p) if v is not None], default=None)
        ratio = f"{k / faster:.2f}" if faster else "—"
        print(f"| {label} | {fmt(k)} | {fmt(d)} | {fmt(p)} | {peers.get(key, '—')} | {ratio} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
