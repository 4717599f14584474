r"""Cross-entropy (multinomial logistic regression) and negative log-likelihood losses.

Notation: ``x`` logits (N, C), ``t`` integer labels (N,) with :math:`0 \le t_n < C`, ``p`` the
softmax probabilities, :math:`\ell_n` the loss of sample ``n``, ``gy`` = dL/d(loss).

Forward. With :math:`M_n = \max_c x_{n,c}` (subtracted so every exponent is <= 0 and logits of
1e4 stay finite: the log-sum-exp trick),

.. math::

    \log p_{n,c} = x_{n,c} - M_n - \log \sum_{c'} e^{x_{n,c'} - M_n}, \qquad
    \ell_n = -\log p_{n, t_n},

reduced as ``"mean"`` :math:`\frac1N \sum_n \ell_n` (the paper's "average across training
cases"), ``"sum"`` :math:`\sum_n \ell_n` or ``"none"`` (the vector :math:`\ell`).
``nll_loss`` takes log-probabilities ``z`` directly: :math:`\ell_n = -z_{n, t_n}`.

Gradient. Writing :math:`\ell_n = -x_{n,t_n} + \log\sum_{c'} e^{x_{n,c'}}`,

.. math::  \frac{\partial \ell_n}{\partial x_{n,c}} = p_{n,c} - [c = t_n], \qquad
    gx_{n,c} = (p_{n,c} - [c = t_n]) \cdot \frac{gy}{N}

for ``"mean"`` (``gy`` for ``"sum"``, ``gy_n`` for ``"none"``). Forward keeps ``p`` so backward
is one subtraction. For ``nll_loss``, :math:`gz_{n,c} = -[c = t_n]` times the same factor.
Labels get no gradient.

Shape:
    logits (N, C), labels (N,) -> a scalar (``"mean"``, ``"sum"``) or (N,) (``"none"``).
    Labels may be a Tensor or a NumPy/CuPy integer array; they are moved to the logits' device.

Not supported (PyTorch has them): class ``weight``, ``ignore_index``, ``label_smoothing``.

Paper: Krizhevsky et al. (2012), Sec. 4 ("maximize the multinomial logistic regression
objective"; softmax on fc8).

GPU: no kernels/ file; plain CuPy array code (max, exp, sum and one fancy-indexed gather).
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..checks import check_float
from ..module import Module
from ..tensor import Function, Tensor

REDUCTIONS = ("mean", "sum", "none")


def _reduce(losses, reduction):
    if reduction == "none":
        return losses
    total = losses.sum()
    return total / losses.dtype.type(len(losses)) if reduction == "mean" else total


def _row_factor(gy, N, reduction):
    """d(reduced loss)/d(loss_n) times gy, shaped to broadcast over (N, C)."""
    if reduction == "none":
        return gy.reshape(N, 1)
    return gy / gy.dtype.type(N) if reduction == "mean" else gy


class CrossEntropyFunction(Function):
    """Fused log-softmax and negative log-likelihood of the ``labels`` (fixed at construction).
    No double backward.

    Keeps the softmax probabilities ``p`` (N, C).
    """

    def __init__(self, labels, reduction="mean"):
        self.labels, self.reduction = labels, reduction

    def forward(self, x):
        xp = get_array_module(x)
        shifted = x - x.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        self.p = e / total
        rows = xp.arange(x.shape[0])
        losses = xp.log(total[:, 0]) - shifted[rows, self.labels]
        return _reduce(losses, self.reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        N = self.p.shape[0]
        gx = self.p.copy()
        gx[xp.arange(N), self.labels] -= 1
        gx *= _row_factor(gy, N, self.reduction)
        return gx


class NLLLossFunction(Function):
    """``-log_probs[n, labels[n]]``, reduced. No double backward."""

    def __init__(self, labels, reduction="mean"):
        self.labels, self.reduction = labels, reduction

    def forward(self, z):
        xp = get_array_module(z)
        self.z_shape, self.z_dtype = z.shape, z.dtype
        return _reduce(-z[xp.arange(z.shape[0]), self.labels], self.reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        N = self.z_shape[0]
        gz = xp.zeros(self.z_shape, dtype=self.z_dtype)
        gz[xp.arange(N), self.labels] = -1
        gz *= _row_factor(gy, N, self.reduction)
        return gz


def _check_args(op, name, x, labels, reduction, check_labels=True):
    """The labels as an integer array on ``x``'s device, after checking every argument (their
    range only when ``check_labels``)."""
    N, C = check_float(op, name, x, "(N, C)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    data = x.data if isinstance(x, Tensor) else x
    t = class_indices(op, labels, C, check_range=False)
    if tuple(t.shape) != (N,):
        raise ValueError(f"{op}: labels must have shape ({N},) for {name} {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    if check_labels:
        class_indices(op, t, C, context=f" for {name} with C={C} classes")
    return backend.to_device(t, backend.device_of(data), np.intp)


def class_indices(op, labels, C, *, check_range=True, context=""):
    """``labels`` (a Tensor, an array on its device, or a list) as an array, after checking
    that they are integers and, with ``check_range``, that each lies in [0, C). Reading the
    range of GPU labels waits for the device: callers whose loader checked them on the host
    pass ``check_range=False``."""
    t = labels.data if isinstance(labels, Tensor) else labels
    if not backend.is_gpu_array(t):
        t = np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers (class indices), got dtype {t.dtype}")
    if check_range and t.size:
        with backend.device_scope(t):
            low, high = int(t.min()), int(t.max())
        if low < 0 or high >= C:
            raise ValueError(f"{op}: label {low if low < 0 else high} is out of range "
                             f"[0, {C}){context}")
    return t


def cross_entropy(logits, labels, reduction="mean", *, check_labels=True) -> Tensor:
    """Softmax cross-entropy of ``logits`` (N, C) against class indices ``labels`` (N,).

    ``check_labels=False`` skips the check that every label lies in [0, C), for a caller that
    made it already: reading GPU labels back for it is a blocking transfer, so a GPU
    :class:`~minialex.data.Loader` given ``num_classes`` checks them on the host instead.

    >>> logits = Tensor(np.array([[1e4, 0.0], [0.0, 0.0]]))
    >>> cross_entropy(logits, np.array([0, 1]), reduction="none").numpy().round(4)
    array([0.    , 0.6931])
    """
    labels = _check_args("cross_entropy", "logits", logits, labels, reduction, check_labels)
    return CrossEntropyFunction(labels, reduction)(logits)


def nll_loss(log_probs, labels, reduction="mean") -> Tensor:
    """Negative log-likelihood of ``log_probs`` (N, C) at class indices ``labels`` (N,).

    >>> z = Tensor(np.log(np.array([[0.5, 0.5], [0.9, 0.1]])))
    >>> float(nll_loss(z, np.array([0, 1]), reduction="sum").numpy().round(4))
    2.9957
    """
    labels = _check_args("nll_loss", "log_probs", log_probs, labels, reduction)
    return NLLLossFunction(labels, reduction)(log_probs)


class CrossEntropyLoss(Module):
    """``cross_entropy(logits, labels, reduction)`` as a module: ``criterion(logits, labels)``.

    >>> CrossEntropyLoss()
    CrossEntropyLoss(reduction='mean')
    """

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"CrossEntropyLoss: reduction must be one of {REDUCTIONS}, got "
                             f"{reduction!r}")
        self.reduction = reduction

    def forward(self, logits, labels):
        return cross_entropy(logits, labels, self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}"
