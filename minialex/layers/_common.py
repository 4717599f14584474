r"""What the layer files share: argument checks, the output-size formula, strided windows, and
threads for the CPU copy loops.

Every functional checks its arguments here, once, at the public boundary, so that the rest of its
layer file is the math. Each check raises one line naming the op, the argument and what was
expected, as PyTorch does: ``conv2d: stride must be >= 1, got (0, 0)``.

Notation (as in conv.py and pool.py): ``x`` (N, C, H, W); window KH x KW; strides SH, SW;
zero padding PH, PW; output OH x OW.
"""
from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import get_array_module


# -- argument checks ------------------------------------------------------------------------
def is_int(value) -> bool:
    """An integer, but not a bool (``True`` is an int to Python, never a size to a layer)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def positive_int(op: str, name: str, value) -> int:
    """``value`` as an int after checking it is an integer >= 1.

    >>> positive_int("Conv2d", "groups", 2)
    2
    >>> positive_int("Conv2d", "groups", 0)
    Traceback (most recent call last):
    ...
    ValueError: Conv2d: groups must be a positive int, got 0
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")
    return int(value)


def pair(op: str, name: str, value, minimum: int | None = None) -> tuple[int, int]:
    """``(v, v)`` from an int ``v``, or the (H, W) pair itself, each entry at least ``minimum``
    when one is given.

    >>> pair("conv2d", "stride", 4, 1), pair("conv2d", "padding", (2, 1), 0)
    ((4, 4), (2, 1))
    >>> pair("conv2d", "stride", (1, 0), 1)
    Traceback (most recent call last):
    ...
    ValueError: conv2d: stride must be >= 1, got (1, 0)
    """
    items = (value, value) if is_int(value) else value
    if not (isinstance(items, (tuple, list)) and len(items) == 2 and all(map(is_int, items))):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    result = int(items[0]), int(items[1])
    if minimum is not None and min(result) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {result}")
    return result


def check_float(op: str, name: str, x, layout: str | None = None, like=None) -> tuple:
    """The shape of ``x``, after checking that ``x`` is a floating-point Tensor or array with
    ``layout``'s number of axes (a ``*`` or ``...`` axis stands for any number, so
    ``"(N, C, ...)"`` means at least 2) and, when ``like`` (the op's input) is given, its dtype.

    >>> check_float("lrn", "input", np.zeros((2, 3, 4)), "(N, C, ...)")
    (2, 3, 4)
    >>> check_float("conv2d", "input", np.zeros((3, 4)), "(N, C, H, W)")
    Traceback (most recent call last):
    ...
    ValueError: conv2d: input must be (N, C, H, W), got shape (3, 4)
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(x).__name__}")
    shape = tuple(x.shape)
    if layout is not None:
        axes = [axis.strip() for axis in layout.strip("()").split(",") if axis.strip()]
        fixed = len([axis for axis in axes if axis not in ("*", "...")])
        if fixed < len(axes) and len(shape) < fixed:
            raise ValueError(f"{op}: {name} must be {layout} with at least {fixed} "
                             f"dimension{'s' * (fixed != 1)}, got shape {shape}")
        if fixed == len(axes) and len(shape) != fixed:
            raise ValueError(f"{op}: {name} must be {layout}, got shape {shape}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{op}: {name} must be floating point, got dtype {x.dtype}")
    if like is not None and np.dtype(x.dtype) != np.dtype(like.dtype):
        raise TypeError(f"{op}: input is {like.dtype} but {name} is {x.dtype}; convert one "
                        f"with .to(dtype=...)")
    return shape


def check_window_fits(op: str, H: int, W: int, kernel, padding) -> None:
    """ValueError unless a (KH, KW) window fits the input padded by (PH, PW) at least once."""
    (KH, KW), (PH, PW) = kernel, padding
    if KH > H + 2 * PH or KW > W + 2 * PW:
        raise ValueError(f"{op}: kernel {(KH, KW)} is larger than the padded input "
                         f"{(H + 2 * PH, W + 2 * PW)} (input {(H, W)}, padding {(PH, PW)})")


# -- sizes and strided windows (conv, pooling, and their kernels) ---------------------------
def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``floor((size + 2 padding - kernel) / stride) + 1``.

    >>> output_size(227, 11, 4, 0), output_size(27, 5, 1, 2), output_size(55, 3, 2, 0)
    (55, 27, 27)
    """
    return (size + 2 * padding - kernel) // stride + 1


def padded(x, PH: int, PW: int, value=0):
    """``x`` (N, C, H, W) with PH rows and PW columns of ``value`` on each side (``x`` if none)."""
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


# -- threads for the CPU copy loops (im2col, col2im, max-pool) ------------------------------
_pool = None  # worker threads, made at the first call that is large enough to use them


def cpu_parallel(fn, n: int, work: int) -> None:
    """Run ``fn(start, stop)`` over ``range(n)`` split into one chunk per CPU core, in threads.

    Why: NumPy's BLAS already uses every core, but its copies and ufuncs (im2col, col2im, the
    pooling loops) use one; they release the GIL, so threads over independent slices (channels
    or images) let those run on all cores too. ``work`` (elements touched) below ~1M runs inline,
    where starting threads would cost more than it saves.
    """
    global _pool
    cores = min(os.cpu_count() or 1, n)
    if cores <= 1 or work < (1 << 20):
        fn(0, n)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count(), thread_name_prefix="minialex-cpu")
    bounds = [n * i // cores for i in range(cores + 1)]
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for future in futures:
        future.result()  # re-raises a worker's exception here
