r"""Pooling: max (AlexNet's overlapping 3/2 pool), average, and adaptive average.

Notation: ``x`` input (N, C, H, W); window KH x KW, strides SH, SW, padding PH, PW; ``y`` output
(N, C, OH, OW); the window of output (i, j) covers padded rows i*SH + kh and columns j*SW + kw,
0 <= kh < KH, 0 <= kw < KW; unpadded coordinates are those minus (PH, PW).

Forward:

.. math::

    y_{max}[n, c, i, j] &= \max_{k_h, k_w} x_{pad}[n, c, i\,SH + k_h, j\,SW + k_w]
        \quad (\text{padding} = -\infty) \\
    y_{avg}[n, c, i, j] &= \frac{1}{KH\,KW} \sum_{k_h, k_w} x_{pad}[n, c, i\,SH + k_h, j\,SW + k_w]
        \quad (\text{padding} = 0,\ \text{counted in } KH\,KW)

Adaptive average pooling to (OH, OW) averages the bins [h0_i, h1_i) x [w0_j, w1_j) with
h0_i = floor(i H / OH) and h1_i = ceil((i + 1) H / OH) (PyTorch's edges; bins may overlap). Written
with the averaging matrices A_h (OH, H), A_h[i, h] = 1/(h1_i - h0_i) for h0_i <= h < h1_i, and
A_w (OW, W) likewise, it is one linear map per channel: y[n, c] = A_h x[n, c] A_w^T.

Gradient.

* Max: y is one element of its window, so gy flows to that element only:
  gx[n, c, h, w] = sum of gy[n, c, i, j] over the windows (i, j) whose arg-max is (h, w).
  Overlapping windows (3/2) can pick the same element, and their gradients add. The arg-max is
  stored in forward as ``argmax[n, c, i, j] = kh*KW + kw`` (int32).
* Average: every element of a window gets gy / (KH KW); elements in several windows sum those.
* Adaptive average: y = A_h x A_w^T is linear, so gx[n, c] = A_h^T gy[n, c] A_w.

Convention (subgradient at ties): max is not differentiable where two elements of a window tie.
minialex routes the whole gradient to the FIRST maximal element in row-major (kh, kw) order
(a later equal value never displaces it), on CPU and GPU alike. Padding is -inf, so it is never
selected. A window holding NaN outputs NaN, as in PyTorch, so a diverged run shows in the loss;
where such a window's gradient goes is unspecified.

Shape:
    x (N, C, H, W) -> y (N, C, OH, OW) with OH = floor((H + 2 PH - KH) / SH) + 1,
    OW = floor((W + 2 PW - KW) / SW) + 1 (floor mode); stride defaults to the kernel size and
    padding may be at most half the kernel (PyTorch's rule: every window keeps a real element).

Paper: Krizhevsky et al. (2012), Sec. 3.4, "Overlapping Pooling": z = 3, s = 2 instead of
z = s = 2 cut top-1/top-5 error by 0.4%/0.3%.

GPU: kernels/pool.cu (max_pool_forward, max_pool_backward); average pooling is plain CuPy code,
and adaptive average pooling's two small products are ``xp.matmul`` (not ``cuda.gemm``, so
``set_tf32`` does not apply to them).
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend, cuda
from ..backend import get_array_module, is_gpu_array
from ..module import Module
from ..tensor import Function, Tensor
from ._common import (
    check_float,
    check_window_fits,
    cpu_parallel,
    output_size,
    padded,
    pair,
    scratch,
    unpadded,
    window,
)


# -- max pooling ----------------------------------------------------------------------------
class MaxPool2dFunction(Function):
    """Max over each window; keeps the int32 arg-max (``self.argmax``). No double backward."""

    def __init__(self, kernel_size, stride, padding):
        (self.KH, self.KW), (self.SH, self.SW), (self.PH, self.PW) = kernel_size, stride, padding

    def forward(self, x):
        x = get_array_module(x).ascontiguousarray(x)
        geometry = (self.KH, self.KW, self.SH, self.SW, self.PH, self.PW)
        if is_gpu_array(x):
            y, self.argmax = cuda.max_pool_forward(x, *geometry)
        else:  # with no gradient to route (inference) the CPU skips the arg-max's passes
            y, self.argmax = _max_pool_forward_cpu(x, *geometry,
                                                   with_argmax=self.needs_input_grad[0])
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        impl = cuda.max_pool_backward if is_gpu_array(gy) else _max_pool_backward_cpu
        gy = get_array_module(gy).ascontiguousarray(gy)
        return impl(gy, self.argmax, self.x_shape, self.KH, self.KW, self.SH, self.SW, self.PH,
                    self.PW)


# -- average pooling ------------------------------------------------------------------------
class AvgPool2dFunction(Function):
    """Mean over each window, zero padding counted (count_include_pad=True). No double backward."""

    def __init__(self, kernel_size, stride, padding):
        (self.KH, self.KW), (self.SH, self.SW), (self.PH, self.PW) = kernel_size, stride, padding

    def forward(self, x):
        OH = output_size(x.shape[2], self.KH, self.SH, self.PH)
        OW = output_size(x.shape[3], self.KW, self.SW, self.PW)
        x_pad = padded(x, self.PH, self.PW)
        y = window(x_pad, 0, 0, self.SH, self.SW, OH, OW).copy()
        for kh in range(self.KH):
            for kw in range(self.KW):
                if kh or kw:
                    y += window(x_pad, kh, kw, self.SH, self.SW, OH, OW)
        y *= y.dtype.type(1.0 / (self.KH * self.KW))
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        N, C, H, W = self.x_shape
        OH, OW = gy.shape[2:]
        share = gy * gy.dtype.type(1.0 / (self.KH * self.KW))
        gx_pad = xp.zeros((N, C, H + 2 * self.PH, W + 2 * self.PW), dtype=gy.dtype)
        for kh in range(self.KH):
            for kw in range(self.KW):
                window(gx_pad, kh, kw, self.SH, self.SW, OH, OW)[...] += share
        return (xp.ascontiguousarray(unpadded(gx_pad, self.PH, self.PW)),)


# -- adaptive average pooling ---------------------------------------------------------------
def adaptive_pool_matrix(size: int, out_size: int, xp=np, dtype=np.float64):
    """A (out_size, size) with A[i, h] = 1/len(bin i) on bin i = [floor(i*size/out_size),
    ceil((i+1)*size/out_size)), 0 elsewhere: adaptive average pooling along one axis.

    >>> adaptive_pool_matrix(5, 3)
    array([[0.5       , 0.5       , 0.        , 0.        , 0.        ],
           [0.        , 0.33333333, 0.33333333, 0.33333333, 0.        ],
           [0.        , 0.        , 0.        , 0.5       , 0.5       ]])
    """
    i = np.arange(out_size)
    start = (i * size) // out_size
    end = -((-(i + 1) * size) // out_size)  # ceil division in integers, exact for any size
    h = np.arange(size)
    inside = (h >= start[:, None]) & (h < end[:, None])
    return xp.asarray(inside / (end - start)[:, None], dtype=dtype)


@functools.lru_cache(maxsize=64)
def _pool_matrix_on(size: int, out_size: int, dtype, device: str):
    """:func:`adaptive_pool_matrix` on ``device``, built and copied there once per shape (not at
    every forward); callers only read it."""
    return backend.to_device(adaptive_pool_matrix(size, out_size, np, dtype), device)


class AdaptiveAvgPool2dFunction(Function):
    """y[n, c] = A_h x[n, c] A_w^T; backward gx[n, c] = A_h^T gy[n, c] A_w. No double backward."""

    def __init__(self, output_size):
        self.OH, self.OW = output_size

    def forward(self, x):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        self.A_h = _pool_matrix_on(H, self.OH, x.dtype, backend.device_of(x))
        self.A_w = _pool_matrix_on(W, self.OW, x.dtype, backend.device_of(x))
        rows = (x.reshape(N * C * H, W) @ self.A_w.T).reshape(N, C, H, self.OW)
        return xp.matmul(self.A_h, rows)

    def backward(self, gy):
        N, C, OH, OW = gy.shape
        W = self.A_w.shape[1]
        rows = (gy.reshape(N * C * OH, OW) @ self.A_w).reshape(N, C, OH, W)
        return (get_array_module(gy).matmul(self.A_h.T, rows),)


# -- functional -----------------------------------------------------------------------------
def _pool_args(op, x, kernel_size, stride, padding):
    """Checked ((KH, KW), (SH, SW), (PH, PW)) for a window pool of x."""
    _, _, H, W = check_float(op, "input", x, "(N, C, H, W)")
    KH, KW = pair(op, "kernel_size", kernel_size, 1)
    SH, SW = (KH, KW) if stride is None else pair(op, "stride", stride, 1)
    PH, PW = pair(op, "padding", padding)
    if min(PH, PW) < 0 or PH > KH // 2 or PW > KW // 2:
        raise ValueError(f"{op}: padding must be between 0 and half the kernel size "
                         f"{(KH // 2, KW // 2)}, got padding {(PH, PW)} for kernel {(KH, KW)}")
    check_window_fits(op, H, W, (KH, KW), (PH, PW))
    return (KH, KW), (SH, SW), (PH, PW)


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Max over KH x KW windows (stride defaults to kernel_size), as ``F.max_pool2d``.

    >>> x = Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> max_pool2d(x, 3, stride=1).numpy()[0, 0]
    array([[10., 11.],
           [14., 15.]])
    """
    return MaxPool2dFunction(*_pool_args("max_pool2d", x, kernel_size, stride, padding))(x)


def avg_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """Mean over KH x KW windows, zero padding included in the count (PyTorch's default).

    >>> x = Tensor(np.ones((1, 1, 2, 2)))
    >>> avg_pool2d(x, 3, stride=1, padding=1).numpy()[0, 0]
    array([[0.44444444, 0.44444444],
           [0.44444444, 0.44444444]])
    """
    return AvgPool2dFunction(*_pool_args("avg_pool2d", x, kernel_size, stride, padding))(x)


def _adaptive_size(output_size, H, W):
    """(OH, OW) from an int or a pair whose entries may be None (= keep the input size)."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2:
        raise TypeError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got "
                        f"{output_size!r}")
    filled = tuple(size if value is None else value for value, size in zip(sizes, (H, W)))
    return pair("adaptive_avg_pool2d", "output_size", filled, 1)


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Average over PyTorch's adaptive bins, giving a fixed (OH, OW) whatever the input size.

    >>> x = Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> adaptive_avg_pool2d(x, 2).numpy()[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    _, _, H, W = check_float("adaptive_avg_pool2d", "input", x, "(N, C, H, W)")
    return AdaptiveAvgPool2dFunction(_adaptive_size(output_size, H, W))(x)


# -- modules (no parameters) ----------------------------------------------------------------
class _WindowPool2d(Module):
    """Holds kernel_size, stride (default: kernel_size) and padding, as PyTorch prints them."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_WindowPool2d):
    """Max pooling; AlexNet uses ``MaxPool2d(3, stride=2)`` (overlapping windows).

    >>> MaxPool2d(3, stride=2)
    MaxPool2d(kernel_size=3, stride=2, padding=0)
    """

    def forward(self, x):
        return max_pool2d(x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_WindowPool2d):
    """Average pooling with zero padding counted, as ``nn.AvgPool2d``'s default.

    >>> AvgPool2d(2)
    AvgPool2d(kernel_size=2, stride=2, padding=0)
    """

    def forward(self, x):
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling to ``output_size`` (torchvision's AlexNet uses (6, 6)).

    >>> AdaptiveAvgPool2d((6, 6))
    AdaptiveAvgPool2d(output_size=(6, 6))
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


# -- max pooling on the CPU: the NumPy siblings of kernels/pool.cu --------------------------
def _max_pool_forward_cpu(x, KH, KW, SH, SW, PH, PW, with_argmax=True):
    """(y, argmax) for x (N, C, H, W): loop over the KH*KW window offsets, not over pixels;
    argmax is None unless ``with_argmax``.

    Why phases: the element at offset (kh, kw) of every window is ``x_pad[kh::SH, kw::SW]``, a
    view with gaps that NumPy walks slowly. Splitting ``x_pad`` once into its SH*SW stride phases
    (rows a, a+SH, ...; columns b, b+SW, ...) makes each offset a plain contiguous-row slice of
    one phase: ``phase[kh % SH, kw % SW][kh // SH : kh // SH + OH, kw // SW : kw // SW + OW]``.
    This halves the time of AlexNet's 3/2 pool. Each thread does all of it for its own images,
    so a block's phases are still in cache when its offsets are read.
    """
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32) if with_argmax else None

    def scan_images(n0, n1):  # images are independent: one block per thread at a time
        x_pad = padded(x[n0:n1], PH, PW, value=-np.inf)
        phases = {}
        for a in range(min(SH, KH)):
            for b in range(min(SW, KW)):
                part = x_pad[:, :, a::SH, b::SW]
                phases[a, b] = scratch(f"phase{a},{b}", part.shape, x.dtype)
                phases[a, b][...] = part

        def offset(kh, kw):
            return phases[kh % SH, kw % SW][:, :, kh // SH:kh // SH + OH, kw // SW:kw // SW + OW]

        y_n = y[n0:n1]
        y_n[...] = offset(0, 0)
        if with_argmax:
            argmax_n = argmax[n0:n1]
            argmax_n.fill(0)
            better = scratch("better", y_n.shape, bool)
            offset_k = scratch("offset_k", y_n.shape, np.int32)
        for kh in range(KH):
            for kw in range(KW):
                if kh == 0 and kw == 0:
                    continue
                candidate = offset(kh, kw)
                if with_argmax:  # strictly greater: at a tie the earlier stays
                    np.greater(candidate, y_n, out=better)
                    # argmax <- k where better: k exceeds every offset stored so far, so a max
                    # does it without branches (a masked copy mispredicts on random data and
                    # took half of the pool's time)
                    np.multiply(better, np.int32(kh * KW + kw), out=offset_k)
                    np.maximum(argmax_n, offset_k, out=argmax_n)
                np.maximum(y_n, candidate, out=y_n)  # NaN propagates to y, as in PyTorch
    cpu_parallel(scan_images, N, y.size * KH * KW)
    return y, argmax


def _max_pool_backward_cpu(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx: each output's gradient added onto the input element its arg-max names, a scatter-add
    (``np.add.at``) over flat indices into the padded gx, a block of images per thread.

    Why a scatter: every output sends its gradient to one element, so one indexed pass over the
    outputs does it; adding each window offset's share in turn took KH*KW passes of three
    ufuncs over the outputs (3x slower at AlexNet's pools). The adds go in the outputs' order,
    so overlapping windows sum their shares the same way on every run.
    """
    N, C, H, W = x_shape
    OH, OW = gy.shape[2:]
    Hp, Wp = H + 2 * PH, W + 2 * PW
    # flat index in a padded plane of window (i, j)'s first element, and of offset k within it
    window_start = (np.arange(OH, dtype=np.intp) * (SH * Wp))[:, None] + np.arange(OW) * SW
    within = (np.arange(KH * KW, dtype=np.intp) // KW) * Wp + np.arange(KH * KW) % KW
    gx = np.empty(x_shape, dtype=gy.dtype)

    def route_images(n0, n1):  # each thread sums its own images, then writes them to gx
        n = n1 - n0
        index = scratch("index", (n, C, OH, OW), np.intp)
        np.take(within, argmax[n0:n1], out=index)
        index += window_start
        index += (np.arange(n * C, dtype=np.intp) * (Hp * Wp)).reshape(n, C, 1, 1)  # planes
        gx_pad = gx[n0:n1] if PH == PW == 0 else scratch("gx_pad", (n, C, Hp, Wp), gy.dtype)
        gx_pad.fill(0)
        np.add.at(gx_pad.reshape(-1), index.reshape(-1), gy[n0:n1].reshape(-1))
        if PH or PW:
            gx[n0:n1] = unpadded(gx_pad, PH, PW)
    cpu_parallel(route_images, N, gy.size * KH * KW)
    return gx
