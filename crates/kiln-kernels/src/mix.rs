//! The integer hashing every seeded function shares: xxHash64 for the
//! bytes of a value, and SplitMix64's finalizer to derive keys and random
//! numbers from counters. Both are a few lines in any language (the
//! functions reference gives them in Python), and the CUDA kernels compute
//! the same bits, so a seed means the same thing everywhere.

/// The golden-ratio increment of SplitMix64.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finalizer: a bijection on 64 bits that mixes every input
/// bit into every output bit.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xxHash64 with seed 0: what `hash_bucket` and `minhash` hash bytes with.
#[inline]
pub fn xxh64(bytes: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, bytes)
}

// xxHash64's primes, which the vector loops in `cpu::hash` use too.
pub(crate) const P1: u64 = 0x9E37_79B1_85EB_CA87;
pub(crate) const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
pub(crate) const P3: u64 = 0x1656_67B1_9E37_79F9;
pub(crate) const P4: u64 = 0x85EB_CA77_C2B2_AE63;
pub(crate) const P5: u64 = 0x27D4_EB2F_1656_67C5;

#[inline]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// One 8-byte step of xxHash64's tail.
#[inline]
fn word_step(h: u64, word: u64) -> u64 {
    let k = word.wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
    (h ^ k).rotate_left(27).wrapping_mul(P1).wrapping_add(P4)
}

/// `xxh64` of an integer's 8 little-endian bytes, written out for that
/// one length: the same value, without the general loop.
#[inline]
pub fn xxh64_u64(v: u64) -> u64 {
    avalanche(word_step(P5.wrapping_add(8), v))
}

/// `xxh64(&buffer[start..start + len])`, reading up to 32 bytes from
/// `start` where the buffer has them. Below 32 bytes xxHash64 is a tail of
/// at most three 8-byte steps, one 4-byte step and three 1-byte steps;
/// here every step is computed and the ones past `len` discarded, so the
/// row's length costs no mispredicted branch (rows of random lengths are
/// what string columns hold). The same value as [`xxh64`].
#[inline]
pub fn xxh64_at(buffer: &[u8], start: usize, len: usize) -> u64 {
    let Some(window) = buffer.get(start..start + 32).filter(|_| len < 32) else {
        return xxh64(&buffer[start..start + len]);
    };
    let word = |at: usize| u64::from_le_bytes(window[at..at + 8].try_into().expect("8 bytes"));
    let mut h = P5.wrapping_add(len as u64);
    let words = len / 8;
    for i in 0..3 {
        let next = word_step(h, word(8 * i));
        h = if i < words { next } else { h };
    }
    let at = 8 * words;
    let rest = len - at;
    // The 4-byte step, then the last bytes, from one load: past the last
    // 8-byte step (at most at byte 24) the window holds 8 more.
    let tail = word(at);
    let four = rest >= 4;
    let next = (h ^ (tail & 0xFFFF_FFFF).wrapping_mul(P1))
        .rotate_left(23)
        .wrapping_mul(P2)
        .wrapping_add(P3);
    h = if four { next } else { h };
    let tail = if four { tail >> 32 } else { tail };
    let bytes = rest - if four { 4 } else { 0 };
    for j in 0..3 {
        let next = (h ^ ((tail >> (8 * j)) & 0xFF).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
        h = if j < bytes { next } else { h };
    }
    avalanche(h)
}

/// The key of MinHash permutation `i`: the `i + 1`-th output of a
/// SplitMix64 sequence started at 0.
#[inline]
pub fn permutation_key(i: u32) -> u64 {
    mix64((u64::from(i) + 1).wrapping_mul(GOLDEN))
}

/// Entry (`row`, `col`) of the standard normal matrix of `seed`: one
/// 64-bit counter hash split into two 24-bit uniforms, then Box-Muller.
/// Computed in double precision and rounded once, so the CPU and the GPU
/// agree to the last few ulps of `ln` and `cos`.
#[inline]
pub fn gaussian(seed: u64, row: u32, col: u32) -> f32 {
    let x = mix64(((u64::from(row) << 32) | u64::from(col)) ^ mix64(seed));
    let u1 = ((x >> 40) + 1) as f64 * (1.0 / (1u64 << 24) as f64);
    let u2 = (x & 0xFF_FFFF) as f64 * (1.0 / (1u64 << 24) as f64);
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        // From the xxHash specification's test suite (seed 0).
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn the_eight_byte_xxh64_is_xxh64() {
        for i in 0..10_000u64 {
            let v = mix64(i) ^ (i << 7);
            assert_eq!(xxh64_u64(v), xxh64(&v.to_le_bytes()), "{v:#x}");
        }
        assert_eq!(xxh64_u64(u64::MAX), xxh64(&[0xFF; 8]));
    }

    #[test]
    fn the_branch_free_short_xxh64_is_xxh64() {
        let buffer: Vec<u8> = (0..200u64).map(|i| (mix64(i) >> 56) as u8).collect();
        for start in 0..buffer.len() {
            for len in 0..=(buffer.len() - start).min(40) {
                let want = xxh64(&buffer[start..start + len]);
                assert_eq!(xxh64_at(&buffer, start, len), want, "start {start}, len {len}");
            }
        }
    }

    #[test]
    fn mix64_is_splitmix64() {
        // SplitMix64 seeded with 0 starts 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4.
        assert_eq!(mix64(GOLDEN), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(GOLDEN.wrapping_mul(2)), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(permutation_key(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn gaussian_entries_look_standard_normal() {
        let n = 200_000u32;
        let xs: Vec<f64> = (0..n).map(|i| f64::from(gaussian(7, i / 400, i % 400))).collect();
        let mean = xs.iter().sum::<f64>() / f64::from(n);
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / f64::from(n);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!(xs.iter().all(|x| x.is_finite()));
        assert_ne!(gaussian(7, 0, 0), gaussian(8, 0, 0));
    }
}
