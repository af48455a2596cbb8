//! What the feature functions ask of their arguments, checked while a
//! query is planned so that `kiln check` reports a wrong call at its place
//! in the file, before any data is read.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::logical_expr::ColumnarValue;

// Constant arguments keep the type they are written in: a coercion would
// wrap the literal in a cast, and DataFusion shows a function only its
// literal arguments while planning. The functions convert them instead.

/// The constant given as argument `index`, or a planning error saying
/// which argument of `call` must be one.
pub fn constant<'a>(
    call: &str,
    scalars: &[Option<&'a ScalarValue>],
    index: usize,
    what: &str,
) -> Result<&'a ScalarValue> {
    match scalars.get(index).copied().flatten() {
        Some(v) if !v.is_null() => Ok(v),
        Some(_) => plan_err!("{call}: {what} must not be NULL"),
        None => plan_err!("{call}: {what} must be a constant, not a column or an expression over columns"),
    }
}

/// A constant integer in `1..=max`.
pub fn positive_constant(
    call: &str,
    scalars: &[Option<&ScalarValue>],
    index: usize,
    what: &str,
    max: u64,
) -> Result<u64> {
    let v = constant(call, scalars, index, what)?;
    as_positive(call, v, what, max)
}

pub fn as_positive(call: &str, v: &ScalarValue, what: &str, max: u64) -> Result<u64> {
    let n = integer(v).ok_or_else(|| plan_datafusion_err!("{call}: {what} must be an integer, not {v}"))?;
    if n < 1 || n as u128 > u128::from(max) {
        return plan_err!("{call}: {what} must be between 1 and {max}, not {n}");
    }
    Ok(n as u64)
}

/// Any integer scalar, widened.
pub fn integer(v: &ScalarValue) -> Option<i128> {
    Some(match v {
        ScalarValue::Int8(Some(x)) => i128::from(*x),
        ScalarValue::Int16(Some(x)) => i128::from(*x),
        ScalarValue::Int32(Some(x)) => i128::from(*x),
        ScalarValue::Int64(Some(x)) => i128::from(*x),
        ScalarValue::UInt8(Some(x)) => i128::from(*x),
        ScalarValue::UInt16(Some(x)) => i128::from(*x),
        ScalarValue::UInt32(Some(x)) => i128::from(*x),
        ScalarValue::UInt64(Some(x)) => i128::from(*x),
        _ => return None,
    })
}

/// The scalar behind an argument that planning proved constant.
pub fn scalar_arg(call: &str, arg: &ColumnarValue) -> Result<ScalarValue> {
    match arg {
        ColumnarValue::Scalar(v) => Ok(v.clone()),
        ColumnarValue::Array(_) => plan_err!("{call}: expected a constant argument"),
    }
}

pub fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// Runs `kernel` over the arrays of the data arguments `args` (a constant
/// among columns repeated for each row) and gives a scalar back when every
/// one of them was a constant.
pub fn apply(
    args: &[ColumnarValue],
    number_rows: usize,
    kernel: impl FnOnce(&[ArrayRef]) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    let scalar = args.iter().all(|v| matches!(v, ColumnarValue::Scalar(_)));
    let rows = if scalar { 1 } else { number_rows };
    let arrays = args
        .iter()
        .map(|v| v.to_array(rows))
        .collect::<Result<Vec<_>>>()?;
    let out = kernel(&arrays)?;
    if scalar {
        return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?));
    }
    Ok(ColumnarValue::Array(out))
}

/// The argument count a call must have, as a planning error.
pub fn arity(call: &str, types: &[DataType], min: usize, max: usize) -> Result<()> {
    if types.len() < min || types.len() > max {
        let expected = if min == max {
            format!("{min}")
        } else if max == usize::MAX {
            format!("at least {min}")
        } else {
            format!("{min} to {max}")
        };
        let noun = if expected == "1" { "argument" } else { "arguments" };
        return plan_err!("{call}: takes {expected} {noun}, got {}", types.len());
    }
    Ok(())
}
