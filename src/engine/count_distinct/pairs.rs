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

/// A table of pairs in one piece while it fits the caches, and split by
/// hash into [`PARTS`] tables once it holds more than [`SPLIT_AT`] pairs.
///
/// One table of millions of pairs grows by reallocating hundreds of MiB
/// at once, and the kernel clearing those fresh pages was a fifth of
/// user_daily's CPU at 10 M events. Split, each part grows by itself, in
/// steps the allocator reuses. Each batch's rows are first put in order of
/// the part they hash to, then inserted a part at a time.
#[derive(Debug)]
struct SplitTable<T> {
    parts: Vec<HashTable<T>>,
    /// A batch's `(hash, row, group)` per part; kept between batches.
    staged: Vec<Vec<(u64, usize, u32)>>,
}

/// Pairs held in one table before it is split: 64 k pairs are 1 MiB of
/// integer pairs, about one core's L2 cache.
const SPLIT_AT: usize = 1 << 16;
/// Parts of a split table. The part is chosen by bits 40 to 46 of the
/// hash, which hashbrown uses neither for a slot (the low bits, in tables
/// under 2^40 slots) nor for its tag (the top seven).
const PARTS: usize = 128;

fn part_of(hash: u64) -> usize {
    (hash >> 40) as usize & (PARTS - 1)
}

impl<T> Default for SplitTable<T> {
    fn default() -> Self {
        Self {
            parts: vec![HashTable::new()],
            staged: Vec::new(),
        }
    }
}

impl<T> SplitTable<T> {
    /// For each `(row, group)`, `insert(table, hash, row, group)` with the
    /// table its hash belongs in.
    fn insert_rows(
        &mut self,
        rows: impl Iterator<Item = (usize, u32)>,
        hash: impl Fn(usize, u32) -> u64,
        mut insert: impl FnMut(&mut HashTable<T>, u64, usize, u32),
        rehash: impl Fn(&T) -> u64,
    ) {
        if let [table] = self.parts.as_mut_slice() {
            for (row, group) in rows {
                insert(table, hash(row, group), row, group);
            }
            if table.len() > SPLIT_AT {
                self.split(rehash);
            }
            return;
        }
        for staged in &mut self.staged {
            staged.clear();
        }
        for (row, group) in rows {
            let h = hash(row, group);
            self.staged[part_of(h)].push((h, row, group));
        }
        for (table, staged) in self.parts.iter_mut().zip(&self.staged) {
            for &(h, row, group) in staged {
                insert(table, h, row, group);
            }
        }
    }

    fn split(&mut self, rehash: impl Fn(&T) -> u64) {
        let whole = std::mem::take(&mut self.parts).pop().unwrap_or_default();
        self.parts = (0..PARTS)
            .map(|_| HashTable::with_capacity(whole.len() / PARTS * 2))
            .collect();
        self.staged = (0..PARTS).map(|_| Vec::new()).collect();
        for item in whole {
            let h = rehash(&item);
            self.parts[part_of(h)].insert_unique(h, item, &rehash);
        }
    }

    /// Adds an item known not to be in the table.
    fn insert_unique(&mut self, hash: u64, item: T, rehash: impl Fn(&T) -> u64) {
        let at = if self.parts.len() == 1 { 0 } else { part_of(hash) };
        self.parts[at].insert_unique(hash, item, &rehash);
        if self.parts.len() == 1 && self.parts[0].len() > SPLIT_AT {
            self.split(rehash);
        }
    }

    fn items(&self) -> impl Iterator<Item = &T> {
        self.parts.iter().flatten()
    }

    fn into_items(self) -> impl Iterator<Item = T> {
        self.parts.into_iter().flatten()
    }

    /// Bytes held, capacity included.
    fn size(&self) -> usize {
        let slots: usize = self.parts.iter().map(HashTable::capacity).sum();
        let staged: usize = self.staged.iter().map(Vec::capacity).sum();
        slots * (size_of::<T>() + 1) + staged * size_of::<(u64, usize, u32)>()
    }
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
    seen: SplitTable<StringPair>,
    bytes: Vec<u8>,
}

impl PairTable for StringPairs {
    const VALUE_TYPE: DataType = DataType::Utf8View;
    type Handle = (usize, u32);

    fn insert(&mut self, values: &dyn Array, rows: impl Iterator<Item = (usize, u32)>, counts: &mut [i64]) {
        let strings = values.as_string_view();
        let Self { seen, bytes } = self;
        seen.insert_rows(
            rows,
            |row, group| pair_hash(group, strings.value(row).as_bytes()),
            |table, hash, row, group| {
                let value = strings.value(row).as_bytes();
                let same =
                    |s: &StringPair| s.group == group && &bytes[s.offset..s.offset + s.len as usize] == value;
                if let Entry::Vacant(slot) = table.entry(hash, same, |s| s.hash) {
                    slot.insert(StringPair::appended(bytes, hash, group, value));
                    counts[group as usize] += 1;
                }
            },
            |s| s.hash,
        );
    }

    fn for_each(&self, mut f: impl FnMut(u32, Self::Handle)) {
        for s in self.seen.items() {
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
        for s in old.into_items().filter(|s| s.group >= n) {
            let group = s.group - n;
            let value = &old_bytes[s.offset..s.offset + s.len as usize];
            let hash = pair_hash(group, value);
            let kept = StringPair::appended(&mut self.bytes, hash, group, value);
            self.seen.insert_unique(hash, kept, |s: &StringPair| s.hash);
        }
    }

    fn size(&self) -> usize {
        self.seen.size() + self.bytes.capacity()
    }
}

/// Integer values, widened to `Int64`; a pair is rehashed when the table
/// grows rather than keeping its hash, which would make it half as big
/// again.
#[derive(Debug, Default)]
pub struct IntegerPairs {
    seen: SplitTable<(u32, i64)>,
}

fn integer_hash(&(group, value): &(u32, i64)) -> u64 {
    pair_hash(group, value)
}

impl PairTable for IntegerPairs {
    const VALUE_TYPE: DataType = DataType::Int64;
    type Handle = i64;

    fn insert(&mut self, values: &dyn Array, rows: impl Iterator<Item = (usize, u32)>, counts: &mut [i64]) {
        let integers = values.as_primitive::<Int64Type>().values();
        self.seen.insert_rows(
            rows,
            |row, group| integer_hash(&(group, integers[row])),
            |table, hash, row, group| {
                let pair = (group, integers[row]);
                if let Entry::Vacant(slot) = table.entry(hash, |p| *p == pair, integer_hash) {
                    slot.insert(pair);
                    counts[group as usize] += 1;
                }
            },
            integer_hash,
        );
    }

    fn for_each(&self, mut f: impl FnMut(u32, Self::Handle)) {
        for &(group, value) in self.seen.items() {
            f(group, value);
        }
    }

    fn values_of(&self, handles: &[Self::Handle]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(handles.to_vec())))
    }

    fn drop_first(&mut self, n: u32) {
        let old = std::mem::take(&mut self.seen);
        for (group, value) in old.into_items().filter(|p| p.0 >= n) {
            let pair = (group - n, value);
            self.seen.insert_unique(integer_hash(&pair), pair, integer_hash);
        }
    }

    fn size(&self) -> usize {
        self.seen.size()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::StringViewArray;

    use super::*;

    /// Pairs with repeats, in batches, past the size at which the table
    /// splits; then the first groups forgotten.
    fn check<T: PairTable>(values_of: impl Fn(&[i64]) -> ArrayRef, decode: impl Fn(&ArrayRef) -> Vec<i64>) {
        let pairs = |table: &T| -> BTreeSet<(u32, i64)> {
            let mut groups = Vec::new();
            let mut handles = Vec::new();
            table.for_each(|g, h| {
                groups.push(g);
                handles.push(h);
            });
            let values = decode(&table.values_of(&handles).unwrap());
            let set: BTreeSet<_> = groups.into_iter().zip(values).collect();
            assert_eq!(set.len(), handles.len(), "a pair held twice");
            set
        };
        let groups = 5_000u32;
        let mut table = T::default();
        let mut counts = vec![0i64; groups as usize];
        let mut reference = BTreeSet::new();
        let mut state = 7u64;
        for _ in 0..40 {
            let mut rows = Vec::new();
            let mut values = Vec::new();
            for row in 0..8_192usize {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let group = ((state >> 33) % u64::from(groups)) as u32;
                let value = ((state >> 13) % 60) as i64;
                values.push(value);
                rows.push((row, group));
                reference.insert((group, value));
            }
            table.insert(values_of(&values).as_ref(), rows.into_iter(), &mut counts);
        }
        assert!(reference.len() > 2 * SPLIT_AT, "{}", reference.len());
        let mut expected = vec![0i64; groups as usize];
        for &(g, _) in &reference {
            expected[g as usize] += 1;
        }
        assert_eq!(counts, expected);
        assert_eq!(pairs(&table), reference);

        // Forget the first 4,990 groups: the rest, numbered from 0, are
        // held in one table again and still found as seen.
        table.drop_first(groups - 10);
        let kept: BTreeSet<(u32, i64)> = reference
            .iter()
            .filter(|p| p.0 >= groups - 10)
            .map(|&(g, v)| (g - (groups - 10), v))
            .collect();
        assert_eq!(pairs(&table), kept);
        let mut counts = vec![0i64; 10];
        let rows: Vec<(usize, u32)> = (0..60).map(|v| (v, 3)).collect();
        table.insert(
            values_of(&(0..60).collect::<Vec<_>>()).as_ref(),
            rows.into_iter(),
            &mut counts,
        );
        assert_eq!(counts[3], 60 - kept.iter().filter(|p| p.0 == 3).count() as i64);
    }

    #[test]
    fn integer_pairs_counted_once_split_or_not() {
        check::<IntegerPairs>(
            |v| Arc::new(Int64Array::from(v.to_vec())),
            |a| a.as_primitive::<Int64Type>().values().to_vec(),
        );
    }

    #[test]
    fn string_pairs_counted_once_split_or_not() {
        let strings = |v: &[i64]| -> ArrayRef {
            Arc::new(StringViewArray::from_iter_values(
                v.iter().map(|x| format!("value-{x:05}-of-many")),
            ))
        };
        let decode = |a: &ArrayRef| -> Vec<i64> {
            a.as_string_view()
                .iter()
                .map(|s| s.unwrap()[6..11].parse().unwrap())
                .collect()
        };
        check::<StringPairs>(strings, decode);
    }
}
