// ReLU backward: gx = gy where y > 0, else 0 (the subgradient 0 at the kink y = 0).
// Math: minialex/layers/activation.py. ReLU forward is one CuPy maximum, so it has no kernel.
//
// A grid-stride loop over the n output elements, one thread per element: no shared memory, no
// barriers, no atomics, so the host build (kernels/host_shim.h) runs it as-is.
// Argument order: input arrays, their size, output arrays.

// gy * [y > 0], written as a product so that gx is exactly NumPy's `gy * (y > 0)`, signed zeros
// and a NaN gy included.
template <typename T>
__device__ __forceinline__ void relu_backward(const T* __restrict__ y, const T* __restrict__ gy,
                                              long long n, T* __restrict__ gx) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        gx[i] = gy[i] * (y[i] > T(0) ? T(1) : T(0));
    }
}

extern "C" {

__global__ void relu_backward_f32(const float* y, const float* gy, long long n, float* gx) {
    relu_backward<float>(y, gy, n, gx);
}

__global__ void relu_backward_f64(const double* y, const double* gy, long long n, double* gx) {
    relu_backward<double>(y, gy, n, gx);
}

}  // extern "C"
