//! Entity keys of the two sides brought to one type, so that equal values
//! are equal to the join: integers of any width as Int64, strings of any
//! layout as Utf8View, anything else only with the very same type.

use arrow::datatypes::DataType;

use crate::engine::widens_to_i64;
use crate::error::{KilnError, Result};

/// The type a label and a feature key column are compared in.
pub(super) fn common_type(
    label_name: &str,
    label: &DataType,
    feature_name: &str,
    feature: &DataType,
    feature_set: &str,
) -> Result<DataType> {
    let (lt, ft) = (value_type(label), value_type(feature));
    // UInt64 would not fit Int64 in general; it is compared as itself.
    if widens_to_i64(lt) && widens_to_i64(ft) {
        Ok(DataType::Int64)
    } else if is_string(lt) && is_string(ft) {
        Ok(DataType::Utf8View)
    } else if is_binary(lt) && is_binary(ft) {
        Ok(DataType::BinaryView)
    } else if lt == ft {
        Ok(lt.clone())
    } else {
        Err(KilnError::Usage(format!(
            "entity column '{label_name}' of the labels is {label} and '{feature_name}' of feature set '{feature_set}' is {feature}: \
             they cannot be compared (cast one of them)"
        )))
    }
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
    use super::*;

    #[test]
    fn widths_and_layouts_meet() {
        let t = common_type("u", &DataType::UInt16, "u", &DataType::Int64, "fs").unwrap();
        assert_eq!(t, DataType::Int64);
        let dict = DataType::Dictionary(Box::new(DataType::Int8), Box::new(DataType::Utf8));
        let t = common_type("k", &dict, "k", &DataType::LargeUtf8, "fs").unwrap();
        assert_eq!(t, DataType::Utf8View);
    }

    #[test]
    fn types_that_never_compare_are_named() {
        let e = common_type(
            "user_id",
            &DataType::Int32,
            "uid",
            &DataType::Utf8,
            "features/user_daily",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("'user_id' of the labels is Int32"), "{e}");
        assert!(
            e.contains("'uid' of feature set 'features/user_daily' is Utf8"),
            "{e}"
        );
    }
}
