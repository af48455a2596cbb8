//! Window functions over a whole partition: `standard_scale(x)`,
//! `min_max_scale(x)` and `quantile_bucket(x, n)`, each `OVER (PARTITION
//! BY ...)` or `OVER ()` for the whole input. Each row's answer depends on
//! every row of its partition, so `ORDER BY` and frames inside `OVER` do
//! not change it.

use std::cmp::Ordering;
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
            Scale::QuantileBucket => Arc::new(match x.data_type() {
                DataType::Int64 => quantile_buckets(
                    x.as_primitive::<Int64Type>().values(),
                    x.nulls(),
                    self.n,
                    i64::cmp,
                ),
                _ => {
                    let floats = x.as_primitive::<Float64Type>();
                    // NaN has no rank: it is left out like a null.
                    let known = NullBuffer::from_iter(floats.iter().map(|v| v.is_some_and(|v| !v.is_nan())));
                    quantile_buckets(floats.values(), Some(&known), self.n, f64::total_cmp)
                }
            }),
        })
    }
}

/// The values that count: not null and not NaN.
fn known(x: &Float64Array) -> impl Iterator<Item = f64> + '_ {
    x.iter().flatten().filter(|v| !v.is_nan())
}

/// Mean and standard deviation in two passes (no cancellation); a
/// partition whose values are all equal scales them to 0.
pub fn standard_scale(x: &Float64Array) -> Float64Array {
    let (count, sum) = known(x).fold((0usize, 0.0), |(c, s), v| (c + 1, s + v));
    let mean = sum / count as f64;
    let var = known(x).map(|v| (v - mean) * (v - mean)).sum::<f64>() / count as f64;
    rescaled(x, mean, var.sqrt())
}

/// A partition whose values are all equal scales them to 0.
pub fn min_max_scale(x: &Float64Array) -> Float64Array {
    let (min, max) = known(x).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    rescaled(x, min, max - min)
}

/// `(x - center) / spread`; with no spread (NaN when nothing counted),
/// every value but NaN becomes 0.
fn rescaled(x: &Float64Array, center: f64, spread: f64) -> Float64Array {
    let values: Vec<f64> = if spread > 0.0 {
        x.values().iter().map(|v| (v - center) / spread).collect()
    } else {
        x.values()
            .iter()
            .map(|v| if v.is_nan() { *v } else { 0.0 })
            .collect()
    };
    Float64Array::new(values.into(), x.nulls().cloned())
}

/// `floor(n * r / c)`, where `c` counts the values that have a rank and
/// `r` those strictly below `x`: equal values share a bucket, and the
/// buckets hold equal counts as far as ties allow.
pub fn quantile_buckets<T: Copy>(
    values: &[T],
    known: Option<&NullBuffer>,
    n: u64,
    cmp: impl Fn(&T, &T) -> Ordering,
) -> Int32Array {
    let mut order: Vec<u32> = (0..values.len() as u32)
        .filter(|&i| known.is_none_or(|k| k.is_valid(i as usize)))
        .collect();
    order.sort_unstable_by(|&a, &b| cmp(&values[a as usize], &values[b as usize]));
    let count = order.len() as u64;
    let mut out = vec![0i32; values.len()];
    let mut below = 0usize;
    for (at, &i) in order.iter().enumerate() {
        if at > 0 && cmp(&values[order[at - 1] as usize], &values[i as usize]) != Ordering::Equal {
            below = at;
        }
        out[i as usize] = (n * below as u64 / count) as i32;
    }
    Int32Array::new(out.into(), known.cloned())
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
        let b = quantile_buckets(&[5i64, 1, 3, 3, 9, 7, 2, 8], None, 4, i64::cmp);
        // sorted: 1 2 3 3 5 7 8 9; below: 0 1 2 2 4 5 6 7 -> floor(4 * below / 8)
        assert_eq!(b.values().to_vec(), vec![2, 0, 1, 1, 3, 2, 0, 3]);
        let nulls = NullBuffer::from(vec![true, false, true]);
        let b = quantile_buckets(&[1i64, 0, 2], Some(&nulls), 2, i64::cmp);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![Some(0), None, Some(1)]);
    }
}
