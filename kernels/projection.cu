// random_projection(v, dim, seed) on the GPU: one thread per output value
// (row, j), computing the matrix entries it needs from (seed, i, j) as it
// goes: the matrix is never stored or copied. Products and the sum in
// float, in order of i, as on the CPU (compiled with --fmad=false).
#include "common.cuh"

// Entry (row, col) of the standard normal matrix of `seed`: see mix.rs.
__device__ __forceinline__ float kiln_gaussian(u64 seed_mix, u32 row, u32 col) {
    u64 x = kiln_mix64((((u64)row << 32) | (u64)col) ^ seed_mix);
    double u1 = (double)((x >> 40) + 1) * (1.0 / 16777216.0);
    double u2 = (double)(x & 0xFFFFFFULL) * (1.0 / 16777216.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// `offsets` as in vector.cu; `seed_mix` is mix64(seed), computed once on
// the host.
extern "C" __global__ void random_projection(const float* v, const i32* offsets, i64 base, u32 width, u64 rows,
                                             u32 dim, u64 seed_mix, float scale, float* out) {
    u64 t = kiln_thread_index();
    if (t >= rows * dim) return;
    u64 i = t / dim;
    u32 j = (u32)(t % dim);
    u64 s, len;
    if (offsets) {
        s = (u64)(offsets[i] - base);
        len = (u64)(offsets[i + 1] - offsets[i]);
    } else {
        s = i * width;
        len = width;
    }
    float acc = 0.0f;
    for (u64 k = 0; k < len; ++k) acc += v[s + k] * kiln_gaussian(seed_mix, (u32)k, j);
    out[t] = acc * scale;
}
