r"""Local response normalisation across channels (AlexNet, Sec. 3.3).

Notation: ``x`` input (N, C, H, W) (the paper's activities :math:`a`), ``y`` output (the paper's
:math:`b`), channel index ``c`` (the paper's ``i``), ``size`` the number of adjacent channels
summed (the paper's ``n``), coefficient :math:`\alpha`, exponent :math:`\beta`, offset ``k``.
Every sum below runs over channels at one fixed ``(n, h, w)``.

Forward. The window of channel ``c`` is

.. math::  \mathcal{W}(c) = \{\, j : c - \lfloor size/2 \rfloor \le j \le
    c + \lfloor (size-1)/2 \rfloor,\ 0 \le j \le C-1 \,\}

(for odd ``size`` this is the paper's :math:`\max(0, i-n/2) \ldots \min(N-1, i+n/2)`; for even
``size`` it reaches one channel further back than forward, as in PyTorch), and

.. math::

    \mathrm{scale}_c = k + \alpha' \sum_{j \in \mathcal{W}(c)} x_j^2, \qquad
    y_c = x_c \, \mathrm{scale}_c^{-\beta}.

Conventions (``convention=``): ``"paper"`` uses :math:`\alpha' = \alpha`, the formula as printed
in the paper (Chainer follows it); ``"pytorch"`` uses :math:`\alpha' = \alpha / size`, as
Krizhevsky's cuda-convnet, Caffe and ``torch.nn.functional.local_response_norm`` do. To convert,
:math:`\alpha_{torch} = size \cdot \alpha_{paper}`. Default ``k``: 2 here (the paper's), 1 in
PyTorch and Caffe. So the paper's layer is ``torch.nn.LocalResponseNorm(5, alpha=5e-4,
beta=0.75, k=2.0)``, and ``convention="pytorch"`` with the same ``k`` matches PyTorch exactly.

Gradient. :math:`\partial\,\mathrm{scale}_j / \partial x_i = 2\alpha' x_i\,[i \in \mathcal{W}(j)]`,
so by the product rule

.. math::

    \frac{\partial y_j}{\partial x_i} = \delta_{ij}\,\mathrm{scale}_j^{-\beta}
        - \beta\, x_j\, \mathrm{scale}_j^{-\beta-1}\, 2\alpha' x_i\, [i \in \mathcal{W}(j)]
      = \delta_{ij}\,\mathrm{scale}_j^{-\beta}
        - 2\alpha'\beta\, x_i\, \frac{y_j}{\mathrm{scale}_j}\, [i \in \mathcal{W}(j)],

and summing :math:`gy_j\, \partial y_j / \partial x_i` over ``j``:

.. math::

    gx_i = gy_i\, \mathrm{scale}_i^{-\beta}
        - 2\alpha'\beta\, x_i \sum_{j\,:\, i \in \mathcal{W}(j)}
          \frac{gy_j\, y_j}{\mathrm{scale}_j}.

:math:`i \in \mathcal{W}(j)` means :math:`i - \lfloor (size-1)/2 \rfloor \le j \le
i + \lfloor size/2 \rfloor`: the mirrored window, equal to :math:`\mathcal{W}(i)` for odd
``size``. Backward uses the ``scale`` and ``y`` saved by forward, so no sum is recomputed.

Shape:
    x (N, C, \*) -> y of the same shape; typically (N, C, H, W). Channels are axis 1; any
    trailing axes (none, or L, or H, W, or D, H, W) are treated as positions.

Paper: Krizhevsky et al. (2012), Sec. 3.3 (k=2, n=5, alpha=1e-4, beta=0.75, applied after the
ReLU of conv1 and conv2); it cut top-1/top-5 error by 1.4%/1.2%.

GPU: kernels/lrn.cu (lrn_forward, lrn_backward), through ``minialex.cuda``. The CPU runs the
plain version below: its ``size`` shifted adds are whole-array NumPy passes already, with no
per-pixel loop left for threads or blocking to remove.
"""
from __future__ import annotations

import math

import numpy as np  # noqa: F401  (the doctests below use np)

from .. import cuda
from ..backend import get_array_module, is_gpu_array
from ..checks import check_float, is_real, positive_int
from ..module import Module
from ..tensor import Function, Tensor

CONVENTIONS = ("paper", "pytorch")
PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K = 5, 1e-4, 0.75, 2.0


# -- the plain version (the CPU runs it too), then the Function -----------------------------
def _window_sum(a, before: int, after: int):
    """``out[:, c] = sum(a[:, j] for j in c-before .. c+after, clipped to [0, C-1])``.

    One shifted add per offset (``size`` passes): unlike a cumulative sum over channels, it
    never subtracts large partial sums, so small windows after large ones keep their precision.
    """
    C = a.shape[1]
    out = a.copy()
    for d in range(1, min(before, C - 1) + 1):
        out[:, d:] += a[:, :C - d]
    for d in range(1, min(after, C - 1) + 1):
        out[:, :C - d] += a[:, d:]
    return out


def lrn_forward(x, size, alpha, beta, k):
    """``(y, scale)`` for x (N, C, H, W) contiguous; ``alpha`` is the coefficient as used
    (already divided by ``size`` for the PyTorch convention)."""
    scale = _window_sum(x * x, size // 2, (size - 1) // 2)
    scale *= alpha
    scale += k
    return x * scale ** -beta, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """``gx`` from the saved ``x``, ``y`` and ``scale`` (see the module docstring)."""
    # Sum over the j whose window holds i: the mirrored window, hence the swapped offsets.
    t = _window_sum(gy * y / scale, (size - 1) // 2, size // 2)
    gx = gy * scale ** -beta
    gx -= (2.0 * alpha * beta) * x * t
    return gx


class LocalResponseNormFunction(Function):
    """``y = x * (k + alpha * window_sum(x^2)) ** -beta``, with ``alpha`` as used in the formula
    (the functional divides by ``size`` for ``convention="pytorch"``). No double backward.

    Keeps ``x``, ``y`` and ``scale`` for backward.
    """

    def __init__(self, size=PAPER_SIZE, alpha=PAPER_ALPHA, beta=PAPER_BETA, k=PAPER_K):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        xp = get_array_module(x)
        self.x_shape = x.shape
        N, C = x.shape[:2]
        if x.ndim != 4:  # the kernels take (N, C, H, W): other ranks put positions in H, W = 1
            x = x.reshape(N, C, math.prod(x.shape[2:]), 1)
        x = xp.ascontiguousarray(x)
        impl = cuda.lrn_forward if is_gpu_array(x) else lrn_forward
        y, scale = impl(x, self.size, self.alpha, self.beta, self.k)
        self.saved = x, y, scale
        return y.reshape(self.x_shape)

    def backward(self, gy):
        xp = get_array_module(gy)
        x, y, scale = self.saved
        gy = xp.ascontiguousarray(gy.reshape(x.shape))
        impl = cuda.lrn_backward if is_gpu_array(gy) else lrn_backward
        gx = impl(x, y, scale, gy, self.size, self.alpha, self.beta)
        return gx.reshape(self.x_shape)


# -- functional -----------------------------------------------------------------------------
def _check_options(op, size, alpha, beta, k, convention):
    positive_int(op, "size", size)
    for name, value, ok, need in (("alpha", alpha, lambda v: v >= 0, ">= 0"),
                                  ("beta", beta, lambda v: True, "a number"),
                                  ("k", k, lambda v: v > 0, "> 0")):
        if not (is_real(value) and ok(value)):
            raise ValueError(f"{op}: {name} must be finite and {need}, got {name}={value!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"{op}: convention must be one of {CONVENTIONS}, got {convention!r}")


def local_response_norm(x, size=PAPER_SIZE, alpha=PAPER_ALPHA, beta=PAPER_BETA, k=PAPER_K,
                        convention="paper") -> Tensor:
    r"""Normalise each activity by the energy of ``size`` adjacent channels at its position.

    ``convention="paper"``: :math:`y_c = x_c / (k + \alpha \sum_{\mathcal{W}(c)} x_j^2)^\beta`;
    ``convention="pytorch"``: the same with :math:`\alpha / size`. ``alpha >= 0`` and ``k > 0``
    keep the base positive.

    >>> x = Tensor(np.ones((1, 3, 1, 1), dtype=np.float32))
    >>> local_response_norm(x, size=3, alpha=1.0, beta=1.0, k=1.0).numpy().ravel()
    array([0.33333334, 0.25      , 0.33333334], dtype=float32)
    >>> local_response_norm(x, 3, 1.0, 1.0, 1.0, convention="pytorch").numpy().ravel().round(4)
    array([0.6, 0.5, 0.6], dtype=float32)
    """
    check_float("local_response_norm", "input", x, "(N, C, ...)")
    _check_options("local_response_norm", size, alpha, beta, k, convention)
    alpha_used = alpha / size if convention == "pytorch" else alpha
    return LocalResponseNormFunction(int(size), float(alpha_used), float(beta), float(k))(x)


# -- module ---------------------------------------------------------------------------------
class LocalResponseNorm(Module):
    r"""Local response normalisation layer (no parameters); paper defaults k=2, n=5,
    alpha=1e-4, beta=0.75 and the paper's convention (alpha not divided by ``size``).

    PyTorch's ``nn.LocalResponseNorm(size, alpha, beta, k)`` equals
    ``LocalResponseNorm(size, alpha, beta, k, convention="pytorch")``; PyTorch's default k is 1.

    >>> lrn = LocalResponseNorm()
    >>> lrn
    LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)
    >>> lrn(Tensor(np.zeros((2, 96, 55, 55), dtype=np.float32))).shape
    (2, 96, 55, 55)
    """

    def __init__(self, size=PAPER_SIZE, alpha=PAPER_ALPHA, beta=PAPER_BETA, k=PAPER_K,
                 convention="paper"):
        super().__init__()
        _check_options("LocalResponseNorm", size, alpha, beta, k, convention)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention = convention

    def forward(self, x):
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention)

    def extra_repr(self):
        text = f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
        if self.convention != "paper":
            text += f", convention={self.convention!r}"
        return text

