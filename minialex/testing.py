r"""Gradient checking: compare backward with central differences, in float64.

For a function ``y = f(x_1, ..., x_k)`` and a fixed random ``gy`` (same shape as ``y``), the
scalar ``L = sum(gy * f(...))`` has the exact gradient ``dL/dx_i = backward(gy)`` (what the code
computes) and the numerical estimate, element by element,

.. math::
    \frac{\partial L}{\partial x_j} \approx \frac{L(x+\epsilon e_j) - L(x-\epsilon e_j)}{2\epsilon}

with error O(eps^2). A random ``gy`` (not ones) matters: with ``gy = 1`` a backward that permutes
or flips its gradient can still pass.

Example (a user's own function):

>>> import numpy as np, minialex
>>> x = minialex.Tensor(np.linspace(0.5, 2.0, 6).reshape(2, 3), requires_grad=True)
>>> report = minialex.gradcheck(lambda x: (x * x).log(), [x])
>>> report.max_abs_error < 1e-7
True
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import backend
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised by :func:`gradcheck` when a backward disagrees with the numerical gradient."""


@dataclass
class GradcheckReport:
    """How far backward and central differences disagree, over all checked tensors.

    ``max_abs_error``/``max_rel_error`` are maxima over every element; ``worst_*``, ``analytic``
    and ``numeric`` describe the element furthest outside ``atol + rtol * |numeric|``.
    """
    max_abs_error: float
    max_rel_error: float
    worst_tensor: str      # e.g. "input 0" or "param weight"
    worst_index: tuple
    analytic: float
    numeric: float
    checked: int           # number of elements compared

    def __str__(self):
        return (f"worst at {self.worst_tensor}{list(self.worst_index)}: analytic "
                f"{self.analytic:.10g}, numeric {self.numeric:.10g}; max abs error "
                f"{self.max_abs_error:.3g}, max rel error {self.max_rel_error:.3g} "
                f"({self.checked} elements checked)")


def gradcheck(fn, inputs, params=(), *, eps=1e-6, atol=1e-6, rtol=1e-4, gy=None, seed=0):
    """Check ``fn``'s backward against central differences for every input and parameter.

    Args:
        fn: callable taking ``len(inputs)`` Tensors and returning one Tensor.
        inputs: Tensors (or arrays) passed to ``fn``; those with ``requires_grad`` are checked.
            Must be float64.
        params: extra float64 Tensors ``fn`` uses internally (e.g. ``module.parameters()``);
            all are checked. Pass ``named_parameters()`` pairs to get their names in reports.
        eps: finite-difference step.
        atol, rtol: an element passes when ``|analytic - numeric| <= atol + rtol * |numeric|``.
        gy: upstream gradient; random normal (drawn from ``seed``) when omitted.

    Returns:
        a :class:`GradcheckReport` of the worst element.

    Raises:
        TypeError: when a checked tensor is not float64.
        GradcheckError: naming the tensor, index, both values and errors of the worst element.
    """
    inputs = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    named = list(params.items()) if hasattr(params, "items") else list(params)
    named = [p if isinstance(p, tuple) else (f"param {i}", p) for i, p in enumerate(named)]
    checked = [(f"input {i}", x) for i, x in enumerate(inputs) if x.requires_grad] + named
    if not checked:
        raise ValueError("gradcheck: no input requires grad and no params were given")
    for name, t in checked:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: {name} is {t.dtype}; central differences need float64 "
                            f"(convert with .to(dtype='float64') or module.double())")

    y = fn(*inputs)
    xp = backend.get_array_module(y.data)
    if gy is None:
        gy = np.random.default_rng(seed).standard_normal(y.shape)
    gy = xp.asarray(gy, dtype=np.float64)

    for _, t in checked:
        t.grad = None
    y.backward(gy)
    analytic = [t.grad if t.grad is not None else xp.zeros_like(t.data) for _, t in checked]

    def loss():
        return float((fn(*inputs).data * gy).sum())

    worst = None            # (violation ratio, tensor name, flat index, analytic, numeric)
    max_abs = max_rel = 0.0
    total = 0
    for (name, t), grad in zip(checked, analytic):
        numeric = np.empty(t.shape)
        t.data = backend.get_array_module(t.data).ascontiguousarray(t.data)
        flat = t.data.reshape(-1)  # a view: writing into it perturbs the tensor in place
        for j in range(flat.size):
            original = flat[j].item()
            flat[j] = original + eps
            plus = loss()
            flat[j] = original - eps
            minus = loss()
            flat[j] = original
            numeric.flat[j] = (plus - minus) / (2 * eps)
        grad = backend.to_numpy(grad)
        err = np.abs(grad - numeric)
        # NaN or inf anywhere is a failure, never a pass: count it as an infinite violation
        err = np.where(np.isfinite(err), err, np.inf)
        ratio = err / (atol + rtol * np.abs(numeric))
        rel = err / np.maximum(np.maximum(np.abs(numeric), np.abs(grad)), 1e-300)
        max_abs, max_rel = max(max_abs, float(err.max())), max(max_rel, float(rel.max()))
        total += numeric.size
        j = int(np.argmax(ratio))
        if worst is None or ratio.flat[j] > worst[0]:
            worst = (float(ratio.flat[j]), name, np.unravel_index(j, t.shape),
                     float(grad.flat[j]), float(numeric.flat[j]))
    ratio, name, index, a, n = worst
    report = GradcheckReport(max_abs, max_rel, name, tuple(int(i) for i in index), a, n, total)
    if not ratio <= 1:
        raise GradcheckError(f"gradcheck failed (atol={atol}, rtol={rtol}, eps={eps}): {report}")
    return report
