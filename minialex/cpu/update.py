r"""The optimiser's in-place update on the CPU, chunk by chunk in threads."""
from __future__ import annotations

import numpy as np

from .scratch import scratch
from .threads import cpu_parallel

STEP_CHUNK = 1 << 16  # elements: a chunk's w, g, v and d together fit in a core's L2 cache


def chunked_update(step, w, g, v, *args):
    """``step(w, g, v, *args, d=d)`` run over chunks of the flattened C-contiguous ``w`` and
    ``v`` (and ``g``), in threads; ``step`` updates its ``w`` and ``v`` in place element by
    element, with ``d`` a scratch array of the chunk's size.

    Equals ``step(w, g, v, *args)`` over the whole arrays bit for bit (the reference: SGD's
    ``_momentum_step`` in ``minialex/optim.py``): each element meets the same operations in
    the same order, whatever the chunks and threads. Why chunks: over a whole fc6 weight each
    pass of the update reads and writes the full array from memory, on one core, and a
    temporary the size of ``w`` is fresh memory whose pages fault in at every step; chunk by
    chunk the passes run in cache, on every core, into a reused scratch ``d``.

    >>> def add_g(w, g, v, d=None):
    ...     w += g
    >>> w = np.zeros(3)
    >>> chunked_update(add_g, w, np.ones(3), np.zeros(3))
    >>> w
    array([1., 1., 1.])
    """
    w_flat, v_flat = w.reshape(-1), v.reshape(-1)
    g_flat = np.ascontiguousarray(g).reshape(-1)

    def step_chunks(c0, c1):
        d = scratch("update_d", (STEP_CHUNK,), w.dtype)
        for start in range(c0 * STEP_CHUNK, min(c1 * STEP_CHUNK, w.size), STEP_CHUNK):
            part = slice(start, min(start + STEP_CHUNK, w.size))
            step(w_flat[part], g_flat[part], v_flat[part], *args, d=d[:part.stop - part.start])
    cpu_parallel(step_chunks, -(-w.size // STEP_CHUNK), 6 * w.size)
