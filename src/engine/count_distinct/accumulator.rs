//! The grouped accumulator behind `count_distinct`: per group, the number
//! of distinct values, over one [`PairTable`] for all groups.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{Field, FieldRef};
use datafusion::common::{Result, internal_err};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

use super::pairs::PairTable;

/// The distinct values of every group. Its state is DataFusion's own for a
/// distinct count (each group's values as a list), so partial and final
/// stages, skipping the partial stage and spilling work as for any
/// aggregate.
#[derive(Debug, Default)]
pub struct DistinctCounts<T: PairTable> {
    pairs: T,
    counts: Vec<i64>,
}

/// Whether row `row` is counted: not null, and not filtered out.
pub(super) fn counted(values: &dyn Array, filter: Option<&BooleanArray>, row: usize) -> bool {
    values.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

pub(super) fn list_field<T: PairTable>() -> FieldRef {
    Arc::new(Field::new_list_field(T::VALUE_TYPE, true))
}

impl<T: PairTable> DistinctCounts<T> {
    fn grow_to(&mut self, total_num_groups: usize) -> Result<()> {
        if total_num_groups > u32::MAX as usize {
            return internal_err!("count(DISTINCT) over more than {} groups", u32::MAX);
        }
        self.counts.resize(total_num_groups, 0);
        Ok(())
    }

    fn forget(&mut self, emit_to: EmitTo) {
        match emit_to {
            // A spilling aggregate emits everything and must then give the
            // memory back: keeping the capacity would keep the reservation.
            EmitTo::All => self.pairs = T::default(),
            EmitTo::First(n) => self.pairs.drop_first(n as u32),
        }
    }
}

impl<T: PairTable> GroupsAccumulator for DistinctCounts<T> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow_to(total_num_groups)?;
        let values = values[0].as_ref();
        let rows = group_indices
            .iter()
            .enumerate()
            .filter(|&(row, _)| counted(values, opt_filter, row))
            .map(|(row, &group)| (row, group as u32));
        self.pairs.insert(values, rows, &mut self.counts);
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let counts = emit_to.take_needed(&mut self.counts);
        self.forget(emit_to);
        Ok(Arc::new(Int64Array::from(counts)))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let emitted = match emit_to {
            EmitTo::All => self.counts.len(),
            EmitTo::First(n) => n,
        };
        let mut offsets = Vec::with_capacity(emitted + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for &c in &self.counts[..emitted] {
            total += c as usize;
            let Ok(end) = i32::try_from(total) else {
                return internal_err!("count(DISTINCT) state of more than {} values", i32::MAX);
            };
            offsets.push(end);
        }
        // Each group's values go to its slice of the list, in table order.
        let mut cursors: Vec<usize> = offsets[..emitted].iter().map(|&o| o as usize).collect();
        let mut handles = vec![T::Handle::default(); total];
        self.pairs.for_each(|group, handle| {
            if let Some(at) = cursors.get_mut(group as usize) {
                handles[*at] = handle;
                *at += 1;
            }
        });
        let values = self.pairs.values_of(&handles)?;
        let _ = emit_to.take_needed(&mut self.counts);
        self.forget(emit_to);
        let list = ListArray::try_new(
            list_field::<T>(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            values,
            None,
        )?;
        Ok(vec![Arc::new(list)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow_to(total_num_groups)?;
        let lists = values[0].as_list::<i32>();
        let items = lists.values().as_ref();
        let offsets = lists.value_offsets();
        let rows = group_indices
            .iter()
            .enumerate()
            .filter(|&(row, _)| lists.is_valid(row))
            .flat_map(|(row, &group)| {
                (offsets[row] as usize..offsets[row + 1] as usize).map(move |i| (i, group as u32))
            })
            .filter(|&(i, _)| items.is_valid(i));
        self.pairs.insert(items, rows, &mut self.counts);
        Ok(())
    }

    /// Each counted row as a list of its one value; the others as empty
    /// lists.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = values[0].as_ref();
        let keep: BooleanArray = (0..values.len())
            .map(|row| Some(counted(values, opt_filter, row)))
            .collect();
        let mut offsets = Vec::with_capacity(values.len() + 1);
        offsets.push(0i32);
        let mut total = 0i32;
        for row in 0..values.len() {
            total += i32::from(keep.value(row));
            offsets.push(total);
        }
        let kept = arrow::compute::filter(values, &keep)?;
        let list = ListArray::try_new(
            list_field::<T>(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            kept,
            None,
        )?;
        Ok(vec![Arc::new(list)])
    }

    fn size(&self) -> usize {
        self.pairs.size() + self.counts.capacity() * size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::StringViewArray;
    use arrow::datatypes::Int64Type;

    use super::*;
    use crate::engine::count_distinct::pairs::{IntegerPairs, StringPairs};

    /// Random rows of a group and a value code from a small alphabet, so
    /// that groups share values; `None` now and then.
    fn rows(n: usize, groups: usize, seed: u64) -> (Vec<usize>, Vec<Option<usize>>) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        (0..n)
            .map(|_| {
                let group = next() % groups;
                let v = next() % 40;
                (group, (v != 0).then_some(v))
            })
            .unzip()
    }

    /// The codes as strings, some empty, some longer than a view's inline
    /// bytes.
    fn strings(codes: &[Option<usize>]) -> ArrayRef {
        let values: StringViewArray = codes
            .iter()
            .map(|c| {
                c.map(|v| match v {
                    1 => String::new(),
                    v if v % 3 == 0 => format!("a value longer than twelve bytes {v}"),
                    v => format!("v{v}"),
                })
            })
            .collect();
        Arc::new(values)
    }

    /// The codes as integers spread over the whole `i64` range.
    fn integers(codes: &[Option<usize>]) -> ArrayRef {
        let values: Int64Array = codes
            .iter()
            .map(|c| c.map(|v| (v as i64 - 20).wrapping_mul(0x0123_4567_89ab_cdef)))
            .collect();
        Arc::new(values)
    }

    /// Both tables, each with the codes as its values.
    type Case = (
        &'static str,
        fn() -> Box<dyn GroupsAccumulator>,
        fn(&[Option<usize>]) -> ArrayRef,
    );

    const CASES: [Case; 2] = [
        (
            "strings",
            || Box::new(DistinctCounts::<StringPairs>::default()),
            strings,
        ),
        (
            "integers",
            || Box::new(DistinctCounts::<IntegerPairs>::default()),
            integers,
        ),
    ];

    fn brute_force(group_of: &[usize], codes: &[Option<usize>], filter: Option<&BooleanArray>) -> Vec<i64> {
        let mut sets: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for (row, (&g, code)) in group_of.iter().zip(codes).enumerate() {
            let set = sets.entry(g).or_default();
            let kept = filter.is_none_or(|f| f.is_valid(row) && f.value(row));
            if let (Some(code), true) = (code, kept) {
                set.insert(*code);
            }
        }
        let groups = group_of.iter().max().map_or(0, |m| m + 1);
        (0..groups)
            .map(|g| sets.get(&g).map_or(0, |s| s.len() as i64))
            .collect()
    }

    fn counts(array: ArrayRef) -> Vec<i64> {
        array.as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn counts_distinct_values_per_group_in_batches_with_a_filter() {
        for (name, new, values_of) in CASES {
            let (group_of, codes) = rows(3000, 50, 7);
            let values = values_of(&codes);
            let filter: BooleanArray = (0..values.len())
                .map(|i| (i % 7 != 0).then_some(i % 5 != 0))
                .collect();
            let mut acc = new();
            for start in (0..values.len()).step_by(256) {
                let len = 256.min(values.len() - start);
                let f = filter.slice(start, len);
                acc.update_batch(
                    &[values.slice(start, len)],
                    &group_of[start..start + len],
                    Some(&f),
                    50,
                )
                .unwrap();
            }
            assert_eq!(
                counts(acc.evaluate(EmitTo::All).unwrap()),
                brute_force(&group_of, &codes, Some(&filter)),
                "{name}"
            );
        }
    }

    #[test]
    fn partial_states_merge_to_the_same_counts_and_emit_first_renumbers() {
        for (name, new, values_of) in CASES {
            let (group_of, codes) = rows(4000, 30, 11);
            let values = values_of(&codes);
            let want = brute_force(&group_of, &codes, None);
            // Two partial accumulators over halves, their states merged.
            let mut final_acc = new();
            for (lo, hi) in [(0, 1700), (1700, 4000)] {
                let mut partial = new();
                // The partial stage's own group numbers: first appearance.
                let mut local: BTreeMap<usize, usize> = BTreeMap::new();
                let mut order = Vec::new();
                let idx: Vec<usize> = group_of[lo..hi]
                    .iter()
                    .map(|g| {
                        let n = local.len();
                        *local.entry(*g).or_insert_with(|| {
                            order.push(*g);
                            n
                        })
                    })
                    .collect();
                partial
                    .update_batch(&[values.slice(lo, hi - lo)], &idx, None, local.len())
                    .unwrap();
                // Emit the first 5 groups' state, then the rest.
                let first = partial.state(EmitTo::First(5)).unwrap();
                let rest = partial.state(EmitTo::All).unwrap();
                final_acc.merge_batch(&first, &order[..5], 30).unwrap();
                final_acc.merge_batch(&rest, &order[5..], 30).unwrap();
            }
            let got = counts(final_acc.evaluate(EmitTo::First(10)).unwrap());
            assert_eq!(got, want[..10], "{name}");
            let got = counts(final_acc.evaluate(EmitTo::All).unwrap());
            assert_eq!(got, want[10..], "{name}");
        }
    }

    #[test]
    fn emitting_everything_gives_the_memory_back() {
        for (name, new, values_of) in CASES {
            let (group_of, codes) = rows(5000, 40, 13);
            let mut acc = new();
            acc.update_batch(&[values_of(&codes)], &group_of, None, 40)
                .unwrap();
            let full = acc.size();
            // A spill emits every group's state, then the aggregate shrinks
            // its reservation to what the accumulator says it holds.
            acc.state(EmitTo::All).unwrap();
            assert!(acc.size() < full / 10, "{name}: {} of {full}", acc.size());
        }
    }

    #[test]
    fn converted_rows_merge_to_the_same_counts() {
        for (name, new, values_of) in CASES {
            let (group_of, codes) = rows(2000, 20, 3);
            let values = values_of(&codes);
            let filter: BooleanArray = (0..values.len()).map(|i| Some(i % 4 != 0)).collect();
            let state = new()
                .convert_to_state(&[Arc::clone(&values)], Some(&filter))
                .unwrap();
            assert_eq!(state[0].len(), values.len(), "{name}");
            let mut merged = new();
            merged.merge_batch(&state, &group_of, 20).unwrap();
            assert_eq!(
                counts(merged.evaluate(EmitTo::All).unwrap()),
                brute_force(&group_of, &codes, Some(&filter)),
                "{name}"
            );
        }
    }
}
