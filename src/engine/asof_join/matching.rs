//! The match of one partition's two sides, read whole: the keys and
//! times made comparable, Polars' row numbers, and the right side's
//! columns gathered by them beside the left side's batches.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::{DataFusionError, Result, internal_err};

use super::partition::Read;
use crate::asof::{self, Side, time};
use crate::engine::widens_to_i64;

/// What a match may be.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rule {
    pub inclusive: bool,
    pub max_age: Option<Duration>,
}

/// The left side's batches, each with its matches' right-side columns,
/// and how many left rows found a match.
pub(super) fn join(
    left: Read,
    right: Read,
    rule: Rule,
    schema: &SchemaRef,
) -> Result<(Vec<RecordBatch>, usize)> {
    let (left_time, right_time, unit) = comparable_times(&left.time, &right.time)?;
    let max_age = match (rule.max_age, unit) {
        (None, _) => None,
        (Some(age), Some(unit)) => Some(time::duration_in(age, unit)),
        (Some(_), None) => return internal_err!("an as-of join's maximum age needs times, not integers"),
    };
    let left_keys = left.keys.iter().map(comparable_key).collect::<Result<Vec<_>>>()?;
    let right_keys = right
        .keys
        .iter()
        .map(comparable_key)
        .collect::<Result<Vec<_>>>()?;
    // The right side's columns in one piece, to gather from (its reading
    // reserved memory for this copy too).
    let Read {
        schema: right_schema,
        batches: right_batches,
        reservation: _right_memory,
        ..
    } = right;
    let right_rows = concat_batches(&right_schema, &right_batches)?;
    drop(right_batches);
    // Of equal keys and time, the row whose columns sort last wins, so the
    // answer does not depend on the order the right side was read in.
    let matched = asof::match_rows(
        Side {
            keys: &left_keys,
            time: &left_time,
        },
        Side {
            keys: &right_keys,
            time: &right_time,
        },
        right_rows.columns(),
        asof::Rule {
            inclusive: rule.inclusive,
            max_age,
        },
    )
    .map_err(|e| DataFusionError::External(Box::new(e)))?;

    let mut out = Vec::with_capacity(left.batches.len());
    let mut offset = 0;
    for batch in left.batches {
        let rows = batch.num_rows();
        let picks = matched.slice(offset, rows);
        let picks = picks.as_any().downcast_ref::<UInt32Array>().expect("u32 rows");
        offset += rows;
        let mut columns = batch.columns().to_vec();
        for column in right_rows.columns() {
            columns.push(take(column.as_ref(), picks, None)?);
        }
        out.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
    }
    Ok((out, matched.len() - matched.null_count()))
}

/// Keys as the Polars side of the bridge takes them: dictionaries by their
/// values, integers of any width as Int64 (this Polars is built without
/// its 8- and 16-bit types).
fn comparable_key(key: &ArrayRef) -> Result<ArrayRef> {
    let key = match key.data_type() {
        DataType::Dictionary(_, value) => cast(key, value)?,
        _ => Arc::clone(key),
    };
    if widens_to_i64(key.data_type()) && key.data_type() != &DataType::Int64 {
        return Ok(cast(&key, &DataType::Int64)?);
    }
    Ok(key)
}

/// Both sides' times as integers of one meaning: instants in the finer of
/// the two units (which is returned), or integers as they are.
fn comparable_times(left: &ArrayRef, right: &ArrayRef) -> Result<(Int64Array, Int64Array, Option<TimeUnit>)> {
    let integers = |a: &ArrayRef| -> Result<Int64Array> {
        Ok(cast(a, &DataType::Int64)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .expect("i64 cast"))
    };
    if widens_to_i64(left.data_type()) && widens_to_i64(right.data_type()) {
        return Ok((integers(left)?, integers(right)?, None));
    }
    let external = |e: crate::error::KilnError| DataFusionError::External(Box::new(e));
    let unit = time::finer(
        time::unit_of("the left time", left.data_type()).map_err(external)?,
        time::unit_of("the right time", right.data_type()).map_err(external)?,
    );
    Ok((
        time::instants("the left time", left, unit).map_err(external)?,
        time::instants("the right time", right, unit).map_err(external)?,
        Some(unit),
    ))
}
