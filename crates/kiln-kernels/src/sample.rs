//! Reproducible random inputs for the kernels' checks and benchmarks (the
//! host emulation tests, `gpu-check`, `cpu-bench`): the same seed gives the
//! same data on every machine.

use crate::mix::{GOLDEN, mix64};

/// SplitMix64 from a seed.
pub struct Random(pub u64);

impl Random {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A float in [-4, 4] on a grid of 1/250, so sums stay exact enough to
    /// compare.
    pub fn float(&mut self) -> f32 {
        (self.below(2001) as f32 - 1000.0) / 250.0
    }

    /// A double in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `rows` strings as Arrow offsets and bytes: `min..=max` characters
    /// each, drawn from `alphabet` (which may hold multi-byte characters).
    pub fn strings(&mut self, rows: usize, min: u64, max: u64, alphabet: &[&str]) -> (Vec<i32>, Vec<u8>) {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0i32);
        let mut bytes = Vec::new();
        for _ in 0..rows {
            for _ in 0..min + self.below(max - min + 1) {
                bytes.extend_from_slice(alphabet[self.below(alphabet.len() as u64) as usize].as_bytes());
            }
            offsets.push(bytes.len() as i32);
        }
        (offsets, bytes)
    }
}

/// Letters, a space, and characters of two, three and four UTF-8 bytes.
pub const MIXED: &[&str] = &["a", "b", "c", " ", "é", "ß", "日", "🙂", "x", "y"];

pub const LOWERCASE: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u",
    "v", "w", "x", "y", "z",
];
