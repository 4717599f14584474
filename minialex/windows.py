r"""Strided windows of (N, C, H, W) arrays, for NumPy and CuPy alike: pad, take one offset of
every window as a view, drop the padding.

Shared by the plain layer code (:mod:`minialex.layers`) and the fast CPU code
(:mod:`minialex.cpu`), which may not import each other.

Notation (as in the layer files): ``x`` (N, C, H, W); window KH x KW; strides SH, SW; zero
padding PH, PW; output OH x OW.
"""
from __future__ import annotations

from .backend import get_array_module


def padded(x, PH: int, PW: int, value=0):
    """``x`` (N, C, H, W) with PH rows and PW columns of ``value`` on each side (``x`` if none).

    >>> import numpy as np
    >>> padded(np.ones((1, 1, 1, 2)), 1, 0)[0, 0]
    array([[0., 0.],
           [1., 1.],
           [0., 0.]])
    """
    if PH == 0 and PW == 0:
        return x
    N, C, H, W = x.shape
    xp = get_array_module(x)
    out = xp.full((N, C, H + 2 * PH, W + 2 * PW), value, dtype=x.dtype)
    out[:, :, PH:PH + H, PW:PW + W] = x
    return out


def window(a, kh: int, kw: int, SH: int, SW: int, OH: int, OW: int):
    """The view ``a[..., kh + i*SH, kw + j*SW]`` for i < OH, j < OW: the element at offset
    (kh, kw) of every window, as an (…, OH, OW) strided view (no copy)."""
    return a[..., kh:kh + SH * (OH - 1) + 1:SH, kw:kw + SW * (OW - 1) + 1:SW]


def unpadded(a, PH: int, PW: int):
    """The inner (H, W) part of a padded (…, H + 2 PH, W + 2 PW) array, as a view."""
    return a[..., PH:a.shape[-2] - PH, PW:a.shape[-1] - PW]
