//! `gpu-check`: on a machine with an NVIDIA GPU, every kernel against its
//! CPU twin on fresh random inputs, then the CPU (all cores) against the
//! GPU with its copies and the kernels alone. One invocation, a few
//! minutes; benches/gpu_check.sh brings and runs it.
//!
//! Correctness: sizes of 1, 255, 257 and 100,003 rows and one larger than
//! a chunk (the chunk cut to 4 MiB for it), each run twice with the output
//! poisoned by two different bytes; integer outputs and the vector
//! functions must be the same bits, random_projection within a relative
//! 1e-5. Speed: rows/s and GB/s (input and output bytes moved), and the
//! kernels' GB/s as a fraction of the device's copy bandwidth, measured
//! here with a copy kernel. Exits 1 if any answer differs.

use std::time::Instant;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use kiln_kernels::cpu::{bucketize, hash, minhash, projection, vector};
use kiln_kernels::gpu::{self, Gpu, VectorRows};
use kiln_kernels::sample::{MIXED, Random};
use kiln_kernels::sources::Source;

/// `f` over `0..rows` cut into one range per core.
fn on_all_cores(rows: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(cores).max(1);
    std::thread::scope(|s| {
        for start in (0..rows).step_by(per) {
            let f = &f;
            s.spawn(move || f(start..(start + per).min(rows)));
        }
    });
}

/// A mutable slice shared by threads that each write their own range.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}
impl<T> Shared<T> {
    /// SAFETY: callers take disjoint ranges.
    unsafe fn range<'a>(self, r: std::ops::Range<usize>) -> &'a mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start), r.len()) }
    }
}

struct Row {
    function: &'static str,
    rows: usize,
    bytes: usize,
    cpu_s: f64,
    gpu_s: f64,
    kernel_s: f64,
}

struct Check {
    gpu: Gpu,
    bandwidth: f64,
    failures: Vec<String>,
    rows: Vec<Row>,
}

impl Check {
    /// Runs `gpu_call` twice with two poisons; both must equal `want`.
    fn compare<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        want: &[T],
        gpu_call: impl Fn(&Gpu) -> gpu::Result<Vec<T>>,
        same: impl Fn(&T, &T) -> bool,
    ) {
        for poison in [0xA5u8, 0x5A] {
            self.gpu.set_poison(Some(poison));
            match gpu_call(&self.gpu) {
                Ok(got) if got.len() != want.len() => {
                    self.failures
                        .push(format!("{what}: {} values, want {}", got.len(), want.len()))
                }
                Ok(got) => {
                    if let Some(i) = (0..want.len()).find(|&i| !same(&got[i], &want[i])) {
                        self.failures
                            .push(format!("{what}: value {i} is {:?}, want {:?}", got[i], want[i]));
                    }
                }
                Err(e) => self.failures.push(format!("{what}: {e}")),
            }
        }
        self.gpu.set_poison(None);
    }

    /// Times the CPU on all cores and the GPU with and without copies.
    fn time(
        &mut self,
        function: &'static str,
        rows: usize,
        bytes: usize,
        cpu: impl Fn(),
        gpu_call: impl Fn(&Gpu),
    ) {
        let best = |f: &dyn Fn()| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let cpu_s = best(&cpu);
        self.gpu.set_timing(true);
        gpu_call(&self.gpu); // warm: buffers allocated, modules loaded
        let mut gpu_s = f64::INFINITY;
        let mut kernel_s = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            gpu_call(&self.gpu);
            gpu_s = gpu_s.min(t.elapsed().as_secs_f64());
            kernel_s = kernel_s.min(self.gpu.kernel_ms() / 1000.0);
        }
        self.gpu.set_timing(false);
        self.rows.push(Row {
            function,
            rows,
            bytes,
            cpu_s,
            gpu_s,
            kernel_s,
        });
    }
}

/// Device-to-device copy bandwidth (read + write), in bytes per second.
fn copy_bandwidth(gpu: &Gpu) -> gpu::Result<f64> {
    const SRC: Source = Source::from_text(
        "copy.cu",
        "extern \"C\" __global__ void copy(const float4* a, float4* b, unsigned long long n) {\n\
         unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;\n\
         for (; i < n; i += (unsigned long long)gridDim.x * blockDim.x) b[i] = a[i]; }",
        &["copy"],
    );
    let ctx = gpu.context();
    let module = ctx.load_module(gpu::compile(&SRC, gpu.arch())?)?;
    let f = module.load_function("copy")?;
    let stream = ctx.default_stream();
    let n: u64 = (1 << 30) / 16;
    let a = stream.alloc_zeros::<u8>((n * 16) as usize)?;
    let mut b = stream.alloc_zeros::<u8>((n * 16) as usize)?;
    let sms = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
        as u32;
    let cfg = LaunchConfig {
        grid_dim: (sms * 8, 1, 1),
        block_dim: (512, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        let end = ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        start.record(&stream)?;
        let mut l = stream.launch_builder(&f);
        l.arg(&a).arg(&mut b).arg(&n);
        // SAFETY: the arguments match `copy`'s signature.
        unsafe { l.launch(cfg) }?;
        end.record(&stream)?;
        best = best.min(f64::from(start.elapsed_ms(&end)?) / 1000.0);
    }
    Ok(2.0 * (n * 16) as f64 / best)
}

fn main() {
    let gpu = match Gpu::open(0) {
        Ok(gpu) => gpu,
        Err(e) => {
            eprintln!("gpu-check: cannot use a GPU: {e}");
            std::process::exit(2);
        }
    };
    let (free, total) = gpu.context().mem_get_info().unwrap_or((0, 0));
    let nvrtc = gpu::nvrtc_version()
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_default();
    println!(
        "device: {} ({}), {:.1} of {:.1} GiB free, NVRTC {nvrtc}, {} CPU cores",
        gpu.name(),
        gpu.arch(),
        free as f64 / (1u64 << 30) as f64,
        total as f64 / (1u64 << 30) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let bandwidth = copy_bandwidth(&gpu).unwrap_or_else(|e| {
        eprintln!("gpu-check: copy kernel: {e}");
        std::process::exit(2);
    });
    println!("device copy bandwidth: {:.0} GB/s", bandwidth / 1e9);
    let mut check = Check {
        gpu,
        bandwidth,
        failures: Vec::new(),
        rows: Vec::new(),
    };
    let mut r = Random(0x5eed);

    // --- correctness -------------------------------------------------------
    let big = 3_000_000usize;
    for rows in [1usize, 255, 257, 100_003, big] {
        check.gpu.set_chunk_bytes(if rows == big {
            4 << 20
        } else {
            gpu::MAX_CHUNK_BYTES
        });
        let (offsets, bytes) = r.strings(rows, 0, 24, MIXED);
        let n = 1 + r.below(1 << 40);
        let want = hash::buckets_of_offsets(&offsets, &bytes, n);
        check.compare(
            &format!("hash_bucket strings, {rows} rows"),
            &want,
            |g| g.hash_bucket_offsets(&offsets, &bytes, n),
            |a, b| a == b,
        );
        let offsets64: Vec<i64> = offsets.iter().map(|&o| i64::from(o)).collect();
        check.compare(
            &format!("hash_bucket large strings, {rows} rows"),
            &want,
            |g| g.hash_bucket_offsets(&offsets64, &bytes, n),
            |a, b| a == b,
        );

        let ints: Vec<u64> = (0..rows).map(|_| r.next_u64()).collect();
        let want = hash::buckets_of_ints(&ints, n);
        check.compare(
            &format!("hash_bucket integers, {rows} rows"),
            &want,
            |g| g.hash_bucket_u64(&ints, n),
            |a, b| a == b,
        );

        let mut bounds: Vec<f64> = (0..20).map(|_| r.float() as f64).collect();
        bounds.sort_by(f64::total_cmp);
        let mut x: Vec<f64> = (0..rows).map(|_| r.float() as f64).collect();
        x[rows / 2] = f64::NAN;
        let mut want = vec![0i32; rows];
        bucketize::buckets_of_floats(&x, &bounds, &mut want);
        check.compare(
            &format!("bucketize floats, {rows} rows"),
            &want,
            |g| g.bucketize_f64(&x, &bounds),
            |a, b| a == b,
        );
        let xi: Vec<i64> = x
            .iter()
            .map(|v| if v.is_nan() { 0 } else { (v * 100.0) as i64 })
            .collect();
        let bi: Vec<i64> = bounds.iter().map(|v| (v * 100.0) as i64).collect();
        bucketize::count_at_or_below(&xi, &bi, &mut want);
        check.compare(
            &format!("bucketize integers, {rows} rows"),
            &want,
            |g| g.bucketize_i64(&xi, &bi),
            |a, b| a == b,
        );

        let mh_rows = rows.min(400_000);
        let mh_offsets = &offsets[..=mh_rows];
        for num_perm in [7usize, 64] {
            let keys = minhash::keys(num_perm);
            let mut want = vec![0u32; mh_rows * num_perm];
            minhash::signatures_of_offsets(mh_offsets, &bytes, &keys, 5, &mut want);
            check.compare(
                &format!("minhash {num_perm}, {mh_rows} rows"),
                &want,
                |g| g.minhash(mh_offsets, &bytes, &keys, 5),
                |a, b| a == b,
            );
        }

        let width = 37usize;
        let a: Vec<f32> = (0..rows * width).map(|_| r.float()).collect();
        let b: Vec<f32> = (0..rows * width).map(|_| r.float()).collect();
        let va = VectorRows {
            values: &a,
            offsets: None,
            width,
            rows,
        };
        let vb = VectorRows {
            values: &b,
            offsets: None,
            width,
            rows,
        };
        for cosine in [false, true] {
            let want: Vec<u32> = (0..rows)
                .map(|i| {
                    let (x, y) = (&a[i * width..(i + 1) * width], &b[i * width..(i + 1) * width]);
                    let d = vector::dot_f32(x, y);
                    let v = if cosine {
                        vector::cosine(d, vector::dot_f32(x, x), vector::dot_f32(y, y))
                    } else {
                        Some(d)
                    };
                    v.unwrap_or(0.0).to_bits()
                })
                .collect();
            check.compare(
                &format!(
                    "{} , {rows} rows",
                    if cosine { "cosine_similarity" } else { "dot" }
                ),
                &want,
                |g| {
                    g.pairwise(va, vb, cosine)
                        .map(|(v, _)| v.iter().map(|f| f.to_bits()).collect())
                },
                |a, b| a == b,
            );
        }
        let mut want = vec![0f32; a.len()];
        for (row, out) in a.chunks_exact(width).zip(want.chunks_exact_mut(width)) {
            vector::normalize_into(row, out);
        }
        let want: Vec<u32> = want.iter().map(|f| f.to_bits()).collect();
        check.compare(
            &format!("l2_normalize, {rows} rows"),
            &want,
            |g| {
                g.l2_normalize(va)
                    .map(|v| v.iter().map(|f| f.to_bits()).collect())
            },
            |a, b| a == b,
        );

        let p_rows = rows.min(200_000);
        let dim = 64;
        let vp = VectorRows {
            values: &a[..p_rows * width],
            offsets: None,
            width,
            rows: p_rows,
        };
        let m = projection::matrix(42, width, dim);
        let mut want = vec![0f32; p_rows * dim];
        for (i, o) in want.chunks_exact_mut(dim).enumerate() {
            projection::project(&a[i * width..(i + 1) * width], &m, o);
        }
        check.compare(
            &format!("random_projection, {p_rows} rows"),
            &want,
            |g| g.random_projection(vp, dim, 42),
            |g, w| (g - w).abs() <= 1e-5 * w.abs().max(1.0),
        );
    }
    check.gpu.set_chunk_bytes(gpu::MAX_CHUNK_BYTES);

    // --- speed -------------------------------------------------------------
    for rows in [10_000usize, 100_000, 1_000_000, 10_000_000] {
        let (offsets, bytes) = r.strings(rows, 0, 16, MIXED);
        let out = Shared(vec![0i64; rows].leak().as_mut_ptr());
        let moved = bytes.len() + 4 * rows + 8 * rows;
        check.time(
            "hash_bucket (strings)",
            rows,
            moved,
            || {
                on_all_cores(rows, |rg| {
                    let o = unsafe { out.range(rg.clone()) };
                    hash::buckets_of_offsets_into(&offsets[rg.start..=rg.end], &bytes, 1 << 20, o);
                })
            },
            |g| {
                let _ = g.hash_bucket_offsets(&offsets, &bytes, 1 << 20);
            },
        );

        let x: Vec<f64> = (0..rows).map(|_| r.float() as f64).collect();
        let bounds: Vec<f64> = (0..10).map(|i| f64::from(i) - 4.5).collect();
        let out32 = Shared(vec![0i32; rows].leak().as_mut_ptr());
        check.time(
            "bucketize (10 boundaries)",
            rows,
            12 * rows,
            || {
                on_all_cores(rows, |rg| {
                    let o = unsafe { out32.range(rg.clone()) };
                    bucketize::buckets_of_floats(&x[rg], &bounds, o);
                })
            },
            |g| {
                let _ = g.bucketize_f64(&x, &bounds);
            },
        );

        let mh = rows.min(1_000_000);
        let keys = minhash::keys(64);
        let outm = Shared(vec![0u32; mh * 64].leak().as_mut_ptr());
        let mh_bytes = offsets[mh] as usize + 4 * mh + 256 * mh;
        check.time(
            "minhash (64, shingles of 5)",
            mh,
            mh_bytes,
            || {
                on_all_cores(mh, |rg| {
                    let o = unsafe { outm.range(rg.start * 64..rg.end * 64) };
                    minhash::signatures_of_offsets(&offsets[rg.start..=rg.end], &bytes, &keys, 5, o);
                })
            },
            |g| {
                let _ = g.minhash(&offsets[..=mh], &bytes, &keys, 5);
            },
        );

        let width = 128usize;
        let vr = rows.min(2_000_000);
        let a: Vec<f32> = (0..vr * width).map(|_| r.float()).collect();
        let b: Vec<f32> = (0..vr * width).map(|_| r.float()).collect();
        let va = VectorRows {
            values: &a,
            offsets: None,
            width,
            rows: vr,
        };
        let vb = VectorRows {
            values: &b,
            offsets: None,
            width,
            rows: vr,
        };
        let outf = Shared(vec![0f32; vr].leak().as_mut_ptr());
        check.time(
            "cosine_similarity (128 floats)",
            vr,
            8 * width * vr + 5 * vr,
            || {
                on_all_cores(vr, |rg| {
                    let o = unsafe { outf.range(rg.clone()) };
                    for (i, o) in rg.zip(o) {
                        let (x, y) = (&a[i * width..(i + 1) * width], &b[i * width..(i + 1) * width]);
                        *o = vector::cosine(
                            vector::dot_f32(x, y),
                            vector::dot_f32(x, x),
                            vector::dot_f32(y, y),
                        )
                        .unwrap_or(0.0);
                    }
                })
            },
            |g| {
                let _ = g.pairwise(va, vb, true);
            },
        );

        let pr = rows.min(1_000_000);
        let vp = VectorRows {
            values: &a[..pr * width],
            offsets: None,
            width,
            rows: pr,
        };
        let dim = 64usize;
        let outp = Shared(vec![0f32; pr * dim].leak().as_mut_ptr());
        check.time(
            "random_projection (128 -> 64)",
            pr,
            4 * width * pr + 4 * dim * pr,
            || {
                let m = projection::matrix(7, width, dim);
                on_all_cores(pr, |rg| {
                    let o = unsafe { outp.range(rg.start * dim..rg.end * dim) };
                    for (i, o) in rg.zip(o.chunks_exact_mut(dim)) {
                        projection::project(&a[i * width..(i + 1) * width], &m, o);
                    }
                })
            },
            |g| {
                let _ = g.random_projection(vp, dim, 7);
            },
        );
    }

    println!();
    println!(
        "| function | rows | CPU, all cores (rows/s) | GPU with copies (rows/s) | GPU kernels (rows/s) | kernels GB/s | of copy bandwidth |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in &check.rows {
        let gbs = row.bytes as f64 / row.kernel_s / 1e9;
        println!(
            "| {} | {} | {:.3e} | {:.3e} | {:.3e} | {:.0} | {:.0}% |",
            row.function,
            row.rows,
            row.rows as f64 / row.cpu_s,
            row.rows as f64 / row.gpu_s,
            row.rows as f64 / row.kernel_s,
            gbs,
            100.0 * gbs * 1e9 / check.bandwidth
        );
    }
    println!();
    let mut functions: Vec<&str> = check.rows.iter().map(|r| r.function).collect();
    functions.dedup();
    for f in functions {
        let first = check
            .rows
            .iter()
            .filter(|r| r.function == f)
            .find(|r| r.gpu_s < r.cpu_s);
        match first {
            Some(r) => println!(
                "crossover: {f}: the GPU with its copies wins from {} rows a call",
                r.rows
            ),
            None => println!("crossover: {f}: the CPU wins at every size measured"),
        }
    }
    if check.failures.is_empty() {
        println!("\nevery kernel agrees with the CPU");
    } else {
        println!("\n{} disagreements:", check.failures.len());
        for f in &check.failures {
            println!("  {f}");
        }
        std::process::exit(1);
    }
}
