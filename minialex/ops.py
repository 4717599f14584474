r"""Elementary differentiable ops behind ``Tensor``'s operators.

Notation: ``x``, ``w`` inputs, ``y`` output, ``gy`` = dL/dy, ``gx`` = dL/dx.

Broadcasting: when ``y = x + w`` broadcasts ``x`` from shape (3, 1) to (3, 4), every copy of
``x[i, 0]`` contributes to the loss, so ``gx[i, 0] = sum_j gy[i, j]``: gradients are summed back
to each operand's shape (:func:`unbroadcast`).

| op | forward | gradients |
|---|---|---|
| Add | y = x + w | gx = gy, gw = gy |
| Sub | y = x - w | gx = gy, gw = -gy |
| Mul | y = x * w | gx = gy * w, gw = gy * x |
| Div | y = x / w | gx = gy / w, gw = -gy * x / w^2 |
| Pow | y = x^p (p constant) | gx = gy * p * x^(p-1) |
| Neg | y = -x | gx = -gy |
| Exp | y = e^x | gx = gy * y |
| Log | y = ln x | gx = gy / x |
| MatMul | Y = X W | gX = gY W^T, gW = X^T gY |
| Sum | y = sum over axes | gx = gy broadcast back over the summed axes |
| Mean | y = sum / n | gx = gy / n broadcast back |
| Reshape, Transpose | move elements | gx = gy moved back |
| GetItem | y = x[index] | gx = zeros with gy added at index (repeated indices add up) |
"""
from __future__ import annotations

import numpy as np

from .backend import get_array_module
from .tensor import Function


def unbroadcast(g, shape):
    """Sum ``g`` over the axes broadcasting added or stretched, giving an array of ``shape``."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


class Add(Function):
    def forward(self, x, w):
        self.shapes = x.shape, w.shape
        return x + w

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(gy, self.shapes[1])


class Sub(Function):
    def forward(self, x, w):
        self.shapes = x.shape, w.shape
        return x - w

    def backward(self, gy):
        return unbroadcast(gy, self.shapes[0]), unbroadcast(-gy, self.shapes[1])


class Mul(Function):
    def forward(self, x, w):
        self.saved = x, w
        return x * w

    def backward(self, gy):
        x, w = self.saved
        gx = unbroadcast(gy * w, x.shape) if self.needs_input_grad[0] else None
        gw = unbroadcast(gy * x, w.shape) if self.needs_input_grad[1] else None
        return gx, gw


class Div(Function):
    def forward(self, x, w):
        self.saved = x, w
        return x / w

    def backward(self, gy):
        x, w = self.saved
        gx = unbroadcast(gy / w, x.shape) if self.needs_input_grad[0] else None
        gw = unbroadcast(-gy * x / (w * w), w.shape) if self.needs_input_grad[1] else None
        return gx, gw


class Pow(Function):
    def __init__(self, exponent):
        if not isinstance(exponent, (int, float)):
            raise TypeError(f"pow: exponent must be a Python number, got {type(exponent).__name__}")
        self.exponent = exponent

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, gy):
        p = self.exponent
        return gy * p * self.x ** (p - 1)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Exp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        return gy / self.x


class MatMul(Function):
    """``x @ w`` with NumPy's rules: 1-D operands are promoted to matrices, batch dims broadcast."""

    def forward(self, x, w):
        if x.ndim == 0 or w.ndim == 0:
            raise ValueError(f"matmul: operands must be at least 1-D, got shapes {x.shape} and "
                             f"{w.shape}")
        if x.shape[-1] != w.shape[-2 if w.ndim > 1 else 0]:
            raise ValueError(f"matmul: inner dimensions differ, got shapes {x.shape} and "
                             f"{w.shape}")
        self.saved = x, w
        return x @ w

    def backward(self, gy):
        x, w = self.saved
        x2 = x if x.ndim > 1 else x[None, :]   # (n,) acts as a (1, n) row
        w2 = w if w.ndim > 1 else w[:, None]   # (n,) acts as a (n, 1) column
        xp = get_array_module(gy)
        gy2 = gy.reshape(xp.broadcast_shapes(x2.shape[:-2], w2.shape[:-2])
                         + (x2.shape[-2], w2.shape[-1]))
        gx = gw = None
        if self.needs_input_grad[0]:
            gx = unbroadcast(gy2 @ xp.swapaxes(w2, -1, -2), x2.shape).reshape(x.shape)
        if self.needs_input_grad[1]:
            gw = unbroadcast(xp.swapaxes(x2, -1, -2) @ gy2, w2.shape).reshape(w.shape)
        return gx, gw


def _normalise_axis(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis: {a} is out of range for a tensor with {ndim} dimensions")
    return tuple(a % ndim for a in axes)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape = x.shape
        self.axes = _normalise_axis(self.axis, x.ndim)
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        xp = get_array_module(gy)
        if not self.keepdims:
            gy = xp.expand_dims(gy, self.axes)
        return xp.broadcast_to(gy, self.shape).copy()


class Mean(Sum):
    def forward(self, x):
        y = super().forward(x)
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        return y / x.dtype.type(self.count)

    def backward(self, gy):
        return super().backward(gy / gy.dtype.type(self.count))


class Reshape(Function):
    def __init__(self, *shape):
        self.shape = tuple(shape[0]) if len(shape) == 1 and not isinstance(shape[0], int) else shape

    def forward(self, x):
        self.x_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} "
                             f"({x.size} elements) into {self.shape}") from None

    def backward(self, gy):
        return gy.reshape(self.x_shape)


class Transpose(Function):
    def __init__(self, *axes):
        self.axes = tuple(axes[0]) if len(axes) == 1 and not isinstance(axes[0], int) else axes

    def forward(self, x):
        axes = self.axes or tuple(reversed(range(x.ndim)))
        if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes {self.axes} are not a permutation of the "
                             f"{x.ndim} dimensions of a tensor of shape {x.shape}")
        self.axes = axes
        return x.transpose(axes)

    def backward(self, gy):
        inverse = np.argsort([a % gy.ndim for a in self.axes])
        return gy.transpose(tuple(int(a) for a in inverse))


class GetItem(Function):
    def __init__(self, index):
        self.index = index.data if hasattr(index, "data") and hasattr(index, "creator") else index

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        try:
            return x[self.index]
        except IndexError as exc:
            raise IndexError(f"index {self.index!r} is invalid for a tensor of shape {x.shape}: "
                             f"{exc}") from None

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=self.x_dtype)
        xp.add.at(gx, self.index, gy)  # add.at: a repeated index must sum, not overwrite
        return gx
