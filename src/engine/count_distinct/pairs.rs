//! The (group, value) pairs a distinct count has seen, one table for all
//! groups: strings with their bytes in one buffer, integers inline.

use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringViewBuilder};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, internal_err};
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// The distinct (group, value) pairs of every group.
pub trait PairTable: Default + Debug + Send + 'static {
    /// The type of the values counted, and of the items of the state list.
    const VALUE_TYPE: DataType;

    /// Where a pair's value is, for [`PairTable::values_of`].
    type Handle: Copy + Default;

    /// Adds `(group, values[row])` for each `(row, group)`, counting each
    /// pair not seen before in `counts[group]`. `values` is of
    /// [`PairTable::VALUE_TYPE`] and every row given is valid.
    fn insert(&mut self, values: &dyn Array, rows: impl Iterator<Item = (usize, u32)>, counts: &mut [i64]);

    /// Every pair, in table order.
    fn for_each(&self, f: impl FnMut(u32, Self::Handle));

    /// The values at `handles`, in that order.
    fn values_of(&self, handles: &[Self::Handle]) -> Result<ArrayRef>;

    /// Forgets groups `0..n` and numbers the rest from 0.
    fn drop_first(&mut self, n: u32);

    /// Bytes held, capacity included.
    fn size(&self) -> usize;
}

/// The group is part of the hash: a value common to many groups (a popular
/// item) must not put all its pairs on one probe chain.
fn pair_hash(group: u32, value: impl Hash) -> u64 {
    FixedState::default().hash_one((group, value))
}

/// One string pair: the value's bytes are `bytes[offset..offset + len]`.
#[derive(Debug, Clone, Copy)]
struct StringPair {
    hash: u64,
    offset: usize,
    len: u32,
    group: u32,
}

impl StringPair {
    /// The pair of `group` and `value`, its bytes appended to `bytes`.
    fn appended(bytes: &mut Vec<u8>, hash: u64, group: u32, value: &[u8]) -> Self {
        let offset = bytes.len();
        bytes.extend_from_slice(value);
        StringPair {
            hash,
            offset,
            len: value.len() as u32,
            group,
        }
    }
}

/// `Utf8View` values; the hash is kept, since rehashing a string on growth
/// costs more than the 8 bytes.
#[derive(Debug, Default)]
pub struct StringPairs {
    seen: HashTable<StringPair>,
    bytes: Vec<u8>,
}

impl PairTable for StringPairs {
    const VALUE_TYPE: DataType = DataType::Utf8View;
    type Handle = (usize, u32);

    fn insert(&mut self, values: &dyn Array, rows: impl Iterator<Item = (usize, u32)>, counts: &mut [i64]) {
        let strings = values.as_string_view();
        let Self { seen, bytes } = self;
        for (row, group) in rows {
            let value = strings.value(row).as_bytes();
            let hash = pair_hash(group, value);
            let same =
                |s: &StringPair| s.group == group && &bytes[s.offset..s.offset + s.len as usize] == value;
            if let Entry::Vacant(slot) = seen.entry(hash, same, |s| s.hash) {
                slot.insert(StringPair::appended(bytes, hash, group, value));
                counts[group as usize] += 1;
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(u32, Self::Handle)) {
        for s in &self.seen {
            f(s.group, (s.offset, s.len));
        }
    }

    fn values_of(&self, handles: &[Self::Handle]) -> Result<ArrayRef> {
        let mut values = StringViewBuilder::with_capacity(handles.len());
        for &(offset, len) in handles {
            match std::str::from_utf8(&self.bytes[offset..offset + len as usize]) {
                Ok(text) => values.append_value(text),
                Err(e) => return internal_err!("count(DISTINCT) kept a value that is not UTF-8: {e}"),
            }
        }
        Ok(Arc::new(values.finish()))
    }

    fn drop_first(&mut self, n: u32) {
        let old_bytes = std::mem::take(&mut self.bytes);
        let old = std::mem::take(&mut self.seen);
        for s in old.into_iter().filter(|s| s.group >= n) {
            let group = s.group - n;
            let value = &old_bytes[s.offset..s.offset + s.len as usize];
            let hash = pair_hash(group, value);
            let kept = StringPair::appended(&mut self.bytes, hash, group, value);
            self.seen.insert_unique(hash, kept, |s| s.hash);
        }
    }

    fn size(&self) -> usize {
        self.seen.capacity() * (size_of::<StringPair>() + 1) + self.bytes.capacity()
    }
}

/// Integer values, widened to `Int64`; a pair is rehashed when the table
/// grows rather than keeping its hash, which would make it half as big
/// again.
#[derive(Debug, Default)]
pub struct IntegerPairs {
    seen: HashTable<(u32, i64)>,
}

fn integer_hash(&(group, value): &(u32, i64)) -> u64 {
    pair_hash(group, value)
}

impl PairTable for IntegerPairs {
    const VALUE_TYPE: DataType = DataType::Int64;
    type Handle = i64;

    fn insert(&mut self, values: &dyn Array, rows: impl Iterator<Item = (usize, u32)>, counts: &mut [i64]) {
        let integers = values.as_primitive::<Int64Type>().values();
        for (row, group) in rows {
            let pair = (group, integers[row]);
            let hash = integer_hash(&pair);
            if let Entry::Vacant(slot) = self.seen.entry(hash, |p| *p == pair, integer_hash) {
                slot.insert(pair);
                counts[group as usize] += 1;
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(u32, Self::Handle)) {
        for &(group, value) in &self.seen {
            f(group, value);
        }
    }

    fn values_of(&self, handles: &[Self::Handle]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(handles.to_vec())))
    }

    fn drop_first(&mut self, n: u32) {
        let old = std::mem::take(&mut self.seen);
        for (group, value) in old.into_iter().filter(|p| p.0 >= n) {
            let pair = (group - n, value);
            self.seen.insert_unique(integer_hash(&pair), pair, integer_hash);
        }
    }

    fn size(&self) -> usize {
        self.seen.capacity() * (size_of::<(u32, i64)>() + 1)
    }
}
