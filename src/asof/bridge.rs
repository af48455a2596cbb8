//! Arrow arrays from arrow-rs into Polars through the Arrow C Data
//! Interface.
//!
//! Polars has its own Arrow implementation (polars-arrow); the two meet at
//! the C Data Interface, whose `ArrowArray` and `ArrowSchema` structs both
//! crates define with the same `repr(C)` layout. Buffers are shared, not
//! copied: numbers, timestamps and `Utf8View` strings cross as they lie.
//! Polars keeps strings only as views, so a `Utf8` column is cast to
//! `Utf8View` first (new views over the same bytes, not a copy of them).
//! Only the entity keys and times of the join cross: the feature columns
//! stay in arrow-rs and are gathered there by the row numbers Polars
//! returns.

use arrow::array::{Array, ArrayRef};
use arrow::datatypes::DataType;
use polars::prelude::{PlSmallStr, Series};

use crate::error::{KilnError, Result};

/// `array` as a Polars series named `name`.
pub(crate) fn to_series(name: &str, array: &ArrayRef) -> Result<Series> {
    let array = match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 => arrow::compute::cast(array, &DataType::Utf8View)?,
        // This Polars is built without its temporal types: such keys cross
        // as the integers they are.
        DataType::Date32 | DataType::Time32(_) => arrow::compute::cast(array, &DataType::Int32)?,
        DataType::Date64 | DataType::Timestamp(..) | DataType::Time64(_) | DataType::Duration(_) => {
            arrow::compute::cast(array, &DataType::Int64)?
        }
        _ => array.clone(),
    };
    let (ffi_array, ffi_schema) = arrow::ffi::to_ffi(&array.to_data())?;
    // SAFETY: arrow-rs's FFI_ArrowArray / FFI_ArrowSchema and polars-arrow's
    // ArrowArray / ArrowSchema are both the C Data Interface's structs
    // (`repr(C)`, same fields in the same order; transmute checks the
    // sizes). Each side's release callback travels inside the struct, so
    // whichever side drops it frees what the exporter allocated.
    let (ffi_array, ffi_schema): (polars_arrow::ffi::ArrowArray, polars_arrow::ffi::ArrowSchema) = unsafe {
        (
            std::mem::transmute::<arrow::ffi::FFI_ArrowArray, polars_arrow::ffi::ArrowArray>(ffi_array),
            std::mem::transmute::<arrow::ffi::FFI_ArrowSchema, polars_arrow::ffi::ArrowSchema>(ffi_schema),
        )
    };
    // SAFETY: the structs were just exported by arrow-rs from valid data.
    let imported = unsafe {
        let field = polars_arrow::ffi::import_field_from_c(&ffi_schema).map_err(polars_error)?;
        polars_arrow::ffi::import_array_from_c(ffi_array, field.dtype).map_err(polars_error)?
    };
    Series::from_arrow(PlSmallStr::from(name), imported).map_err(polars_error)
}

pub(crate) fn polars_error(e: polars::prelude::PolarsError) -> KilnError {
    KilnError::Run(format!("in the Polars as-of join: {e}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use polars::prelude::DataType as PlType;

    use super::*;

    #[test]
    fn numbers_cross_without_a_copy_and_strings_as_views() {
        let numbers = Int64Array::from(vec![Some(7), None, Some(-3)]);
        let start = numbers.values().as_ptr();
        let series = to_series("n", &(Arc::new(numbers) as ArrayRef)).unwrap();
        assert_eq!(series.dtype(), &PlType::Int64);
        let ca = series.i64().unwrap();
        assert_eq!(ca.iter().collect::<Vec<_>>(), vec![Some(7), None, Some(-3)]);
        let chunk = ca.downcast_iter().next().unwrap();
        assert_eq!(chunk.values().as_ptr(), start, "the buffer is shared, not copied");

        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a"),
            None,
            Some("a long string past twelve bytes"),
        ]));
        let series = to_series("s", &strings).unwrap();
        assert_eq!(series.dtype(), &PlType::String);
        assert_eq!(
            series.str().unwrap().iter().collect::<Vec<_>>(),
            vec![Some("a"), None, Some("a long string past twelve bytes")]
        );
    }
}
