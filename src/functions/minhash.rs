//! `minhash(text, num_perm, shingle_len)` and `minhash_jaccard(a, b)`:
//! MinHash signatures of the character shingles of a text, whose share of
//! equal positions estimates the Jaccard similarity of two texts' shingle
//! sets (near-duplicate detection).
//!
//! Shingle `s` hashes to `h = xxh64(utf8(s))`; permutation `i` maps it to
//! the high 32 bits of `mix64(h ^ permutation_key(i))`, and signature
//! position `i` is the least of those over the text's shingles.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt32Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use super::lists::{self, Rows};
use super::{args, device};
use kiln_kernels::cpu::minhash::{EMPTY, Sketch, keys, signatures_of_offsets};

const CALL: &str = "minhash(text, num_perm, shingle_len)";
const JACCARD: &str = "minhash_jaccard(a, b)";

/// Enough for any use of MinHash (error falls as 1/sqrt(num_perm)), and
/// small enough that a signature stays a few KiB.
pub const MAX_PERMUTATIONS: u64 = 4096;
pub const MAX_SHINGLE_LEN: u64 = 1024;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinHash {
    signature: Signature,
}

impl Default for MinHash {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn signature_type(num_perm: u64) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::UInt32, false)),
        num_perm as i32,
    )
}

impl ScalarUDFImpl for MinHash {
    fn name(&self) -> &str {
        "minhash"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        args::arity(CALL, types, 3, 3)?;
        let text = match &types[0] {
            DataType::Dictionary(_, v) => v.as_ref().clone(),
            DataType::Null => DataType::Utf8,
            t => t.clone(),
        };
        if !matches!(text, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            return plan_err!("{CALL}: text must be a string, not {}", types[0]);
        }
        for (t, what) in types[1..].iter().zip(["num_perm", "shingle_len"]) {
            if !t.is_integer() && *t != DataType::Null {
                return plan_err!("{CALL}: {what} must be an integer, not {t}");
            }
        }
        Ok(vec![text, types[1].clone(), types[2].clone()])
    }

    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        // Only `return_field_from_args` knows the width.
        plan_err!("{CALL}: the signature's width comes from num_perm")
    }

    fn return_field_from_args(&self, a: ReturnFieldArgs) -> Result<FieldRef> {
        let num_perm = args::positive_constant(CALL, a.scalar_arguments, 1, "num_perm", MAX_PERMUTATIONS)?;
        args::positive_constant(CALL, a.scalar_arguments, 2, "shingle_len", MAX_SHINGLE_LEN)?;
        Ok(Arc::new(Field::new(
            self.name(),
            signature_type(num_perm),
            a.arg_fields[0].is_nullable(),
        )))
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let num_perm = args::as_positive(
            CALL,
            &args::scalar_arg(CALL, &a.args[1])?,
            "num_perm",
            MAX_PERMUTATIONS,
        )?;
        let k = args::as_positive(
            CALL,
            &args::scalar_arg(CALL, &a.args[2])?,
            "shingle_len",
            MAX_SHINGLE_LEN,
        )?;
        args::apply(&a.args[..1], a.number_rows, |text| {
            signatures(&text[0], num_perm as usize, k as usize)
        })
    }
}

/// The signature of every text; a null text gives a null signature.
pub fn signatures(text: &ArrayRef, num_perm: usize, k: usize) -> Result<ArrayRef> {
    let mut out = vec![EMPTY; text.len() * num_perm];
    let keys = keys(num_perm);
    match text.data_type() {
        DataType::Utf8 => {
            let a = text.as_string::<i32>();
            let (offsets, bytes) = (a.value_offsets(), a.values().as_slice());
            out = device::dispatch(
                text.len(),
                CALL,
                |gpu| gpu.minhash(offsets, bytes, &keys, k as u32),
                || {
                    signatures_of_offsets(offsets, bytes, &keys, k, &mut out);
                    Ok(out)
                },
            )?;
        }
        DataType::LargeUtf8 => {
            let a = text.as_string::<i64>();
            signatures_of_offsets(a.value_offsets(), a.values(), &keys, k, &mut out);
        }
        DataType::Utf8View => {
            let mut sketch = Sketch::new(&keys, k);
            let views = text.as_string_view();
            for (i, sig) in out.chunks_exact_mut(num_perm.max(1)).enumerate() {
                if views.is_valid(i) {
                    sketch.sign(views.value(i).as_bytes(), sig);
                }
            }
        }
        other => return exec_err!("{CALL}: expected a string, got {other}"),
    }
    Ok(lists::fixed_size_list::<UInt32Type>(
        out,
        num_perm,
        text.nulls().cloned(),
    ))
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct MinHashJaccard {
    signature: Signature,
}

impl Default for MinHashJaccard {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// A signature as kiln writes it (`FixedSizeList<UInt32>`) or as it comes
/// back from elsewhere (a list of integers of any width).
fn signature_arg(t: &DataType) -> Option<DataType> {
    lists::list_of(t, DataType::UInt32, DataType::is_integer)
}

impl ScalarUDFImpl for MinHashJaccard {
    fn name(&self) -> &str {
        "minhash_jaccard"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        args::arity(JACCARD, types, 2, 2)?;
        let mut out = Vec::with_capacity(2);
        for (t, what) in types.iter().zip(["a", "b"]) {
            match signature_arg(t) {
                Some(s) => out.push(s),
                None => {
                    return plan_err!(
                        "{JACCARD}: {what} must be a MinHash signature (a list of integers), not {t}"
                    );
                }
            }
        }
        if let (DataType::FixedSizeList(_, m), DataType::FixedSizeList(_, n)) = (&out[0], &out[1])
            && m != n
        {
            return plan_err!("{JACCARD}: signatures of {m} and {n} values cannot be compared");
        }
        Ok(out)
    }

    fn return_type(&self, _types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, a: ScalarFunctionArgs) -> Result<ColumnarValue> {
        args::apply(&a.args, a.number_rows, |s| {
            Ok(Arc::new(jaccard(
                &Rows::new(JACCARD, &s[0])?,
                &Rows::new(JACCARD, &s[1])?,
            )?))
        })
    }
}

/// The fraction of positions where two signatures agree; NULL where
/// either is null or both are empty.
pub fn jaccard(a: &Rows<UInt32Type>, b: &Rows<UInt32Type>) -> Result<Float64Array> {
    let mut out = Vec::with_capacity(a.len());
    for i in 0..a.len() {
        if !a.is_valid(i) || !b.is_valid(i) {
            out.push(None);
            continue;
        }
        let (x, y) = (a.row(i), b.row(i));
        lists::check_same_len(JACCARD, i, x.len(), y.len())?;
        if x.is_empty() {
            out.push(None);
            continue;
        }
        let equal = x.iter().zip(y).filter(|(p, q)| p == q).count();
        out.push(Some(equal as f64 / x.len() as f64));
    }
    Ok(Float64Array::from(out))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{StringArray, StringViewArray};

    use super::*;

    fn sig(text: &str, num_perm: usize, k: usize) -> Vec<u32> {
        let keys = keys(num_perm);
        let mut out = vec![0; num_perm];
        Sketch::new(&keys, k).sign(text.as_bytes(), &mut out);
        out
    }

    #[test]
    fn near_duplicates_agree_on_most_positions() {
        let a = "the quick brown fox jumps over the lazy dog";
        let b = "the quick brown fox jumped over the lazy dog";
        let c = "completely unrelated words in another sentence";
        let texts: ArrayRef = Arc::new(StringArray::from(vec![a, b, c]));
        let s = signatures(&texts, 256, 4).unwrap();
        let s = s.as_fixed_size_list();
        let pair = |i: usize, j: usize| -> f64 {
            let x = Arc::new(s.slice(i, 1)) as ArrayRef;
            let y = Arc::new(s.slice(j, 1)) as ArrayRef;
            jaccard(&Rows::new("t", &x).unwrap(), &Rows::new("t", &y).unwrap())
                .unwrap()
                .value(0)
        };
        // 4-shingle sets: a and b share 35 of 44, so J = 0.795; 256
        // permutations estimate it within 0.025 (one standard error).
        assert!((pair(0, 1) - 0.795).abs() < 0.1, "{}", pair(0, 1));
        assert!(pair(0, 2) < 0.1, "{}", pair(0, 2));
        assert_eq!(pair(2, 2), 1.0);
    }

    #[test]
    fn every_string_layout_gives_the_same_signature_and_nulls_stay_null() {
        let utf8: ArrayRef = Arc::new(StringArray::from(vec![Some("abcd"), None, Some("é")]));
        let view: ArrayRef = Arc::new(StringViewArray::from(vec![Some("abcd"), None, Some("é")]));
        let a = signatures(&utf8, 16, 2).unwrap();
        let b = signatures(&view, 16, 2).unwrap();
        assert_eq!(a.as_ref(), b.as_ref());
        assert!(a.is_null(1));
        let first = a.as_fixed_size_list().value(0);
        assert_eq!(
            first.as_primitive::<UInt32Type>().values().to_vec(),
            sig("abcd", 16, 2)
        );
    }
}
