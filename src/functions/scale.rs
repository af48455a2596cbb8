//! Window functions over a whole partition: `standard_scale(x)`,
//! `min_max_scale(x)` and `quantile_bucket(x, n)`, each `OVER (PARTITION
//! BY ...)` or `OVER ()` for the whole input. Each row's answer depends on
//! every row of its partition, so `ORDER BY` and frames inside `OVER` do
//! not change it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int32Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::WindowFunctionDefinition;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{Expr, PartitionEvaluator, Signature, Volatility, WindowUDFImpl};
use datafusion::physical_expr::expressions::Literal;

use kiln_kernels::cpu::scale as kernel;

use super::args;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scale {
    /// `(x - mean) / stddev`, both of the population (ddof 0).
    Standard,
    /// `(x - min) / (max - min)`.
    MinMax,
    /// Which of `n` equal-count buckets `x` falls in, by its rank.
    QuantileBucket,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ScaleOver {
    scale: Scale,
    signature: Signature,
}

impl ScaleOver {
    pub fn new(scale: Scale) -> Self {
        Self {
            scale,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn call(&self) -> &'static str {
        match self.scale {
            Scale::Standard => "standard_scale(x)",
            Scale::MinMax => "min_max_scale(x)",
            Scale::QuantileBucket => "quantile_bucket(x, n)",
        }
    }
}

impl WindowUDFImpl for ScaleOver {
    fn name(&self) -> &str {
        match self.scale {
            Scale::Standard => "standard_scale",
            Scale::MinMax => "min_max_scale",
            Scale::QuantileBucket => "quantile_bucket",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Floats for the scalers; ranks compare integers as BIGINT so that
    /// no two values above 2^53 tie by rounding.
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let call = self.call();
        let quantiles = self.scale == Scale::QuantileBucket;
        args::arity(
            call,
            types,
            1 + usize::from(quantiles),
            1 + usize::from(quantiles),
        )?;
        if !args::is_number(&types[0]) && types[0] != DataType::Null {
            return plan_err!("{call}: x must be a number, not {}", types[0]);
        }
        let x = if quantiles && types[0].is_integer() {
            DataType::Int64
        } else {
            DataType::Float64
        };
        if quantiles {
            if !types[1].is_integer() {
                return plan_err!("{call}: n must be an integer, not {}", types[1]);
            }
            return Ok(vec![x, types[1].clone()]);
        }
        Ok(vec![x])
    }

    fn field(&self, a: WindowUDFFieldArgs) -> Result<FieldRef> {
        let t = match self.scale {
            Scale::QuantileBucket => DataType::Int32,
            _ => DataType::Float64,
        };
        Ok(Arc::new(Field::new(a.name(), t, true)))
    }

    fn partition_evaluator(&self, a: PartitionEvaluatorArgs) -> Result<Box<dyn PartitionEvaluator>> {
        let n = match self.scale {
            Scale::QuantileBucket => {
                let constant = a.input_exprs().get(1).and_then(|e| e.downcast_ref::<Literal>());
                let Some(n) = constant else {
                    return plan_err!(
                        "{}: n must be a constant, not a column or an expression over columns",
                        self.call()
                    );
                };
                args::as_positive(self.call(), n.value(), "n", i32::MAX as u64)?
            }
            _ => 0,
        };
        Ok(Box::new(WholePartition { scale: self.scale, n }))
    }
}

/// What the planner cannot see from types alone: `quantile_bucket`'s `n`
/// must be a positive constant. Checked on the logical plan, so `kiln
/// check` reports it before a run.
pub fn check_window_call(expr: &Expr) -> Result<()> {
    let Expr::WindowFunction(w) = expr else {
        return Ok(());
    };
    let WindowFunction { fun, params } = w.as_ref();
    let WindowFunctionDefinition::WindowUDF(udwf) = fun else {
        return Ok(());
    };
    if udwf.name() != "quantile_bucket" || params.args.len() != 2 {
        return Ok(());
    }
    let mut n = &params.args[1];
    while let Expr::Cast(c) = n {
        n = &c.expr;
    }
    match n {
        Expr::Literal(v, _) => {
            args::as_positive("quantile_bucket(x, n)", v, "n", i32::MAX as u64).map(|_| ())
        }
        _ => plan_err!(
            "quantile_bucket(x, n): n must be a constant, not a column or an expression over columns"
        ),
    }
}

#[derive(Debug)]
struct WholePartition {
    scale: Scale,
    n: u64,
}

impl PartitionEvaluator for WholePartition {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let x = &values[0];
        Ok(match self.scale {
            Scale::Standard => Arc::new(standard_scale(x.as_primitive::<Float64Type>())),
            Scale::MinMax => Arc::new(min_max_scale(x.as_primitive::<Float64Type>())),
            Scale::QuantileBucket => {
                let keys: Vec<Option<u64>> = match x.data_type() {
                    DataType::Int64 => x
                        .as_primitive::<Int64Type>()
                        .iter()
                        .map(|v| v.map(kernel::int_key))
                        .collect(),
                    // NaN has no rank: it is left out like a null.
                    _ => x
                        .as_primitive::<Float64Type>()
                        .iter()
                        .map(|v| v.filter(|v| !v.is_nan()).map(kernel::float_key))
                        .collect(),
                };
                Arc::new(quantile_buckets(&keys, self.n))
            }
        })
    }
}

pub fn standard_scale(x: &Float64Array) -> Float64Array {
    let valid = |i| x.is_valid(i);
    let counted: kernel::Counted<'_> = if x.null_count() > 0 { Some(&valid) } else { None };
    Float64Array::new(
        kernel::standard_scale(x.values(), counted).into(),
        x.nulls().cloned(),
    )
}

pub fn min_max_scale(x: &Float64Array) -> Float64Array {
    let valid = |i| x.is_valid(i);
    let counted: kernel::Counted<'_> = if x.null_count() > 0 { Some(&valid) } else { None };
    Float64Array::new(
        kernel::min_max_scale(x.values(), counted).into(),
        x.nulls().cloned(),
    )
}

/// See `kiln_kernels::cpu::scale::quantile_buckets`: a value without a
/// key (NULL, NaN) is NULL.
pub fn quantile_buckets(keys: &[Option<u64>], n: u64) -> Int32Array {
    let out = kernel::quantile_buckets(keys.iter().copied(), n);
    let nulls = NullBuffer::from_iter(keys.iter().map(Option::is_some));
    Int32Array::new(out.into(), Some(nulls).filter(|n| n.null_count() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_scale_uses_the_population_deviation_and_skips_nulls_and_nan() {
        let x = Float64Array::from(vec![Some(1.0), None, Some(3.0), Some(f64::NAN)]);
        let s = standard_scale(&x);
        assert_eq!(s.value(0), -1.0);
        assert_eq!(s.value(2), 1.0);
        assert!(s.is_null(1));
        assert!(s.value(3).is_nan());
        let same = standard_scale(&Float64Array::from(vec![2.0, 2.0]));
        assert_eq!(same.values().to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn min_max_scale_maps_onto_zero_to_one() {
        let s = min_max_scale(&Float64Array::from(vec![Some(2.0), Some(4.0), None, Some(3.0)]));
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Some(0.0), Some(1.0), None, Some(0.5)]
        );
    }

    #[test]
    fn quantile_buckets_share_ties_and_fill_equally() {
        let keys: Vec<Option<u64>> = [5i64, 1, 3, 3, 9, 7, 2, 8]
            .iter()
            .map(|&v| Some(kernel::int_key(v)))
            .collect();
        // sorted: 1 2 3 3 5 7 8 9; below: 0 1 2 2 4 5 6 7 -> floor(4 * below / 8)
        assert_eq!(
            quantile_buckets(&keys, 4).values().to_vec(),
            vec![2, 0, 1, 1, 3, 2, 0, 3]
        );
        let b = quantile_buckets(&[Some(kernel::int_key(1)), None, Some(kernel::int_key(2))], 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![Some(0), None, Some(1)]);
    }
}
