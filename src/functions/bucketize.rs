//! `bucketize(x, b1, b2, ...)`: the number of constant, sorted boundaries
//! at or below `x`, which is numpy's `searchsorted(bounds, x, side="right")`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use kiln_kernels::cpu::bucketize::{buckets_of_floats, count_at_or_below};

use super::{args, device};

const CALL: &str = "bucketize(x, b1, b2, ...)";

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Bucketize {
    signature: Signature,
}

impl Default for Bucketize {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Bucketize {
    fn name(&self) -> &str {
        "bucketize"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Integers compare as BIGINT, so no boundary above 2^53 is rounded;
    /// anything else numeric as DOUBLE.
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        args::arity(CALL, types, 2, usize::MAX)?;
        if let Some(t) = types
            .iter()
            .find(|t| !args::is_number(t) && **t != DataType::Null)
        {
            return plan_err!("{CALL}: x and the boundaries must be numbers, not {t}");
        }
        let common = if types.iter().all(|t| t.is_integer() || *t == DataType::Null) {
            DataType::Int64
        } else {
            DataType::Float64
        };
        let mut coerced = types.to_vec();
        coerced[0] = common;
        Ok(coerced)
    }

    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn return_field_from_args(&self, a: ReturnFieldArgs) -> Result<FieldRef> {
        let scalars = (1..a.scalar_arguments.len())
            .map(|i| args::constant(CALL, a.scalar_arguments, i, &format!("boundary {i}")).cloned())
            .collect::<Result<Vec<_>>>()?;
        bounds(&scalars, a.arg_fields[0].data_type())?;
        Ok(Arc::new(Field::new(
            self.name(),
            DataType::Int32,
            a.arg_fields[0].is_nullable(),
        )))
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalars = a.args[1..]
            .iter()
            .map(|v| args::scalar_arg(CALL, v))
            .collect::<Result<Vec<_>>>()?;
        let bounds = bounds(&scalars, &a.args[0].data_type())?;
        args::apply(&a.args[..1], a.number_rows, |x| bucketize(&x[0], &bounds))
    }
}

/// Boundaries in the type `x` is compared in.
#[derive(Debug, Clone, PartialEq)]
pub enum Bounds {
    Int(Vec<i64>),
    Float(Vec<f64>),
}

/// The boundaries as the type `x` is compared in: BIGINT when `x` is an
/// integer (then so is every boundary), DOUBLE otherwise.
fn bounds(scalars: &[ScalarValue], x: &DataType) -> Result<Bounds> {
    let b = if *x == DataType::Int64 {
        let mut out = Vec::with_capacity(scalars.len());
        for (i, s) in scalars.iter().enumerate() {
            match args::integer(s).and_then(|v| i64::try_from(v).ok()) {
                Some(v) => out.push(v),
                None => return plan_err!("{CALL}: boundary {} must be a BIGINT, not {s}", i + 1),
            }
        }
        Bounds::Int(out)
    } else {
        let mut out = Vec::with_capacity(scalars.len());
        for (i, s) in scalars.iter().enumerate() {
            match s.cast_to(&DataType::Float64) {
                Ok(ScalarValue::Float64(Some(v))) if v.is_nan() => {
                    return plan_err!("{CALL}: boundary {} is NaN", i + 1);
                }
                Ok(ScalarValue::Float64(Some(v))) => out.push(v),
                _ => return plan_err!("{CALL}: boundary {} must be a number, not {s}", i + 1),
            }
        }
        Bounds::Float(out)
    };
    let sorted = match &b {
        Bounds::Int(v) => v.windows(2).position(|w| w[0] > w[1]),
        Bounds::Float(v) => v.windows(2).position(|w| w[0] > w[1]),
    };
    if let Some(i) = sorted {
        return plan_err!(
            "{CALL}: boundaries must be in ascending order; boundary {} is below boundary {}",
            i + 2,
            i + 1
        );
    }
    Ok(b)
}

/// Each value's bucket; nulls stay null.
pub fn bucketize(x: &ArrayRef, bounds: &Bounds) -> Result<ArrayRef> {
    let rows = x.len();
    let out = match (x.data_type(), bounds) {
        (DataType::Int64, Bounds::Int(b)) => {
            let xs = x.as_primitive::<Int64Type>().values();
            device::dispatch(
                rows,
                CALL,
                |gpu| gpu.bucketize_i64(xs, b),
                || {
                    let mut out = vec![0i32; rows];
                    count_at_or_below(xs, b, &mut out);
                    Ok(out)
                },
            )?
        }
        (DataType::Float64, Bounds::Float(b)) => {
            let xs = x.as_primitive::<Float64Type>().values();
            device::dispatch(
                rows,
                CALL,
                |gpu| gpu.bucketize_f64(xs, b),
                || {
                    let mut out = vec![0i32; rows];
                    buckets_of_floats(xs, b, &mut out);
                    Ok(out)
                },
            )?
        }
        (t, _) => return exec_err!("{CALL}: x arrived as {t}, which its boundaries do not match"),
    };
    Ok(Arc::new(Int32Array::new(out.into(), x.nulls().cloned())))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::Int32Type;

    use super::*;

    fn run(x: ArrayRef, b: &Bounds) -> Vec<Option<i32>> {
        bucketize(&x, b)
            .unwrap()
            .as_primitive::<Int32Type>()
            .iter()
            .collect()
    }

    #[test]
    fn counts_boundaries_at_or_below_like_searchsorted_right() {
        let b = Bounds::Float(vec![0.0, 1.0, 1.0, 5.0]);
        let x = Float64Array::from(vec![
            Some(-1.0),
            Some(0.0),
            Some(1.0),
            Some(4.9),
            Some(5.0),
            Some(f64::NAN),
            None,
        ]);
        assert_eq!(
            run(Arc::new(x), &b),
            vec![Some(0), Some(1), Some(3), Some(3), Some(4), Some(4), None]
        );
    }

    #[test]
    fn many_boundaries_are_searched_with_the_same_answer() {
        let bounds: Vec<i64> = (0..100).map(|i| i * 10).collect();
        let xs: Vec<i64> = (-5..1005).collect();
        let searched = run(
            Arc::new(Int64Array::from(xs.clone())),
            &Bounds::Int(bounds.clone()),
        );
        let counted: Vec<Option<i32>> = xs
            .iter()
            .map(|x| Some(bounds.iter().filter(|b| **b <= *x).count() as i32))
            .collect();
        assert_eq!(searched, counted);
    }

    #[test]
    fn unsorted_or_nan_boundaries_are_refused() {
        let f = |v: Vec<f64>| {
            bounds(
                &v.into_iter()
                    .map(|x| ScalarValue::Float64(Some(x)))
                    .collect::<Vec<_>>(),
                &DataType::Float64,
            )
        };
        assert!(f(vec![2.0, 1.0]).unwrap_err().to_string().contains("ascending"));
        assert!(f(vec![f64::NAN]).unwrap_err().to_string().contains("NaN"));
        assert!(f(vec![1.0, 1.0]).is_ok());
    }
}
