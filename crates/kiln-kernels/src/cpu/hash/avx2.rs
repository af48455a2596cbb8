//! `hash_bucket` of integers four rows at a time with AVX2, for CPUs
//! without AVX-512.
//!
//! AVX2 has no 64-bit multiply: each is three 32-bit multiplies
//! (`vpmuludq`) and their sum, and no conversion of 64-bit integers to
//! doubles, so `% n` is left to the scalar unit, which reduces one group's
//! hashes while the vector unit hashes the next. That pays for integers
//! (387 M rows/s on one core against 305 M for the scalar loop, on the
//! machine of the README's table with AVX-512 turned off); for short
//! strings, a dozen more multiplies a row, it does not (81 M against 94
//! M), and they keep the scalar loop.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use strength_reduce::StrengthReducedU64;

use crate::mix::{P1, P2, P3, P4, P5};

/// Proof that the CPU has AVX2.
#[derive(Clone, Copy)]
pub(super) struct Lanes {
    reduced: StrengthReducedU64,
}

impl Lanes {
    pub(super) fn new(n: u64) -> Option<Lanes> {
        is_x86_feature_detected!("avx2").then(|| Lanes {
            reduced: StrengthReducedU64::new(n),
        })
    }

    /// # Safety
    /// The CPU has AVX2, as [`Lanes::new`] checked.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn ints(self, values: &[u64], out: &mut [MaybeUninit<i64>]) {
        let (groups, tail) = out.as_chunks_mut::<4>();
        for (g, o) in groups.iter_mut().enumerate() {
            // SAFETY: `values` has 4 rows from `4 * g`, as `out` does.
            let v = unsafe { _mm256_loadu_si256(values.as_ptr().add(4 * g).cast()) };
            let h = avalanche(word_step(splat(P5.wrapping_add(8)), v));
            self.store(h, o);
        }
        let done = 4 * groups.len();
        for (o, &v) in tail.iter_mut().zip(&values[done..]) {
            o.write((crate::mix::xxh64_u64(v) % self.reduced) as i64);
        }
    }

    /// Four hashes reduced modulo `n` into `out`.
    #[target_feature(enable = "avx2")]
    fn store(self, h: __m256i, out: &mut [MaybeUninit<i64>; 4]) {
        let mut hashes = [0u64; 4];
        // SAFETY: `hashes` is 4 lanes wide.
        unsafe { _mm256_storeu_si256(hashes.as_mut_ptr().cast(), h) };
        for (o, h) in out.iter_mut().zip(hashes) {
            o.write((h % self.reduced) as i64);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn splat(c: u64) -> __m256i {
    _mm256_set1_epi64x(c as i64)
}

/// `a * c` modulo 2^64 per lane, from 32-bit halves: the high halves'
/// product falls off the top.
#[inline]
#[target_feature(enable = "avx2")]
fn mul(a: __m256i, c: u64) -> __m256i {
    let (low, high) = (splat(c & 0xFFFF_FFFF), splat(c >> 32));
    let both = _mm256_mul_epu32(a, low);
    let cross = _mm256_add_epi64(
        _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), low),
        _mm256_mul_epu32(a, high),
    );
    _mm256_add_epi64(both, _mm256_slli_epi64::<32>(cross))
}

#[inline]
#[target_feature(enable = "avx2")]
fn rol<const L: i32, const R: i32>(a: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_slli_epi64::<L>(a), _mm256_srli_epi64::<R>(a))
}

#[inline]
#[target_feature(enable = "avx2")]
fn word_step(h: __m256i, word: __m256i) -> __m256i {
    let k = mul(rol::<31, 33>(mul(word, P2)), P1);
    _mm256_add_epi64(mul(rol::<27, 37>(_mm256_xor_si256(h, k)), P1), splat(P4))
}

#[inline]
#[target_feature(enable = "avx2")]
fn avalanche(h: __m256i) -> __m256i {
    let h = mul(_mm256_xor_si256(h, _mm256_srli_epi64::<33>(h)), P2);
    let h = mul(_mm256_xor_si256(h, _mm256_srli_epi64::<29>(h)), P3);
    _mm256_xor_si256(h, _mm256_srli_epi64::<32>(h))
}
