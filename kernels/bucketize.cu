// bucketize(x, b1, ...) on the GPU: one thread per row, a binary search
// of the sorted boundaries (which count the same as a linear scan).
#include "common.cuh"

extern "C" __global__ void bucketize_f64(const double* x, u64 rows, const double* bounds, u32 count, i32* out) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    double v = x[i];
    if (v != v) {  // NaN sorts after every number, as in numpy.
        out[i] = (i32)count;
        return;
    }
    u32 lo = 0, hi = count;
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2;
        if (bounds[mid] <= v) lo = mid + 1; else hi = mid;
    }
    out[i] = (i32)lo;
}

extern "C" __global__ void bucketize_i64(const i64* x, u64 rows, const i64* bounds, u32 count, i32* out) {
    u64 i = kiln_thread_index();
    if (i >= rows) return;
    i64 v = x[i];
    u32 lo = 0, hi = count;
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2;
        if (bounds[mid] <= v) lo = mid + 1; else hi = mid;
    }
    out[i] = (i32)lo;
}
