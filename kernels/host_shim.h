// Host shim: lets a plain C++ compiler build every kernels/*.cu file unchanged, so the kernels
// are tested on machines without a GPU (tests/kernels/host_build.py):
//
//     g++ -O2 -shared -fPIC -x c++ -include kernels/host_shim.h kernels/lrn.cu -o liblrn.so
//
// A "launch" is then one ordinary call: with threadIdx = blockIdx = 0 and blockDim = gridDim = 1,
// a kernel's grid-stride loop starts at element 0 and steps by 1, so that single call visits every
// output element. To test the loop's own arithmetic, minialex_host_thread() makes the next call
// play one thread of a larger launch; calling every (block, thread) in turn replays that launch.
// This works because the kernels use no shared memory, barriers or atomics: each output element
// is computed by one thread from global memory alone, so the order threads run in cannot matter.
//
// nvcc and NVRTC never see this file; under them the CUDA built-ins below are the real ones.
#ifndef MINIALEX_HOST_SHIM_H
#define MINIALEX_HOST_SHIM_H

#include <math.h>    // powf, pow: the only math functions the kernels call
#include <string.h>  // memcpy, for the bit casts below

#define __global__
#define __device__
#define __forceinline__ inline
// __restrict__ is already a g++/clang++ keyword with the meaning CUDA gives it.

struct minialex_dim3 {
    unsigned int x, y, z;
};

// By default one thread in one block: the grid-stride loop `for (i = blockIdx.x * blockDim.x +
// threadIdx.x; i < n; i += blockDim.x * gridDim.x)` becomes `for (i = 0; i < n; i += 1)`.
static minialex_dim3 threadIdx = {0, 0, 0};
static minialex_dim3 blockIdx = {0, 0, 0};
static minialex_dim3 blockDim = {1, 1, 1};
static minialex_dim3 gridDim = {1, 1, 1};

// The next kernel call runs as thread `thread` of block `block` in a 1-D launch of `grid_size`
// blocks of `block_size` threads (each library built from one .cu file has its own copy).
extern "C" void minialex_host_thread(unsigned int grid_size, unsigned int block_size,
                                     unsigned int block, unsigned int thread) {
    gridDim.x = grid_size;
    blockDim.x = block_size;
    blockIdx.x = block;
    threadIdx.x = thread;
}

// CUDA's bit-reinterpreting intrinsics (used to spell -infinity without <math.h> under NVRTC).
inline float __int_as_float(int bits) {
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

inline double __longlong_as_double(long long bits) {
    double value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

// CUDA's integer min (a device built-in; the host has only std::min).
inline int min(int a, int b) {
    return a < b ? a : b;
}

#endif  // MINIALEX_HOST_SHIM_H
