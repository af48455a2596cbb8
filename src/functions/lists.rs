//! Rows of equal-typed numbers, as embeddings and MinHash signatures are
//! stored: `FixedSizeList<T>` or `List<T>`. One view over both layouts, so
//! each function is written once over slices of the values buffer.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, FixedSizeListArray, PrimitiveArray,
};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type};
use datafusion::common::{Result, exec_err, plan_datafusion_err, plan_err};
use kiln_kernels::gpu::VectorRows;

/// The rows of a list array as slices of its values buffer. A row holding
/// a null element counts as a null row: no function here has an answer
/// for a vector with a hole in it.
pub struct Rows<'a, T: ArrowPrimitiveType> {
    values: &'a [T::Native],
    layout: Layout<'a>,
    nulls: Option<NullBuffer>,
    len: usize,
}

enum Layout<'a> {
    Fixed(usize),
    Offsets(&'a [i32]),
}

impl<'a, T: ArrowPrimitiveType> Rows<'a, T> {
    pub fn new(call: &str, array: &'a ArrayRef) -> Result<Self> {
        let (child, layout) = match array.data_type() {
            DataType::FixedSizeList(_, size) => {
                (array.as_fixed_size_list().values(), Layout::Fixed(*size as usize))
            }
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                (list.values(), Layout::Offsets(list.value_offsets()))
            }
            other => return exec_err!("{call}: expected a list, got {other}"),
        };
        let Some(values) = child.as_primitive_opt::<T>() else {
            return exec_err!(
                "{call}: expected list elements of {}, got {}",
                T::DATA_TYPE,
                child.data_type()
            );
        };
        let mut rows = Rows {
            values: values.values(),
            layout,
            nulls: array.nulls().cloned(),
            len: array.len(),
        };
        if child.null_count() > 0 {
            let holes = NullBuffer::from_iter((0..rows.len).map(|i| {
                let (start, end) = rows.range(i);
                (start..end).all(|j| child.is_valid(j))
            }));
            rows.nulls = NullBuffer::union(rows.nulls.as_ref(), Some(&holes));
        }
        Ok(rows)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The length every row has, where the type fixes it.
    pub fn fixed_len(&self) -> Option<usize> {
        match self.layout {
            Layout::Fixed(size) => Some(size),
            Layout::Offsets(_) => None,
        }
    }

    fn range(&self, i: usize) -> (usize, usize) {
        match self.layout {
            Layout::Fixed(size) => (i * size, (i + 1) * size),
            Layout::Offsets(o) => (o[i] as usize, o[i + 1] as usize),
        }
    }

    pub fn row(&self, i: usize) -> &'a [T::Native] {
        let (start, end) = self.range(i);
        &self.values[start..end]
    }

    pub fn is_valid(&self, i: usize) -> bool {
        self.nulls.as_ref().is_none_or(|n| n.is_valid(i))
    }

    pub fn nulls(&self) -> Option<&NullBuffer> {
        self.nulls.as_ref()
    }
}

impl Rows<'_, Float32Type> {
    /// The same rows as the GPU layer takes them.
    pub fn as_vectors(&self) -> VectorRows<'_> {
        let (offsets, width) = match self.layout {
            Layout::Fixed(size) => (None, size),
            Layout::Offsets(o) => (Some(o), 0),
        };
        VectorRows {
            values: self.values,
            offsets,
            width,
            rows: self.len,
        }
    }

    /// The offsets of a `List`, none for a `FixedSizeList`.
    pub fn offsets(&self) -> Option<&[i32]> {
        match self.layout {
            Layout::Fixed(_) => None,
            Layout::Offsets(o) => Some(o),
        }
    }
}

/// Rows of `width` values each, as a `FixedSizeList` of non-null items.
pub fn fixed_size_list<T: ArrowPrimitiveType>(
    values: Vec<T::Native>,
    width: usize,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    let item = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
    let values = Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(values), None));
    Arc::new(FixedSizeListArray::new(item, width as i32, values, nulls))
}

/// Two rows that must pair element by element.
pub fn check_same_len(call: &str, row: usize, a: usize, b: usize) -> Result<()> {
    if a != b {
        return exec_err!("{call}: row {row} pairs a list of {a} values with one of {b}");
    }
    Ok(())
}

/// The type a vector argument is read as: its numbers as `Float32`, a
/// `FixedSizeList` kept fixed (so its width is known while planning), any
/// other list as `List`.
pub fn vector_arg(call: &str, what: &str, t: &DataType) -> Result<DataType> {
    list_of(t, DataType::Float32, |t| {
        t.is_integer() || t.is_floating() || *t == DataType::Null
    })
    .ok_or_else(|| plan_datafusion_err!("{call}: {what} must be a list of numbers (a vector), not {t}"))
}

/// A list type read with `item` elements, where its own elements are ones
/// `accepts` takes: a `FixedSizeList` stays fixed, any other list (and an
/// untyped NULL) becomes a `List`.
pub fn list_of(t: &DataType, item: DataType, accepts: impl Fn(&DataType) -> bool) -> Option<DataType> {
    let field = Arc::new(Field::new_list_field(item, true));
    match t {
        DataType::FixedSizeList(f, n) => accepts(f.data_type()).then_some(DataType::FixedSizeList(field, *n)),
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::LargeListView(f) => {
            accepts(f.data_type()).then_some(DataType::List(field))
        }
        DataType::Null => Some(DataType::List(field)),
        _ => None,
    }
}

/// Two vector arguments whose types fix different widths cannot pair.
pub fn check_same_width(call: &str, a: &DataType, b: &DataType) -> Result<()> {
    if let (DataType::FixedSizeList(_, m), DataType::FixedSizeList(_, n)) = (a, b)
        && m != n
    {
        return plan_err!("{call}: vectors of {m} and {n} values cannot be paired");
    }
    Ok(())
}
