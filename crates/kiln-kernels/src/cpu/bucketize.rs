//! `bucketize`: how many sorted boundaries are at or below each value.

/// A handful of boundaries is counted without branches (the compiler
/// vectorises the comparisons); more are searched.
pub fn count_at_or_below<T: PartialOrd + Copy>(xs: &[T], bounds: &[T], out: &mut [i32]) {
    if bounds.len() <= 16 {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = bounds.iter().map(|b| i32::from(*b <= *x)).sum();
        }
    } else {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = bounds.partition_point(|b| *b <= *x) as i32;
        }
    }
}

/// NaN sorts after every number, as in numpy: its bucket is the last.
pub fn buckets_of_floats(xs: &[f64], bounds: &[f64], out: &mut [i32]) {
    count_at_or_below(xs, bounds, out);
    let last = bounds.len() as i32;
    for (o, x) in out.iter_mut().zip(xs) {
        if x.is_nan() {
            *o = last;
        }
    }
}
