r"""Window pooling: max (AlexNet's overlapping 3/2 pool) and average.

Notation: ``x`` input (N, C, H, W); window KH x KW, strides SH, SW, padding PH, PW; ``y`` output
(N, C, OH, OW); the window of output (i, j) covers padded rows i*SH + kh and columns j*SW + kw,
0 <= kh < KH, 0 <= kw < KW; unpadded coordinates are those minus (PH, PW).

Forward:

.. math::

    y_{max}[n, c, i, j] &= \max_{k_h, k_w} x_{pad}[n, c, i\,SH + k_h, j\,SW + k_w]
        \quad (\text{padding} = -\infty) \\
    y_{avg}[n, c, i, j] &= \frac{1}{KH\,KW} \sum_{k_h, k_w} x_{pad}[n, c, i\,SH + k_h, j\,SW + k_w]
        \quad (\text{padding} = 0,\ \text{counted in } KH\,KW)

Gradient.

* Max: y is one element of its window, so gy flows to that element only:
  gx[n, c, h, w] = sum of gy[n, c, i, j] over the windows (i, j) whose arg-max is (h, w).
  Overlapping windows (3/2) can pick the same element, and their gradients add. The arg-max is
  stored in forward as ``argmax[n, c, i, j] = kh*KW + kw`` (int32).
* Average: every element of a window gets gy / (KH KW); elements in several windows sum those.

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

The plain NumPy versions below (:func:`max_pool_forward`, :func:`max_pool_backward`) are the
reference for the fast paths; average pooling is plain array code on both devices.

GPU: kernels/pool.cu (max_pool_forward, max_pool_backward), through ``minialex.cuda``; CPU:
``minialex.cpu.max_pool_forward`` (stride phases, a block of images per thread). Adaptive
average pooling is in adaptive_pool.py.
"""
from __future__ import annotations

import numpy as np

from .. import cpu, cuda
from ..backend import get_array_module, is_gpu_array
from ..checks import check_float, check_window_fits, output_size, pair
from ..module import Module
from ..tensor import Function, Tensor
from ..windows import padded, unpadded, window


# -- max pooling: the plain version, then the Function --------------------------------------
def max_pool_forward(x, KH, KW, SH, SW, PH, PW):
    """(y, argmax) for x (N, C, H, W), one window offset k = kh*KW + kw at a time: argmax
    takes k where the offset is strictly greater than the max so far (the first maximum stays),
    and y the max (NaN propagates)."""
    OH, OW = output_size(x.shape[2], KH, SH, PH), output_size(x.shape[3], KW, SW, PW)
    x_pad = padded(x, PH, PW, value=-np.inf)
    y = window(x_pad, 0, 0, SH, SW, OH, OW).copy()
    argmax = np.zeros(y.shape, dtype=np.int32)
    for kh, kw in np.ndindex(KH, KW):
        candidate = window(x_pad, kh, kw, SH, SW, OH, OW)
        argmax[candidate > y] = kh * KW + kw
        y = np.maximum(y, candidate)
    return y, argmax


def max_pool_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx (``x_shape``): each window offset adds the gy of the windows whose arg-max it is."""
    N, C, H, W = x_shape
    OH, OW = gy.shape[2:]
    gx_pad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=gy.dtype)
    for kh, kw in np.ndindex(KH, KW):
        window(gx_pad, kh, kw, SH, SW, OH, OW)[...] += np.where(argmax == kh * KW + kw, gy, 0)
    return np.ascontiguousarray(unpadded(gx_pad, PH, PW))


class MaxPool2dFunction(Function):
    """Max over each window; keeps the int32 arg-max (``self.argmax``), only when x needs a
    gradient (inference skips its passes). No double backward."""

    def __init__(self, kernel_size, stride, padding):
        self.geometry = (*kernel_size, *stride, *padding)  # KH, KW, SH, SW, PH, PW

    def forward(self, x):
        fast = cuda if is_gpu_array(x) else cpu
        x = get_array_module(x).ascontiguousarray(x)
        y, self.argmax = fast.max_pool_forward(x, *self.geometry,
                                               with_argmax=self.needs_input_grad[0])
        self.x_shape = x.shape
        return y

    def backward(self, gy):
        fast = cuda if is_gpu_array(gy) else cpu
        gy = get_array_module(gy).ascontiguousarray(gy)
        return fast.max_pool_backward(gy, self.argmax, self.x_shape, *self.geometry)


# -- average pooling: plain array code on both devices --------------------------------------
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
