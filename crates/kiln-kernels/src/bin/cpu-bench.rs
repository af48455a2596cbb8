//! `cpu-bench`: each feature function's CPU loop on one core, over the
//! data shapes `benches/functions_bench.py` gives DuckDB and Polars, as
//! JSON lines (`function`, `rows`, `seconds`, best of five). The loops are
//! what kiln's SQL functions run on each batch's Arrow buffers: the scalar
//! functions a batch of 8192 rows at a time (DataFusion's batch size),
//! each batch's output allocated inside the timing, as a query does; the
//! window functions over the whole input at once, as one partition.

use std::time::Instant;

use kiln_kernels::cpu::{bucketize, hash, minhash, projection, scale, vector};
use kiln_kernels::sample::{LOWERCASE, Random};

/// DataFusion's default batch size.
const BATCH: usize = 8192;

/// `f` over `0..rows`, a batch at a time.
fn batches(rows: usize, mut f: impl FnMut(std::ops::Range<usize>)) {
    for start in (0..rows).step_by(BATCH) {
        f(start..(start + BATCH).min(rows));
    }
}

fn report(function: &str, rows: usize, mut f: impl FnMut()) {
    let seconds = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    println!("{{\"function\": \"{function}\", \"rows\": {rows}, \"seconds\": {seconds}}}");
}

/// Arrow's views of strings in one buffer: up to 12 bytes inline, longer
/// ones by their offset in buffer 0.
fn views_of(offsets: &[i32], bytes: &[u8]) -> Vec<u128> {
    offsets
        .windows(2)
        .map(|w| {
            let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&(len as u32).to_le_bytes());
            if len <= 12 {
                raw[4..4 + len].copy_from_slice(&bytes[start..start + len]);
            } else {
                raw[4..8].copy_from_slice(&bytes[start..start + 4]);
                raw[12..].copy_from_slice(&(start as u32).to_le_bytes());
            }
            u128::from_le_bytes(raw)
        })
        .collect()
}

/// Row `i` of `width`-value vectors.
fn row(v: &[f32], width: usize, i: usize) -> &[f32] {
    &v[i * width..(i + 1) * width]
}

fn main() {
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let mut r = Random(42);

    let (offsets, bytes) = r.strings(rows, 4, 20, LOWERCASE);
    report("hash_bucket_string", rows, || {
        batches(rows, |r| {
            let out = hash::buckets_of_offsets(&offsets[r.start..=r.end], &bytes, 1000);
            std::hint::black_box(out);
        })
    });
    // The same strings as Parquet reads give them to a query: views.
    let views = views_of(&offsets, &bytes);
    report("hash_bucket_string_view", rows, || {
        batches(rows, |r| {
            let out = hash::buckets_of_views(&views[r], &[&bytes], 1000);
            std::hint::black_box(out);
        })
    });
    let ints: Vec<u64> = (0..rows).map(|_| r.next_u64()).collect();
    report("hash_bucket_int", rows, || {
        batches(rows, |r| {
            let out = hash::buckets_of_ints(&ints[r], 1000);
            std::hint::black_box(out);
        })
    });

    let x: Vec<f64> = (0..rows).map(|_| r.unit() * 100.0).collect();
    let bounds: Vec<f64> = (1..10).map(|i| f64::from(i) * 10.0).collect();
    report("bucketize", rows, || {
        batches(rows, |r| {
            let mut out = vec![0i32; r.len()];
            bucketize::buckets_of_floats(&x[r], &bounds, &mut out);
            std::hint::black_box(out);
        })
    });
    report("standard_scale", rows, || {
        std::hint::black_box(scale::standard_scale(&x, None));
    });
    report("min_max_scale", rows, || {
        std::hint::black_box(scale::min_max_scale(&x, None));
    });
    report("quantile_bucket", rows, || {
        let keys = x.iter().map(|&v| (!v.is_nan()).then(|| scale::float_key(v)));
        std::hint::black_box(scale::quantile_buckets(keys, 10));
    });

    let docs = rows / 10;
    let (offsets, bytes) = r.strings(docs, 30, 50, LOWERCASE);
    let keys = minhash::keys(64);
    report("minhash", docs, || {
        batches(docs, |r| {
            let mut out = vec![0u32; r.len() * 64];
            minhash::signatures_of_offsets(&offsets[r.start..=r.end], &bytes, &keys, 5, &mut out);
            std::hint::black_box(out);
        })
    });

    let (vrows, width) = (rows / 10, 128);
    let a: Vec<f32> = (0..vrows * width).map(|_| r.unit() as f32 - 0.5).collect();
    let b: Vec<f32> = (0..vrows * width).map(|_| r.unit() as f32 - 0.5).collect();
    report("dot", vrows, || {
        batches(vrows, |r| {
            let out: Vec<f32> = r
                .map(|i| vector::dot_f32(row(&a, width, i), row(&b, width, i)))
                .collect();
            std::hint::black_box(out);
        })
    });
    report("cosine_similarity", vrows, || {
        batches(vrows, |r| {
            let out: Vec<Option<f32>> = r
                .map(|i| {
                    let (x, y) = (row(&a, width, i), row(&b, width, i));
                    vector::cosine(
                        vector::dot_f32(x, y),
                        vector::dot_f32(x, x),
                        vector::dot_f32(y, y),
                    )
                })
                .collect();
            std::hint::black_box(out);
        })
    });
    report("l2_normalize", vrows, || {
        batches(vrows, |r| {
            let mut out = vec![0f32; r.len() * width];
            for (i, o) in r.zip(out.chunks_exact_mut(width)) {
                vector::normalize_into(row(&a, width, i), o);
            }
            std::hint::black_box(out);
        })
    });
    let prows = vrows / 10;
    let dim = 64;
    report("random_projection", prows, || {
        batches(prows, |r| {
            // Built per batch, as the SQL function does.
            let m = projection::matrix(7, width, dim);
            let mut out = vec![0f32; r.len() * dim];
            for (i, o) in r.zip(out.chunks_exact_mut(dim)) {
                projection::project(row(&a, width, i), &m, o);
            }
            std::hint::black_box(out);
        })
    });
}
