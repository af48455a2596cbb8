//! The arithmetic of a trailing day window over rows sorted by (key, day).
//!
//! Per key it keeps one partial (count, sum, min, max) per day still inside
//! the frame, at most n+1 of them, and folds them for every (key, day)
//! group. Rows of one day are peers in a RANGE frame, so they all get the
//! same value: the whole day, later rows included.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, Date32Array, Int64Builder, PrimitiveBuilder,
};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::common::Result;

use crate::engine::types::widens_to_i64;

/// The window aggregates the operator computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Sum,
    Count,
    Min,
    Max,
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_lowercase().as_str() {
            "sum" => Some(Self::Sum),
            "count" => Some(Self::Count),
            "min" => Some(Self::Min),
            "max" => Some(Self::Max),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sum => "sum",
            Self::Count => "count",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

/// The type the arithmetic runs in for an argument of type `t`, if any.
/// Integers run in `i64` (wrapping, as DataFusion's sum does), floats in
/// `f64`; both convert back to the window's own output type exactly.
pub fn working_type(t: &DataType) -> Option<DataType> {
    match t {
        t if widens_to_i64(t) => Some(DataType::Int64),
        DataType::Float32 | DataType::Float64 => Some(DataType::Float64),
        _ => None,
    }
}

trait Number: Copy + Send + 'static {
    fn plus(self, other: Self) -> Self;
    /// Total order with NaN above every number, as arrow's min/max have it.
    fn below(self, other: Self) -> bool;
}

impl Number for i64 {
    fn plus(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn below(self, other: Self) -> bool {
        self < other
    }
}

impl Number for f64 {
    fn plus(self, other: Self) -> Self {
        self + other
    }
    fn below(self, other: Self) -> bool {
        !self.is_nan() && (other.is_nan() || self < other)
    }
}

/// One day's (or one frame's) aggregate of the non-null values.
#[derive(Clone, Copy)]
struct Partial<T> {
    count: i64,
    sum: Option<T>,
    min: Option<T>,
    max: Option<T>,
}

impl<T: Number> Partial<T> {
    const EMPTY: Self = Self {
        count: 0,
        sum: None,
        min: None,
        max: None,
    };

    fn add(&mut self, v: T) {
        self.count += 1;
        self.sum = Some(self.sum.map_or(v, |s| s.plus(v)));
        self.min = Some(self.min.map_or(v, |m| if v.below(m) { v } else { m }));
        self.max = Some(self.max.map_or(v, |m| if m.below(v) { v } else { m }));
    }

    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        self.sum = match (self.sum, other.sum) {
            (Some(a), Some(b)) => Some(a.plus(b)),
            (a, b) => a.or(b),
        };
        if let Some(m) = other.min {
            self.min = Some(self.min.map_or(m, |s| if m.below(s) { m } else { s }));
        }
        if let Some(m) = other.max {
            self.max = Some(self.max.map_or(m, |s| if s.below(m) { m } else { s }));
        }
    }
}

/// One window function's days and output.
trait Lane: Send {
    /// Adds `rows` of `values` as the newest day.
    fn push_day(&mut self, values: &dyn Array, rows: Range<usize>);
    fn pop_oldest(&mut self);
    fn clear(&mut self);
    /// Appends the value of the frame made of every day held, `times` times.
    fn emit(&mut self, times: usize);
    /// Appends the value of a frame made of `rows` alone (rows whose day is
    /// NULL are peers of each other and of nothing else).
    fn emit_alone(&mut self, values: &dyn Array, rows: Range<usize>);
    fn finish(&mut self) -> ArrayRef;
}

struct TypedLane<A: ArrowPrimitiveType> {
    kind: Kind,
    days: VecDeque<Partial<A::Native>>,
    values: PrimitiveBuilder<A>,
    counts: Int64Builder,
}

impl<A: ArrowPrimitiveType> TypedLane<A>
where
    A::Native: Number,
{
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            days: VecDeque::new(),
            values: PrimitiveBuilder::new(),
            counts: Int64Builder::new(),
        }
    }

    fn partial_of(values: &dyn Array, rows: Range<usize>) -> Partial<A::Native> {
        let values = values.as_primitive::<A>();
        let mut partial = Partial::EMPTY;
        for i in rows {
            if values.is_valid(i) {
                partial.add(values.value(i));
            }
        }
        partial
    }

    fn append(&mut self, frame: &Partial<A::Native>, times: usize) {
        let value = match self.kind {
            Kind::Count => {
                self.counts.append_value_n(frame.count, times);
                return;
            }
            Kind::Sum => frame.sum,
            Kind::Min => frame.min,
            Kind::Max => frame.max,
        };
        match value {
            Some(v) => self.values.append_value_n(v, times),
            None => self.values.append_nulls(times),
        }
    }
}

impl<A: ArrowPrimitiveType> Lane for TypedLane<A>
where
    A::Native: Number,
{
    fn push_day(&mut self, values: &dyn Array, rows: Range<usize>) {
        self.days.push_back(Self::partial_of(values, rows));
    }

    fn pop_oldest(&mut self) {
        self.days.pop_front();
    }

    fn clear(&mut self) {
        self.days.clear();
    }

    fn emit(&mut self, times: usize) {
        let mut frame = Partial::EMPTY;
        for day in &self.days {
            frame.merge(day);
        }
        self.append(&frame, times);
    }

    fn emit_alone(&mut self, values: &dyn Array, rows: Range<usize>) {
        let times = rows.len();
        let frame = Self::partial_of(values, rows);
        self.append(&frame, times);
    }

    fn finish(&mut self) -> ArrayRef {
        match self.kind {
            Kind::Count => Arc::new(self.counts.finish()),
            _ => Arc::new(self.values.finish()),
        }
    }
}

/// The state of one partition's window computation, carried across batches.
pub struct TrailingDays {
    days_back: i64,
    /// Without PARTITION BY every row has one key, a constant `true`.
    converter: RowConverter,
    partitioned: bool,
    key: Option<OwnedRow>,
    days: VecDeque<i32>,
    lanes: Vec<Box<dyn Lane>>,
}

/// One batch's columns as the computation reads them.
pub struct Inputs<'a> {
    pub keys: Rows,
    pub day: &'a Date32Array,
    /// Per function, its argument in the working type.
    pub args: &'a [ArrayRef],
}

impl TrailingDays {
    /// `functions`: per function its kind and its argument's working type.
    pub fn new(days_back: i32, key_types: &[DataType], functions: &[(Kind, DataType)]) -> Result<Self> {
        let partitioned = !key_types.is_empty();
        let converter = if partitioned {
            RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?
        } else {
            RowConverter::new(vec![SortField::new(DataType::Boolean)])?
        };
        let lanes = functions
            .iter()
            .map(|(kind, t)| -> Box<dyn Lane> {
                match t {
                    DataType::Float64 => Box::new(TypedLane::<Float64Type>::new(*kind)),
                    _ => Box::new(TypedLane::<Int64Type>::new(*kind)),
                }
            })
            .collect();
        Ok(Self {
            days_back: i64::from(days_back),
            converter,
            partitioned,
            key: None,
            days: VecDeque::new(),
            lanes,
        })
    }

    /// The key columns of a batch in comparable form.
    pub fn keys(&self, columns: &[ArrayRef], rows: usize) -> Result<Rows> {
        Ok(if self.partitioned {
            self.converter.convert_columns(columns)?
        } else {
            let constant: ArrayRef = Arc::new(BooleanArray::from(vec![true; rows]));
            self.converter.convert_columns(&[constant])?
        })
    }

    /// Do rows `a` and `b` share key and day?
    pub fn same_group(inputs: &Inputs, a: usize, b: usize) -> bool {
        inputs.keys.row(a) == inputs.keys.row(b)
            && inputs.day.is_valid(a) == inputs.day.is_valid(b)
            && (inputs.day.is_null(a) || inputs.day.value(a) == inputs.day.value(b))
    }

    /// The window values of rows `..end`, which must end on a group boundary.
    pub fn compute(&mut self, inputs: &Inputs, end: usize) -> Vec<ArrayRef> {
        let mut start = 0;
        while start < end {
            let mut stop = start + 1;
            while stop < end && Self::same_group(inputs, start, stop) {
                stop += 1;
            }
            let key = inputs.keys.row(start);
            if self.key.as_ref().is_none_or(|k| k.row() != key) {
                self.key = Some(key.owned());
                self.days.clear();
                self.lanes.iter_mut().for_each(|l| l.clear());
            }
            if inputs.day.is_null(start) {
                for (lane, values) in self.lanes.iter_mut().zip(inputs.args) {
                    lane.emit_alone(values.as_ref(), start..stop);
                }
            } else {
                let day = inputs.day.value(start);
                while self
                    .days
                    .front()
                    .is_some_and(|&d| i64::from(d) < i64::from(day) - self.days_back)
                {
                    self.days.pop_front();
                    self.lanes.iter_mut().for_each(|l| l.pop_oldest());
                }
                self.days.push_back(day);
                for (lane, values) in self.lanes.iter_mut().zip(inputs.args) {
                    lane.push_day(values.as_ref(), start..stop);
                    lane.emit(stop - start);
                }
            }
            start = stop;
        }
        self.lanes.iter_mut().map(|l| l.finish()).collect()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, Int64Array};

    use super::*;

    fn window(
        days_back: i32,
        keys: Vec<i64>,
        days: Vec<Option<i32>>,
        values: Vec<Option<f64>>,
    ) -> Vec<ArrayRef> {
        let functions = [
            (Kind::Sum, DataType::Float64),
            (Kind::Count, DataType::Float64),
            (Kind::Min, DataType::Float64),
            (Kind::Max, DataType::Float64),
        ];
        let mut state = TrailingDays::new(days_back, &[DataType::Int64], &functions).unwrap();
        let n = keys.len();
        let key_column: ArrayRef = Arc::new(Int64Array::from(keys));
        let day = Date32Array::from(days);
        let arg: ArrayRef = Arc::new(Float64Array::from(values));
        let args = vec![arg; 4];
        let inputs = Inputs {
            keys: state.keys(&[key_column], n).unwrap(),
            day: &day,
            args: &args,
        };
        state.compute(&inputs, n)
    }

    #[test]
    fn frames_cover_the_trailing_days_and_all_peers() {
        // key 1: days 0, 0, 1, 3 (gap), 5; key 2: day 4; days_back 2.
        let out = window(
            2,
            vec![1, 1, 1, 1, 1, 2],
            vec![Some(0), Some(0), Some(1), Some(3), Some(5), Some(4)],
            vec![Some(1.0), Some(2.0), None, Some(4.0), Some(8.0), Some(16.0)],
        );
        let sum = out[0].as_primitive::<Float64Type>();
        let count = out[1].as_primitive::<Int64Type>();
        let min = out[2].as_primitive::<Float64Type>();
        let max = out[3].as_primitive::<Float64Type>();
        // Both rows of day 0 see each other; day 1 adds a null; day 3 drops
        // day 0; day 5 sees only days 3..=5; a new key starts afresh.
        assert_eq!(
            sum.iter().collect::<Vec<_>>(),
            [Some(3.0), Some(3.0), Some(3.0), Some(4.0), Some(12.0), Some(16.0)]
        );
        assert_eq!(count.values().to_vec(), [2, 2, 2, 1, 2, 1]);
        assert_eq!(min.value(4), 4.0);
        assert_eq!(max.value(3), 4.0);
    }

    #[test]
    fn null_days_are_their_own_frame_and_empty_frames_are_null() {
        let out = window(
            6,
            vec![1, 1, 1, 1],
            vec![Some(10), Some(11), None, None],
            vec![Some(1.0), Some(2.0), Some(5.0), None],
        );
        let sum = out[0].as_primitive::<Float64Type>();
        assert_eq!(
            sum.iter().collect::<Vec<_>>(),
            [Some(1.0), Some(3.0), Some(5.0), Some(5.0)]
        );
        let only_nulls = window(6, vec![1], vec![Some(1)], vec![None]);
        assert!(only_nulls[0].is_null(0));
        assert_eq!(only_nulls[1].as_primitive::<Int64Type>().value(0), 0);
    }
}
