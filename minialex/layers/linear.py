r"""Fully connected layers (fc6, fc7, fc8) and the flatten between conv5 and fc6.

Notation: ``x`` input (\*, in), ``w`` weight (out, in) in PyTorch's layout, ``b`` bias (out,),
``y`` output (\*, out); ``X`` (M, in) and ``gY`` (M, out) are ``x`` and ``gy`` with the leading
axes flattened into M rows.

Forward:

.. math::  y[\ldots, o] = b[o] + \sum_{i} x[\ldots, i]\, w[o, i], \qquad Y = X w^T + b.

Gradient. The product rule for a matrix product, rows summed where ``b`` and ``w`` are shared:

.. math::  gX = gY\, w, \qquad gw = gY^T X, \qquad gb[o] = \sum_{m} gY[m, o].

``flatten`` only moves elements, so its gradient is ``gy`` reshaped back to ``x``'s shape.

Shape:
    linear: x (\*, in), w (out, in), b (out,) -> y (\*, out); a 1-D x (in,) gives (out,).
    flatten(start_dim=s, end_dim=e): (d_0, ..., d_{n-1}) ->
    (d_0, ..., d_{s-1}, d_s \cdot \ldots \cdot d_e, d_{e+1}, ..., d_{n-1}); AlexNet's
    (N, 256, 6, 6) becomes (N, 9216).

Paper: Krizhevsky et al. (2012), Sec. 3.5 and 4.2 (fc6 and fc7 with 4096 units, fc8 with
1000).

GPU: no kernels/ file; the GEMMs are cuBLAS through ``minialex.cuda.gemm`` (TF32 only after
``minialex.cuda.set_tf32(True)``); on the CPU NumPy's BLAS through ``minialex.cpu.matmul``
(blocks of the product in threads). Both are tested against the plain version below.
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, cpu, cuda
from ..backend import get_array_module, is_gpu_array
from ..checks import check_float, is_int, positive_int
from ..module import Module, Parameter
from ..tensor import Function, Tensor


# -- the plain version, then the Function ---------------------------------------------------
def linear_forward(x, w, b):
    """``y = x w^T + b`` over the last axis of ``x``."""
    return x @ w.T + (0 if b is None else b)


def linear_backward(gy, x, w):
    """``(gx, gw, gb) = (gY w, gY^T X, sum of gY's rows)``, reshaped to x's, w's and b's shapes."""
    X, gY = x.reshape(-1, x.shape[-1]), gy.reshape(-1, gy.shape[-1])
    return (gY @ w).reshape(x.shape), gY.T @ X, gY.sum(axis=0)


class LinearFunction(Function):
    """``y = x @ w.T + b`` over the last axis of ``x``. No double backward.

    Keeps ``X`` (only when ``w`` needs a gradient) and ``w`` (only when ``x`` does).
    """

    def forward(self, x, w, b=None):
        matmul = cuda.gemm if is_gpu_array(x) else cpu.matmul
        X = x.reshape(-1, x.shape[-1])
        Y = matmul(X, w.T)
        if b is not None:
            Y += b
        needs_x, needs_w = self.needs_input_grad[:2]
        self.saved = (X if needs_w else None, w if needs_x else None)
        self.x_shape = x.shape
        return get_array_module(x).ascontiguousarray(Y).reshape(x.shape[:-1] + (w.shape[0],))

    def backward(self, gy):
        matmul = cuda.gemm if is_gpu_array(gy) else cpu.matmul
        X, w = self.saved
        gY = gy.reshape(-1, gy.shape[-1])
        gx = matmul(gY, w).reshape(self.x_shape) if self.needs_input_grad[0] else None
        gw = matmul(gY.T, X) if self.needs_input_grad[1] else None
        gb = None
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gY.sum(axis=0)
        return gx, gw, gb


def linear(x, weight, bias=None) -> Tensor:
    """``x @ weight.T + bias`` with ``weight`` (out, in) as in PyTorch; ``x`` is (\\*, in).

    >>> x = Tensor(np.array([[1.0, 2.0]]))
    >>> w = Tensor(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))
    >>> linear(x, w, Tensor(np.array([0.0, 0.5, 1.0]))).numpy()
    array([[ 1. ,  3.5, -1. ]])
    """
    shape = check_float("linear", "input", x, "(*, in_features)")
    out_features, in_features = check_float("linear", "weight", weight,
                                            "(out_features, in_features)", like=x)
    if shape[-1] != in_features:
        raise ValueError(f"linear: input {shape} has {shape[-1]} features but weight "
                         f"{tuple(weight.shape)} expects in_features={in_features}")
    if bias is None:
        return LinearFunction()(x, weight)
    if check_float("linear", "bias", bias, like=x) != (out_features,):
        raise ValueError(f"linear: bias must have shape ({out_features},) for weight "
                         f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
    return LinearFunction()(x, weight, bias)


def _check_dims(op, ndim, start_dim, end_dim):
    """``(start, end)`` as non-negative axes, or ValueError naming the bad one."""
    out = []
    for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not is_int(dim):
            raise TypeError(f"{op}: {name} must be an int, got {name}={dim!r}")
        if not -max(ndim, 1) <= dim < max(ndim, 1):
            raise ValueError(f"{op}: {name}={dim} is out of range for a tensor with {ndim} "
                             f"dimensions")
        out.append(int(dim) % max(ndim, 1))
    if out[0] > out[1]:
        raise ValueError(f"{op}: start_dim={start_dim} comes after end_dim={end_dim} for a "
                         f"tensor with {ndim} dimensions")
    return out


def flatten(x, start_dim=1, end_dim=-1) -> Tensor:
    """Merge axes ``start_dim .. end_dim`` (inclusive) into one, as ``torch.flatten``.

    >>> flatten(Tensor(np.zeros((2, 256, 6, 6), dtype=np.float32))).shape
    (2, 9216)
    """
    if not hasattr(x, "shape"):
        raise TypeError(f"flatten: input must be a Tensor or an array, got {type(x).__name__}")
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim == 0:
        return x.reshape(1)
    start, end = _check_dims("flatten", x.ndim, start_dim, end_dim)
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    return x.reshape(shape)


class Linear(Module):
    r"""Fully connected layer owning ``weight`` (out_features, in_features) and ``bias``
    (out_features,).

    Attributes:
        weight, bias: float32, drawn from :math:`U(-1/\sqrt{in\_features},
            1/\sqrt{in\_features})` (PyTorch's default).

    >>> fc6 = Linear(9216, 4096)
    >>> fc6
    Linear(in_features=9216, out_features=4096, bias=True)
    >>> fc6.num_parameters()
    37752832
    """

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features = positive_int("Linear", "in_features", in_features)
        self.out_features = positive_int("Linear", "out_features", out_features)
        bound = 1.0 / math.sqrt(in_features)
        rng = backend.rng_for(np)
        self.weight = Parameter(
            rng.uniform(-bound, bound, (out_features, in_features)).astype(np.float32))
        self.bias = (Parameter(rng.uniform(-bound, bound, out_features).astype(np.float32))
                     if bias else None)

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """``flatten(x, start_dim, end_dim)``; the default keeps the batch axis.

    >>> Flatten()
    Flatten(start_dim=1, end_dim=-1)
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
