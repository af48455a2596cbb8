// Shared by every kernel: fixed-width integer names (NVRTC has no
// <stdint.h>), and the hashing of src/functions/mix.rs (kiln-kernels'
// mix.rs), bit for bit. Kernels keep each thread independent: no shared
// memory, no __syncthreads, no atomics, so that the host emulation
// (host/emulation.h) can run a grid as plain loops and compute exactly
// what the device computes.
#pragma once

typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;
typedef int i32;
typedef unsigned char u8;

#define KILN_GOLDEN 0x9E3779B97F4A7C15ULL

__device__ __forceinline__ u64 kiln_mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 kiln_rotl(u64 x, int r) { return (x << r) | (x >> (64 - r)); }

#define XXH_P1 0x9E3779B185EBCA87ULL
#define XXH_P2 0xC2B2AE3D27D4EB4FULL
#define XXH_P3 0x165667B19E3779F9ULL
#define XXH_P4 0x85EBCA77C2B2AE63ULL
#define XXH_P5 0x27D4EB2F165667C5ULL

// Little-endian loads byte by byte: Arrow's values buffer gives no
// alignment for a row's start.
__device__ __forceinline__ u64 kiln_read64(const u8* p) {
    u64 v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

__device__ __forceinline__ u32 kiln_read32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ u64 kiln_xxh_round(u64 acc, u64 input) {
    acc += input * XXH_P2;
    acc = kiln_rotl(acc, 31);
    return acc * XXH_P1;
}

__device__ __forceinline__ u64 kiln_xxh_merge(u64 acc, u64 val) {
    acc ^= kiln_xxh_round(0, val);
    return acc * XXH_P1 + XXH_P4;
}

// xxHash64 with seed 0.
__device__ __forceinline__ u64 kiln_xxh64(const u8* p, u64 len) {
    const u8* end = p + len;
    u64 h;
    if (len >= 32) {
        u64 v1 = XXH_P1 + XXH_P2, v2 = XXH_P2, v3 = 0, v4 = 0 - XXH_P1;
        const u8* limit = end - 32;
        do {
            v1 = kiln_xxh_round(v1, kiln_read64(p));
            v2 = kiln_xxh_round(v2, kiln_read64(p + 8));
            v3 = kiln_xxh_round(v3, kiln_read64(p + 16));
            v4 = kiln_xxh_round(v4, kiln_read64(p + 24));
            p += 32;
        } while (p <= limit);
        h = kiln_rotl(v1, 1) + kiln_rotl(v2, 7) + kiln_rotl(v3, 12) + kiln_rotl(v4, 18);
        h = kiln_xxh_merge(h, v1);
        h = kiln_xxh_merge(h, v2);
        h = kiln_xxh_merge(h, v3);
        h = kiln_xxh_merge(h, v4);
    } else {
        h = XXH_P5;
    }
    h += len;
    while (p + 8 <= end) {
        h ^= kiln_xxh_round(0, kiln_read64(p));
        h = kiln_rotl(h, 27) * XXH_P1 + XXH_P4;
        p += 8;
    }
    if (p + 4 <= end) {
        h ^= (u64)kiln_read32(p) * XXH_P1;
        h = kiln_rotl(h, 23) * XXH_P2 + XXH_P3;
        p += 4;
    }
    while (p < end) {
        h ^= (u64)(*p) * XXH_P5;
        h = kiln_rotl(h, 11) * XXH_P1;
        ++p;
    }
    h ^= h >> 33;
    h *= XXH_P2;
    h ^= h >> 29;
    h *= XXH_P3;
    h ^= h >> 32;
    return h;
}

// The index of this thread in a one-dimensional grid.
__device__ __forceinline__ u64 kiln_thread_index() {
    return (u64)blockIdx.x * blockDim.x + threadIdx.x;
}
