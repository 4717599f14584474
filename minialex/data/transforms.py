r"""Batch transforms that run on the device: whole (N, C, H, W) batches, no loop over images.

Every transform is a callable ``t(x) -> y`` on a NumPy or CuPy batch and uses ``xp`` calls only,
so the same code runs on the CPU and the GPU. These serve the grey Fashion-MNIST batches
(uint8 ``(N, 1, 28, 28)``); :class:`GreyAugmenter` builds their train and eval pipelines.
Random crops and flips are those of :mod:`minialex.data.crops` (shared with the RGB pipeline of
:mod:`minialex.data.augment`), with its random-stream convention: ``generator=None`` draws from
minialex's CPU stream at each call, an explicit ``numpy.random.Generator`` is used as given, and
``state_dict()`` saves it. The last draw is kept (``last_offsets``, ``last_flipped``).

Bilinear resize as two small matrix products. Sampling image ``x`` (H x W) bilinearly at
``OH x OW`` points is separable: each output row mixes two input rows and each output column two
input columns, with weights that depend only on the sizes. Hence

.. math::  y = A_h \, x \, A_w^\top, \qquad A_h \in \mathbb{R}^{OH \times H},\ A_w \in
           \mathbb{R}^{OW \times W},

with, for output index ``i`` and half-pixel centres (PyTorch's ``align_corners=False``),
``s = max((i + 1/2) H / OH - 1/2, 0)``, ``i0 = floor(s)``, ``i1 = min(i0 + 1, H - 1)``,
``A[i, i0] += 1 - (s - i0)``, ``A[i, i1] += s - i0``. Two GEMMs do the whole batch; no
anti-aliasing when shrinking (as ``F.interpolate(..., antialias=False)``). Each row of ``A``
sums to 1, so a per-channel affine map (normalisation) commutes with the resize and can be
applied on the smaller image.

>>> x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
>>> Resize(4)(x)[0, 0]
array([[0.  , 0.25, 0.75, 1.  ],
       [0.5 , 0.75, 1.25, 1.5 ],
       [1.5 , 1.75, 2.25, 2.5 ],
       [2.  , 2.25, 2.75, 3.  ]], dtype=float32)
"""
from __future__ import annotations

import numpy as np

from .. import backend
from ..backend import get_array_module
from ..checks import non_negative_int, pair
from .crops import RandomTransform, crop_flip, draw_crops


def _check_batch(name, x):
    if x.ndim != 4:
        raise ValueError(f"{name}: expected a batch of shape (N, C, H, W), got {x.shape}")


class Compose:
    """Apply transforms in order. ``state_dict()`` gathers the random ones' states by position
    (``{"1": ..., "2": ...}``; transforms may share a generator) and ``load_state_dict()``
    hands them back."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        # each step allocates on the batch's device; the Loader enters this scope around any
        # transform, but a pipeline is also called directly (predict.Classifier)
        with backend.device_scope(x):
            for t in self.transforms:
                x = t(x)
        return x

    def _random(self):
        return {str(i): t for i, t in enumerate(self.transforms) if hasattr(t, "state_dict")}

    def state_dict(self) -> dict:
        return {key: t.state_dict() for key, t in self._random().items()}

    def load_state_dict(self, state: dict) -> None:
        random = self._random()
        if set(state) != set(random):
            raise ValueError(f"Compose: state for transforms {sorted(state)} but the random "
                             f"ones here are {sorted(random)}")
        for key, t in random.items():
            t.load_state_dict(state[key])

    def __repr__(self):
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


class ToFloat:
    """``uint8`` pixels to floats: ``y = x * scale`` (``1/255`` maps to [0, 1])."""

    def __init__(self, scale=1 / 255, dtype=np.float32):
        self.scale, self.dtype = scale, np.dtype(dtype)

    def __call__(self, x):
        return x.astype(self.dtype) * self.dtype.type(self.scale)

    def __repr__(self):
        return f"ToFloat(scale={self.scale:g}, dtype={self.dtype.name})"


class Normalize:
    """``y = (x - mean) / std``, with a scalar or one value per channel for each."""

    def __init__(self, mean, std):
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        if np.any(self.std <= 0):
            raise ValueError(f"Normalize: std must be positive, got {std!r}")
        self._constants = {}   # (device, dtype) -> (scale, shift) there, copied once

    def __call__(self, x):
        key = (backend.device_of(x), x.dtype)
        if key not in self._constants:
            shape = (1, -1, 1, 1) if self.mean.ndim else ()
            self._constants[key] = tuple(
                backend.to_device(c.reshape(shape), key[0], x.dtype)
                for c in (1 / self.std, self.mean / self.std))
        scale, shift = self._constants[key]
        return x * scale - shift

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def bilinear_matrix(in_size: int, out_size: int, dtype=np.float64) -> np.ndarray:
    """The ``(out_size, in_size)`` matrix ``A`` of 1-D bilinear resampling (half-pixel
    centres), so that ``A @ v`` resamples the vector ``v``."""
    i = np.arange(out_size)
    s = np.maximum((i + 0.5) * (in_size / out_size) - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    frac = s - i0
    A = np.zeros((out_size, in_size))
    np.add.at(A, (i, i0), 1 - frac)   # add: i0 == i1 at the last row/column
    np.add.at(A, (i, i1), frac)
    return A.astype(dtype)


def resize_bilinear(x, size, matrices=None):
    """Resize a batch (N, C, H, W) to ``size`` (int or (OH, OW)) as ``A_h @ x @ A_w^T``.

    ``matrices``: a dict that keeps ``A_h`` and ``A_w`` on the batch's device per input and
    output size and dtype (:class:`Resize` has one), instead of copying them there at each call."""
    _check_batch("resize_bilinear", x)
    OH, OW = pair("resize_bilinear", "size", size, 1)
    N, C, H, W = x.shape
    if (OH, OW) == (H, W):
        return x
    xp = get_array_module(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    key = (backend.device_of(x), dtype, H, W, OH, OW)
    matrices = {} if matrices is None else matrices
    if key not in matrices:
        matrices[key] = tuple(backend.to_device(bilinear_matrix(in_size, out, dtype), key[0])
                              for in_size, out in ((H, OH), (W, OW)))
    A_h, A_w = matrices[key]
    rows = xp.matmul(A_h, x.astype(dtype, copy=False))          # (N, C, OH, W)
    return (rows.reshape(-1, W) @ A_w.T).reshape(N, C, OH, OW)   # one GEMM over all rows


class Resize:
    """Bilinear resize to ``size`` (see the module docstring for the two-matrix form); the
    matrices are built once per input size and kept on each device that uses them."""

    def __init__(self, size):
        self.size = pair("Resize", "size", size, 1)
        self._matrices = {}

    def __call__(self, x):
        return resize_bilinear(x, self.size, self._matrices)

    def __repr__(self):
        return f"Resize(size={self.size})"


class RandomCrop(RandomTransform):
    """Pad by ``padding`` zeros on every side, then cut a random ``size`` window per image.

    ``size=None`` keeps the input's own size (the classic "pad 2, crop 28" jitter of MNIST-like
    data). Offsets are drawn uniformly from every window position; ``last_offsets`` holds the
    (top, left) arrays of the last batch. ``generator``: see :mod:`minialex.data.crops`.
    """

    def __init__(self, size=None, padding=0, generator=None):
        super().__init__(generator)
        self.size = None if size is None else pair("RandomCrop", "size", size, 1)
        self.padding = non_negative_int("RandomCrop", "padding", padding)
        self.last_offsets = None

    def __call__(self, x):
        _check_batch("RandomCrop", x)
        N, C, H, W = x.shape
        P = self.padding
        OH, OW = self.size or (H, W)
        if OH > H + 2 * P or OW > W + 2 * P:
            raise ValueError(f"RandomCrop: a {OH}x{OW} crop does not fit a {H}x{W} image padded "
                             f"by {P}")
        if P:
            x = get_array_module(x).pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
        top, left, flip = draw_crops(self.rng(), N, H + 2 * P - OH, W + 2 * P - OW, p_flip=0)
        self.last_offsets = (top, left)
        return crop_flip(x, top, left, flip, (OH, OW))

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip(RandomTransform):
    """Mirror each image left-right with probability ``p``; ``last_flipped`` holds the choice.
    ``generator``: see :mod:`minialex.data.crops`."""

    def __init__(self, p=0.5, generator=None):
        super().__init__(generator)
        if not 0 <= p <= 1:
            raise ValueError(f"RandomHorizontalFlip: p must lie in [0, 1], got {p!r}")
        self.p = p
        self.last_flipped = None

    def __call__(self, x):
        _check_batch("RandomHorizontalFlip", x)
        N, C, H, W = x.shape
        top, left, flip = draw_crops(self.rng(), N, 0, 0, random_crop=False, p_flip=self.p)
        self.last_flipped = flip
        return crop_flip(x, top, left, flip, (H, W))   # a whole-image "crop", mirrored or not

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class GreyAugmenter:
    """Fashion-MNIST's pipelines for uint8 batches, with the interface of
    :class:`minialex.data.augment.Augmenter`: ``train`` (to [0, 1], random crop after
    ``crop_padding`` zeros, random flip, normalise, resize to ``input_size``), ``eval`` (the
    same without the random steps) and ``ten_crop`` (None: the paper's ten crops need images
    larger than the input). ``state_dict`` is the training pipeline's random state.

    Augmentation and normalisation run at the stored size, before the resize, where they are
    cheapest (normalisation commutes with the resize; see the module docstring).

    >>> grey = GreyAugmenter(56, mean=0.3, std=0.4, flip=True, generator=np.random.default_rng(0))
    >>> grey.train(np.zeros((2, 1, 28, 28), np.uint8)).shape
    (2, 1, 56, 56)
    """
    ten_crop = None

    def __init__(self, input_size, mean, std, *, crop_padding=0, flip=False, generator=None):
        augment = []
        if crop_padding:
            augment.append(RandomCrop(None, crop_padding, generator))
        if flip:
            augment.append(RandomHorizontalFlip(0.5, generator))
        common = [Normalize(mean, std), Resize(input_size)]
        self.train_pipeline = Compose([ToFloat()] + augment + common)
        self.eval_pipeline = Compose([ToFloat()] + common)

    def train(self, x):
        return self.train_pipeline(x)

    def eval(self, x):
        return self.eval_pipeline(x)

    def state_dict(self) -> dict:
        return self.train_pipeline.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.train_pipeline.load_state_dict(state)

    def __repr__(self):
        return f"GreyAugmenter(train={self.train_pipeline!r})"
