//! Arithmetic on embeddings: `l2_normalize(v)`, `dot(a, b)` and
//! `cosine_similarity(a, b)`, over `FixedSizeList<Float32>` or `List` of
//! numbers (read as `Float32`).
//!
//! Sums run in eight `f32` lanes, lane `l` taking elements `l, l + 8, ...`,
//! then the lanes are added pairwise and the tail last: an order the GPU
//! kernels follow too, and one the compiler keeps in vector registers.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float32Array, ListArray};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type};
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

use kiln_kernels::cpu::vector::{cosine, dot_f32, normalize_into};

use super::lists::{self, Rows};
use super::{args, device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorOp {
    L2Normalize,
    Dot,
    Cosine,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Vector {
    op: VectorOp,
    signature: Signature,
}

impl Vector {
    pub fn new(op: VectorOp) -> Self {
        Self {
            op,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn call(&self) -> &'static str {
        match self.op {
            VectorOp::L2Normalize => "l2_normalize(v)",
            VectorOp::Dot => "dot(a, b)",
            VectorOp::Cosine => "cosine_similarity(a, b)",
        }
    }
}

/// What `l2_normalize` returns for an input read as `t`: the same layout,
/// of non-null `Float32`.
fn normalized_type(t: &DataType) -> DataType {
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    match t {
        DataType::FixedSizeList(_, n) => DataType::FixedSizeList(item, *n),
        _ => DataType::List(item),
    }
}

impl ScalarUDFImpl for Vector {
    fn name(&self) -> &str {
        match self.op {
            VectorOp::L2Normalize => "l2_normalize",
            VectorOp::Dot => "dot",
            VectorOp::Cosine => "cosine_similarity",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let call = self.call();
        if self.op == VectorOp::L2Normalize {
            args::arity(call, types, 1, 1)?;
            return Ok(vec![lists::vector_arg(call, "v", &types[0])?]);
        }
        args::arity(call, types, 2, 2)?;
        let a = lists::vector_arg(call, "a", &types[0])?;
        let b = lists::vector_arg(call, "b", &types[1])?;
        lists::check_same_width(call, &a, &b)?;
        Ok(vec![a, b])
    }

    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        Ok(match self.op {
            VectorOp::L2Normalize => normalized_type(&types[0]),
            VectorOp::Dot | VectorOp::Cosine => DataType::Float32,
        })
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let call = self.call();
        args::apply(&a.args, a.number_rows, |arrays| {
            Ok(match self.op {
                VectorOp::L2Normalize => l2_normalize(call, &Rows::new(call, &arrays[0])?)?,
                VectorOp::Dot | VectorOp::Cosine => {
                    let (x, y) = (Rows::new(call, &arrays[0])?, Rows::new(call, &arrays[1])?);
                    Arc::new(pairwise(call, &x, &y, self.op)?)
                }
            })
        })
    }
}

/// `dot` or `cosine_similarity` row by row; NULL where either vector is
/// null, and a cosine of a zero vector is NULL too (it has no direction).
pub fn pairwise(
    call: &str,
    a: &Rows<Float32Type>,
    b: &Rows<Float32Type>,
    op: VectorOp,
) -> Result<Float32Array> {
    let rows = a.len();
    if a.fixed_len().is_none() || b.fixed_len().is_none() {
        for i in (0..rows).filter(|&i| a.is_valid(i) && b.is_valid(i)) {
            lists::check_same_len(call, i, a.row(i).len(), b.row(i).len())?;
        }
    }
    let cosine_op = op == VectorOp::Cosine;
    let nulls = NullBuffer::union(a.nulls(), b.nulls());
    device::dispatch(
        rows,
        call,
        |gpu| {
            let (values, answered) = gpu.pairwise(a.as_vectors(), b.as_vectors(), cosine_op)?;
            let answered = NullBuffer::from_iter(answered.iter().map(|&f| f != 0));
            let nulls = NullBuffer::union(nulls.as_ref(), Some(&answered));
            Ok(Float32Array::new(values.into(), nulls))
        },
        || {
            let out = (0..rows).map(|i| {
                if !a.is_valid(i) || !b.is_valid(i) {
                    return None;
                }
                let (x, y) = (a.row(i), b.row(i));
                let d = dot_f32(x, y);
                match op {
                    VectorOp::Cosine => cosine(d, dot_f32(x, x), dot_f32(y, y)),
                    _ => Some(d),
                }
            });
            Ok(Float32Array::from_iter(out))
        },
    )
}

/// Each vector divided by its Euclidean norm; a zero vector stays zero.
pub fn l2_normalize(call: &str, v: &Rows<Float32Type>) -> Result<ArrayRef> {
    let rows = v.len();
    let nulls = v.nulls().cloned();
    // Offsets of the output, counted from 0.
    let offsets: Vec<i32> = match v.offsets() {
        Some(o) => o.iter().map(|x| x - o[0]).collect(),
        None => (0..=rows)
            .map(|i| (i * v.fixed_len().unwrap_or(0)) as i32)
            .collect(),
    };
    let values = device::dispatch(
        rows,
        call,
        |gpu| gpu.l2_normalize(v.as_vectors()),
        || {
            let mut values = vec![0f32; *offsets.last().unwrap_or(&0) as usize];
            for i in (0..rows).filter(|&i| v.is_valid(i)) {
                normalize_into(
                    v.row(i),
                    &mut values[offsets[i] as usize..offsets[i + 1] as usize],
                );
            }
            Ok(values)
        },
    )?;
    Ok(match v.fixed_len() {
        Some(width) => lists::fixed_size_list::<Float32Type>(values, width, nulls),
        None => {
            let item = Arc::new(Field::new_list_field(DataType::Float32, false));
            let values = Arc::new(Float32Array::new(ScalarBuffer::from(values), None));
            Arc::new(ListArray::new(
                item,
                OffsetBuffer::new(offsets.into()),
                values,
                nulls,
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};

    use super::*;

    fn list(rows: Vec<Option<Vec<Option<f32>>>>) -> ArrayRef {
        Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(rows))
    }

    #[test]
    fn cosine_is_null_for_a_zero_vector_and_null_rows() {
        let a = list(vec![
            Some(vec![Some(1.0), Some(0.0)]),
            Some(vec![Some(0.0), Some(0.0)]),
            None,
        ]);
        let b = list(vec![
            Some(vec![Some(1.0), Some(1.0)]),
            Some(vec![Some(1.0), Some(1.0)]),
            Some(vec![]),
        ]);
        let (a, b) = (Rows::new("t", &a).unwrap(), Rows::new("t", &b).unwrap());
        let c = pairwise("t", &a, &b, VectorOp::Cosine).unwrap();
        assert!((c.value(0) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(c.is_null(1) && c.is_null(2));
    }

    #[test]
    fn unequal_lengths_are_an_error_naming_the_row() {
        let a = list(vec![Some(vec![Some(1.0)]), Some(vec![Some(1.0), Some(2.0)])]);
        let b = list(vec![Some(vec![Some(1.0)]), Some(vec![Some(1.0)])]);
        let (a, b) = (
            Rows::new("dot(a, b)", &a).unwrap(),
            Rows::new("dot(a, b)", &b).unwrap(),
        );
        let e = pairwise("dot(a, b)", &a, &b, VectorOp::Dot)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1 pairs a list of 2 values with one of 1"), "{e}");
    }

    #[test]
    fn l2_normalize_keeps_zero_vectors_and_the_layout() {
        let v = list(vec![
            Some(vec![Some(3.0), Some(4.0)]),
            Some(vec![Some(0.0)]),
            None,
            Some(vec![Some(1.0), None]),
        ]);
        let n = l2_normalize("t", &Rows::new("t", &v).unwrap()).unwrap();
        let n = n.as_list::<i32>();
        assert_eq!(
            n.value(0).as_primitive::<Float32Type>().values().to_vec(),
            vec![0.6, 0.8]
        );
        assert_eq!(
            n.value(1).as_primitive::<Float32Type>().values().to_vec(),
            vec![0.0]
        );
        assert!(n.is_null(2), "a null vector");
        assert!(n.is_null(3), "a vector with a null element");
    }
}
