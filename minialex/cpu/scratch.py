r"""Each thread's reusable temporaries for the CPU passes."""
from __future__ import annotations

import math
import threading

import numpy as np

_buffers = threading.local()  # each thread's own: name and dtype -> flat buffer


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialised ``shape`` array that this thread gets back at every call with ``name``.

    Why: the CPU passes make the same large temporaries in every call (a block's columns, its
    column gradient, a padded copy). A fresh array is fresh pages from the kernel, and the first
    write to each is a page fault, paid again at every training step. Kept per thread and grown
    to the largest size asked, these stay mapped; each thread holds one buffer per name for the
    life of the process. The array is valid until the next call with the same name in the same
    thread, so it must never be returned or kept.

    >>> a = scratch("doc", (2, 3), np.float32)
    >>> b = scratch("doc", (3,), np.float32)
    >>> np.shares_memory(a, b), b.shape
    (True, (3,))
    """
    buffers = _buffers.__dict__
    size = math.prod(shape)
    buf = buffers.get((name, np.dtype(dtype)))
    if buf is None or buf.size < size:
        buf = buffers[name, np.dtype(dtype)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)
