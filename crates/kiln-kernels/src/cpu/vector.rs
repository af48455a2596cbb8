//! `dot`, `cosine_similarity` and `l2_normalize` over `f32` rows. Sums run
//! in eight lanes, lane `l` taking elements `l, l + 8, ...`, then the lanes
//! are added pairwise and the tail last: an order the GPU kernels follow
//! too, and one the compiler keeps in vector registers.

/// Σ a_i·b_i in the lane order the module describes.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ta.iter().zip(tb) {
        tail += x * y;
    }
    let l = lanes;
    (((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))) + tail
}

/// The cosine from a dot product and the two squared norms; none for a
/// zero vector, which has no direction.
#[inline]
pub fn cosine(dot: f32, aa: f32, bb: f32) -> Option<f32> {
    (aa > 0.0 && bb > 0.0).then(|| dot / (aa.sqrt() * bb.sqrt()))
}

/// `row / ||row||` into `out`; a zero row is copied unchanged.
#[inline]
pub fn normalize_into(row: &[f32], out: &mut [f32]) {
    let norm = dot_f32(row, row).sqrt();
    for (o, x) in out.iter_mut().zip(row) {
        *o = if norm > 0.0 { x / norm } else { *x };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_sums_every_element_including_the_tail() {
        let a: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(dot_f32(&a, &[1f32; 19]), 190.0);
        assert_eq!(dot_f32(&[], &[]), 0.0);
    }

    #[test]
    fn normalizing_keeps_zero_rows() {
        let mut out = [9f32; 2];
        normalize_into(&[3.0, 4.0], &mut out);
        assert_eq!(out, [0.6, 0.8]);
        normalize_into(&[0.0, 0.0], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        assert_eq!(cosine(1.0, 0.0, 1.0), None);
    }
}
