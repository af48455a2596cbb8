//! `random_projection(v, dim, seed)`: `v` times a `len(v) × dim` matrix of
//! standard normal entries, scaled by `1 / sqrt(dim)` so that lengths and
//! dot products are kept in expectation (Johnson-Lindenstrauss). Entry
//! (`i`, `j`) is `gaussian(seed, i, j)`, a counter hash: the matrix is
//! never stored, and every device and language computes the same one.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use kiln_kernels::cpu::projection::{matrix, project};

use super::lists::{self, Rows};
use super::{args, device};

const CALL: &str = "random_projection(v, dim, seed)";

/// Far beyond any useful projection, and small enough that one row of
/// output stays under a MiB.
pub const MAX_DIM: u64 = 65_536;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RandomProjection {
    signature: Signature,
}

impl Default for RandomProjection {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn projected_type(dim: u64) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
    )
}

/// The seed's 64 bits: negative seeds are as good as positive ones.
fn seed_of(v: &ScalarValue) -> Result<u64> {
    match args::integer(v) {
        Some(s) if s >= i128::from(i64::MIN) && s <= i128::from(u64::MAX) => Ok(s as i64 as u64),
        _ => plan_err!("{CALL}: seed must be a 64-bit integer, not {v}"),
    }
}

impl ScalarUDFImpl for RandomProjection {
    fn name(&self) -> &str {
        "random_projection"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        args::arity(CALL, types, 3, 3)?;
        let v = lists::vector_arg(CALL, "v", &types[0])?;
        for (t, what) in types[1..].iter().zip(["dim", "seed"]) {
            if !t.is_integer() && *t != DataType::Null {
                return plan_err!("{CALL}: {what} must be an integer, not {t}");
            }
        }
        Ok(vec![v, types[1].clone(), types[2].clone()])
    }

    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        plan_err!("{CALL}: the output's width comes from dim")
    }

    fn return_field_from_args(&self, a: ReturnFieldArgs) -> Result<FieldRef> {
        let dim = args::positive_constant(CALL, a.scalar_arguments, 1, "dim", MAX_DIM)?;
        seed_of(args::constant(CALL, a.scalar_arguments, 2, "seed")?)?;
        Ok(Arc::new(Field::new(
            self.name(),
            projected_type(dim),
            a.arg_fields[0].is_nullable(),
        )))
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let dim = args::as_positive(CALL, &args::scalar_arg(CALL, &a.args[1])?, "dim", MAX_DIM)? as usize;
        let seed = seed_of(&args::scalar_arg(CALL, &a.args[2])?)?;
        args::apply(&a.args[..1], a.number_rows, |v| {
            random_projection(&Rows::new(CALL, &v[0])?, dim, seed)
        })
    }
}

/// Every row of `rows` projected; nulls stay null.
pub fn random_projection(rows: &Rows<Float32Type>, dim: usize, seed: u64) -> Result<ArrayRef> {
    let out = device::dispatch(
        rows.len(),
        CALL,
        |gpu| gpu.random_projection(rows.as_vectors(), dim, seed),
        || {
            let width = rows
                .fixed_len()
                .unwrap_or_else(|| (0..rows.len()).map(|i| rows.row(i).len()).max().unwrap_or(0));
            let matrix = matrix(seed, width, dim);
            let mut out = vec![0f32; rows.len() * dim];
            for (i, o) in out.chunks_exact_mut(dim).enumerate() {
                if rows.is_valid(i) {
                    project(rows.row(i), &matrix, o);
                }
            }
            Ok(out)
        },
    )?;
    Ok(lists::fixed_size_list::<Float32Type>(
        out,
        dim,
        rows.nulls().cloned(),
    ))
}
