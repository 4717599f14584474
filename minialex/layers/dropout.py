r"""Dropout: zero each activity with probability ``p`` while training (AlexNet, Sec. 4.2).

Notation: ``x`` input, ``y`` output, ``m`` the mask, ``p`` the drop probability, ``s`` the
training-time scale.

Forward. A fresh mask per call, :math:`m \sim \mathrm{Bernoulli}(1-p)` element-wise, drawn as
:math:`m = [u \ge p]` from :math:`u \sim U[0, 1)` on the device's generator
(``backend.rng_for``, seeded by ``minialex.manual_seed``; never reseeded here).

=============  ==========================  ======================
mode           training                    evaluation
=============  ==========================  ======================
``inverted``   :math:`y = x\,m / (1-p)`    :math:`y = x`
``paper``      :math:`y = x\,m`            :math:`y = (1-p)\,x`
=============  ==========================  ======================

Both give :math:`E_{train}[y] = y_{eval}` for every ``x``: the paper zeroes while training and
halves the outputs at test time; the "inverted" form (PyTorch's) moves the factor into training
so evaluation is free. With ``p = 1`` every unit is dropped and ``y = 0`` (scale 0, no
division by zero).

Gradient. ``y = s * m * x`` is linear in ``x`` with the mask held fixed, so
:math:`gx = s\, m\, gy` (the same mask as forward, kept as ``self.mask``); in evaluation
:math:`gx = gy` (inverted) or :math:`(1-p)\,gy` (paper).

Shape:
    x of any shape -> y of the same shape; ``mask`` has that shape and x's dtype.

Paper: Krizhevsky et al. (2012), Sec. 4.2, p = 0.5 on fc6 and fc7; it "roughly doubles the
number of iterations required to converge".

GPU: kernels/dropout.cu (dropout_forward applies the mask drawn from CuPy's generator). The CPU
runs the plain version below, one pass of NumPy ufuncs.
"""
from __future__ import annotations

import numpy as np

from .. import backend, cuda
from ..backend import get_array_module, is_gpu_array
from ..checks import check_float, is_real
from ..module import Module
from ..tensor import Function, Tensor

MODES = ("inverted", "paper")
PAPER_P = 0.5


# -- the plain version (the CPU runs it too), then the Function -----------------------------
def dropout_forward(x, u, p, scale):
    """``(y, mask)``: ``mask = (u >= p)`` as x's dtype, ``y = x * mask * scale``."""
    mask = (u >= p).astype(x.dtype)
    return x * mask * x.dtype.type(scale), mask


class DropoutFunction(Function):
    """Training-time dropout ``y = x * mask * scale`` with a freshly drawn mask.
    No double backward.

    ``scale`` is ``1/(1-p)`` (inverted; 0 when p = 1) or 1 (paper). Keeps ``mask`` (x's dtype,
    same shape) so tests can inspect it through ``y.creator.mask`` before backward.
    """

    def __init__(self, p=PAPER_P, scale=1.0):
        self.p, self.scale = p, scale

    def forward(self, x):
        impl = cuda.dropout_forward if is_gpu_array(x) else dropout_forward
        x = get_array_module(x).ascontiguousarray(x)
        u = backend.rng_for(x).random(x.shape, dtype=x.dtype)
        y, self.mask = impl(x, u, self.p, self.scale)
        return y

    def backward(self, gy):
        return gy * self.mask * gy.dtype.type(self.scale)


def _check_p(op, p):
    if not (is_real(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"{op}: p must be a probability in [0, 1], got p={p!r}")


def _check_mode(op, mode):
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {MODES}, got {mode!r}")


def dropout(x, p=PAPER_P, training=True, mode="inverted") -> Tensor:
    """Randomly zero elements of ``x`` with probability ``p`` when ``training``.

    ``mode="inverted"`` (PyTorch's) scales kept elements by ``1/(1-p)`` in training and is the
    identity in evaluation; ``mode="paper"`` zeroes only in training and multiplies by ``1-p``
    in evaluation.

    >>> import minialex
    >>> minialex.manual_seed(0)
    >>> x = Tensor(np.ones(8, dtype=np.float32))
    >>> y = dropout(x, 0.5)
    >>> sorted(set(y.numpy().tolist()))
    [0.0, 2.0]
    >>> dropout(x, 0.5, training=False, mode="paper").numpy()
    array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5], dtype=float32)
    """
    check_float("dropout", "input", x)
    _check_p("dropout", p)
    _check_mode("dropout", mode)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"dropout: training must be a bool, got {training!r}")
    x = x if isinstance(x, Tensor) else Tensor(x)
    if not training:
        # A NumPy scalar of x's dtype: a Python float operand would pass through float32 first.
        return x if mode == "inverted" else x * x.dtype.type(1.0 - p)
    if mode == "paper":
        scale = 1.0
    else:  # p = 1 drops everything; any finite scale gives the zeros, 0 avoids 1/0
        scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    return DropoutFunction(float(p), scale)(x)


class Dropout(Module):
    """Dropout layer: uses ``self.training`` (``module.train()`` / ``module.eval()``).

    >>> Dropout()
    Dropout(p=0.5)
    >>> Dropout(0.5, mode="paper").eval()(Tensor(np.ones(3, dtype=np.float32))).numpy()
    array([0.5, 0.5, 0.5], dtype=float32)
    """

    def __init__(self, p=PAPER_P, mode="inverted"):
        super().__init__()
        _check_p("Dropout", p)
        _check_mode("Dropout", mode)
        self.p, self.mode = p, mode

    def forward(self, x):
        return dropout(x, self.p, self.training, self.mode)

    def extra_repr(self):
        return f"p={self.p}" + ("" if self.mode == "inverted" else f", mode={self.mode!r}")

