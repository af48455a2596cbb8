//! `hash_bucket`: xxHash64 (seed 0) of a value's bytes, modulo `n`.

use strength_reduce::StrengthReducedU64;

use super::Offset;
use crate::mix::{xxh64, xxh64_at, xxh64_u64};

/// Strings and binaries as Arrow lays them out: one values buffer, and
/// each row's bytes between two offsets. A null row's bytes are hashed too
/// (they are empty or left over); its result is masked by the null buffer.
pub fn buckets_of_offsets<O: Offset>(offsets: &[O], bytes: &[u8], n: u64, out: &mut [i64]) {
    let n = StrengthReducedU64::new(n);
    for (o, w) in out.iter_mut().zip(offsets.windows(2)) {
        let (start, end) = (w[0].index(), w[1].index());
        *o = (xxh64_at(bytes, start, end - start) % n) as i64;
    }
}

/// Rows of bytes from anywhere (string views).
pub fn buckets_of<'a>(rows: impl Iterator<Item = &'a [u8]>, n: u64, out: &mut [i64]) {
    let n = StrengthReducedU64::new(n);
    for (o, row) in out.iter_mut().zip(rows) {
        *o = (xxh64(row) % n) as i64;
    }
}

/// Integers widened to 64 bits (signed ones sign-extended), hashed as
/// their 8 little-endian bytes.
pub fn buckets_of_ints(values: impl Iterator<Item = u64>, n: u64, out: &mut [i64]) {
    let n = StrengthReducedU64::new(n);
    for (o, v) in out.iter_mut().zip(values) {
        *o = (xxh64_u64(v) % n) as i64;
    }
}
