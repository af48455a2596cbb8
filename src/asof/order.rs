//! Sorting rows by time, and rows of equal time by other columns.
//!
//! Times are nearly unique in most label and feature tables, so a sort of
//! the one integer column decides almost every comparison; only runs of
//! equal times are then ordered by the other columns, through arrow's
//! comparators. A lexicographic sort of every column at once would pay
//! the comparators' dynamic dispatch on every comparison.

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, DynComparator, Int64Array, UInt32Array, make_comparator};
use arrow::compute::kernels::sort::{SortOptions, sort_to_indices};

use crate::error::Result;

/// The order of `time`'s rows, ascending, nulls first or last; rows of
/// equal time (or both null) ordered by `then`, ascending, nulls placed as
/// `then_nulls_first` says. Row `i` of `time` is row `then_rows[i]` of
/// `then` (the same row without `then_rows`): the columns are compared
/// where they lie, not gathered, as only rows of equal times need them.
/// Columns arrow cannot order (maps, unions) are left out of `then`.
pub(crate) fn by_time_then(
    time: &Int64Array,
    then: &[ArrayRef],
    then_rows: Option<&UInt32Array>,
    time_nulls_first: bool,
    then_nulls_first: bool,
) -> Result<UInt32Array> {
    let order = by_time(time, time_nulls_first)?;
    let comparators: Vec<DynComparator> = then
        .iter()
        .filter_map(|c| {
            make_comparator(
                c.as_ref(),
                c.as_ref(),
                SortOptions {
                    descending: false,
                    nulls_first: then_nulls_first,
                },
            )
            .ok()
        })
        .collect();
    if comparators.is_empty() {
        return Ok(order);
    }
    let key = |i: u32| time.is_valid(i as usize).then(|| time.value(i as usize));
    let then_row = |i: u32| then_rows.map_or(i as usize, |rows| rows.value(i as usize) as usize);
    let mut rows: Vec<u32> = order.values().to_vec();
    let mut start = 0;
    while start < rows.len() {
        let t = key(rows[start]);
        let mut end = start + 1;
        while end < rows.len() && key(rows[end]) == t {
            end += 1;
        }
        if end - start > 1 {
            rows[start..end].sort_by(|&a, &b| {
                comparators
                    .iter()
                    .map(|c| c(then_row(a), then_row(b)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
        }
        start = end;
    }
    Ok(UInt32Array::from(rows))
}

/// The order of `time`'s rows, ascending, nulls first or last; equal
/// times in the order of their rows.
///
/// Times without nulls whose span and row numbers fit in 64 bits together
/// (30 days in microseconds take 42 bits, which leaves 4 M rows) are
/// sorted as one integer each, time above row: a sort of plain `u64`s,
/// not of (row, time) pairs through a comparison.
pub(crate) fn by_time(time: &Int64Array, nulls_first: bool) -> Result<UInt32Array> {
    let values = time.values();
    if time.null_count() == 0
        && let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max())
    {
        let span = max.abs_diff(min);
        let row_bits = u64::BITS - (values.len() as u64).leading_zeros();
        let time_bits = u64::BITS - span.leading_zeros();
        if row_bits + time_bits <= u64::BITS {
            let mut keys: Vec<u64> = values
                .iter()
                .enumerate()
                .map(|(row, &t)| (t.abs_diff(min) << row_bits) | row as u64)
                .collect();
            keys.sort_unstable();
            let mask = (1u64 << row_bits) - 1;
            return Ok(UInt32Array::from_iter_values(
                keys.into_iter().map(|k| (k & mask) as u32),
            ));
        }
    }
    let options = SortOptions {
        descending: false,
        nulls_first,
    };
    Ok(sort_to_indices(time, Some(options), None)?)
}

/// Whether arrow can order values of this column.
#[cfg(test)]
pub(crate) fn orderable(column: &ArrayRef) -> bool {
    make_comparator(column.as_ref(), column.as_ref(), SortOptions::default()).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::compute::kernels::sort::{SortColumn, lexsort_to_indices};

    use super::*;

    #[test]
    fn the_same_order_as_a_sort_of_every_column() {
        let time = Int64Array::from(vec![Some(3), None, Some(1), Some(3), Some(1), None, Some(3)]);
        let tag: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            Some("z"),
            None,
            Some("a"),
            Some("c"),
            Some("y"),
            None,
        ]));
        for (time_first, then_first) in [(false, true), (true, false), (false, false)] {
            let ours = by_time_then(&time, std::slice::from_ref(&tag), None, time_first, then_first).unwrap();
            let theirs = lexsort_to_indices(
                &[
                    SortColumn {
                        values: Arc::new(time.clone()),
                        options: Some(SortOptions {
                            descending: false,
                            nulls_first: time_first,
                        }),
                    },
                    SortColumn {
                        values: tag.clone(),
                        options: Some(SortOptions {
                            descending: false,
                            nulls_first: then_first,
                        }),
                    },
                ],
                None,
            )
            .unwrap();
            assert_eq!(ours, theirs, "nulls first: time {time_first}, then {then_first}");
        }
    }

    #[test]
    fn times_packed_with_their_rows_sort_as_arrow_sorts_them() {
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        // Few distinct times (ties), a wide span that cannot be packed, and
        // times with nulls.
        let narrow =
            Int64Array::from_iter_values((0..5000).map(|_| 1_700_000_000_000_000 + (next() % 300) as i64));
        let wide = Int64Array::from_iter_values(
            (0..5000).map(|i| if i % 2 == 0 { i64::MIN + i } else { i64::MAX - i }),
        );
        let nulls = Int64Array::from_iter((0..5000).map(|i| (i % 7 != 0).then_some((next() % 50) as i64)));
        for (name, time) in [("narrow", narrow), ("wide", wide), ("nulls", nulls)] {
            for nulls_first in [true, false] {
                let ours = by_time(&time, nulls_first).unwrap();
                let options = SortOptions {
                    descending: false,
                    nulls_first,
                };
                // Arrow's order, with ties in row order as ours are.
                let theirs = lexsort_to_indices(
                    &[
                        SortColumn {
                            values: Arc::new(time.clone()),
                            options: Some(options),
                        },
                        SortColumn {
                            values: Arc::new(arrow::array::UInt32Array::from_iter_values(0..5000)),
                            options: None,
                        },
                    ],
                    None,
                )
                .unwrap();
                if name == "nulls" {
                    // Arrow's own sort, which does not order ties: the same
                    // times in the same places.
                    let t = |order: &UInt32Array| arrow::compute::take(&time, order, None).unwrap().to_data();
                    assert_eq!(t(&ours), t(&theirs), "{name}, nulls first {nulls_first}");
                } else {
                    assert_eq!(ours, theirs, "{name}, nulls first {nulls_first}");
                }
            }
        }
    }

    #[test]
    fn columns_compared_where_they_lie_give_the_order_of_gathered_ones() {
        let time = Int64Array::from(vec![Some(2), Some(1), Some(2), None, Some(2), Some(1)]);
        let tag: ArrayRef = Arc::new(StringArray::from(vec![
            Some("e"),
            Some("d"),
            None,
            Some("c"),
            Some("b"),
            Some("a"),
        ]));
        // Rows 5, 0, 2, 4, 1 of the columns, in that order.
        let rows = UInt32Array::from(vec![5, 0, 2, 4, 1]);
        let time = arrow::compute::take(&time, &rows, None).unwrap();
        let time = time.as_any().downcast_ref::<Int64Array>().unwrap();
        let gathered = arrow::compute::take(tag.as_ref(), &rows, None).unwrap();
        let ours = by_time_then(time, std::slice::from_ref(&tag), Some(&rows), false, true).unwrap();
        let theirs = by_time_then(time, std::slice::from_ref(&gathered), None, false, true).unwrap();
        assert_eq!(ours, theirs);
        // Times 1, 2, 2, 2, 1: the 1s by tag (a, d), then the 2s (null, b, e).
        assert_eq!(ours.values().to_vec(), vec![0, 4, 2, 3, 1]);
    }
}
