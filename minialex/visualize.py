r"""Pictures of what a network learned, as in the paper: conv1's filters (Fig. 3) and fc7 feature
retrieval (Fig. 4). Pure NumPy image assembly, saved as PNG with Pillow; no matplotlib.

**Filters** (:func:`filter_grid`). Each conv1 kernel ``W[o]`` of shape ``(C, KH, KW)`` is shown
as a ``KH x KW`` picture, colour for ``C = 3`` and grey for ``C = 1``, its values mapped to 0..255
symmetrically about zero, each kernel by its own largest magnitude:

.. math::  p_o = 127.5 \, (1 + W_o / \max |W_o|),

so a grey (or neutral colour) pixel is a zero weight, whatever the kernel's scale. The
kernels are laid out in rows, one block per *tower*: the paper trains AlexNet on two GPUs, and
conv2 (``groups=2``) lets the first half of conv1's kernels feed one GPU's tower and the second
half the other's, which is why its Fig. 3 shows 48 colour-agnostic and 48 colour-specific
kernels as two blocks. Here the towers are conv2's groups.

**Retrieval** (:func:`nearest_neighbours`, :func:`retrieval`). The paper (Sec. 6.1) takes the
4096-d activations of the last hidden layer, fc7 (:meth:`minialex.models.AlexNet.fc7`), of a
test image, and the training images whose vectors are nearest in Euclidean distance:

.. math::  \|q - b\|^2 = \|q\|^2 - 2\, q \cdot b + \|b\|^2,

one matrix product for a block of queries against every training vector. How well the features
group images is summed up by the share of neighbours that have the query's own class;
``features=None`` ranks by raw pixels instead, the baseline the paper contrasts (similar fc7
vectors for images whose pixels are far apart).

>>> import numpy as np
>>> w = np.zeros((4, 1, 3, 3), np.float32); w[:, 0, 1, 1] = 1
>>> filter_grid(w, scale=1, pad=1, cols=4).shape          # 4 kernels in one row
(5, 17)
>>> filter_grid(w, scale=1, pad=1, cols=2, towers=2).shape  # two towers, 4 pixels apart
(14, 9)
>>> queries, base = np.array([[0.0], [10.0]]), np.array([[9.0], [1.0], [0.5]])
>>> nearest_neighbours(queries, base, k=2)
array([[2, 1],
       [0, 1]])
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from . import backend, checkpoint, nn
from .data import Loader
from .tensor import Tensor, no_grad

GAP = 4                # pixels between towers, and between a query and its neighbours


# -- assembling pictures -----------------------------------------------------------------------
def tile(images, cols: int, *, pad: int = 1, background: int = 255) -> np.ndarray:
    """uint8 ``(N, H, W)`` or ``(N, H, W, 3)`` images in rows of ``cols``, ``pad`` pixels of
    ``background`` between and around them; grey stays 2-D, colour ``(rows H', cols W', 3)``."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.dtype != np.uint8:
        raise ValueError(f"tile: expected uint8 images (N, H, W) or (N, H, W, 3), got "
                         f"{images.dtype} {images.shape}")
    n, h, w = images.shape[:3]
    rows = max(1, math.ceil(n / cols))
    shape = (pad + rows * (h + pad), pad + cols * (w + pad)) + images.shape[3:]
    out = np.full(shape, background, dtype=np.uint8)
    for i in range(n):          # a few hundred pictures at most: one copy each
        r, c = divmod(i, cols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + c * (w + pad):pad + c * (w + pad) + w] = images[i]
    return out


def upscale(image, factor: int) -> np.ndarray:
    """Each pixel as a ``factor x factor`` square (nearest neighbour), so small kernels show."""
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def to_display(images) -> np.ndarray:
    """Dataset images as uint8 pictures: ``(N, 1, H, W)`` grey -> ``(N, H, W)``; ``(N, H, W, 3)``
    (channels last, as prepared folders store them) kept; ``(N, 3, H, W)`` made channels last."""
    images = backend.to_numpy(images)
    if images.ndim != 4:
        raise ValueError(f"to_display: expected a batch (N, C, H, W) or (N, H, W, 3), got "
                         f"shape {images.shape}")
    if images.shape[1] == 1:
        images = images[:, 0]
    elif images.shape[1] == 3 and images.shape[-1] != 3:
        images = images.transpose(0, 2, 3, 1)
    if images.dtype != np.uint8:
        images = np.clip(images, 0, 255).astype(np.uint8)
    return images


def to_rgb(image) -> np.ndarray:
    """A grey picture as RGB (colour ones unchanged), to join grey and colour pieces."""
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image


def save_png(image, path) -> str:
    """Write a uint8 picture with Pillow, atomically (a reader never sees half a file);
    returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    picture = Image.fromarray(np.ascontiguousarray(image))
    checkpoint.atomic_write(path, lambda f: picture.save(f, format="PNG"))
    return str(path)


# -- Fig. 3: conv1's filters -------------------------------------------------------------------
def filter_pictures(weight) -> np.ndarray:
    """uint8 pictures ``(O, KH, KW)`` (one input channel) or ``(O, KH, KW, 3)`` (three) of conv
    kernels ``(O, C, KH, KW)``, each mapped symmetrically about zero by its own largest
    magnitude (see the module docstring)."""
    w = backend.to_numpy(weight).astype(np.float64)
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise ValueError(f"filter_pictures: expected conv1 weights (out, 1 or 3, KH, KW), got "
                         f"shape {w.shape}")
    peak = np.abs(w).max(axis=(1, 2, 3), keepdims=True)
    w = w / np.where(peak > 0, peak, 1.0)
    pictures = np.rint(127.5 * (1.0 + w)).astype(np.uint8)
    return pictures[:, 0] if w.shape[1] == 1 else pictures.transpose(0, 2, 3, 1)


def filter_grid(weight, *, towers: int = 1, scale: int = 4, pad: int = 1,
                cols: int | None = None) -> np.ndarray:
    """The picture of conv kernels ``(O, C, KH, KW)``: each kernel enlarged ``scale`` times,
    ``cols`` per row (default: a divisor of a tower's kernels near four times the rows),
    ``towers`` blocks one above the other, ``GAP`` pixels apart (Fig. 3's two GPUs)."""
    pictures = filter_pictures(weight)
    n = len(pictures)
    if towers < 1 or n % towers:
        raise ValueError(f"filter_grid: {n} kernels cannot be split into towers={towers}")
    per_tower = n // towers
    if cols is None:     # wide blocks as in Fig. 3 (48 kernels: 3 rows of 16), no row short
        target = math.sqrt(4 * per_tower)
        cols = min((d for d in range(1, per_tower + 1) if per_tower % d == 0),
                   key=lambda d: (round(abs(math.log(d / target)), 9), -d))   # ties: wider
    blocks = [tile(np.stack([upscale(p, scale) for p in pictures[t * per_tower:
                                                                (t + 1) * per_tower]]),
                   cols, pad=pad) for t in range(towers)]
    gap = np.full((GAP,) + blocks[0].shape[1:], 255, dtype=np.uint8)
    pieces = [blocks[0]]
    for block in blocks[1:]:
        pieces += [gap, block]
    return np.concatenate(pieces, axis=0)


def _conv1(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def conv1_towers(model) -> int:
    """How many towers conv1's kernels feed: the groups of the convolution after it."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[1].groups if len(convs) > 1 else 1


def conv1_filters(model, *, scale: int | None = None, relative_to=None) -> np.ndarray:
    """Fig. 3 for ``model``: its first convolution's kernels, one block per tower. ``scale``
    defaults to what makes a kernel about 40 pixels wide (11x11 -> x4, 5x5 -> x8).
    ``relative_to``, a model of the same architecture (e.g. the run's initial weights), shows
    the change from its kernels instead: what training learned."""
    weight = backend.to_numpy(_conv1(model).weight.data)
    if relative_to is not None:
        weight = weight - backend.to_numpy(_conv1(relative_to).weight.data)
    scale = scale or max(1, round(40 / weight.shape[-1]))
    return filter_grid(weight, towers=conv1_towers(model), scale=scale)


# -- Fig. 4: retrieval by fc7 vectors -----------------------------------------------------------
def fc7_features(model, dataset, transform, *, batch_size: int = 256) -> np.ndarray:
    """fc7 vectors ``(N, hidden)`` float32 of every image of ``dataset``, in eval mode, on the
    model's device, after ``transform`` (the run's evaluation transform)."""
    device = backend.device_of(next(iter(model.parameters())).data)
    loader = Loader(dataset, batch_size, transform=transform, device=device)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            parts = [backend.to_numpy(model.fc7(Tensor(x)).data) for x, _ in loader.epoch()]
    finally:
        model.train(was_training)
    return np.concatenate(parts).astype(np.float32, copy=False)


def pixel_features(dataset) -> np.ndarray:
    """Raw pixels, one float32 row per image: the baseline for retrieval."""
    images, _ = dataset.get_batch(np.arange(len(dataset)))
    return np.asarray(images, dtype=np.float32).reshape(len(dataset), -1)


def nearest_neighbours(queries, base, k: int, *, block: int = 512) -> np.ndarray:
    """Indices ``(Q, k)`` of the ``k`` rows of ``base`` nearest to each query in Euclidean
    distance, nearest first (ties by index)."""
    queries, base = np.asarray(queries, np.float64), np.asarray(base, np.float64)
    if queries.ndim != 2 or base.ndim != 2 or queries.shape[1] != base.shape[1]:
        raise ValueError(f"nearest_neighbours: expected (Q, D) queries and (N, D) base, got "
                         f"{queries.shape} and {base.shape}")
    if not 1 <= k <= len(base):
        raise ValueError(f"nearest_neighbours: k must lie in 1..{len(base)}, got {k!r}")
    base_sq = (base ** 2).sum(axis=1)
    out = []
    for start in range(0, len(queries), block):     # a (block, N) distance matrix at a time
        q = queries[start:start + block]
        d = base_sq[None, :] - 2.0 * q @ base.T      # + |q|^2, the same along each row
        near = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.lexsort((near, np.take_along_axis(d, near, axis=1)), axis=1)
        out.append(np.take_along_axis(near, order, axis=1))
    return np.concatenate(out)


def same_class_share(neighbours, base_labels, query_labels) -> float:
    """The fraction of all neighbours whose label is their query's."""
    labels = np.asarray(base_labels)[neighbours]
    return float((labels == np.asarray(query_labels)[:, None]).mean())


class _Subset:
    """The images ``indices`` of ``dataset``, as a dataset (``len``, ``get_batch``)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def get_batch(self, indices):
        return self.dataset.get_batch(self.indices[indices])


def sample_indices(size: int, n: int | None, seed) -> np.ndarray:
    """``n`` distinct indices of ``0..size-1`` drawn at random with ``seed``, in drawn order
    (all of them, in order, when ``n`` is None or at least ``size``). Random, not the first
    ``n``: image-folder splits are sorted by class, so their first images are of few classes."""
    if n is None or n >= size:
        return np.arange(size)
    return np.random.default_rng(seed).choice(size, n, replace=False)


def retrieval(train, test, *, features=None, queries: int = 1000, k: int = 6,
              limit_train: int | None = None, seed: int = 0, exclude_self: bool = False) -> dict:
    """Neighbours among ``limit_train`` training images of ``queries`` test images (both drawn
    at random with ``seed``; None or more than there are: all) by ``features(dataset) -> (N,
    D)`` (e.g. ``lambda d: fc7_features(model, d, transform)``; None: raw pixels). Returns
    ``{"neighbours"`` (indices into ``train``), ``"queries"`` (indices into ``test``),
    ``"query_labels", "train_labels"`` (of the searched images), ``"share"}``.

    ``exclude_self``: ``test`` is ``train`` (one folder of images searched for its own
    images), and a query's own image, at distance 0, is not counted among its neighbours."""
    base_index = np.sort(sample_indices(len(train), limit_train, [seed, 0]))
    query_index = sample_indices(len(test), queries, [seed, 1])
    base, asked = _Subset(train, base_index), _Subset(test, query_index)
    features = features or pixel_features
    neighbours = nearest_neighbours(features(asked), features(base), k + exclude_self)
    if exclude_self:
        own = base_index[neighbours] == query_index[:, None]
        own[~own.any(axis=1), -1] = True         # a query outside the base: drop the farthest
        neighbours = neighbours[~own].reshape(len(query_index), k)
    # the labels alone: not get_batch, which would read every image again
    query_labels = np.asarray(test.labels)[query_index]
    train_labels = np.asarray(train.labels)[base_index]
    return {"neighbours": base_index[neighbours], "queries": query_index,
            "query_labels": query_labels, "train_labels": train_labels,
            "share": same_class_share(neighbours, train_labels, query_labels)}


def retrieval_grid(train, test, neighbours, *, queries=None, rows: int = 5,
                   scale: int | None = None, pad: int = 1) -> np.ndarray:
    """Fig. 4's picture: per row, a test image, a gap, then its nearest training images, for
    the first ``rows`` queries of :func:`retrieval`'s ``neighbours``; ``queries``: its
    ``"queries"``, the test images' indices (None: the first images of ``test``)."""
    rows = min(rows, len(neighbours))
    queries = np.arange(rows) if queries is None else np.asarray(queries)[:rows]
    queries = to_display(test.get_batch(queries)[0])
    found = to_display(train.get_batch(neighbours[:rows].ravel())[0])
    scale = scale or max(1, round(64 / queries.shape[1]))
    left = tile(np.stack([upscale(q, scale) for q in queries]), 1, pad=pad)
    right = tile(np.stack([upscale(f, scale) for f in found]), neighbours.shape[1], pad=pad)
    gap = np.full((left.shape[0], GAP) + left.shape[2:], 255, dtype=np.uint8)
    return np.concatenate([to_rgb(left), to_rgb(gap), to_rgb(right)], axis=1)


__all__ = ["conv1_filters", "fc7_features", "filter_grid", "filter_pictures",
           "nearest_neighbours", "pixel_features", "retrieval", "retrieval_grid",
           "same_class_share", "sample_indices", "save_png", "tile", "to_display"]
