// Local response normalisation across channels, forward and closed-form backward.
// Math, conventions and the derivation of the gradient: minialex/layers/lrn.py.
//
// Notation: x, y, scale, gy, gx (N, C, H, W); ``size`` channels per window; alpha is the
// coefficient as used in the formula (already divided by size for the PyTorch convention).
// The window of channel c is W(c) = [c - size/2, c + (size-1)/2] clipped to [0, C-1]:
//     scale_c = k + alpha * sum_{j in W(c)} x_j^2,        y_c = x_c * scale_c^-beta,
//     gx_i = gy_i * scale_i^-beta - 2 alpha beta x_i * sum_{j : i in W(j)} gy_j y_j / scale_j,
// where i in W(j) <=> j in [i - (size-1)/2, i + size/2] (the mirrored window).
//
// One thread per (n, h, w) position walks the C channels once, keeping the window sum as a
// running total: add the channel entering the window, subtract the one leaving. Consecutive
// threads take consecutive positions, so every channel step reads one coalesced row. No shared
// memory, barriers or atomics, so the host build (kernels/host_shim.h) runs the kernels as-is.
// Argument order: input arrays, their sizes, the op's parameters in the Python order, outputs.

// The running sum subtracts what leaves the window. Each term is rounded to T first (as the
// NumPy path rounds x*x and gy*y/scale), so the subtraction removes exactly what was added, but
// the additions in between still round: in float that residue would be ~1e-7 of the largest
// term that passed through, enough to swamp the small windows after a large one. So for float
// data the total is kept in double (residue ~1e-16 of that term); float64 data keeps it in
// double too, which is as good as a running sum gets. The channel walk is memory-bound, so the
// two double adds per element cost little next to the loads.
template <typename T>
struct window_sum {
    typedef T type;
};

template <>
struct window_sum<float> {
    typedef double type;
};

// x_j^2, rounded to T, widened to the window-sum type.
template <typename T>
__device__ __forceinline__ typename window_sum<T>::type square(T v) {
    return typename window_sum<T>::type(v * v);
}

// gy_j y_j / scale_j, rounded to T, widened to the window-sum type.
template <typename T>
__device__ __forceinline__ typename window_sum<T>::type term(const T* __restrict__ gy,
                                                             const T* __restrict__ y,
                                                             const T* __restrict__ scale,
                                                             long long e) {
    return typename window_sum<T>::type(gy[e] * y[e] / scale[e]);
}

__device__ __forceinline__ float power(float base, float exponent) {
    return powf(base, exponent);
}

__device__ __forceinline__ double power(double base, double exponent) {
    return pow(base, exponent);
}

template <typename T>
__device__ __forceinline__ void lrn_forward(const T* __restrict__ x, int N, int C, int H, int W,
                                            int size, T alpha, T beta, T k, T* __restrict__ y,
                                            T* __restrict__ scale) {
    typedef typename window_sum<T>::type acc_t;
    const int before = size / 2, after = (size - 1) / 2;
    const long long HW = (long long)H * W;
    const long long total = (long long)N * HW;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long base = (i / HW) * C * HW + i % HW;  // element (n, 0, h, w)
        acc_t window = acc_t(0);
        for (int j = 0; j < min(after, C); ++j) {  // W(0) minus the channel step 0 adds
            window += square(x[base + j * HW]);
        }
        for (int c = 0; c < C; ++c) {
            if (c + after < C) window += square(x[base + (c + after) * HW]);
            if (c - before - 1 >= 0) window -= square(x[base + (c - before - 1) * HW]);
            const long long e = base + c * HW;
            const T s = T(acc_t(k) + acc_t(alpha) * window);
            scale[e] = s;
            y[e] = x[e] * power(s, -beta);
        }
    }
}

template <typename T>
__device__ __forceinline__ void lrn_backward(const T* __restrict__ x, const T* __restrict__ y,
                                             const T* __restrict__ scale,
                                             const T* __restrict__ gy, int N, int C, int H,
                                             int W, int size, T alpha, T beta,
                                             T* __restrict__ gx) {
    typedef typename window_sum<T>::type acc_t;
    // The mirrored window [i - after, i + before]: it reaches `before` channels ahead.
    const int before = size / 2, after = (size - 1) / 2;
    const long long HW = (long long)H * W;
    const long long total = (long long)N * HW;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long base = (i / HW) * C * HW + i % HW;
        acc_t window = acc_t(0);  // sum of gy_j y_j / scale_j over the mirrored window
        for (int j = 0; j < min(before, C); ++j) window += term(gy, y, scale, base + j * HW);
        for (int c = 0; c < C; ++c) {
            if (c + before < C) window += term(gy, y, scale, base + (c + before) * HW);
            if (c - after - 1 >= 0) window -= term(gy, y, scale, base + (c - after - 1) * HW);
            const long long e = base + c * HW;
            gx[e] = gy[e] * power(scale[e], -beta) -
                    T(acc_t(2) * acc_t(alpha) * acc_t(beta) * acc_t(x[e]) * window);
        }
    }
}

extern "C" {

__global__ void lrn_forward_f32(const float* x, int N, int C, int H, int W, int size,
                                float alpha, float beta, float k, float* y, float* scale) {
    lrn_forward<float>(x, N, C, H, W, size, alpha, beta, k, y, scale);
}

__global__ void lrn_forward_f64(const double* x, int N, int C, int H, int W, int size,
                                double alpha, double beta, double k, double* y, double* scale) {
    lrn_forward<double>(x, N, C, H, W, size, alpha, beta, k, y, scale);
}

__global__ void lrn_backward_f32(const float* x, const float* y, const float* scale,
                                 const float* gy, int N, int C, int H, int W, int size,
                                 float alpha, float beta, float* gx) {
    lrn_backward<float>(x, y, scale, gy, N, C, H, W, size, alpha, beta, gx);
}

__global__ void lrn_backward_f64(const double* x, const double* y, const double* scale,
                                 const double* gy, int N, int C, int H, int W, int size,
                                 double alpha, double beta, double* gx) {
    lrn_backward<double>(x, y, scale, gy, N, C, H, W, size, alpha, beta, gx);
}

}  // extern "C"
