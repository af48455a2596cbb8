//! Facts about Arrow types that kiln's rules share.

use arrow::datatypes::DataType;

/// An integer type every value of which is an `i64`: the signed ones, and
/// the unsigned up to 32 bits.
pub fn widens_to_i64(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}
