// Max pooling: forward keeping the arg-max, backward as a gather. Math: minialex/layers/pool.py.
//
// Notation: x (N, C, H, W); window KH x KW; strides SH, SW; padding PH, PW (at most half the
// window, so every window holds a real element); y and argmax (N, C, OH, OW) with
// OH = (H + 2 PH - KH) / SH + 1, OW likewise; argmax = kh*KW + kw, int32.
//
// Every kernel walks its OUTPUT elements in a grid-stride loop; each element is written by
// exactly one thread: no shared memory, no barriers, no atomics (the backward gathers instead of
// scattering), so the results are deterministic and the host build (kernels/host_shim.h) runs
// the kernels as-is. Argument order: input arrays, their sizes, the op's parameters in the Python
// order, derived sizes, output arrays.

// -infinity without <math.h> (NVRTC compiles these files without any header).
template <typename T>
__device__ __forceinline__ T negative_infinity();

template <>
__device__ __forceinline__ float negative_infinity<float>() {
    return -__int_as_float(0x7f800000);  // +inf: exponent all ones, mantissa 0
}

template <>
__device__ __forceinline__ double negative_infinity<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}

// Forward: the window's offset (0, 0) is the first candidate, then the others in row-major
// (kh, kw) order replace it only when strictly greater, so the FIRST maximum wins a tie and
// padding (-inf) is never chosen over a real element; the same scan as the NumPy path, which
// therefore agrees element for element, arg-max included.
template <typename T>
__device__ __forceinline__ void max_pool_forward(const T* __restrict__ x, int N, int C, int H,
                                                 int W, int KH, int KW, int SH, int SW, int PH,
                                                 int PW, int OH, int OW, T* __restrict__ y,
                                                 int* __restrict__ argmax) {
    const long long total = (long long)N * C * OH * OW;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int ow = (int)(i % OW), oh = (int)((i / OW) % OH);
        const long long plane = i / ((long long)OW * OH);  // n*C + c
        const T* __restrict__ x_plane = x + plane * H * W;
        const int h0 = oh * SH - PH, w0 = ow * SW - PW;  // the window's top-left, unpadded
        const bool real = h0 >= 0 && h0 < H && w0 >= 0 && w0 < W;
        T best = real ? x_plane[h0 * W + w0] : negative_infinity<T>();
        int best_offset = 0;
        T nan_seen = best;  // NaN compares false, so it is tracked apart and wins at the end
        bool has_nan = best != best;
        for (int kh = 0; kh < KH; ++kh) {
            const int h = h0 + kh;
            if (h < 0 || h >= H) continue;  // a padded row: -inf never beats the candidate
            for (int kw = 0; kw < KW; ++kw) {
                const int w = w0 + kw;
                if (w < 0 || w >= W) continue;
                const T value = x_plane[h * W + w];
                if (value != value) {
                    nan_seen = value;
                    has_nan = true;
                }
                if (value > best) {
                    best = value;
                    best_offset = kh * KW + kw;
                }
            }
        }
        y[i] = has_nan ? nan_seen : best;  // NaN propagates to y, as in PyTorch
        argmax[i] = best_offset;
    }
}

// Backward as a gather: one thread per gx element adds gy of every window whose arg-max is this
// element, windows taken in row-major (oh, ow) order. The windows holding padded row
// hp = h + PH are ceil((hp - KH + 1) / SH) <= oh <= hp / SH, clipped to [0, OH) (as in col2im).
template <typename T>
__device__ __forceinline__ void max_pool_backward(const T* __restrict__ gy,
                                                  const int* __restrict__ argmax, int N, int C,
                                                  int H, int W, int KH, int KW, int SH, int SW,
                                                  int PH, int PW, int OH, int OW,
                                                  T* __restrict__ gx) {
    typedef T acc_t;  // at most ceil(KH/SH)*ceil(KW/SW) terms, summed in gy's dtype
    const long long total = (long long)N * C * H * W;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const long long plane = i / ((long long)W * H);  // n*C + c
        const int hp = h + PH, wp = w + PW;
        const int oh_first = hp < KH ? 0 : (hp - KH) / SH + 1;
        const int ow_first = wp < KW ? 0 : (wp - KW) / SW + 1;
        const int oh_last = min(hp / SH, OH - 1), ow_last = min(wp / SW, OW - 1);
        acc_t sum = acc_t(0);
        for (int oh = oh_first; oh <= oh_last; ++oh) {
            for (int ow = ow_first; ow <= ow_last; ++ow) {
                const long long j = (plane * OH + oh) * OW + ow;
                if (argmax[j] == (hp - oh * SH) * KW + (wp - ow * SW)) sum += acc_t(gy[j]);
            }
        }
        gx[i] = T(sum);
    }
}

extern "C" {

__global__ void max_pool_forward_f32(const float* x, int N, int C, int H, int W, int KH, int KW,
                                     int SH, int SW, int PH, int PW, int OH, int OW, float* y,
                                     int* argmax) {
    max_pool_forward<float>(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, y, argmax);
}

__global__ void max_pool_forward_f64(const double* x, int N, int C, int H, int W, int KH, int KW,
                                     int SH, int SW, int PH, int PW, int OH, int OW, double* y,
                                     int* argmax) {
    max_pool_forward<double>(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, y, argmax);
}

__global__ void max_pool_backward_f32(const float* gy, const int* argmax, int N, int C, int H,
                                      int W, int KH, int KW, int SH, int SW, int PH, int PW,
                                      int OH, int OW, float* gx) {
    max_pool_backward<float>(gy, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, gx);
}

__global__ void max_pool_backward_f64(const double* gy, const int* argmax, int N, int C, int H,
                                      int W, int KH, int KW, int SH, int SW, int PH, int PW,
                                      int OH, int OW, double* gx) {
    max_pool_backward<double>(gy, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, gx);
}

}  // extern "C"
