r"""Fully connected layers (fc6, fc7, fc8) and the flatten between conv5 and fc6.

Notation: ``x`` input (\*, in), ``W`` weight (out, in) in PyTorch's layout, ``b`` bias (out,),
``y`` output (\*, out); ``X`` (M, in) and ``gY`` (M, out) are ``x`` and ``gy`` with the leading
axes flattened into M rows.

Forward:

.. math::  y[\ldots, o] = b[o] + \sum_{i} x[\ldots, i]\, W[o, i], \qquad Y = X W^T + b.

Gradient. The product rule for a matrix product, rows summed where ``b`` and ``W`` are shared:

.. math::  gX = gY\, W, \qquad gW = gY^T X, \qquad gb[o] = \sum_{m} gY[m, o].

``flatten`` only moves elements, so its gradient is ``gy`` reshaped back to ``x``'s shape.

Shape:
    linear: x (\*, in), W (out, in), b (out,) -> y (\*, out); a 1-D x (in,) gives (out,).
    flatten(start_dim=s, end_dim=e): (d_0, ..., d_{n-1}) ->
    (d_0, ..., d_{s-1}, d_s \cdot \ldots \cdot d_e, d_{e+1}, ..., d_{n-1}); AlexNet's
    (N, 256, 6, 6) becomes (N, 9216).

Paper: sections 3.5 and 4.2 (fc6 and fc7 with 4096 units, fc8 with 1000).

GPU: no kernels/ file; the GEMMs are cuBLAS through CuPy, the same code as on the CPU.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..module import Module, Parameter
from ..tensor import Function, Tensor


class LinearFunction(Function):
    """``y = x @ W.T + b`` over the last axis of ``x``. No double backward.

    Keeps ``x`` (only when ``W`` needs a gradient) and ``W`` (only when ``x`` does).
    """

    def forward(self, x, W, b=None):
        xp = get_array_module(x)
        X = x.reshape(-1, x.shape[-1])
        Y = backend.matmul(X, W.T)
        if b is not None:
            Y += b
        needs_x, needs_W = self.needs_input_grad[:2]
        self.saved = (X if needs_W else None, W if needs_x else None)
        self.x_shape = x.shape
        return xp.ascontiguousarray(Y).reshape(x.shape[:-1] + (W.shape[0],))

    def backward(self, gy):
        X, W = self.saved
        gY = gy.reshape(-1, gy.shape[-1])
        gx = backend.matmul(gY, W).reshape(self.x_shape) if self.needs_input_grad[0] else None
        gW = backend.matmul(gY.T, X) if self.needs_input_grad[1] else None
        gb = None
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gY.sum(axis=0)
        return gx, gW, gb


def _check_float(op, name, x, ndim=None, layout=""):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(x).__name__}")
    if ndim is not None and len(x.shape) != ndim:
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(x.shape)}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{op}: {name} must be floating point, got dtype {x.dtype}")


def linear(x, weight, bias=None) -> Tensor:
    """``x @ weight.T + bias`` with ``weight`` (out, in) as in PyTorch; ``x`` is (\\*, in).

    >>> x = Tensor(np.array([[1.0, 2.0]]))
    >>> w = Tensor(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))
    >>> linear(x, w, Tensor(np.array([0.0, 0.5, 1.0]))).numpy()
    array([[ 1. ,  3.5, -1. ]])
    """
    _check_float("linear", "input", x)
    _check_float("linear", "weight", weight, 2, "(out_features, in_features)")
    if len(x.shape) == 0:
        raise ValueError("linear: input must have at least 1 dimension (*, in_features), got a "
                         "0-d scalar")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: input {tuple(x.shape)} has {x.shape[-1]} features but weight "
                         f"{tuple(weight.shape)} expects in_features={weight.shape[1]}")
    if np.dtype(x.dtype) != np.dtype(weight.dtype):
        raise TypeError(f"linear: input is {x.dtype} but weight is {weight.dtype}; convert one "
                        f"with .to(dtype=...)")
    if bias is None:
        return LinearFunction()(x, weight)
    _check_float("linear", "bias", bias)
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},) for weight "
                         f"{tuple(weight.shape)}, got {tuple(bias.shape)}")
    if np.dtype(bias.dtype) != np.dtype(weight.dtype):
        raise TypeError(f"linear: weight is {weight.dtype} but bias is {bias.dtype}")
    return LinearFunction()(x, weight, bias)


def _check_dims(op, ndim, start_dim, end_dim):
    """``(start, end)`` as non-negative axes, or ValueError naming the bad one."""
    out = []
    for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
        if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
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
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {value!r}")
        self.in_features, self.out_features = int(in_features), int(out_features)
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
