r"""A global batch split between processes: contiguous shares, random draws made for the whole.

In data parallel training (:mod:`minialex.distributed`) ``num_replicas`` processes share every
global batch of ``n`` samples: process ``r`` takes the contiguous rows

.. math::  [\lfloor r n / R \rfloor, \lfloor (r+1) n / R \rfloor), \qquad R = num\_replicas,

which is ``r*b .. (r+1)*b`` with ``b = n / R`` for every full batch (:func:`share_bounds`).

A random transform (crops, flips, colour noise) draws per-sample values in one call per batch
(``rng.integers(..., size=n)``, then the next kind), so drawing for a share of ``b`` samples
would give different values, and leave the generator in another state, than drawing for the
batch. Within :func:`batch_share`, a transform's generator (``RandomTransform.rng()`` of
:mod:`minialex.data.crops`) therefore draws every per-sample array for the whole global batch,
as one process would, and hands out this process's rows: each sample gets the crop, flip and
colour noise it gets in a one-process run, and every process's generator stays in step.

>>> rng = np.random.default_rng(0)
>>> with batch_share(2, 4, 6):
...     share = drawing_for(np.random.default_rng(0)).integers(0, 100, size=2)
>>> share.tolist() == rng.integers(0, 100, size=6)[2:4].tolist()
True
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np  # noqa: F401  (the doctest uses np)

_active = threading.local()   # .share: (start, stop, total) while a transform runs on a share


def share_bounds(n: int, rank: int, num_replicas: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a batch of ``n`` that process ``rank`` of ``num_replicas``
    takes: contiguous, in rank order, sizes differing by at most one.

    >>> [share_bounds(10, r, 4) for r in range(4)]
    [(0, 2), (2, 5), (5, 7), (7, 10)]
    """
    return rank * n // num_replicas, (rank + 1) * n // num_replicas


@contextlib.contextmanager
def batch_share(start: int, stop: int, total: int):
    """Within it (in this thread), random transforms draw for a global batch of ``total``
    samples and keep rows ``start:stop``, the samples they are given."""
    previous = getattr(_active, "share", None)
    _active.share = (start, stop, total)
    try:
        yield
    finally:
        _active.share = previous


def drawing_for(rng):
    """``rng`` itself, or within :func:`batch_share` a view of it that draws for the global
    batch and returns this share's rows."""
    share = getattr(_active, "share", None)
    return rng if share is None else _ShareOfDraws(rng, *share)


class _ShareOfDraws:
    """The per-sample draws of a ``numpy.random.Generator`` for rows ``start:stop`` of a batch
    of ``total``: each call draws ``total`` rows (the leading axis of ``size``) and returns the
    share's, so the generator advances exactly as for the whole batch."""

    def __init__(self, rng, start, stop, total):
        self.rng, self.start, self.stop, self.total = rng, start, stop, total

    def _draw(self, method, size, *args, **kwargs):
        shape = (size,) if isinstance(size, (int, np.integer)) else tuple(size or ())
        if not shape or shape[0] != self.stop - self.start:
            raise ValueError(f"a random transform drew {method}(size={size!r}) on a share of "
                             f"{self.stop - self.start} samples of a global batch: only draws of "
                             f"one value (or row) per sample can be shared between processes")
        full = getattr(self.rng, method)(*args, size=(self.total,) + shape[1:], **kwargs)
        return full[self.start:self.stop]

    def integers(self, low, high=None, size=None, **kwargs):
        return self._draw("integers", size, low, high, **kwargs)

    def random(self, size=None, **kwargs):
        return self._draw("random", size, **kwargs)

    def standard_normal(self, size=None, **kwargs):
        return self._draw("standard_normal", size, **kwargs)

    def __getattr__(self, name):
        raise AttributeError(f"{name}: a random transform on a share of a global batch may draw "
                             f"only integers, random and standard_normal (see "
                             f"minialex.data.shards)")
