r"""Argument checks and the output-size formula, shared by every part of minialex.

Layers, data, the optimiser, the models, the run configuration and the CUDA glue all check their
arguments here, once, at their public boundary. Each check raises one line naming the owner, the
argument and what was expected, as PyTorch does: ``conv2d: stride must be >= 1, got (0, 0)``.
An int here is never a bool: ``True`` is an int to Python, never a size or a count to minialex.

Notation (as in the layer files): ``x`` (N, C, H, W); window KH x KW; strides SH, SW; zero
padding PH, PW; output OH x OW.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


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


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``floor((size + 2 padding - kernel) / stride) + 1``.

    >>> output_size(227, 11, 4, 0), output_size(27, 5, 1, 2), output_size(55, 3, 2, 0)
    (55, 27, 27)
    """
    return (size + 2 * padding - kernel) // stride + 1


def non_negative_int(owner: str, name: str, value) -> int:
    """``value`` as an int after checking it is an integer >= 0 (not a bool).

    >>> non_negative_int("LinearWarmup", "steps", 0)
    0
    >>> non_negative_int("LinearWarmup", "steps", True)
    Traceback (most recent call last):
    ...
    ValueError: LinearWarmup: steps must be a non-negative int, got True
    """
    if not is_int(value) or value < 0:
        raise ValueError(f"{owner}: {name} must be a non-negative int, got {value!r}")
    return int(value)


def is_real(value) -> bool:
    """A finite real number, but not a bool.

    >>> is_real(0.5), is_real(2), is_real(True), is_real(float("nan"))
    (True, True, False, False)
    """
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
