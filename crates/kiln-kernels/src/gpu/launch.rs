//! Each kernel's host side: how its rows are cut into chunks, which bytes
//! of each chunk go to the device, and the launch. The answers are the
//! CPU's ([`crate::cpu`]), which `gpu-check` and the tests hold them to.

use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaView, LaunchConfig, PushKernelArg};

use super::chunks::{Chunk, bytes_of, bytes_of_mut, output, plan};
use super::{Gpu, GpuError, Result};
use crate::cpu::Offset;
use crate::mix::mix64;
use crate::sources::MINHASH_PERMS_PER_THREAD;

const BLOCK: u32 = 256;

fn grid(threads: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (threads.div_ceil(u64::from(BLOCK)).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows of `f32` vectors: a `FixedSizeList` (`offsets` none, `width`
/// values a row) or a `List` (its offsets, `width` unused).
#[derive(Debug, Clone, Copy)]
pub struct VectorRows<'a> {
    pub values: &'a [f32],
    pub offsets: Option<&'a [i32]>,
    pub width: usize,
    pub rows: usize,
}

impl VectorRows<'_> {
    /// The range of `values` that rows `first..last` use.
    fn span(&self, first: usize, last: usize) -> Range<usize> {
        match self.offsets {
            Some(o) => o[first] as usize..o[last] as usize,
            None => first * self.width..last * self.width,
        }
    }

    /// What rows `first..last` need on the device.
    fn cost(&self, first: usize, last: usize) -> usize {
        let offsets = self.offsets.map_or(0, |_| 4 * (last - first + 1));
        4 * self.span(first, last).len() + offsets
    }

    /// The chunk's inputs: its offsets (if any) and its values.
    fn inputs(&self, rows: &Range<usize>) -> (Option<&[u8]>, &[u8]) {
        let offsets = self.offsets.map(|o| bytes_of(&o[rows.start..=rows.end]));
        (offsets, bytes_of(&self.values[self.span(rows.start, rows.end)]))
    }

    /// The chunk's inputs as the one-vector kernels take them: values,
    /// then offsets if any.
    fn values_then_offsets(&self, rows: &Range<usize>) -> Vec<&[u8]> {
        let (offsets, values) = self.inputs(rows);
        let mut inputs = vec![values];
        inputs.extend(offsets);
        inputs
    }

    fn base(&self, first: usize) -> i64 {
        self.offsets.map_or(0, |o| i64::from(o[first]))
    }
}

/// The device pointer of a view, or null where an input is absent.
fn ptr_or_null(view: Option<&CudaView<'_, u8>>, stream: &Arc<CudaStream>) -> u64 {
    use cudarc::driver::DevicePtr;
    view.map_or(0, |v| v.device_ptr(stream).0)
}

impl Gpu {
    fn lanes(&self) -> std::sync::MutexGuard<'_, super::Lanes> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills every output byte with `byte` before each kernel (gpu-check
    /// uses two different bytes to catch elements no thread wrote).
    pub fn set_poison(&self, byte: Option<u8>) {
        self.lanes().set_poison(byte);
    }

    /// Times every kernel launch with events from now on.
    pub fn set_timing(&self, on: bool) {
        self.lanes().set_timing(on);
    }

    /// The kernels' time in the last call, copies excluded (with timing on).
    pub fn kernel_ms(&self) -> f64 {
        self.lanes().kernel_ms()
    }

    /// `hash_bucket` of Arrow strings or binaries, from their offsets and
    /// values buffers as they lie.
    pub fn hash_bucket_offsets<O: Offset + Copy + Into<i64>>(
        &self,
        offsets: &[O],
        bytes: &[u8],
        n: u64,
    ) -> Result<Vec<i64>> {
        let rows = offsets.len().saturating_sub(1);
        let width = std::mem::size_of::<O>();
        let kernel = self.function(if width == 4 {
            "hash_bucket_offsets32"
        } else {
            "hash_bucket_offsets64"
        });
        let mut lanes = self.lanes();
        let cost =
            |a: usize, b: usize| offsets[b].index() - offsets[a].index() + width * (b - a + 1) + 8 * (b - a);
        let ranges = plan(rows, lanes.chunk_bytes(), cost)?;
        let chunks = ranges.iter().map(|r| Chunk {
            inputs: vec![
                bytes_of(&offsets[r.start..=r.end]),
                &bytes[offsets[r.start].index()..offsets[r.end].index()],
            ],
            out: 8 * r.start..8 * r.end,
        });
        let mut out = output::<i64>(rows);
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, v, o, i| {
            let r = &ranges[i];
            let (base, count): (i64, u64) = (offsets[r.start].into(), r.len() as u64);
            let mut launch = stream.launch_builder(kernel);
            launch.arg(&v[0]).arg(&base).arg(&v[1]).arg(&count).arg(&n).arg(o);
            // SAFETY: the arguments match hash_bucket.cu's signature.
            unsafe { launch.launch(grid(count)) }?;
            Ok(())
        })?;
        Ok(out)
    }

    /// `hash_bucket` of integers widened to 64 bits.
    pub fn hash_bucket_u64(&self, values: &[u64], n: u64) -> Result<Vec<i64>> {
        let kernel = self.function("hash_bucket_u64");
        let mut lanes = self.lanes();
        let ranges = plan(values.len(), lanes.chunk_bytes(), |a, b| 16 * (b - a))?;
        let chunks = ranges.iter().map(|r| Chunk {
            inputs: vec![bytes_of(&values[r.clone()])],
            out: 8 * r.start..8 * r.end,
        });
        let mut out = output::<i64>(values.len());
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, v, o, i| {
            let count = ranges[i].len() as u64;
            let mut launch = stream.launch_builder(kernel);
            launch.arg(&v[0]).arg(&count).arg(&n).arg(o);
            // SAFETY: as in hash_bucket.cu.
            unsafe { launch.launch(grid(count)) }?;
            Ok(())
        })?;
        Ok(out)
    }

    pub fn bucketize_f64(&self, x: &[f64], bounds: &[f64]) -> Result<Vec<i32>> {
        self.bucketize("bucketize_f64", x, bounds)
    }

    pub fn bucketize_i64(&self, x: &[i64], bounds: &[i64]) -> Result<Vec<i32>> {
        self.bucketize("bucketize_i64", x, bounds)
    }

    fn bucketize<T: Copy>(&self, name: &str, x: &[T], bounds: &[T]) -> Result<Vec<i32>> {
        let kernel = self.function(name);
        let mut lanes = self.lanes();
        let fixed = std::mem::size_of_val(bounds) + 16;
        let ranges = plan(x.len(), lanes.chunk_bytes(), |a, b| 12 * (b - a) + fixed)?;
        let chunks = ranges.iter().map(|r| Chunk {
            inputs: vec![bytes_of(&x[r.clone()]), bytes_of(bounds)],
            out: 4 * r.start..4 * r.end,
        });
        let mut out = output::<i32>(x.len());
        let count = bounds.len() as u32;
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, v, o, i| {
            let rows = ranges[i].len() as u64;
            let mut launch = stream.launch_builder(kernel);
            launch.arg(&v[0]).arg(&rows).arg(&v[1]).arg(&count).arg(o);
            // SAFETY: as in bucketize.cu.
            unsafe { launch.launch(grid(rows)) }?;
            Ok(())
        })?;
        Ok(out)
    }

    /// MinHash signatures of Arrow strings (`i32` offsets), `keys.len()`
    /// values a row.
    pub fn minhash(&self, offsets: &[i32], bytes: &[u8], keys: &[u64], shingle_len: u32) -> Result<Vec<u32>> {
        let rows = offsets.len().saturating_sub(1);
        let num_perm = keys.len();
        if num_perm == 0 {
            return Err(GpuError::Input("minhash needs at least one permutation".into()));
        }
        let kernel = self.function("minhash_offsets32");
        let mut lanes = self.lanes();
        let fixed = 8 * num_perm + 16;
        let cost = |a: usize, b: usize| {
            (offsets[b] - offsets[a]) as usize + 4 * (b - a + 1) + 4 * num_perm * (b - a) + fixed
        };
        let ranges = plan(rows, lanes.chunk_bytes(), cost)?;
        let chunks = ranges.iter().map(|r| Chunk {
            inputs: vec![
                bytes_of(&offsets[r.start..=r.end]),
                &bytes[offsets[r.start] as usize..offsets[r.end] as usize],
                bytes_of(keys),
            ],
            out: 4 * num_perm * r.start..4 * num_perm * r.end,
        });
        let mut out = output::<u32>(rows * num_perm);
        let groups = num_perm.div_ceil(MINHASH_PERMS_PER_THREAD as usize) as u64;
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, v, o, i| {
            let r = &ranges[i];
            let (base, count, perms) = (i64::from(offsets[r.start]), r.len() as u64, num_perm as u32);
            let mut launch = stream.launch_builder(kernel);
            launch
                .arg(&v[0])
                .arg(&base)
                .arg(&v[1])
                .arg(&count)
                .arg(&v[2])
                .arg(&perms)
                .arg(&shingle_len)
                .arg(o);
            // SAFETY: as in minhash.cu.
            unsafe { launch.launch(grid(count * groups)) }?;
            Ok(())
        })?;
        Ok(out)
    }

    /// `dot` (or `cosine_similarity`) of each pair of rows, with whether
    /// each has an answer. Row lengths must agree.
    pub fn pairwise(
        &self,
        a: VectorRows<'_>,
        b: VectorRows<'_>,
        cosine: bool,
    ) -> Result<(Vec<f32>, Vec<u8>)> {
        if a.rows != b.rows {
            return Err(GpuError::Input(format!("{} rows paired with {}", a.rows, b.rows)));
        }
        let kernel = self.function("vector_pairwise");
        let mut lanes = self.lanes();
        let ranges = plan(a.rows, lanes.chunk_bytes(), |f, l| {
            a.cost(f, l) + b.cost(f, l) + 5 * (l - f) + 32
        })?;
        let rows = a.rows;
        // One output: the values of every row, then whether each has one.
        let chunks = ranges.iter().map(|r| {
            let (ao, av) = a.inputs(r);
            let (bo, bv) = b.inputs(r);
            let mut inputs = vec![av, bv];
            inputs.extend(ao);
            inputs.extend(bo);
            Chunk {
                inputs,
                out: 5 * r.start..5 * r.end,
            }
        });
        let mut packed = output::<u8>(5 * rows);
        let width = a.offsets.map_or(a.width, |_| b.width) as u32;
        lanes.run(chunks, &mut packed, |stream, v, o, i| {
            let r = &ranges[i];
            let count = r.len() as u64;
            let a_offsets = ptr_or_null(a.offsets.and(v.get(2)), stream);
            let b_offsets = ptr_or_null(
                b.offsets.and(v.get(if a.offsets.is_some() { 3 } else { 2 })),
                stream,
            );
            let (a_base, b_base, cosine) = (a.base(r.start), b.base(r.start), u32::from(cosine));
            let (values, valid) = o.split_at_mut(4 * r.len());
            let mut launch = stream.launch_builder(kernel);
            launch
                .arg(&v[0])
                .arg(&a_offsets)
                .arg(&a_base)
                .arg(&v[1])
                .arg(&b_offsets)
                .arg(&b_base);
            launch.arg(&width).arg(&count).arg(&cosine);
            let (mut values, mut valid) = (values, valid);
            launch.arg(&mut values).arg(&mut valid);
            // SAFETY: as in vector.cu.
            unsafe { launch.launch(grid(count)) }?;
            Ok(())
        })?;
        // Each chunk packed its values and then its flags.
        let mut values = Vec::with_capacity(rows);
        let mut valid = Vec::with_capacity(rows);
        for r in &ranges {
            let chunk = &packed[5 * r.start..5 * r.end];
            let (v, f) = chunk.split_at(4 * r.len());
            values.extend(
                v.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            valid.extend_from_slice(f);
        }
        Ok((values, valid))
    }

    /// Each row normalised, in the input's values layout.
    pub fn l2_normalize(&self, v: VectorRows<'_>) -> Result<Vec<f32>> {
        let kernel = self.function("l2_normalize");
        let mut lanes = self.lanes();
        let ranges = plan(v.rows, lanes.chunk_bytes(), |f, l| 2 * v.cost(f, l) + 32)?;
        let start = v.span(0, 0).start;
        let chunks = ranges.iter().map(|r| {
            let span = v.span(r.start, r.end);
            Chunk {
                inputs: v.values_then_offsets(r),
                out: 4 * (span.start - start)..4 * (span.end - start),
            }
        });
        let mut out = output::<f32>(v.span(0, v.rows).len());
        let width = v.width as u32;
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, d, o, i| {
            let r = &ranges[i];
            let count = r.len() as u64;
            let offsets = ptr_or_null(v.offsets.and(d.get(1)), stream);
            let base = v.base(r.start);
            let mut launch = stream.launch_builder(kernel);
            launch
                .arg(&d[0])
                .arg(&offsets)
                .arg(&base)
                .arg(&width)
                .arg(&count)
                .arg(o);
            // SAFETY: as in vector.cu.
            unsafe { launch.launch(grid(count)) }?;
            Ok(())
        })?;
        Ok(out)
    }

    /// `random_projection` of every row: `dim` values a row.
    pub fn random_projection(&self, v: VectorRows<'_>, dim: usize, seed: u64) -> Result<Vec<f32>> {
        let kernel = self.function("random_projection");
        let mut lanes = self.lanes();
        let ranges = plan(v.rows, lanes.chunk_bytes(), |f, l| {
            v.cost(f, l) + 4 * dim * (l - f) + 32
        })?;
        let chunks = ranges.iter().map(|r| Chunk {
            inputs: v.values_then_offsets(r),
            out: 4 * dim * r.start..4 * dim * r.end,
        });
        let mut out = output::<f32>(v.rows * dim);
        let (width, dim32, seed_mix) = (v.width as u32, dim as u32, mix64(seed));
        let scale = crate::cpu::projection::scale(dim);
        lanes.run(chunks, bytes_of_mut(&mut out), |stream, d, o, i| {
            let r = &ranges[i];
            let count = r.len() as u64;
            let offsets = ptr_or_null(v.offsets.and(d.get(1)), stream);
            let base = v.base(r.start);
            let mut launch = stream.launch_builder(kernel);
            launch
                .arg(&d[0])
                .arg(&offsets)
                .arg(&base)
                .arg(&width)
                .arg(&count)
                .arg(&dim32)
                .arg(&seed_mix);
            launch.arg(&scale).arg(o);
            // SAFETY: as in projection.cu.
            unsafe { launch.launch(grid(count * dim as u64)) }?;
            Ok(())
        })?;
        Ok(out)
    }
}
