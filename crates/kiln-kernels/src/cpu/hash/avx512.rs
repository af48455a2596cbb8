//! `hash_bucket` eight rows at a time with AVX-512 (F and DQ).
//!
//! xxHash64 of an integer is five 64-bit multiplies in a chain, and of a
//! short string a dozen more; without AVX-512DQ's `vpmullq` a vector
//! register cannot multiply 64-bit lanes, and the scalar loops in
//! [`super`] are as fast as it gets. With it, each lane follows
//! [`crate::mix::xxh64_at`]: every step computed, the ones past the row's
//! length discarded by a mask, so rows of any length under 32 bytes share
//! one path. Longer rows, and rows whose 32-byte window would run past the
//! end of their buffer, are hashed by the scalar code.
//!
//! The modulo is exact too: for `n` up to 2^32, a quotient estimated in
//! double precision and corrected twice; a power of two is a mask, and
//! larger `n` are reduced by the scalar code.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use strength_reduce::StrengthReducedU64;

use super::{Offset, offset_row, view_bytes};
use crate::mix::{P1, P2, P3, P4, P5, xxh64};

/// Rows a short-string hash reads from its start, whatever its length.
const WINDOW: usize = 32;

/// Proof that the CPU has AVX-512F and DQ, with `n` prepared for every
/// way of reducing a hash.
#[derive(Clone, Copy)]
pub(super) struct Lanes {
    n: u64,
    reduced: StrengthReducedU64,
}

impl Lanes {
    pub(super) fn new(n: u64) -> Option<Lanes> {
        let ok = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq");
        ok.then(|| Lanes {
            n,
            reduced: StrengthReducedU64::new(n),
        })
    }

    /// # Safety
    /// The CPU has AVX-512F and DQ, as [`Lanes::new`] checked.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn ints(self, values: &[u64], out: &mut [MaybeUninit<i64>]) {
        let modulo = Modulo::new(self.n);
        let (groups, tail) = out.as_chunks_mut::<8>();
        for (g, o) in groups.iter_mut().enumerate() {
            // SAFETY: `values` has 8 rows from `8 * g`, as `out` does.
            let v = unsafe { _mm512_loadu_si512(values.as_ptr().add(8 * g).cast()) };
            let h = avalanche(word_step(splat(P5.wrapping_add(8)), v));
            self.store(modulo, h, o);
        }
        let done = 8 * groups.len();
        for (o, &v) in tail.iter_mut().zip(&values[done..]) {
            o.write((crate::mix::xxh64_u64(v) % self.reduced) as i64);
        }
    }

    /// # Safety
    /// As [`Lanes::ints`].
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn offsets<O: Offset>(self, offsets: &[O], bytes: &[u8], out: &mut [MaybeUninit<i64>]) {
        let modulo = Modulo::new(self.n);
        let (groups, _) = out.as_chunks_mut::<8>();
        let mut done = 0;
        for o in groups {
            let row = done;
            done += 8;
            let mut starts = [0i64; 8];
            let mut lens = [0u64; 8];
            let mut longest = 0;
            for j in 0..8 {
                let (start, end) = (offsets[row + j].index(), offsets[row + j + 1].index());
                starts[j] = start as i64;
                lens[j] = (end - start) as u64;
                longest = longest.max(end - start);
            }
            // Offsets only grow: the last start's window is the furthest.
            if longest >= WINDOW || starts[7] as usize + WINDOW > bytes.len() {
                for (j, o) in o.iter_mut().enumerate() {
                    o.write(offset_row(offsets, bytes, row + j, self.reduced));
                }
                continue;
            }
            // SAFETY: every row's window lies inside `bytes`, checked above.
            let h = unsafe {
                let at = _mm512_loadu_si512(starts.as_ptr().cast());
                short_hashes(bytes.as_ptr(), at, _mm512_loadu_si512(lens.as_ptr().cast()))
            };
            self.store(modulo, h, o);
        }
        for (j, o) in out[done..].iter_mut().enumerate() {
            o.write(offset_row(offsets, bytes, done + j, self.reduced));
        }
    }

    /// # Safety
    /// As [`Lanes::ints`].
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) unsafe fn views(self, views: &[u128], buffers: &[&[u8]], out: &mut [MaybeUninit<i64>]) {
        let modulo = Modulo::new(self.n);
        // Windows are addressed from the views; a data buffer is reached
        // by its distance from them (wrapping: it may lie below).
        let base = views.as_ptr().cast::<u8>();
        let distances: Vec<i64> = buffers
            .iter()
            .map(|b| (b.as_ptr() as i64).wrapping_sub(base as i64))
            .collect();
        let sizes: Vec<u64> = buffers.iter().map(|b| b.len() as u64).collect();
        let count = splat(buffers.len() as u64);
        // Most arrays have one data buffer, or none: no gather then.
        let one_buffer = (buffers.len() <= 1).then(|| {
            (
                splat(distances.first().map_or(0, |&d| d as u64)),
                splat(sizes.first().map_or(0, |&s| s)),
            )
        });
        // The last two views are not followed by 32 bytes of views: an
        // inline row there is left to the scalar code.
        let (groups, _) = out[..views.len().saturating_sub(2)].as_chunks_mut::<8>();
        let mut done = 0;
        for o in groups {
            let row = done;
            done += 8;
            // Eight views as two registers of four, then their low and
            // high halves: length (and prefix), buffer index and offset.
            // SAFETY: views `row..row + 8` exist, as their outputs do.
            let (first, second) = unsafe {
                let at = views.as_ptr().add(row).cast::<__m512i>();
                (_mm512_loadu_si512(at), _mm512_loadu_si512(at.add(1)))
            };
            let low = _mm512_permutex2var_epi64(first, _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14), second);
            let high = _mm512_permutex2var_epi64(first, _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15), second);
            let len = _mm512_and_si512(low, splat(0xFFFF_FFFF));
            let buffer = _mm512_and_si512(high, splat(0xFFFF_FFFF));
            let offset = _mm512_srli_epi64::<32>(high);
            let inline = _mm512_cmple_epu64_mask(len, splat(12));
            // Out-of-line rows name a buffer that exists, are short, and
            // have a whole window before their buffer ends.
            let named = _mm512_mask_cmplt_epu64_mask(!inline, buffer, count);
            let (distance, size) = match one_buffer {
                Some(splatted) => splatted,
                // SAFETY: only lanes that name an existing buffer are read.
                None => unsafe {
                    (
                        _mm512_mask_i64gather_epi64::<8>(
                            _mm512_setzero_si512(),
                            named,
                            buffer,
                            distances.as_ptr().cast(),
                        ),
                        _mm512_mask_i64gather_epi64::<8>(
                            _mm512_setzero_si512(),
                            named,
                            buffer,
                            sizes.as_ptr().cast(),
                        ),
                    )
                },
            };
            let window = _mm512_add_epi64(offset, splat(WINDOW as u64));
            let fits = _mm512_mask_cmple_epu64_mask(named, window, size)
                & _mm512_cmplt_epu64_mask(len, splat(WINDOW as u64));
            if inline | fits != 0xFF {
                for (j, o) in o.iter_mut().enumerate() {
                    o.write((xxh64(view_bytes(views, buffers, row + j)) % self.reduced) as i64);
                }
                continue;
            }
            // Inline bytes start 4 bytes into their view.
            let lanes = _mm512_add_epi64(splat(row as u64), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
            let inline_at = _mm512_add_epi64(_mm512_slli_epi64::<4>(lanes), splat(4));
            let at = _mm512_mask_blend_epi64(inline, _mm512_add_epi64(distance, offset), inline_at);
            // SAFETY: every window lies inside the views or its buffer.
            let h = unsafe { short_hashes(base, at, len) };
            self.store(modulo, h, o);
        }
        for (j, o) in out[done..].iter_mut().enumerate() {
            o.write((xxh64(view_bytes(views, buffers, done + j)) % self.reduced) as i64);
        }
    }

    /// Eight hashes reduced modulo `n` into `out`.
    #[target_feature(enable = "avx512f,avx512dq")]
    fn store(self, modulo: Option<Modulo>, h: __m512i, out: &mut [MaybeUninit<i64>; 8]) {
        match modulo {
            Some(m) => {
                // SAFETY: `out` is 8 lanes wide.
                unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), m.reduce(h)) }
            }
            None => {
                let mut hashes = [0u64; 8];
                // SAFETY: as above.
                unsafe { _mm512_storeu_si512(hashes.as_mut_ptr().cast(), h) };
                for (o, h) in out.iter_mut().zip(hashes) {
                    o.write((h % self.reduced) as i64);
                }
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(c: u64) -> __m512i {
    _mm512_set1_epi64(c as i64)
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn mul(a: __m512i, c: u64) -> __m512i {
    _mm512_mullo_epi64(a, splat(c))
}

/// [`crate::mix`]'s 8-byte step, per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn word_step(h: __m512i, word: __m512i) -> __m512i {
    let k = mul(_mm512_rol_epi64::<31>(mul(word, P2)), P1);
    _mm512_add_epi64(mul(_mm512_rol_epi64::<27>(_mm512_xor_si512(h, k)), P1), splat(P4))
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn avalanche(h: __m512i) -> __m512i {
    let h = mul(_mm512_xor_si512(h, _mm512_srli_epi64::<33>(h)), P2);
    let h = mul(_mm512_xor_si512(h, _mm512_srli_epi64::<29>(h)), P3);
    _mm512_xor_si512(h, _mm512_srli_epi64::<32>(h))
}

/// xxHash64 of eight rows under 32 bytes, lane `j`'s `len` bytes at
/// `base + at[j]`.
///
/// # Safety
/// `WINDOW` bytes from each `base + at[j]` are readable.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn short_hashes(base: *const u8, at: __m512i, len: __m512i) -> __m512i {
    // SAFETY: each lane reads 8 bytes inside its row's window.
    let word = |k: i64| unsafe {
        _mm512_i64gather_epi64::<1>(_mm512_add_epi64(at, _mm512_set1_epi64(k)), base.cast())
    };
    let words = [word(0), word(8), word(16), word(24)];
    let count = _mm512_srli_epi64::<3>(len);
    let mut h = _mm512_add_epi64(splat(P5), len);
    let mut tail = words[0];
    for (i, &w) in words.iter().enumerate().take(3) {
        let more = _mm512_cmpgt_epu64_mask(count, splat(i as u64));
        h = _mm512_mask_blend_epi64(more, h, word_step(h, w));
        // The word after the last full one holds the rest.
        tail = _mm512_mask_blend_epi64(more, tail, words[i + 1]);
    }
    let rest = _mm512_sub_epi64(len, _mm512_slli_epi64::<3>(count));
    let four = _mm512_cmpge_epu64_mask(rest, splat(4));
    let low = mul(_mm512_and_si512(tail, splat(0xFFFF_FFFF)), P1);
    let next = _mm512_add_epi64(
        mul(_mm512_rol_epi64::<23>(_mm512_xor_si512(h, low)), P2),
        splat(P3),
    );
    h = _mm512_mask_blend_epi64(four, h, next);
    tail = _mm512_mask_srli_epi64::<32>(tail, four, tail);
    let bytes = _mm512_mask_sub_epi64(rest, four, rest, splat(4));
    for j in 0..3u64 {
        let byte = mul(_mm512_and_si512(tail, splat(0xFF)), P5);
        let next = mul(_mm512_rol_epi64::<11>(_mm512_xor_si512(h, byte)), P1);
        h = _mm512_mask_blend_epi64(_mm512_cmpgt_epu64_mask(bytes, splat(j)), h, next);
        tail = _mm512_srli_epi64::<8>(tail);
    }
    avalanche(h)
}

/// `h % n` per lane, for the `n` that lanes can reduce exactly.
#[derive(Clone, Copy)]
struct Modulo {
    n: u64,
    inverse: f64,
}

impl Modulo {
    /// `None` for `n` over 2^32, which the scalar code reduces.
    fn new(n: u64) -> Option<Modulo> {
        (n <= 1 << 32).then(|| Modulo {
            n,
            inverse: 1.0 / n as f64,
        })
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn reduce(self, h: __m512i) -> __m512i {
        let n = splat(self.n);
        if self.n.is_power_of_two() {
            return _mm512_and_si512(h, splat(self.n - 1));
        }
        let inverse = _mm512_set1_pd(self.inverse);
        // Each rounding (of h, of 1/n, of the product) is off by at most
        // 2^-53 relatively, so the estimated quotient is off by at most
        // 2^13 / n + 1, and `h - q n` by at most 2^13 + 2n: well inside
        // 2^52, where a double holds it exactly.
        let q = _mm512_cvttpd_epu64(_mm512_mul_pd(_mm512_cvtepu64_pd(h), inverse));
        let r = _mm512_sub_epi64(h, _mm512_mullo_epi64(q, n));
        // A second quotient, of a number this small, truncated toward
        // zero, leaves `r` in [-n, n].
        let q = _mm512_cvttpd_epi64(_mm512_mul_pd(_mm512_cvtepi64_pd(r), inverse));
        let r = _mm512_sub_epi64(r, _mm512_mullo_epi64(q, n));
        let below = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
        let r = _mm512_mask_add_epi64(r, below, r, n);
        let above = _mm512_cmpge_epi64_mask(r, n);
        _mm512_mask_sub_epi64(r, above, r, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mix::mix64;

    #[test]
    fn lanes_reduce_exactly() {
        if Lanes::new(3).is_none() {
            return;
        }
        let mut ns: Vec<u64> = vec![2, 3, 5, 7, 10, 1000, 4095, 4097, 65_537];
        ns.extend([(1 << 31) - 1, (1 << 32) - 1, 1 << 32, 3 << 30, 0xFFFF_FFFB]);
        ns.extend((0..40).map(|i| 2 + mix64(i) % (1 << 32)));
        for n in ns {
            let m = Modulo::new(n).expect("n up to 2^32");
            // Around multiples of n, the top of the range and random values.
            let mut hs: Vec<u64> = vec![0, 1, u64::MAX, u64::MAX - 1, 1 << 63, (1 << 63) - 1];
            for k in [
                1u64,
                2,
                3,
                u64::MAX / n,
                u64::MAX / n - 1,
                (1 << 53) / n,
                mix64(n),
            ] {
                let multiple = k.wrapping_mul(n);
                hs.extend([multiple, multiple.wrapping_sub(1), multiple.wrapping_add(1)]);
            }
            hs.extend((0..4000).map(|i| mix64(i ^ n)));
            for group in hs.chunks(8) {
                let mut lanes = [0u64; 8];
                lanes[..group.len()].copy_from_slice(group);
                let mut got = [0u64; 8];
                // SAFETY: `Lanes::new` found AVX-512F and DQ.
                unsafe {
                    let h = _mm512_loadu_si512(lanes.as_ptr().cast());
                    _mm512_storeu_si512(got.as_mut_ptr().cast(), m.reduce(h));
                }
                for (h, r) in lanes.iter().zip(got) {
                    assert_eq!(r, h % n, "{h} % {n}");
                }
            }
        }
    }
}
