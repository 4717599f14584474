// Convolution helpers: im2col, its adjoint col2im, and the bias-add that turns the GEMM result
// into NCHW. Math and layouts: minialex/layers/conv.py.
//
// Notation: x (N, C, H, W); kernel KH x KW; strides SH, SW; zero padding PH, PW;
// OH = (H + 2 PH - KH) / SH + 1, OW likewise; col (C*KH*KW, N*OH*OW) with
//     col[(c*KH + kh)*KW + kw, (n*OH + oh)*OW + ow] = x[n, c, oh*SH + kh - PH, ow*SW + kw - PW]
// (0 where that falls in the padding).
//
// Every kernel walks its OUTPUT elements in a grid-stride loop; each element is written by
// exactly one thread from values it reads itself: no shared memory, no barriers, no atomics, so
// results do not depend on the launch and the host build (kernels/host_shim.h) runs them as-is.
// Flat indices are 64-bit (conv1's col at batch 128 already has 140M entries); per-axis indices
// fit in int. Argument order everywhere: input arrays, their sizes, the op's parameters in the
// Python order, derived sizes, output arrays.

// im2col: one thread per col entry; consecutive threads write consecutive columns.
template <typename T>
__device__ __forceinline__ void im2col(const T* __restrict__ x, int N, int C, int H, int W,
                                       int KH, int KW, int SH, int SW, int PH, int PW,
                                       int OH, int OW, T* __restrict__ col) {
    const long long columns = (long long)N * OH * OW;
    const long long total = (long long)C * KH * KW * columns;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int row = (int)(i / columns);           // (c*KH + kh)*KW + kw
        const int column = (int)(i - row * columns);  // (n*OH + oh)*OW + ow
        const int ow = column % OW, oh = (column / OW) % OH, n = column / (OW * OH);
        const int kw = row % KW, kh = (row / KW) % KH, c = row / (KW * KH);
        const int h = oh * SH + kh - PH, w = ow * SW + kw - PW;
        col[i] = (h >= 0 && h < H && w >= 0 && w < W)
                     ? x[((long long)(n * C + c) * H + h) * W + w]
                     : T(0);
    }
}

// col2im as a gather: one thread per gx element sums, in a fixed order, every col entry that
// im2col copied from it. The windows holding padded row hp = h + PH are the oh with
// 0 <= hp - oh*SH < KH, i.e. ceil((hp - KH + 1) / SH) <= oh <= hp / SH, clipped to [0, OH).
template <typename T>
__device__ __forceinline__ void col2im(const T* __restrict__ col, int N, int C, int H, int W,
                                       int KH, int KW, int SH, int SW, int PH, int PW,
                                       int OH, int OW, T* __restrict__ gx) {
    typedef T acc_t;  // sums a handful of terms, in the dtype NumPy's col2im adds them in
    const long long columns = (long long)N * OH * OW;
    const long long total = (long long)N * C * H * W;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(i % W), h = (int)((i / W) % H);
        const int c = (int)((i / ((long long)W * H)) % C), n = (int)(i / ((long long)W * H * C));
        const int hp = h + PH, wp = w + PW;
        // hp >= KH gives the first window through (hp - KH)/SH + 1; below that, window 0.
        const int oh_first = hp < KH ? 0 : (hp - KH) / SH + 1;
        const int ow_first = wp < KW ? 0 : (wp - KW) / SW + 1;
        const int oh_last = min(hp / SH, OH - 1), ow_last = min(wp / SW, OW - 1);
        acc_t sum = acc_t(0);
        for (int oh = oh_first; oh <= oh_last; ++oh) {
            const int kh = hp - oh * SH;
            for (int ow = ow_first; ow <= ow_last; ++ow) {
                const int kw = wp - ow * SW;
                const long long row = (long long)(c * KH + kh) * KW + kw;
                sum += acc_t(col[row * columns + ((long long)n * OH + oh) * OW + ow]);
            }
        }
        gx[i] = T(sum);
    }
}

// bias_add_nchw: y[n, o, p] = Y[o, n*P + p] + b[o] (P = OH*OW), conv's transpose and bias in
// one pass. b may be NULL (no bias).
template <typename T>
__device__ __forceinline__ void bias_add_nchw(const T* __restrict__ Y, const T* __restrict__ b,
                                              int OC, int N, int OH, int OW,
                                              T* __restrict__ y) {
    const long long P = (long long)OH * OW;
    const long long total = (long long)N * OC * P;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long p = i % P;
        const int o = (int)((i / P) % OC), n = (int)(i / (P * OC));
        const T value = Y[o * (N * P) + n * P + p];
        y[i] = b ? value + b[o] : value;
    }
}

extern "C" {

__global__ void im2col_f32(const float* x, int N, int C, int H, int W, int KH, int KW, int SH,
                           int SW, int PH, int PW, int OH, int OW, float* col) {
    im2col<float>(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, col);
}

__global__ void im2col_f64(const double* x, int N, int C, int H, int W, int KH, int KW, int SH,
                           int SW, int PH, int PW, int OH, int OW, double* col) {
    im2col<double>(x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, col);
}

__global__ void col2im_f32(const float* col, int N, int C, int H, int W, int KH, int KW, int SH,
                           int SW, int PH, int PW, int OH, int OW, float* gx) {
    col2im<float>(col, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, gx);
}

__global__ void col2im_f64(const double* col, int N, int C, int H, int W, int KH, int KW, int SH,
                           int SW, int PH, int PW, int OH, int OW, double* gx) {
    col2im<double>(col, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, gx);
}

__global__ void bias_add_nchw_f32(const float* Y, const float* b, int OC, int N, int OH, int OW,
                                  float* y) {
    bias_add_nchw<float>(Y, b, OC, N, OH, OW, y);
}

__global__ void bias_add_nchw_f64(const double* Y, const double* b, int OC, int N, int OH,
                                  int OW, double* y) {
    bias_add_nchw<double>(Y, b, OC, N, OH, OW, y);
}

}  // extern "C"
