//! `random_projection`: `v` times the `len(v) × dim` standard normal matrix
//! of a seed, scaled by `1 / sqrt(dim)`.

use crate::mix::gaussian;

/// The first `rows` rows of the matrix of `seed`, row-major: row `i`
/// holds what input element `i` adds to each output. Built once per
/// batch, so each entry's `ln` and `cos` are paid once, not once per row.
pub fn matrix(seed: u64, rows: usize, dim: usize) -> Vec<f32> {
    let mut m = Vec::with_capacity(rows * dim);
    for i in 0..rows as u32 {
        m.extend((0..dim as u32).map(|j| gaussian(seed, i, j)));
    }
    m
}

/// The scale every output is multiplied by, in `f32` as the GPU has it.
#[inline]
pub fn scale(dim: usize) -> f32 {
    1.0 / (dim as f32).sqrt()
}

/// `out_j = (Σ_i v_i · m_ij) · scale(dim)`, summed in order of `i` (a row
/// of the matrix at a time, so the inner loop runs along `out`).
pub fn project(v: &[f32], matrix: &[f32], out: &mut [f32]) {
    let dim = out.len();
    out.fill(0.0);
    for (x, m) in v.iter().zip(matrix.chunks_exact(dim)) {
        for (o, w) in out.iter_mut().zip(m) {
            *o += x * w;
        }
    }
    let scale = scale(dim);
    for o in out {
        *o *= scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::vector::dot_f32;

    #[test]
    fn projection_keeps_lengths_in_expectation() {
        let (width, dim) = (64, 256);
        let m = matrix(42, width, dim);
        let mut ratios = Vec::new();
        for r in 0..50u32 {
            let v: Vec<f32> = (0..width as u32)
                .map(|i| gaussian(1000 + u64::from(r), 0, i))
                .collect();
            let mut out = vec![0f32; dim];
            project(&v, &m, &mut out);
            ratios.push(f64::from(dot_f32(&out, &out) / dot_f32(&v, &v)));
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "mean squared-length ratio {mean}");
    }

    #[test]
    fn a_unit_vector_picks_its_row_of_the_matrix() {
        let m = matrix(7, 3, 4);
        let mut out = vec![0f32; 4];
        project(&[0.0, 1.0, 0.0], &m, &mut out);
        let expected: Vec<f32> = (0..4).map(|j| gaussian(7, 1, j) * 0.5).collect();
        assert_eq!(out, expected);
        // A shorter vector uses the first rows only.
        project(&[2.0], &m, &mut out);
        assert_eq!(out[0], 2.0 * gaussian(7, 0, 0) * 0.5);
    }
}
