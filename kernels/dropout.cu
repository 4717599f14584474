// Dropout forward: applies the mask drawn from uniform numbers u in [0, 1) (CuPy's generator).
// Math and the two scaling modes: minialex/layers/dropout.py. Backward is one CuPy product,
// gx = gy * mask * scale.
//
// mask = [u >= p] in x's dtype (kept for backward), y = x * mask * scale. A grid-stride loop over
// the n output elements, one thread per element: no shared memory, no barriers, no atomics, so
// the host build (kernels/host_shim.h) runs it as-is.
// Argument order: input arrays, their size, the op's parameters in the Python order, outputs.

// (x * mask) * scale, in that order, so y is exactly NumPy's `x * mask * scale`.
template <typename T>
__device__ __forceinline__ void dropout_forward(const T* __restrict__ x, const T* __restrict__ u,
                                                long long n, T p, T scale, T* __restrict__ y,
                                                T* __restrict__ mask) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const T keep = u[i] >= p ? T(1) : T(0);
        mask[i] = keep;
        y[i] = x[i] * keep * scale;
    }
}

extern "C" {

__global__ void dropout_forward_f32(const float* x, const float* u, long long n, float p,
                                    float scale, float* y, float* mask) {
    dropout_forward<float>(x, u, n, p, scale, y, mask);
}

__global__ void dropout_forward_f64(const double* x, const double* u, long long n, double p,
                                    double scale, double* y, double* mask) {
    dropout_forward<double>(x, u, n, p, scale, y, mask);
}

}  // extern "C"
