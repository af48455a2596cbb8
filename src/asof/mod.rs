//! The point-in-time match: for each label row, the latest feature row of
//! the same entity from before the label's time. The search itself is
//! Polars' as-of join with `by` keys; what is around it makes its answer
//! complete and deterministic:
//!
//! - rows with a null key or time take no part (a label row among them gets
//!   no features: null never equals anything);
//! - both sides are sorted by time, as Polars' backward search walks each
//!   entity's rows in order (it does not check the order when grouping by
//!   keys, so it is never asked to);
//! - feature rows of one entity with equal times are ordered by their other
//!   columns, ascending with nulls first, and Polars takes the last of
//!   equal times: the row `ORDER BY time, c1, c2, ...` puts last wins,
//!   whatever order the files were read in;
//! - `max_age` drops a match older than the label by more than that.
//!
//! `kiln training-set` and the SQL `ASOF JOIN` both match through here.

use arrow::array::{Array, ArrayRef, Int64Array, UInt32Array};
use arrow::compute::{filter, take};
use polars::prelude::{AsofJoinBy, AsofStrategy, Column, DataFrame, IdxSize, PlSmallStr};

pub(crate) mod bridge;
pub(crate) mod order;
#[cfg(test)]
mod tests;
pub(crate) mod time;

use crate::error::{KilnError, Result};
use bridge::{polars_error, to_series};
use order::by_time_then;

/// Polars sizes its thread pool once, from `POLARS_MAX_THREADS`, on first
/// use: give it the CPUs DataFusion gets (the container's quota). Call
/// before any thread is started.
pub fn size_polars_threads() {
    if std::env::var_os("POLARS_MAX_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // SAFETY: called at start-up, before the runtime or any other
        // thread exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("POLARS_MAX_THREADS", threads.to_string()) };
    }
}

/// One side of the match: entity key columns (already of the same types on
/// both sides) and times as instants in one unit.
#[derive(Clone, Copy)]
pub(crate) struct Side<'a> {
    pub keys: &'a [ArrayRef],
    pub time: &'a Int64Array,
}

impl Side<'_> {
    fn len(&self) -> usize {
        self.time.len()
    }

    /// Rows whose time and keys are all set.
    fn complete_rows(&self) -> Result<UInt32Array> {
        let mut valid = arrow::compute::is_not_null(self.time)?;
        for key in self.keys {
            valid = arrow::compute::and(&valid, &arrow::compute::is_not_null(key)?)?;
        }
        let rows = UInt32Array::from_iter_values(0..self.len() as u32);
        Ok(filter(&rows, &valid)?
            .as_any()
            .downcast_ref::<UInt32Array>()
            .cloned()
            .expect("u32 rows"))
    }
}

/// What a match may be.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    /// A feature row at exactly the label's time matches too.
    pub inclusive: bool,
    /// The oldest a match may be, in the times' unit.
    pub max_age: Option<i64>,
}

/// For each label row, the index of its feature row, or null. `tiebreak`
/// are the feature set's other columns, which order rows of equal entity
/// and time.
pub(crate) fn match_rows(
    labels: Side,
    features: Side,
    tiebreak: &[ArrayRef],
    rule: Rule,
) -> Result<UInt32Array> {
    if features.len() > u32::MAX as usize || labels.len() > u32::MAX as usize {
        return Err(KilnError::Usage(format!(
            "a training set joins at most {} rows on each side",
            u32::MAX
        )));
    }
    let mut matched: Vec<Option<u32>> = vec![None; labels.len()];

    // Labels: complete rows, by time.
    let label_rows = labels.complete_rows()?;
    let label_time = take_i64(labels.time, &label_rows)?;
    let by_time = order::by_time(&label_time, false)?;
    let label_rows = take_u32(&label_rows, &by_time)?;
    let left = Sorted::take(labels, &label_rows)?;

    // Features: complete rows, by time, then keys, then the tiebreak.
    let feature_rows = features.complete_rows()?;
    let then: Vec<ArrayRef> = features.keys.iter().chain(tiebreak).cloned().collect();
    let order = by_time_then(
        &take_i64(features.time, &feature_rows)?,
        &then,
        Some(&feature_rows),
        true,
        true,
    )?;
    let feature_rows = take_u32(&feature_rows, &order)?;
    let right = Sorted::take(features, &feature_rows)?;

    if !left.time.is_empty() && !right.time.is_empty() {
        let found = asof_backward(&left, &right, rule.inclusive)?;
        for (i, hit) in found.into_iter().enumerate() {
            let Some(at) = hit else { continue };
            let feature_time = right.time.value(at as usize);
            let label_time = left.time.value(i);
            if rule
                .max_age
                .is_some_and(|age| label_time.saturating_sub(feature_time) > age)
            {
                continue;
            }
            matched[label_rows.value(i) as usize] = Some(feature_rows.value(at as usize));
        }
    }
    Ok(UInt32Array::from(matched))
}

/// A side's complete rows in the order they are joined in.
struct Sorted {
    keys: Vec<ArrayRef>,
    time: Int64Array,
}

impl Sorted {
    fn take(side: Side, rows: &UInt32Array) -> Result<Self> {
        Ok(Self {
            keys: side
                .keys
                .iter()
                .map(|k| take(k.as_ref(), rows, None))
                .collect::<Result<_, _>>()?,
            time: take_i64(side.time, rows)?,
        })
    }
}

/// Polars' backward as-of join by keys: the position in `right` of each
/// `left` row's match.
fn asof_backward(left: &Sorted, right: &Sorted, inclusive: bool) -> Result<Vec<Option<u32>>> {
    // Without keys, one key shared by every row: Polars' by-join panics on
    // an empty `by`.
    let by: Vec<String> = (0..left.keys.len().max(1)).map(|i| format!("k{i}")).collect();
    let frame = |side: &Sorted, row_numbers: bool| -> Result<DataFrame> {
        let mut columns: Vec<Column> = Vec::new();
        for (name, key) in by.iter().zip(&side.keys) {
            columns.push(to_series(name, key)?.into());
        }
        if side.keys.is_empty() {
            columns.push(Column::new(PlSmallStr::from("k0"), vec![0i32; side.time.len()]));
        }
        let time: ArrayRef = std::sync::Arc::new(side.time.clone());
        columns.push(to_series("t", &time)?.into());
        if row_numbers {
            let rows: Vec<IdxSize> = (0..side.time.len() as IdxSize).collect();
            columns.push(Column::new(PlSmallStr::from("row"), rows));
        }
        DataFrame::new(side.time.len(), columns).map_err(polars_error)
    };
    let (left_frame, right_frame) = (frame(left, false)?, frame(right, true)?);
    let joined = left_frame
        .join_asof_by(
            &right_frame,
            "t",
            "t",
            by.iter().map(String::as_str),
            by.iter().map(String::as_str),
            AsofStrategy::Backward,
            None,
            inclusive,
            // The rows are sorted here; Polars cannot check it per group
            // and would only warn on stderr.
            false,
        )
        .map_err(polars_error)?;
    let rows = joined.column("row").and_then(|c| c.idx()).map_err(polars_error)?;
    Ok(rows.iter().collect())
}

fn take_i64(values: &Int64Array, rows: &UInt32Array) -> Result<Int64Array> {
    Ok(take(values, rows, None)?
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .expect("i64 take"))
}

fn take_u32(values: &UInt32Array, rows: &UInt32Array) -> Result<UInt32Array> {
    Ok(take(values, rows, None)?
        .as_any()
        .downcast_ref::<UInt32Array>()
        .cloned()
        .expect("u32 take"))
}

/// The rule written as plainly as possible: for each label, every feature
/// row is looked at. The tests hold the Polars join to it.
#[cfg(test)]
pub(crate) fn brute_force(
    labels: Side,
    features: Side,
    tiebreak: &[ArrayRef],
    rule: Rule,
) -> Vec<Option<u32>> {
    use std::cmp::Ordering;

    use arrow::array::make_comparator;
    use arrow::compute::kernels::sort::SortOptions;

    use order::orderable;
    let comparators: Vec<_> = features
        .keys
        .iter()
        .chain(tiebreak.iter().filter(|c| orderable(c)))
        .map(|c| {
            make_comparator(
                c.as_ref(),
                c.as_ref(),
                SortOptions {
                    descending: false,
                    nulls_first: true,
                },
            )
            .unwrap()
        })
        .collect();
    let key_equal = |l: usize, f: usize| {
        labels.keys.iter().zip(features.keys).all(|(lk, fk)| {
            lk.is_valid(l)
                && fk.is_valid(f)
                && make_comparator(lk.as_ref(), fk.as_ref(), SortOptions::default()).unwrap()(l, f)
                    == Ordering::Equal
        })
    };
    (0..labels.len())
        .map(|l| {
            if labels.time.is_null(l) {
                return None;
            }
            let t = labels.time.value(l);
            let mut best: Option<usize> = None;
            for f in 0..features.len() {
                if features.time.is_null(f) || !key_equal(l, f) {
                    continue;
                }
                let ft = features.time.value(f);
                let before = if rule.inclusive { ft <= t } else { ft < t };
                if !before || rule.max_age.is_some_and(|age| t - ft > age) {
                    continue;
                }
                best = match best {
                    None => Some(f),
                    Some(b) => {
                        let bt = features.time.value(b);
                        let later = ft.cmp(&bt).then_with(|| {
                            comparators
                                .iter()
                                .map(|c| c(f, b))
                                .find(|o| *o != Ordering::Equal)
                                .unwrap_or(Ordering::Equal)
                        });
                        // On a complete tie either row is the same answer.
                        if later == Ordering::Greater {
                            Some(f)
                        } else {
                            Some(b)
                        }
                    }
                };
            }
            best.map(|b| b as u32)
        })
        .collect()
}
