r"""Adaptive average pooling: a fixed (OH, OW) output whatever the input size.

Notation: ``x`` input (N, C, H, W), ``y`` output (N, C, OH, OW), ``gy`` = dL/dy.

Forward. Output (i, j) averages the bins [h0_i, h1_i) x [w0_j, w1_j) with h0_i = floor(i H / OH)
and h1_i = ceil((i + 1) H / OH) (PyTorch's edges; bins may overlap). Written with the averaging
matrices A_h (OH, H), A_h[i, h] = 1/(h1_i - h0_i) for h0_i <= h < h1_i, and A_w (OW, W)
likewise, it is one linear map per channel:

.. math::  y[n, c] = A_h \, x[n, c] \, A_w^T.

Gradient. y is linear in x, so

.. math::  gx[n, c] = A_h^T \, gy[n, c] \, A_w.

Shape:
    x (N, C, H, W) -> y (N, C, OH, OW); ``output_size`` is an int or a pair whose entries may be
    None (keep that input size).

Used by torchvision's AlexNet (``AdaptiveAvgPool2d((6, 6))`` before the classifier); the paper
has no such layer (its 224/227 input gives 6 x 6 after conv5's pool).

GPU: no kernels/ file; the two small products are ``xp.matmul`` on both devices (not
``cuda.gemm``, so ``set_tf32`` does not apply to them). The matrices are the plain version.
"""
from __future__ import annotations

import functools

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..checks import check_float, pair
from ..module import Module
from ..tensor import Function, Tensor


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


def _adaptive_size(op, output_size, H, W):
    """(OH, OW) from an int or a pair whose entries may be None (= keep the input size)."""
    sizes = output_size if isinstance(output_size, (tuple, list)) else (output_size, output_size)
    if len(sizes) != 2:
        raise TypeError(f"{op}: output_size must be an int or a pair, got {output_size!r}")
    filled = tuple(size if value is None else value for value, size in zip(sizes, (H, W)))
    return pair(op, "output_size", filled, 1)


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Average over PyTorch's adaptive bins, giving a fixed (OH, OW) whatever the input size.

    >>> x = Tensor(np.arange(16.0).reshape(1, 1, 4, 4))
    >>> adaptive_avg_pool2d(x, 2).numpy()[0, 0]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    _, _, H, W = check_float("adaptive_avg_pool2d", "input", x, "(N, C, H, W)")
    OH, OW = _adaptive_size("adaptive_avg_pool2d", output_size, H, W)
    return AdaptiveAvgPool2dFunction((OH, OW))(x)


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling to ``output_size`` (torchvision's AlexNet uses (6, 6)).

    >>> AdaptiveAvgPool2d((6, 6))
    AdaptiveAvgPool2d(output_size=(6, 6))
    """

    def __init__(self, output_size):
        super().__init__()
        # a bad size is refused here, not at the first forward (1, 1 stand in for the input's)
        _adaptive_size("AdaptiveAvgPool2d", output_size, 1, 1)
        self.output_size = output_size

    def forward(self, x):
        return adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
