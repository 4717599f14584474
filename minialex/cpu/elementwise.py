r"""Element-wise passes on the CPU: ReLU forward and backward, slice by slice in threads.

Why threads: one pass over a conv's output is memory-bound work for one core, and its output is
fresh memory whose first write faults every page in; slices of the flattened arrays, one per
thread, share both between the cores. Each element is computed on its own, so the result is the
same whatever the slices.
"""
from __future__ import annotations

import numpy as np

from .threads import cpu_parallel


def relu_forward(x):
    """``y = max(0, x)`` for a C-contiguous x; equals ``relu_forward`` in
    ``minialex/layers/activation.py`` exactly.

    >>> relu_forward(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    """
    y = np.empty_like(x)
    x_flat, y_flat = x.reshape(-1), y.reshape(-1)

    def rectify(i0, i1):
        np.maximum(x_flat[i0:i1], 0, out=y_flat[i0:i1])
    cpu_parallel(rectify, x.size, 2 * x.size)
    return y


def relu_backward(y, gy):
    """``gx = gy where y > 0 else 0`` (subgradient 0 at 0) for C-contiguous y and gy, as a
    product like kernels/relu.cu's; equals ``relu_backward`` in ``minialex/layers/activation.py``
    exactly.

    >>> relu_backward(np.array([0.0, 2.0]), np.array([5.0, 7.0]))
    array([0., 7.])
    """
    gx = np.empty(gy.shape, dtype=gy.dtype)
    y_flat, gy_flat, gx_flat = y.reshape(-1), gy.reshape(-1), gx.reshape(-1)

    def route(i0, i1):
        np.multiply(gy_flat[i0:i1], y_flat[i0:i1] > 0, out=gx_flat[i0:i1])
    cpu_parallel(route, gy.size, 3 * gy.size)
    return gx
