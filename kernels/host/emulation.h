// Runs kiln's CUDA kernels as host C++ for the tests: forced in front of a
// .cu file (g++ -include kernels/host/emulation.h -x c++), it stands in for
// the CUDA built-ins the kernels use, and kiln_emulate_at() sets which
// thread of which block the next kernel call is. The test calls a kernel
// once per thread of the grid, in loops, and compares the output with the
// CPU implementation: a wrong index, a missed tail or a wrong hash fails
// there, not first on a GPU.
//
// There is deliberately no __syncthreads, __shared__ or atomic here: the
// kernels keep every thread independent, which is what makes running them
// one after another exact. A kernel that needs them fails to compile here.
#pragma once

#include <cmath>

struct kiln_dim3 {
    unsigned x, y, z;
};

inline kiln_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

using std::cos;
using std::log;
using std::sqrt;
inline float sqrtf(float x) { return std::sqrt(x); }

extern "C" void kiln_emulate_at(unsigned block, unsigned thread, unsigned block_dim, unsigned grid_dim) {
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
    blockDim = {block_dim, 1, 1};
    gridDim = {grid_dim, 1, 1};
}
