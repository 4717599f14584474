r"""Matrix products on the CPU, cut into blocks that the threads share."""
from __future__ import annotations

import numpy as np

from .threads import cpu_parallel_gemms


def matmul(a, b, out=None):
    """``a @ b`` for 2-D float arrays, into ``out`` when given, in blocks of its longer side.

    Equals ``numpy.matmul(a, b)`` up to BLAS's rounding (each block is one GEMM over the full
    inner dimension, so no sum is split). Why blocks: BLAS runs single-threaded inside
    minialex's threads (see :mod:`minialex.cpu.threads`) and :func:`cpu_parallel_gemms` spreads
    the blocks over the cores; a block of rows or columns of ``out`` is a plain strided view, so
    each block's GEMM writes straight into ``out``.

    >>> matmul(np.eye(2), np.array([[1.0, 2.0], [3.0, 4.0]]))
    array([[1., 2.],
           [3., 4.]])
    """
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    M, P = out.shape
    if P >= M:
        def block(j0, j1):
            np.matmul(a, b[:, j0:j1], out=out[:, j0:j1])
    else:
        def block(i0, i1):
            np.matmul(a[i0:i1], b, out=out[i0:i1])
    cpu_parallel_gemms(block, max(M, P), M * P * a.shape[1] // 16)
    return out
