//! `hash_bucket`: xxHash64 (seed 0) of a value's bytes, modulo `n`.
//!
//! Each layout has a scalar loop, and on x86-64 CPUs with AVX-512 (F and
//! DQ, which bring the 64-bit multiply) a loop that hashes eight rows per
//! instruction ([`avx512`]); integers also have four-row AVX2 lanes
//! ([`avx2`]) for the CPUs without it. All compute [`crate::mix::xxh64`]
//! exactly.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::mem::MaybeUninit;

use strength_reduce::StrengthReducedU64;

use super::Offset;
use crate::mix::{xxh64, xxh64_at, xxh64_u64};

/// Strings and binaries as Arrow lays them out: one values buffer, and
/// each row's bytes between two offsets. A null row's bytes are hashed too
/// (they are empty or left over); its result is masked by the null buffer.
pub fn buckets_of_offsets<O: Offset>(offsets: &[O], bytes: &[u8], n: u64) -> Vec<i64> {
    filled(offsets.len().saturating_sub(1), |out| {
        fill_offsets(offsets, bytes, n, out, WIDEST)
    })
}

/// [`buckets_of_offsets`] into rows of a buffer of the caller's (one
/// thread's share of an output, say); `out` has a row per offset but one.
pub fn buckets_of_offsets_into<O: Offset>(offsets: &[O], bytes: &[u8], n: u64, out: &mut [i64]) {
    let rows = out.len().min(offsets.len().saturating_sub(1));
    // SAFETY: `MaybeUninit<i64>` is laid out as `i64`, and the fill writes
    // only initialised values.
    let out = unsafe { &mut *(&mut out[..rows] as *mut [i64] as *mut [MaybeUninit<i64>]) };
    fill_offsets(offsets, bytes, n, out, WIDEST);
}

/// The widest lanes to take, in bits, where the CPU has them (64: the
/// scalar loops); the tests also run the narrower ones.
const WIDEST: u32 = 512;

fn fill_offsets<O: Offset>(offsets: &[O], bytes: &[u8], n: u64, out: &mut [MaybeUninit<i64>], widest: u32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(lanes) = avx512::Lanes::new(n).filter(|_| widest >= 512) {
        // SAFETY: `Lanes` exists only where the CPU has said it has AVX-512.
        return unsafe { lanes.offsets(offsets, bytes, out) };
    }
    let n = StrengthReducedU64::new(n);
    for (i, o) in out.iter_mut().enumerate() {
        o.write(offset_row(offsets, bytes, i, n));
    }
}

/// Row `i` of an offsets layout, one at a time.
#[inline]
fn offset_row<O: Offset>(offsets: &[O], bytes: &[u8], i: usize, n: StrengthReducedU64) -> i64 {
    let (start, end) = (offsets[i].index(), offsets[i + 1].index());
    (xxh64_at(bytes, start, end - start) % n) as i64
}

/// Strings and binaries as Arrow's view layout has them: a 16-byte view
/// per row (its length, then the bytes themselves when there are at most
/// 12, else a prefix, the index of a data buffer and an offset in it).
pub fn buckets_of_views(views: &[u128], buffers: &[&[u8]], n: u64) -> Vec<i64> {
    views_with(views, buffers, n, WIDEST)
}

fn views_with(views: &[u128], buffers: &[&[u8]], n: u64, widest: u32) -> Vec<i64> {
    filled(views.len(), |out| {
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = avx512::Lanes::new(n).filter(|_| widest >= 512) {
            // SAFETY: as above.
            return unsafe { lanes.views(views, buffers, out) };
        }
        let n = StrengthReducedU64::new(n);
        for (i, o) in out.iter_mut().enumerate() {
            o.write((xxh64(view_bytes(views, buffers, i)) % n) as i64);
        }
    })
}

/// The bytes of view `i`.
#[inline]
fn view_bytes<'a>(views: &'a [u128], buffers: &[&'a [u8]], i: usize) -> &'a [u8] {
    let view = views[i];
    let len = view as u32 as usize;
    if len <= 12 {
        // SAFETY: `u128` has no padding; viewing one as its 16 bytes is
        // sound, and Arrow lays views out little-endian.
        let raw: &[u8; 16] = unsafe { &*(&views[i] as *const u128 as *const [u8; 16]) };
        &raw[4..4 + len]
    } else {
        let buffer = (view >> 64) as u32 as usize;
        let offset = (view >> 96) as u32 as usize;
        &buffers[buffer][offset..offset + len]
    }
}

/// Integers widened to 64 bits (signed ones sign-extended), hashed as
/// their 8 little-endian bytes.
pub fn buckets_of_ints(values: &[u64], n: u64) -> Vec<i64> {
    ints_with(values, n, WIDEST)
}

fn ints_with(values: &[u64], n: u64, widest: u32) -> Vec<i64> {
    filled(values.len(), |out| {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(lanes) = avx512::Lanes::new(n).filter(|_| widest >= 512) {
                // SAFETY: as above.
                return unsafe { lanes.ints(values, out) };
            }
            if let Some(lanes) = avx2::Lanes::new(n).filter(|_| widest >= 256) {
                // SAFETY: as above.
                return unsafe { lanes.ints(values, out) };
            }
        }
        let n = StrengthReducedU64::new(n);
        for (o, &v) in out.iter_mut().zip(values) {
            o.write((xxh64_u64(v) % n) as i64);
        }
    })
}

/// A vector of `rows` values, every one written by `fill`. The output is
/// not zeroed first: at a billion rows a second, zeroing it is a third of
/// the time.
fn filled(rows: usize, fill: impl FnOnce(&mut [MaybeUninit<i64>])) -> Vec<i64> {
    let mut out = Vec::with_capacity(rows);
    fill(&mut out.spare_capacity_mut()[..rows]);
    // SAFETY: every path of `fill` writes each of the `rows` values.
    unsafe { out.set_len(rows) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::mix64;

    const NS: [u64; 9] = [1, 2, 3, 7, 1000, 65_537, (1 << 32) - 1, 1 << 32, i64::MAX as u64];

    /// Bytes of random lengths around and past the short-hash limit.
    fn rows(count: usize) -> (Vec<i32>, Vec<u8>) {
        let mut offsets = vec![0i32];
        let mut bytes = Vec::new();
        for i in 0..count as u64 {
            let len = match mix64(i) % 10 {
                0 => 32 + mix64(i ^ 1) % 40,
                1 => 0,
                _ => mix64(i ^ 2) % 32,
            };
            bytes.extend((0..len).map(|j| (mix64(i * 1000 + j) >> 56) as u8));
            offsets.push(bytes.len() as i32);
        }
        (offsets, bytes)
    }

    #[test]
    fn offsets_give_xxh64_modulo_n() {
        // Counts off the lane width, so every tail is taken.
        for count in [0, 1, 7, 8, 9, 1001] {
            let (offsets, bytes) = rows(count);
            for n in NS {
                for widest in [512, 256, 64] {
                    let out = filled(count, |o| fill_offsets(&offsets, &bytes, n, o, widest));
                    for (i, w) in offsets.windows(2).enumerate() {
                        let want = xxh64(&bytes[w[0] as usize..w[1] as usize]) % n;
                        assert_eq!(out[i], want as i64, "row {i} of {count}, n {n}, {widest}");
                    }
                }
                assert_eq!(buckets_of_offsets(&offsets, &bytes, n).len(), count);
            }
        }
    }

    #[test]
    fn views_give_xxh64_modulo_n() {
        let (offsets, bytes) = rows(1001);
        // Long rows in one buffer, or in one of two, some at its very end.
        let other: Vec<u8> = bytes.iter().rev().copied().collect();
        for buffers in [vec![&bytes[..]], vec![&bytes[..], &other[..]]] {
            let mut views = Vec::new();
            let mut want = Vec::new();
            for (i, w) in offsets.windows(2).enumerate() {
                let (start, len) = (w[0] as usize, (w[1] - w[0]) as usize);
                let (b, start) = match buffers.len() > 1 && i % 3 == 0 {
                    true => (1, bytes.len() - start - len),
                    false => (0, start),
                };
                let row = &buffers[b][start..start + len];
                let mut raw = [0u8; 16];
                raw[..4].copy_from_slice(&(len as u32).to_le_bytes());
                if len <= 12 {
                    raw[4..4 + len].copy_from_slice(row);
                } else {
                    raw[4..8].copy_from_slice(&row[..4]);
                    raw[8..12].copy_from_slice(&(b as u32).to_le_bytes());
                    raw[12..].copy_from_slice(&(start as u32).to_le_bytes());
                }
                views.push(u128::from_le_bytes(raw));
                want.push(xxh64(row));
            }
            for count in [0, 1, 2, 3, 8, 9, 10, 11, 17, 1001] {
                for n in NS {
                    for widest in [512, 256, 64] {
                        let out = views_with(&views[..count], &buffers, n, widest);
                        assert_eq!(out.len(), count);
                        for i in 0..count {
                            let context =
                                format!("row {i} of {count}, n {n}, {} buffers, {widest}", buffers.len());
                            assert_eq!(out[i], (want[i] % n) as i64, "{context}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ints_give_xxh64_modulo_n() {
        let mut values: Vec<u64> = (0..1001u64).map(mix64).collect();
        values.extend([0, 1, u64::MAX, i64::MIN as u64, i64::MAX as u64]);
        for n in NS {
            for widest in [512, 256, 64] {
                let out = ints_with(&values, n, widest);
                assert_eq!(out.len(), values.len());
                for (i, &v) in values.iter().enumerate() {
                    assert_eq!(
                        out[i],
                        (xxh64(&v.to_le_bytes()) % n) as i64,
                        "{v:#x} % {n}, {widest}"
                    );
                }
            }
        }
    }
}
