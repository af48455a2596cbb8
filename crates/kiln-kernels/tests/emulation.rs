//! Every CUDA kernel, compiled as host C++ with `kernels/host/emulation.h`
//! and run as loops over its grid (the launch geometry of the GPU layer),
//! against the CPU implementation on random inputs: sizes that are not
//! multiples of the block, chunks that start mid-buffer, output poisoned
//! twice over so that an element no thread writes cannot pass. This is
//! how a wrong index, a missed tail or a wrong hash fails without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_kernels::cpu::{bucketize, hash, minhash, projection, vector};
use kiln_kernels::mix::mix64;
use kiln_kernels::sample::{MIXED, Random};
use libloading::{Library, Symbol};

const BLOCK: u32 = 256;

/// A kernel file compiled for the host, loaded.
struct Emulated {
    lib: Library,
    _dir: tempfile::TempDir,
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels")
}

impl Emulated {
    fn compile(file: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let so = dir.path().join(file.replace(".cu", ".so"));
        let kernels = kernels_dir();
        let out = Command::new("g++")
            .args([
                "-std=c++17",
                "-O2",
                "-ffp-contract=off",
                "-fno-fast-math",
                "-shared",
                "-fPIC",
                "-include",
            ])
            .arg(kernels.join("host/emulation.h"))
            .arg("-I")
            .arg(&kernels)
            .args(["-x", "c++"])
            .arg(kernels.join(file))
            .arg("-o")
            .arg(&so)
            .output()
            .expect("g++ runs (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "{file} does not compile as host C++:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: a library built just now from kiln's own kernels.
        let lib = unsafe { Library::new(&so) }.unwrap();
        Emulated { lib, _dir: dir }
    }

    /// Calls `thread(kernel)` once for every thread of a grid covering
    /// `threads`, with the CUDA indices set for each.
    fn grid<F>(&self, name: &str, threads: u64, mut thread: impl FnMut(&Symbol<'_, F>)) {
        // SAFETY: the signatures below are the kernels' own.
        let at: Symbol<'_, unsafe extern "C" fn(u32, u32, u32, u32)> =
            unsafe { self.lib.get(b"kiln_emulate_at") }.unwrap();
        let kernel: Symbol<'_, F> = unsafe { self.lib.get(name.as_bytes()) }.unwrap();
        let blocks = threads.div_ceil(u64::from(BLOCK)).max(1) as u32;
        for b in 0..blocks {
            for t in 0..BLOCK {
                unsafe { at(b, t, BLOCK, blocks) };
                thread(&kernel);
            }
        }
    }
}

/// Both poisons: whatever the output held before, the kernel's answer
/// must be the same.
const POISONS: [u8; 2] = [0xA5, 0x5A];

fn poisoned<T: Copy>(len: usize, byte: u8) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    // SAFETY: every byte pattern is a valid integer or float.
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr(), byte, len);
        v.set_len(len);
    }
    v
}

type HashOffsets = unsafe extern "C" fn(*const i32, i64, *const u8, u64, u64, *mut i64);
type HashInts = unsafe extern "C" fn(*const u64, u64, u64, *mut i64);

#[test]
fn hash_bucket_kernels_compute_what_the_cpu_computes() {
    let lib = Emulated::compile("hash_bucket.cu");
    let mut r = Random(1);
    for rows in [1usize, 255, 256, 257, 1000] {
        let (offsets, bytes) = r.strings(rows, 0, 40, MIXED);
        let n = 1 + r.below(1 << 40);
        let want = hash::buckets_of_offsets(&offsets, &bytes, n);
        // A chunk that starts mid-buffer: offsets from row 3 on, its bytes
        // copied from there, `base` the first offset.
        let first = rows.min(3);
        let base = offsets[first];
        let tail = &bytes[base as usize..];
        for poison in POISONS {
            let mut got = poisoned::<i64>(rows - first, poison);
            let count = (rows - first) as u64;
            lib.grid::<HashOffsets>("hash_bucket_offsets32", count, |k| unsafe {
                k(
                    offsets[first..].as_ptr(),
                    i64::from(base),
                    tail.as_ptr(),
                    count,
                    n,
                    got.as_mut_ptr(),
                )
            });
            assert_eq!(got, want[first..], "strings, {rows} rows");
        }

        let ints: Vec<u64> = (0..rows).map(|_| r.next_u64()).collect();
        let want = hash::buckets_of_ints(&ints, n);
        for poison in POISONS {
            let mut got = poisoned::<i64>(rows, poison);
            lib.grid::<HashInts>("hash_bucket_u64", rows as u64, |k| unsafe {
                k(ints.as_ptr(), rows as u64, n, got.as_mut_ptr())
            });
            assert_eq!(got, want, "integers, {rows} rows");
        }
    }
}

type BucketizeF64 = unsafe extern "C" fn(*const f64, u64, *const f64, u32, *mut i32);
type BucketizeI64 = unsafe extern "C" fn(*const i64, u64, *const i64, u32, *mut i32);

#[test]
fn bucketize_kernels_compute_what_the_cpu_computes() {
    let lib = Emulated::compile("bucketize.cu");
    let mut r = Random(2);
    for (rows, count) in [(257usize, 1usize), (1000, 5), (513, 40)] {
        let mut bounds: Vec<i64> = (0..count).map(|_| r.below(200) as i64 - 100).collect();
        bounds.sort();
        let x: Vec<i64> = (0..rows).map(|_| r.below(240) as i64 - 120).collect();
        let mut want = vec![0i32; rows];
        bucketize::count_at_or_below(&x, &bounds, &mut want);
        for poison in POISONS {
            let mut got = poisoned::<i32>(rows, poison);
            lib.grid::<BucketizeI64>("bucketize_i64", rows as u64, |k| unsafe {
                k(
                    x.as_ptr(),
                    rows as u64,
                    bounds.as_ptr(),
                    count as u32,
                    got.as_mut_ptr(),
                )
            });
            assert_eq!(got, want, "integers, {rows} rows, {count} boundaries");
        }

        let bounds: Vec<f64> = bounds.iter().map(|&b| b as f64 / 4.0).collect();
        let mut x: Vec<f64> = x.iter().map(|&v| v as f64 / 4.0 + 0.125).collect();
        x[0] = f64::NAN;
        x[rows / 2] = f64::NEG_INFINITY;
        let mut want = vec![0i32; rows];
        bucketize::buckets_of_floats(&x, &bounds, &mut want);
        for poison in POISONS {
            let mut got = poisoned::<i32>(rows, poison);
            lib.grid::<BucketizeF64>("bucketize_f64", rows as u64, |k| unsafe {
                k(
                    x.as_ptr(),
                    rows as u64,
                    bounds.as_ptr(),
                    count as u32,
                    got.as_mut_ptr(),
                )
            });
            assert_eq!(got, want, "floats, {rows} rows, {count} boundaries");
        }
    }
}

type MinHash = unsafe extern "C" fn(*const i32, i64, *const u8, u64, *const u64, u32, u32, *mut u32);

#[test]
fn minhash_kernel_computes_what_the_cpu_computes() {
    let lib = Emulated::compile("minhash.cu");
    let mut r = Random(3);
    // Permutation counts below, at and across the 16 a thread takes.
    for (rows, num_perm, k) in [
        (300usize, 7usize, 3usize),
        (100, 16, 1),
        (257, 45, 5),
        (64, 128, 9),
    ] {
        let (offsets, bytes) = r.strings(rows, 0, 30, MIXED);
        let keys = minhash::keys(num_perm);
        let mut want = vec![0u32; rows * num_perm];
        minhash::signatures_of_offsets(&offsets, &bytes, &keys, k, &mut want);
        let groups = num_perm.div_ceil(kiln_kernels::sources::MINHASH_PERMS_PER_THREAD as usize) as u64;
        for poison in POISONS {
            let mut got = poisoned::<u32>(rows * num_perm, poison);
            lib.grid::<MinHash>("minhash_offsets32", rows as u64 * groups, |f| unsafe {
                f(
                    offsets.as_ptr(),
                    0,
                    bytes.as_ptr(),
                    rows as u64,
                    keys.as_ptr(),
                    num_perm as u32,
                    k as u32,
                    got.as_mut_ptr(),
                )
            });
            assert_eq!(got, want, "{rows} rows, {num_perm} permutations, shingles of {k}");
        }
    }
}

type Pairwise = unsafe extern "C" fn(
    *const f32,
    *const i32,
    i64,
    *const f32,
    *const i32,
    i64,
    u32,
    u64,
    u32,
    *mut f32,
    *mut u8,
);
type Normalize = unsafe extern "C" fn(*const f32, *const i32, i64, u32, u64, *mut f32);
type Projection = unsafe extern "C" fn(*const f32, *const i32, i64, u32, u64, u32, u64, f32, *mut f32);

/// `rows` vectors of `width` values (a FixedSizeList), some all zero.
fn vectors(r: &mut Random, rows: usize, width: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..rows * width).map(|_| r.float()).collect();
    for row in (0..rows).step_by(17) {
        v[row * width..(row + 1) * width].fill(0.0);
    }
    v
}

#[test]
fn vector_kernels_compute_the_same_bits_as_the_cpu() {
    let lib = Emulated::compile("vector.cu");
    let mut r = Random(4);
    for (rows, width) in [(257usize, 3usize), (300, 8), (100, 37)] {
        let a = vectors(&mut r, rows, width);
        let b = vectors(&mut r, rows, width);
        for cosine in [0u32, 1] {
            let (mut want, mut want_valid) = (Vec::new(), Vec::new());
            for i in 0..rows {
                let (x, y) = (&a[i * width..(i + 1) * width], &b[i * width..(i + 1) * width]);
                let d = vector::dot_f32(x, y);
                let v = if cosine == 1 {
                    vector::cosine(d, vector::dot_f32(x, x), vector::dot_f32(y, y))
                } else {
                    Some(d)
                };
                want.push(v.unwrap_or(0.0).to_bits());
                want_valid.push(u8::from(v.is_some()));
            }
            for poison in POISONS {
                let mut got = poisoned::<f32>(rows, poison);
                let mut valid = poisoned::<u8>(rows, poison);
                let null = std::ptr::null();
                lib.grid::<Pairwise>("vector_pairwise", rows as u64, |k| unsafe {
                    k(
                        a.as_ptr(),
                        null,
                        0,
                        b.as_ptr(),
                        null,
                        0,
                        width as u32,
                        rows as u64,
                        cosine,
                        got.as_mut_ptr(),
                        valid.as_mut_ptr(),
                    )
                });
                assert_eq!(
                    got.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                    want,
                    "{rows}x{width}, cosine {cosine}"
                );
                assert_eq!(valid, want_valid);
            }
        }

        // l2_normalize over List offsets (rows of varying length, some empty).
        let mut offsets = vec![0i32];
        for _ in 0..rows {
            let len = r.below(width as u64 + 1) as i32;
            offsets.push(offsets.last().unwrap() + len);
        }
        let values = &a[..*offsets.last().unwrap() as usize];
        let mut want = vec![0f32; values.len()];
        for w in offsets.windows(2) {
            let (s, e) = (w[0] as usize, w[1] as usize);
            vector::normalize_into(&values[s..e], &mut want[s..e]);
        }
        for poison in POISONS {
            let mut got = poisoned::<f32>(values.len(), poison);
            lib.grid::<Normalize>("l2_normalize", rows as u64, |k| unsafe {
                k(
                    values.as_ptr(),
                    offsets.as_ptr(),
                    0,
                    0,
                    rows as u64,
                    got.as_mut_ptr(),
                )
            });
            assert_eq!(
                got.iter().map(|f| f.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|f| f.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn projection_kernel_computes_what_the_cpu_computes() {
    let lib = Emulated::compile("projection.cu");
    let mut r = Random(5);
    for (rows, width, dim, seed) in [
        (30usize, 5usize, 3usize, 42u64),
        (9, 64, 100, u64::MAX),
        (257, 2, 1, 7),
    ] {
        let v = vectors(&mut r, rows, width);
        let m = projection::matrix(seed, width, dim);
        let mut want = vec![0f32; rows * dim];
        for (i, o) in want.chunks_exact_mut(dim).enumerate() {
            projection::project(&v[i * width..(i + 1) * width], &m, o);
        }
        for poison in POISONS {
            let mut got = poisoned::<f32>(rows * dim, poison);
            let threads = (rows * dim) as u64;
            lib.grid::<Projection>("random_projection", threads, |k| unsafe {
                k(
                    v.as_ptr(),
                    std::ptr::null(),
                    0,
                    width as u32,
                    rows as u64,
                    dim as u32,
                    mix64(seed),
                    projection::scale(dim),
                    got.as_mut_ptr(),
                )
            });
            // The same products summed in the same order: the same bits,
            // but for the last ulp of libm's ln and cos in an entry.
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                    "{rows}x{width} -> {dim}: {g} vs {w}"
                );
            }
        }
    }
}
