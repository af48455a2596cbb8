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
/// `then_nulls_first` says. Columns arrow cannot order (maps, unions) are
/// left out of `then`.
pub(crate) fn by_time_then(
    time: &Int64Array,
    then: &[ArrayRef],
    time_nulls_first: bool,
    then_nulls_first: bool,
) -> Result<UInt32Array> {
    let options = SortOptions {
        descending: false,
        nulls_first: time_nulls_first,
    };
    let order = sort_to_indices(time, Some(options), None)?;
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
                    .map(|c| c(a as usize, b as usize))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            });
        }
        start = end;
    }
    Ok(UInt32Array::from(rows))
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
            let ours = by_time_then(&time, std::slice::from_ref(&tag), time_first, then_first).unwrap();
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
}
