r"""Random crops and mirrors: drawn once, applied as one gather, for every augmentation pipeline.

Both pipelines use this module: the grey Fashion-MNIST batches of
:mod:`minialex.data.transforms` (channels first, ``(N, C, H, W)``) and the prepared RGB images
of :mod:`minialex.data.augment` (channels last, ``(N, H, W, C)``, the paper's random 224x224
patches of 256x256 images and their mirrors: Krizhevsky et al. 2012, Sec. 4.1).

**Drawing** (:func:`draw_crops`): per image ``n``, offsets :math:`t_n \in \{0..T\}`,
:math:`l_n \in \{0..L\}` uniform (or the centre, :math:`\lfloor T/2 \rfloor`), then a mirror
flag :math:`f_n` with probability ``p``; drawn in that order, and a choice that is switched off
draws nothing.

**Applying** (:func:`crop_flip`): for a crop of ``OH x OW``,

.. math::  y_n[c, i, j] = x_{m_n}[c, t_n + i, \tilde j], \qquad
           \tilde j = l_n + (OW - 1 - j \text{ if } f_n \text{ else } j),

with ``m_n`` the source image (``n`` unless several crops come from one image). A strided view
of every window, ``(N, H-OH+1, W-OW+1, C, OH, OW)``, is indexed by ``(m, t, l)``: one gather
copies each crop, already channels first, whatever the source layout.

**Random streams.** A random transform takes ``generator=None`` or a ``numpy.random.Generator``.
None means minialex's CPU stream, ``minialex.backend.rng_for(np)``, looked up *at each call*,
so ``minialex.manual_seed`` applies whenever it is called. An explicit generator is used as
given. Draws always come from a host (NumPy) generator, even for a GPU batch, so the same seed
gives the same crops on the CPU and the GPU. ``state_dict()`` holds the explicit generator's
``bit_generator.state`` (plain ints and strings, JSON-able) and is empty for None (that stream
is saved with ``minialex.backend.get_rng_state``).

>>> x = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
>>> crop_flip(x, np.array([0, 2]), np.array([1, 0]), np.array([False, True]), (2, 2))[:, 0]
array([[[ 1,  2],
        [ 5,  6]],
<BLANKLINE>
       [[25, 24],
        [29, 28]]])
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import get_array_module
from . import shards


def draw_crops(rng, n: int, max_top: int, max_left: int, *, random_crop: bool = True,
               p_flip: float = 0.5):
    """``(top, left, flip)`` host arrays of length ``n``: offsets in ``0..max_top`` and
    ``0..max_left`` (centre ones when not ``random_crop``), flips with probability ``p_flip``."""
    if random_crop:
        top = rng.integers(0, max_top + 1, size=n)
        left = rng.integers(0, max_left + 1, size=n)
    else:
        top, left = np.full(n, max_top // 2), np.full(n, max_left // 2)
    flip = rng.random(n) < p_flip if p_flip else np.zeros(n, dtype=bool)
    return top, left, flip


def windows(x, OH: int, OW: int, *, channels_last: bool):
    """A no-copy view of every ``OH x OW`` window: ``(N, H-OH+1, W-OW+1, C, OH, OW)``."""
    xp = get_array_module(x)
    if channels_last:
        N, H, W, C = x.shape
        sN, sH, sW, sC = x.strides
    else:
        N, C, H, W = x.shape
        sN, sC, sH, sW = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, shape=(N, H - OH + 1, W - OW + 1, C, OH, OW), strides=(sN, sH, sW, sC, sH, sW))


def draws_on_device(xp, *draws):
    """Host draws as ``int64`` arrays on ``xp``'s current device, made in one host-to-device
    copy (one per array would be a copy each); the arrays may differ in length."""
    host = [np.asarray(d).astype(np.int64, copy=False).ravel() for d in draws]
    if xp is np:
        return tuple(host)
    packed = xp.asarray(np.concatenate(host))
    ends = np.cumsum([len(h) for h in host])
    return tuple(packed[end - len(h):end] for h, end in zip(host, ends))


def crop_flip(x, top, left, flip, size, *, image=None, channels_last: bool = False,
              mirrored=None):
    """Crops ``(M, C, OH, OW)`` of the batch ``x``, in ``x``'s dtype, on ``x``'s device.

    Args:
        x: ``(N, C, H, W)``, or ``(N, H, W, C)`` with ``channels_last``.
        top, left, flip: ``(M,)`` offsets and mirror flags (host or device arrays).
        size: ``(OH, OW)``.
        image: ``(M,)`` source image of each crop; None means ``arange(N)``.
        mirrored: ``flatnonzero(flip)`` when the caller has it (on ``x``'s device).

    The caller checks that the offsets fit (this gather would read outside the images).
    """
    xp = get_array_module(x)
    OH, OW = size
    on_device = any(backend.is_gpu_array(a) for a in (top, left, flip, image, mirrored))
    if mirrored is None and not on_device:
        # which crops are mirrored is found on the host: on a GPU, nonzero waits for the device
        image = np.arange(x.shape[0]) if image is None else image
        top, left, image, mirrored = draws_on_device(xp, top, left, image, np.flatnonzero(flip))
    if image is None:
        image = xp.arange(x.shape[0])
    out = windows(x, OH, OW, channels_last=channels_last)[image, top, left]
    if mirrored is None:          # device flags: mirror by selection, reading nothing back
        return xp.where(xp.asarray(flip)[:, None, None, None], out[..., ::-1], out)
    if len(mirrored):             # only the mirrored crops are copied again
        out[mirrored] = out[mirrored, :, :, ::-1]
    return out


class RandomTransform:
    """Base of the transforms that draw: the ``generator`` convention and its state.

    ``self.rng()`` is the generator to draw from now; ``state_dict()`` /
    ``load_state_dict()`` save and restore an explicit generator (see the module docstring).
    """

    def __init__(self, generator=None):
        if generator is not None and not isinstance(generator, np.random.Generator):
            raise ValueError(f"{type(self).__name__}: generator must be None or a "
                             f"numpy.random.Generator, got {type(generator).__name__}")
        self.generator = generator

    def rng(self) -> np.random.Generator:
        rng = backend.rng_for(np) if self.generator is None else self.generator
        return shards.drawing_for(rng)   # on a share of a global batch: the batch's draws

    def state_dict(self) -> dict:
        return {} if self.generator is None else {"generator": self.generator.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("generator")
        if (saved is None) != (self.generator is None):
            raise ValueError(f"{type(self).__name__}: the state "
                             f"{'has no' if saved is None else 'has a'} generator but this "
                             f"transform {'has one' if saved is None else 'uses the CPU stream'}")
        if saved is not None:
            self.generator.bit_generator.state = saved
