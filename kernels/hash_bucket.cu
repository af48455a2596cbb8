// hash_bucket(value, n) on the GPU: one thread per row.
#include "common.cuh"

// Strings or binaries as Arrow lays them out: row i's bytes lie between
// offsets[i] and offsets[i + 1], counted from `base` (the first offset of
// the chunk copied to the device).
template <typename O>
__device__ __forceinline__ void kiln_hash_bucket_offsets(const O* offsets, i64 base, const u8* bytes, u64 rows,
                                                         u64 n, i64* out) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    u64 start = (u64)(offsets[i] - base);
    u64 end = (u64)(offsets[i + 1] - base);
    out[i] = (i64)(kiln_xxh64(bytes + start, end - start) % n);
}

extern "C" __global__ void hash_bucket_offsets32(const i32* offsets, i64 base, const u8* bytes, u64 rows, u64 n,
                                                 i64* out) {
    kiln_hash_bucket_offsets<i32>(offsets, base, bytes, rows, n, out);
}

extern "C" __global__ void hash_bucket_offsets64(const i64* offsets, i64 base, const u8* bytes, u64 rows, u64 n,
                                                 i64* out) {
    kiln_hash_bucket_offsets<i64>(offsets, base, bytes, rows, n, out);
}

// Integers already widened to 64 bits: their 8 little-endian bytes.
extern "C" __global__ void hash_bucket_u64(const u64* values, u64 rows, u64 n, i64* out) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    u8 b[8];
    u64 v = values[i];
    for (int k = 0; k < 8; ++k) b[k] = (u8)(v >> (8 * k));
    out[i] = (i64)(kiln_xxh64(b, 8) % n);
}
