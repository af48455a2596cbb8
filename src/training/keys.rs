//! Entity keys of the two sides brought to one type, so that equal values
//! are equal to the join: integers of any width as Int64, strings of any
//! layout as Utf8View, anything else only with the very same type.

use arrow::array::ArrayRef;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::DataType;

use crate::engine::widens_to_i64;
use crate::error::{KilnError, Result};

/// The label and feature key columns, cast to the type they are compared in.
pub(super) fn align(
    label_name: &str,
    label: &ArrayRef,
    feature_name: &str,
    feature: &ArrayRef,
    feature_set: &str,
) -> Result<(ArrayRef, ArrayRef)> {
    let (lt, ft) = (value_type(label.data_type()), value_type(feature.data_type()));
    // UInt64 would not fit Int64 in general; it is compared as itself.
    let common = if widens_to_i64(lt) && widens_to_i64(ft) {
        DataType::Int64
    } else if is_string(lt) && is_string(ft) {
        DataType::Utf8View
    } else if is_binary(lt) && is_binary(ft) {
        DataType::BinaryView
    } else if lt == ft {
        lt.clone()
    } else {
        return Err(KilnError::Usage(format!(
            "entity column '{label_name}' of the labels is {} and '{feature_name}' of feature set '{feature_set}' is {}: \
             they cannot be compared (cast one of them)",
            label.data_type(),
            feature.data_type()
        )));
    };
    let cast = |name: &str, side: &str, array: &ArrayRef| -> Result<ArrayRef> {
        if array.data_type() == &common {
            return Ok(array.clone());
        }
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(array, &common, &options).map_err(|e| {
            KilnError::Usage(format!(
                "entity column '{name}' of {side}: cannot compare its {} values as {common}: {e}",
                array.data_type()
            ))
        })
    };
    Ok((
        cast(label_name, "the labels", label)?,
        cast(feature_name, &format!("feature set '{feature_set}'"), feature)?,
    ))
}

/// A dictionary's values are what is compared.
fn value_type(t: &DataType) -> &DataType {
    match t {
        DataType::Dictionary(_, value) => value,
        other => other,
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{DictionaryArray, Int32Array, Int64Array, LargeStringArray, StringArray, UInt16Array};
    use arrow::datatypes::Int8Type;

    use super::*;

    #[test]
    fn widths_and_layouts_meet() {
        let small: ArrayRef = Arc::new(UInt16Array::from(vec![1, 2]));
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![2, 3]));
        let (l, f) = align("u", &small, "u", &wide, "fs").unwrap();
        assert_eq!(l.data_type(), &DataType::Int64);
        assert_eq!(
            f.as_ref(),
            &Int64Array::from(vec![2, 3]) as &dyn arrow::array::Array
        );

        let dict: ArrayRef = Arc::new(DictionaryArray::<Int8Type>::from_iter(["a", "b", "a"]));
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec!["a"]));
        let (l, f) = align("k", &dict, "k", &large, "fs").unwrap();
        assert_eq!(
            (l.data_type(), f.data_type()),
            (&DataType::Utf8View, &DataType::Utf8View)
        );
    }

    #[test]
    fn types_that_never_compare_are_named() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![1]));
        let strings: ArrayRef = Arc::new(StringArray::from(vec!["1"]));
        let e = align("user_id", &ints, "uid", &strings, "features/user_daily")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'user_id' of the labels is Int32"), "{e}");
        assert!(
            e.contains("'uid' of feature set 'features/user_daily' is Utf8"),
            "{e}"
        );
    }
}
