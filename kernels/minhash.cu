// minhash(text, num_perm, shingle_len) on the GPU. Thread t handles row
// t / groups and permutations [PERMS * (t % groups), ...): it walks its
// row's shingles itself (hashing each once per group, not per permutation)
// and keeps its PERMS minima in registers.
#include "common.cuh"

#define KILN_MINHASH_PERMS 16

// The byte after the UTF-8 character that starts at p.
__device__ __forceinline__ u64 kiln_next_char(const u8* s, u64 p, u64 len) {
    ++p;
    while (p < len && (s[p] & 0xC0) == 0x80) ++p;
    return p;
}

extern "C" __global__ void minhash_offsets32(const i32* offsets, i64 base, const u8* bytes, u64 rows,
                                             const u64* keys, u32 num_perm, u32 shingle_len, u32* out) {
    u64 groups = (num_perm + KILN_MINHASH_PERMS - 1) / KILN_MINHASH_PERMS;
    u64 t = kiln_thread_index();
    if (t >= rows * groups) return;
    u64 row = t / groups;
    u32 first = (u32)(t % groups) * KILN_MINHASH_PERMS;
    u32 count = num_perm - first < KILN_MINHASH_PERMS ? num_perm - first : KILN_MINHASH_PERMS;
    const u8* s = bytes + (offsets[row] - base);
    u64 len = (u64)(offsets[row + 1] - offsets[row]);

    u64 key[KILN_MINHASH_PERMS];
    u32 sig[KILN_MINHASH_PERMS];
    for (u32 p = 0; p < KILN_MINHASH_PERMS; ++p) {
        key[p] = p < count ? keys[first + p] : 0;
        sig[p] = 0xFFFFFFFFu;
    }
    if (len > 0) {
        // The first shingle: shingle_len characters, or the whole text.
        u64 start = 0, end = 0;
        for (u32 c = 0; c < shingle_len && end < len; ++c) end = kiln_next_char(s, end, len);
        for (;;) {
            u64 h = kiln_xxh64(s + start, end - start);
            for (u32 p = 0; p < KILN_MINHASH_PERMS; ++p) {
                u32 v = (u32)(kiln_mix64(h ^ key[p]) >> 32);
                sig[p] = v < sig[p] ? v : sig[p];
            }
            if (end >= len) break;
            start = kiln_next_char(s, start, len);
            end = kiln_next_char(s, end, len);
        }
    }
    u32* o = out + row * num_perm + first;
    for (u32 p = 0; p < count; ++p) o[p] = sig[p];
}
