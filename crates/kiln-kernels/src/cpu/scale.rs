//! The scalers over a whole partition: `standard_scale`, `min_max_scale`
//! and `quantile_bucket`. `counted(i)` says whether value `i` enters the
//! statistics (kiln leaves out NULL and NaN); every value is rescaled, and
//! the caller masks the ones that are NULL.

/// Which values enter the statistics: every one but NaN (`None`), or
/// those `counted` says (where some are NULL), never NaN.
pub type Counted<'a> = Option<&'a dyn Fn(usize) -> bool>;

/// Runs `$body` compiled for AVX2 where the CPU has it (the release
/// build targets baseline x86-64, whose SSE2 lanes are half as wide), and
/// as built otherwise. Same operations in the same order: the same bits.
macro_rules! widest {
    ($avx2:ident, $body:ident, $($arg:ident: $t:ty),*) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2")]
            unsafe fn $avx2($($arg: $t),*) -> Vec<f64> {
                $body($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has just said it has AVX2.
                return unsafe { $avx2($($arg),*) };
            }
        }
        $body($($arg),*)
    }};
}

/// `(x - mean) / stddev` with the population deviation, in two passes (no
/// cancellation); with no spread every value but NaN becomes 0.
pub fn standard_scale(x: &[f64], counted: Counted<'_>) -> Vec<f64> {
    widest!(standard_scale_avx2, standard_scale_body, x: &[f64], counted: Counted<'_>)
}

#[inline(always)]
fn standard_scale_body(x: &[f64], counted: Counted<'_>) -> Vec<f64> {
    let (count, sum) = match counted {
        None => lanes(
            x,
            (0.0, 0.0),
            |(c, s), v| if v.is_nan() { (c, s) } else { (c + 1.0, s + v) },
            |a, b| (a.0 + b.0, a.1 + b.1),
        ),
        Some(f) => known(x, f).fold((0.0, 0.0), |(c, s), v| (c + 1.0, s + v)),
    };
    let mean = sum / count;
    let squares = match counted {
        None => lanes(
            x,
            0.0,
            |q, v| {
                if v.is_nan() {
                    q
                } else {
                    q + (v - mean) * (v - mean)
                }
            },
            |a, b| a + b,
        ),
        Some(f) => known(x, f).map(|v| (v - mean) * (v - mean)).sum(),
    };
    rescaled(x, mean, (squares / count).sqrt())
}

/// `(x - min) / (max - min)`.
pub fn min_max_scale(x: &[f64], counted: Counted<'_>) -> Vec<f64> {
    widest!(min_max_scale_avx2, min_max_scale_body, x: &[f64], counted: Counted<'_>)
}

#[inline(always)]
fn min_max_scale_body(x: &[f64], counted: Counted<'_>) -> Vec<f64> {
    // `f64::min` and `max` pass over NaN.
    let start = (f64::INFINITY, f64::NEG_INFINITY);
    let (min, max) = match counted {
        None => lanes(
            x,
            start,
            |(lo, hi), v| (lo.min(v), hi.max(v)),
            |a, b| (a.0.min(b.0), a.1.max(b.1)),
        ),
        Some(f) => known(x, f).fold(start, |(lo, hi), v| (lo.min(v), hi.max(v))),
    };
    rescaled(x, min, max - min)
}

fn known<'a>(x: &'a [f64], counted: &'a dyn Fn(usize) -> bool) -> impl Iterator<Item = f64> + 'a {
    x.iter()
        .enumerate()
        .filter(move |&(i, v)| counted(i) && !v.is_nan())
        .map(|(_, v)| *v)
}

/// A fold in eight independent lanes (element `i` in lane `i % 8`), then
/// the lanes merged: the compiler keeps the lanes in vector registers,
/// where one running value would wait on each addition.
#[inline(always)]
fn lanes<A: Copy>(x: &[f64], zero: A, step: impl Fn(A, f64) -> A, merge: impl Fn(A, A) -> A) -> A {
    let mut acc = [zero; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for l in 0..8 {
            acc[l] = step(acc[l], chunk[l]);
        }
    }
    let mut total = tail.iter().fold(zero, |a, &v| step(a, v));
    for a in acc {
        total = merge(total, a);
    }
    total
}

/// `(x - center) / spread`; with no spread (NaN when nothing counted),
/// every value but NaN becomes 0.
#[inline(always)]
fn rescaled(x: &[f64], center: f64, spread: f64) -> Vec<f64> {
    let mut out = large_output(x.len());
    if spread > 0.0 {
        out.extend(x.iter().map(|v| (v - center) / spread));
    } else {
        out.extend(x.iter().map(|v| if v.is_nan() { *v } else { 0.0 }));
    }
    out
}

/// An empty vector with room for `len` values. A whole partition's output
/// is fresh memory, and writing it first-touches every page: asking for
/// transparent huge pages where the kernel offers them on request takes
/// that from one fault per 4 KiB to one per 2 MiB.
fn large_output(len: usize) -> Vec<f64> {
    let out = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len * 8 >= 8 << 20 {
        const HUGE: usize = 2 << 20;
        let start = (out.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (out.as_ptr() as usize + len * 8) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on whole pages inside this vector's own
            // allocation; it changes no contents and may be ignored.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    out
}

/// A key whose unsigned order is the numeric order of `v` (not NaN):
/// -0.0 and 0.0 are one value.
#[inline]
pub fn float_key(v: f64) -> u64 {
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    if bits >> 63 == 1 { !bits } else { bits | (1 << 63) }
}

#[inline]
pub fn int_key(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// `floor(n * r / c)`, where `c` counts the values with a key and `r`
/// those whose key is below this one's: equal values share a bucket, and
/// the buckets hold equal counts as far as ties allow. Values without a
/// key get 0 (the caller masks them).
pub fn quantile_buckets(keys: impl ExactSizeIterator<Item = Option<u64>>, n: u64) -> Vec<i32> {
    let len = keys.len();
    // (key, row) pairs sorted in place: no reads scattered over the input.
    let mut order: Vec<(u64, u32)> = keys
        .enumerate()
        .filter_map(|(i, k)| k.map(|k| (k, i as u32)))
        .collect();
    order.sort_unstable_by_key(|&(k, _)| k);
    let count = order.len() as u64;
    let mut out = vec![0i32; len];
    let mut below = 0usize;
    for at in 0..order.len() {
        if at > 0 && order[at - 1].0 != order[at].0 {
            below = at;
        }
        out[order[at].1 as usize] = (n * below as u64 / count) as i32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_scale_uses_the_population_deviation() {
        let s = standard_scale(&[1.0, 3.0, f64::NAN], None);
        assert_eq!(s[..2], [-1.0, 1.0]);
        assert!(s[2].is_nan());
        assert_eq!(standard_scale(&[2.0, 2.0], None), [0.0, 0.0]);
        // The lanes and the plain fold agree, tail included.
        let x: Vec<f64> = (0..1003).map(|i| f64::from(i % 17) * 1.5).collect();
        let (a, b) = (standard_scale(&x, None), standard_scale(&x, Some(&|_| true)));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-12));
        let skip_first: &dyn Fn(usize) -> bool = &|i| i > 0;
        assert_eq!(min_max_scale(&[9.0, 2.0, 4.0], Some(skip_first))[1..], [0.0, 1.0]);
    }

    #[test]
    fn quantile_buckets_share_ties_and_fill_equally() {
        let keys = [5i64, 1, 3, 3, 9, 7, 2, 8].map(|v| Some(int_key(v)));
        // sorted: 1 2 3 3 5 7 8 9; below: 0 1 2 2 4 5 6 7 -> floor(4 * below / 8)
        assert_eq!(
            quantile_buckets(keys.into_iter(), 4),
            vec![2, 0, 1, 1, 3, 2, 0, 3]
        );
        assert_eq!(min_max_scale(&[2.0, 4.0, 3.0], None), [0.0, 1.0, 0.5]);
    }

    #[test]
    fn keys_order_numbers_as_numbers() {
        let floats = [f64::NEG_INFINITY, -2.5, -0.0, 0.0, 1e-300, 3.0, f64::INFINITY];
        let keys: Vec<u64> = floats.iter().map(|&v| float_key(v)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{keys:?}");
        assert_eq!(keys[2], keys[3], "-0.0 ties with 0.0");
        assert!(int_key(-1) < int_key(0) && int_key(i64::MIN) < int_key(i64::MAX));
    }
}
