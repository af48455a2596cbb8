//! `minhash`: the least value of each permutation over a text's character
//! shingles. Shingle `s` hashes to `h = xxh64(utf8(s))`; permutation `i`
//! maps it to the high 32 bits of `mix64(h ^ permutation_key(i))`.

use super::Offset;
use crate::mix::{mix64, permutation_key, xxh64};

/// The value of a position no shingle reached: a text with no characters.
pub const EMPTY: u32 = u32::MAX;

/// The keys of permutations `0..num_perm`.
pub fn keys(num_perm: usize) -> Vec<u64> {
    (0..num_perm as u32).map(permutation_key).collect()
}

/// Whether byte `b` continues a UTF-8 character rather than starting one.
#[inline]
fn continues(b: u8) -> bool {
    b & 0xC0 == 0x80
}

/// One text's signature at a time, reusing its buffer across rows.
pub struct Sketch<'a> {
    keys: &'a [u64],
    k: usize,
    /// Byte offsets of the text's characters, and its length at the end.
    starts: Vec<usize>,
}

impl<'a> Sketch<'a> {
    pub fn new(keys: &'a [u64], k: usize) -> Self {
        Self {
            keys,
            k,
            starts: Vec::new(),
        }
    }

    /// Writes the signature of `text` (UTF-8) into `sig`, which holds one
    /// value per key. Shingles are runs of `k` characters; a text shorter
    /// than that is one shingle, an empty one has none.
    pub fn sign(&mut self, text: &[u8], sig: &mut [u32]) {
        sig.fill(EMPTY);
        if text.is_empty() {
            return;
        }
        if text.is_ascii() {
            // Characters are bytes: no offsets to find.
            for shingle in text.windows(self.k.min(text.len())) {
                absorb(xxh64(shingle), self.keys, sig);
            }
            return;
        }
        self.starts.clear();
        self.starts
            .extend((0..text.len()).filter(|&at| !continues(text[at])));
        self.starts.push(text.len());
        let chars = self.starts.len() - 1;
        let width = self.k.min(chars);
        for first in 0..=chars - width {
            let shingle = &text[self.starts[first]..self.starts[first + width]];
            absorb(xxh64(shingle), self.keys, sig);
        }
    }
}

/// Lowers each position of `sig` to the shingle's value under its
/// permutation, if that is smaller. A straight loop over the keys, so the
/// compiler keeps it in vector registers.
#[inline]
pub fn absorb(h: u64, keys: &[u64], sig: &mut [u32]) {
    for (s, &key) in sig.iter_mut().zip(keys) {
        *s = (*s).min((mix64(h ^ key) >> 32) as u32);
    }
}

/// The signatures of Arrow-laid-out strings, `keys.len()` values per row.
pub fn signatures_of_offsets<O: Offset>(
    offsets: &[O],
    bytes: &[u8],
    keys: &[u64],
    k: usize,
    out: &mut [u32],
) {
    let mut sketch = Sketch::new(keys, k);
    for (w, sig) in offsets.windows(2).zip(out.chunks_exact_mut(keys.len().max(1))) {
        sketch.sign(&bytes[w[0].index()..w[1].index()], sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(text: &str, num_perm: usize, k: usize) -> Vec<u32> {
        let keys = keys(num_perm);
        let mut out = vec![0; num_perm];
        Sketch::new(&keys, k).sign(text.as_bytes(), &mut out);
        out
    }

    /// The definition, written as plainly as the reference gives it.
    fn by_definition(text: &str, num_perm: usize, k: usize) -> Vec<u32> {
        let chars: Vec<char> = text.chars().collect();
        let shingles: Vec<String> = if chars.is_empty() {
            vec![]
        } else if chars.len() < k {
            vec![text.to_string()]
        } else {
            chars.windows(k).map(|w| w.iter().collect()).collect()
        };
        (0..num_perm as u32)
            .map(|i| {
                shingles
                    .iter()
                    .map(|s| (mix64(xxh64(s.as_bytes()) ^ permutation_key(i)) >> 32) as u32)
                    .min()
                    .unwrap_or(EMPTY)
            })
            .collect()
    }

    #[test]
    fn signatures_follow_the_definition_for_ascii_unicode_and_short_texts() {
        for text in [
            "the quick brown fox",
            "naïve café — ok",
            "ab",
            "",
            "日本語のテキスト",
        ] {
            for k in [1, 3, 40] {
                assert_eq!(sig(text, 64, k), by_definition(text, 64, k), "{text:?} k={k}");
            }
        }
        assert!(sig("", 8, 3).iter().all(|&v| v == EMPTY));
    }

    #[test]
    fn offsets_sign_each_row_in_place() {
        let bytes = b"abcdxyz";
        let offsets = [0i32, 4, 4, 7];
        let keys = keys(8);
        let mut out = vec![0; 3 * 8];
        signatures_of_offsets(&offsets, bytes, &keys, 2, &mut out);
        assert_eq!(out[..8], sig("abcd", 8, 2));
        assert!(out[8..16].iter().all(|&v| v == EMPTY));
        assert_eq!(out[16..], sig("xyz", 8, 2));
    }
}
