// dot, cosine_similarity and l2_normalize on the GPU: one thread per row,
// summing in the CPU's order (eight lanes, lane l taking elements l, l + 8,
// ...; lanes added pairwise, the tail last). Compiled with --fmad=false,
// so every product and sum rounds as on the CPU and the answers are the
// same bits.
//
// `offsets` is null for a FixedSizeList of `width` values per row, else
// Arrow's List offsets counted from `base`.
#include "common.cuh"

__device__ __forceinline__ void kiln_row(const i32* offsets, i64 base, u32 width, u64 i, u64* start, u64* len) {
    if (offsets) {
        *start = (u64)(offsets[i] - base);
        *len = (u64)(offsets[i + 1] - offsets[i]);
    } else {
        *start = i * width;
        *len = width;
    }
}

__device__ __forceinline__ float kiln_dot(const float* a, const float* b, u64 len) {
    float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    u64 full = len / 8 * 8;
    for (u64 k = 0; k < full; k += 8)
        for (int l = 0; l < 8; ++l) lanes[l] += a[k + l] * b[k + l];
    float tail = 0;
    for (u64 k = full; k < len; ++k) tail += a[k] * b[k];
    return (((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]))) + tail;
}

// Row lengths must agree (the host checks); `valid` gets 0 where a cosine
// has no answer (a zero vector).
extern "C" __global__ void vector_pairwise(const float* a, const i32* a_offsets, i64 a_base, const float* b,
                                           const i32* b_offsets, i64 b_base, u32 width, u64 rows, u32 cosine,
                                           float* out, u8* valid) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    u64 sa, la, sb, lb;
    kiln_row(a_offsets, a_base, width, i, &sa, &la);
    kiln_row(b_offsets, b_base, width, i, &sb, &lb);
    // Equal for every row that has an answer; a null row may pair any two
    // lengths, and must not read past the shorter.
    u64 len = la < lb ? la : lb;
    float d = kiln_dot(a + sa, b + sb, len);
    if (!cosine) {
        out[i] = d;
        valid[i] = 1;
        return;
    }
    float aa = kiln_dot(a + sa, a + sa, len), bb = kiln_dot(b + sb, b + sb, len);
    if (aa > 0.0f && bb > 0.0f) {
        out[i] = d / (sqrtf(aa) * sqrtf(bb));
        valid[i] = 1;
    } else {
        out[i] = 0.0f;
        valid[i] = 0;
    }
}

// Each row divided by its norm, written where the row lies (out has the
// input's layout); a zero row is copied unchanged.
extern "C" __global__ void l2_normalize(const float* v, const i32* offsets, i64 base, u32 width, u64 rows,
                                        float* out) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    u64 s, len;
    kiln_row(offsets, base, width, i, &s, &len);
    float norm = sqrtf(kiln_dot(v + s, v + s, len));
    for (u64 k = 0; k < len; ++k) out[s + k] = norm > 0.0f ? v[s + k] / norm : v[s + k];
}
