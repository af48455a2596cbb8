//! `hash_bucket(value, n)`: a categorical value's bucket among `n`, the
//! hashing trick of feature engineering. xxHash64 (seed 0) of the value's
//! bytes, as an unsigned 64-bit integer, modulo `n`.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, AsArray, Int64Array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int8Type, Int16Type, Int32Type, Int64Type};
use datafusion::arrow::datatypes::{UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::{args, device};
use kiln_kernels::cpu::Offset;
use kiln_kernels::cpu::hash::{buckets_of_ints, buckets_of_offsets, buckets_of_views};

const CALL: &str = "hash_bucket(value, n)";

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct HashBucket {
    signature: Signature,
}

impl Default for HashBucket {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for HashBucket {
    fn name(&self) -> &str {
        "hash_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        args::arity(CALL, types, 2, 2)?;
        let value = match &types[0] {
            DataType::Dictionary(_, v) => v.as_ref().clone(),
            DataType::Null => DataType::Utf8,
            t => t.clone(),
        };
        if !hashable(&value) {
            return plan_err!(
                "{CALL}: value must be a string, binary or integer, not {}; cast it first",
                types[0]
            );
        }
        if !types[1].is_integer() && types[1] != DataType::Null {
            return plan_err!("{CALL}: n must be an integer, not {}", types[1]);
        }
        Ok(vec![value, types[1].clone()])
    }

    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn return_field_from_args(&self, a: ReturnFieldArgs) -> Result<FieldRef> {
        args::positive_constant(CALL, a.scalar_arguments, 1, "n", i64::MAX as u64)?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Int64,
            a.arg_fields[0].is_nullable(),
        )))
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args::as_positive(CALL, &args::scalar_arg(CALL, &a.args[1])?, "n", i64::MAX as u64)?;
        args::apply(&a.args[..1], a.number_rows, |v| hash_buckets(&v[0], n))
    }
}

fn hashable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
}

/// The bucket of every value; nulls stay null.
pub fn hash_buckets(values: &ArrayRef, n: u64) -> Result<ArrayRef> {
    let out = match values.data_type() {
        DataType::Utf8 => {
            let a = values.as_string::<i32>();
            of_offsets(a.value_offsets(), a.values(), n)?
        }
        DataType::LargeUtf8 => {
            let a = values.as_string::<i64>();
            of_offsets(a.value_offsets(), a.values(), n)?
        }
        DataType::Binary => {
            let a = values.as_binary::<i32>();
            of_offsets(a.value_offsets(), a.values(), n)?
        }
        DataType::LargeBinary => {
            let a = values.as_binary::<i64>();
            of_offsets(a.value_offsets(), a.values(), n)?
        }
        // Views point anywhere: the CPU walks them.
        DataType::Utf8View => {
            let a = values.as_string_view();
            of_views(a.views(), a.data_buffers(), n)
        }
        DataType::BinaryView => {
            let a = values.as_binary_view();
            of_views(a.views(), a.data_buffers(), n)
        }
        _ => {
            let wide = widened(values)?;
            device::dispatch(
                wide.len(),
                CALL,
                |gpu| gpu.hash_bucket_u64(&wide, n),
                || Ok(buckets_of_ints(&wide, n)),
            )?
        }
    };
    Ok(Arc::new(Int64Array::new(out.into(), values.nulls().cloned())))
}

/// Strings or binaries from Arrow's offsets and values as they lie.
fn of_offsets<O: Offset + Into<i64>>(offsets: &[O], bytes: &[u8], n: u64) -> Result<Vec<i64>> {
    let rows = offsets.len().saturating_sub(1);
    device::dispatch(
        rows,
        CALL,
        |gpu| gpu.hash_bucket_offsets(offsets, bytes, n),
        || Ok(buckets_of_offsets(offsets, bytes, n)),
    )
}

/// Strings or binaries in Arrow's view layout, on the CPU.
fn of_views(views: &[u128], buffers: &[Buffer], n: u64) -> Vec<i64> {
    let buffers: Vec<&[u8]> = buffers.iter().map(|b| b.as_slice()).collect();
    buckets_of_views(views, &buffers, n)
}

/// Integers of any width as 64 bits, signed ones sign-extended.
/// 64-bit integers are read where they lie; narrower ones are copied wide.
fn widened(values: &ArrayRef) -> Result<Cow<'_, [u64]>> {
    fn wide<T: ArrowPrimitiveType>(a: &ArrayRef, f: impl Fn(T::Native) -> u64) -> Cow<'_, [u64]> {
        Cow::Owned(a.as_primitive::<T>().values().iter().map(|&v| f(v)).collect())
    }
    Ok(match values.data_type() {
        // The same 8 bytes either way: two's complement.
        DataType::Int64 => Cow::Borrowed(
            values
                .as_primitive::<Int64Type>()
                .values()
                .inner()
                .typed_data::<u64>(),
        ),
        DataType::UInt64 => Cow::Borrowed(values.as_primitive::<UInt64Type>().values().as_ref()),
        DataType::Int8 => wide::<Int8Type>(values, |v| v as u64),
        DataType::Int16 => wide::<Int16Type>(values, |v| v as u64),
        DataType::Int32 => wide::<Int32Type>(values, |v| v as u64),
        DataType::UInt8 => wide::<UInt8Type>(values, u64::from),
        DataType::UInt16 => wide::<UInt16Type>(values, u64::from),
        DataType::UInt32 => wide::<UInt32Type>(values, u64::from),
        other => return exec_err!("{CALL}: cannot hash {other}"),
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int16Array, StringArray, StringViewArray, UInt64Array};

    use kiln_kernels::mix::xxh64;

    use super::*;

    fn buckets(values: ArrayRef, n: u64) -> Vec<Option<i64>> {
        hash_buckets(&values, n)
            .unwrap()
            .as_primitive::<Int64Type>()
            .iter()
            .collect()
    }

    #[test]
    fn strings_hash_their_utf8_bytes_in_every_layout() {
        // Python: xxhash.xxh64_intdigest("abc".encode(), seed=0) % 1000 == 249
        let expected = vec![
            Some((0x44BC_2CF5_AD77_0999u64 % 1000) as i64),
            None,
            Some((0xEF46_DB37_51D8_E999u64 % 1000) as i64),
        ];
        let utf8 = StringArray::from(vec![Some("abc"), None, Some("")]);
        assert_eq!(buckets(Arc::new(utf8.clone()), 1000), expected);
        assert_eq!(
            buckets(
                Arc::new(StringViewArray::from(vec![Some("abc"), None, Some("")])),
                1000
            ),
            expected
        );
        // A slice keeps its offsets into the shared values buffer.
        assert_eq!(buckets(Arc::new(utf8.slice(1, 2)), 1000), expected[1..]);
    }

    #[test]
    fn integers_of_every_width_hash_as_the_same_eight_bytes() {
        let small = buckets(Arc::new(Int16Array::from(vec![-1i16, 7])), 97);
        let wide = buckets(Arc::new(Int64Array::from(vec![-1i64, 7])), 97);
        assert_eq!(small, wide);
        let unsigned = buckets(Arc::new(UInt64Array::from(vec![u64::MAX, 7])), 97);
        assert_eq!(unsigned, wide, "-1 and u64::MAX share their bytes");
        assert_eq!(wide[1], Some((xxh64(&7u64.to_le_bytes()) % 97) as i64));
    }
}
