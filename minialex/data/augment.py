r"""The paper's augmentation and test-time crops, vectorised over the batch.

Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural
Networks" (NIPS 2012), Sec. 4.1 (Data Augmentation): random 224x224 patches of the 256x256
images and their horizontal reflections, PCA colour noise, and 10 patches at test time.

Input: a batch of prepared images, uint8 ``(N, S, S, 3)`` (channels last, as stored by
:mod:`minialex.data.prepare`), on the CPU (NumPy) or the GPU (CuPy); everything runs on the
batch's own array module, so a GPU trainer copies the uint8 batch (4x smaller than float32) and
augments it on the device. Output: float32 ``(N, 3, crop, crop)`` (NCHW), contiguous.

Training, per image :math:`n`, with offsets :math:`t_n, l_n \in \{0..S-crop\}`, flip
:math:`f_n` and :math:`\alpha_n \sim N(0, 0.1)^3`:

.. math::

    y_n[c, i, j] = s \cdot \big(x_n[t_n + i, \tilde j, c] - \bar x[t_n + i, \tilde j, c]
                   + 255 \, (P (\alpha_n \odot \lambda))_c\big),
    \qquad \tilde j = l_n + (crop - 1 - j \text{ if } f_n \text{ else } j)

- **random crop** (a factor of 33x33 for 224 of 256) and **horizontal flip** (x2) are one gather
  (:func:`minialex.data.crops.crop_flip`, shared with the grey pipeline of
  :mod:`minialex.data.transforms`), which copies each crop already in NCHW order;
- **PCA colour noise**: :math:`P` holds the eigenvectors (columns) and :math:`\lambda` the
  eigenvalues of the training set's RGB covariance, computed on pixels/255 (see
  :mod:`minialex.data.stats` for why that scale), hence the factor 255; one shift per image,
  the same for all its pixels;
- **mean subtraction** uses the per-pixel mean image :math:`\bar x` **cropped at the same offset
  and flipped the same way**: cropping commutes with subtraction, so this is exactly the paper's
  "subtract the mean from each pixel" of the 256x256 image, done after the crop (the mean image
  is not flat: photos are brighter at the top, so its central region would be off by a few levels
  near the crop's edges). A ``(3,)`` per-channel mean is also accepted;
- :math:`s` (``scale``) is 1 for the paper (0..255 minus the mean, nothing else).

Randomness is **drawn** (:func:`draw_augmentation`: small ``(N,)`` / ``(N, 3)`` arrays from a
host generator, in a fixed order: top, left, flip, alpha) separately from how it is **applied**
(:func:`apply_augmentation`, deterministic), so tests can feed the CPU and the GPU the same
draws and inspect them. :class:`Augmenter` follows the random-stream convention of
:mod:`minialex.data.crops`: ``generator=None`` draws from minialex's CPU stream at each call (the
same seed gives the same crops, flips and colour noise on the CPU and the GPU), an explicit
generator is used as given and saved by ``state_dict()``.

Evaluation: the centre crop (:meth:`Augmenter.eval`), and :func:`ten_crop` (four corners,
centre, and their mirrors) whose 10 softmax outputs ``minialex.functional.average_softmax``
averages, as the paper's test time. :class:`Augmenter` binds all of it to a prepared dataset's
statistics; :class:`minialex.data.transforms.GreyAugmenter` offers the same interface
(``train``, ``eval``, ``ten_crop``, ``state_dict``) for Fashion-MNIST's grey images.

Example:
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 256, size=(2, 256, 256, 3), dtype=np.uint8)
    >>> mean = images.mean(axis=0, dtype=np.float32)
    >>> eigvals, eigvecs = np.array([0.2, 0.02, 0.005]), np.eye(3)
    >>> draws = draw_augmentation(rng, 2)
    >>> x = apply_augmentation(images, draws, mean=mean, eigvals=eigvals, eigvecs=eigvecs)
    >>> x.shape, x.dtype
    ((2, 3, 224, 224), dtype('float32'))
    >>> ten_crop(images, mean=mean).shape
    (10, 2, 3, 224, 224)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import backend
from ..backend import get_array_module, to_numpy
from .crops import RandomTransform, crop_flip, draw_crops, draws_on_device, windows
from .stats import PIXEL_MAX  # eigenvalues are of pixels / PIXEL_MAX; shifts are in 0..255

IMAGE_SIZE = 256         # the paper's training images, 256x256 (Sec. 2)
CROP_SIZE = 224          # the paper's input patches
PCA_STD = 0.1            # alpha_i ~ N(0, 0.1)
TEN_CROPS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre",
             "top-left mirrored", "top-right mirrored", "bottom-left mirrored",
             "bottom-right mirrored", "centre mirrored")


@dataclasses.dataclass(frozen=True)
class Draws:
    """The random choices for one batch, as small arrays (NumPy or CuPy).

    Attributes:
        top, left: ``(M,)`` integer crop offsets, in ``0..S-crop``.
        flip: ``(M,)`` bool, True mirrors the crop left-right.
        alpha: ``(M, 3)`` float PCA coefficients, or None for no colour noise.
        image: ``(M,)`` index of the batch image each crop comes from; None means
            ``arange(N)`` (one crop per image, ``M == N``).
    """
    top: object
    left: object
    flip: object
    alpha: object = None
    image: object = None

    def __len__(self):
        return len(self.top)


def draw_augmentation(rng, n: int, *, size: int = IMAGE_SIZE, crop: int = CROP_SIZE,
                      random_crop: bool = True, flip: bool = True,
                      pca_std: float | None = PCA_STD) -> Draws:
    """Draw one batch's crops, flips and PCA coefficients from ``rng`` (top, left, flip, alpha).

    ``random_crop=False`` takes the centre; ``flip=False`` never mirrors; ``pca_std=None`` (or 0)
    adds no colour noise. Each offset is uniform over the ``size - crop + 1`` positions.
    """
    if crop > size:
        raise ValueError(f"draw_augmentation: crop {crop} is larger than the image size {size}")
    top, left, mirror = draw_crops(rng, n, size - crop, size - crop, random_crop=random_crop,
                                   p_flip=0.5 if flip else 0)
    alpha = (rng.standard_normal((n, 3)) * pca_std).astype(np.float32) if pca_std else None
    return Draws(top=top, left=left, flip=mirror, alpha=alpha)


def center_draws(n: int, size: int = IMAGE_SIZE, crop: int = CROP_SIZE) -> Draws:
    """The centre crop of each image, not mirrored, no colour noise."""
    offset = np.full(n, (size - crop) // 2)
    return Draws(top=offset, left=offset, flip=np.zeros(n, dtype=bool))


def ten_crop_draws(n: int, size: int = IMAGE_SIZE, crop: int = CROP_SIZE) -> Draws:
    """The paper's 10 test crops of each of ``n`` images, crop-major: entry ``k*n + i`` is crop
    ``TEN_CROPS[k]`` of image ``i``."""
    far, mid = size - crop, (size - crop) // 2
    tops = np.array([0, 0, far, far, mid] * 2)
    lefts = np.array([0, far, 0, far, mid] * 2)
    flips = np.repeat([False, True], 5)
    return Draws(top=np.repeat(tops, n), left=np.repeat(lefts, n), flip=np.repeat(flips, n),
                 image=np.tile(np.arange(n), 10))


def pca_shift(alpha, eigvals, eigvecs):
    r"""Per-image colour shift in 0..255 units, ``(M, 3)``: :math:`255\, P(\alpha \odot \lambda)`.
    """
    xp = get_array_module(alpha, eigvals, eigvecs)
    alpha, eigvals, eigvecs = (xp.asarray(a, dtype=xp.float32) for a in (alpha, eigvals, eigvecs))
    return PIXEL_MAX * (alpha * eigvals) @ eigvecs.T


def apply_augmentation(images, draws: Draws, *, crop: int = CROP_SIZE, mean=None, eigvals=None,
                       eigvecs=None, scale: float = 1.0, dtype=np.float32):
    """Crop, flip, colour-shift and normalise a uint8 batch as ``draws`` say; no randomness.

    Args:
        images: ``(N, H, W, C)`` uint8 (NumPy or CuPy; a memory map is fine).
        draws: from :func:`draw_augmentation`, :func:`center_draws` or :func:`ten_crop_draws`.
        mean: ``(H, W, C)`` per-pixel mean image (cropped and flipped with each image), ``(C,)``
            per-channel mean, or None.
        eigvals, eigvecs: RGB PCA of the training set (needed when ``draws.alpha`` is set).
        scale: multiplies the result (1 for the paper).

    Returns ``(M, C, crop, crop)`` of ``dtype`` on the batch's device, ``M = len(draws)``.
    """
    xp = get_array_module(images)
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"apply_augmentation: expected (N, H, W, C) images, got shape "
                         f"{getattr(images, 'shape', None)}")
    N, H, W, C = images.shape
    if crop > H or crop > W:
        raise ValueError(f"apply_augmentation: crop {crop} is larger than the {H}x{W} images")
    if draws.alpha is not None and (eigvals is None or eigvecs is None):
        raise ValueError("apply_augmentation: draws.alpha is set but eigvals/eigvecs are "
                         "missing (pass the prepared dataset's RGB PCA)")
    top, left, flip = to_numpy(draws.top), to_numpy(draws.left), to_numpy(draws.flip)
    if draws.image is None and len(top) != N:
        raise ValueError(f"apply_augmentation: {len(top)} draws for a batch of {N} images")
    image = np.arange(N) if draws.image is None else to_numpy(draws.image)
    if not (len(top) == len(left) == len(flip) == len(image)):
        raise ValueError(f"apply_augmentation: draws have unequal lengths top {len(top)}, "
                         f"left {len(left)}, flip {len(flip)}, image {len(image)}")
    if len(top) and (top.min() < 0 or left.min() < 0 or top.max() > H - crop
                     or left.max() > W - crop or image.min() < 0 or image.max() >= N):
        raise ValueError(f"apply_augmentation: a crop of {crop} at offsets top "
                         f"{top.min()}..{top.max()}, left {left.min()}..{left.max()} does not "
                         f"fit images of {H}x{W} (or an image index is outside 0..{N - 1})")
    with backend.device_scope(images):   # every array below is made on the batch's device
        top, left, flip, image, mirrored = draws_on_device(xp, top, left, flip, image,
                                                           np.flatnonzero(flip))
        out = crop_flip(images, top, left, flip, (crop, crop), image=image, channels_last=True,
                        mirrored=mirrored)
        out = out.astype(dtype, order="C")    # the gather keeps the source's channels-last layout
        if mean is not None:
            mean = xp.asarray(mean, dtype=dtype)
            if mean.shape == (C,):
                out -= mean[:, None, None]
            elif mean.shape == (H, W, C):
                # A mirrored crop of the mean = the crop of the mirrored mean at
                # left' = W-crop-left.
                both = xp.stack([mean, mean[:, ::-1]])
                left_in_source = xp.where(flip, (W - crop) - left, left)
                out -= windows(both, crop, crop, channels_last=True)[flip.astype(xp.int64), top,
                                                                     left_in_source]
            else:
                raise ValueError(f"apply_augmentation: mean must have shape {(H, W, C)} or "
                                 f"{(C,)}, got {mean.shape}")
        if draws.alpha is not None:
            out += pca_shift(xp.asarray(draws.alpha), xp.asarray(eigvals),
                             xp.asarray(eigvecs)).astype(dtype)[:, :, None, None]
        if scale != 1.0:
            out *= scale
        return out


def ten_crop(images, *, crop: int = CROP_SIZE, mean=None, scale: float = 1.0, dtype=np.float32):
    """The paper's 10 test crops, ``(10, N, C, crop, crop)`` in the order of :data:`TEN_CROPS`.

    ``.reshape(10 * N, C, crop, crop)`` (free: the result is contiguous) gives one batch, crop
    major, whose network outputs ``minialex.functional.average_softmax`` averages back to
    ``(N, K)``. The result
    is 10 times the batch: evaluate in batches a tenth of the training size.
    """
    N, H, W, C = images.shape
    out = apply_augmentation(images, ten_crop_draws(N, H, crop), crop=crop, dtype=dtype)
    out = out.reshape((10, N) + out.shape[1:])
    with backend.device_scope(out):
        if mean is not None:
            # Only 10 distinct mean crops: take them once and broadcast, instead of 10*N of them.
            mean = backend.to_device(mean, backend.device_of(out), dtype)
            if mean.shape == (H, W, C):
                out -= apply_augmentation(mean[None], ten_crop_draws(1, H, crop), crop=crop,
                                          dtype=dtype)[:, None]
            elif mean.shape == (C,):
                out -= mean[:, None, None]
            else:
                raise ValueError(f"ten_crop: mean must have shape {(H, W, C)} or {(C,)}, got "
                                 f"{mean.shape}")
        if scale != 1.0:
            out *= scale
        return out


class Augmenter(RandomTransform):
    """The train and evaluation transforms bound to a dataset's statistics and options.

    Keeps one copy of the mean image and the RGB PCA per device, so a GPU trainer copies
    them to the device once, not per batch. ``mean=None`` skips mean subtraction,
    ``pca_std=None`` (or ``eigvals=None``) skips colour noise; the defaults are the paper's.
    ``train``, ``eval`` and ``ten_crop`` take a uint8 ``(N, S, S, 3)`` batch and fit
    :class:`~minialex.data.loader.Loader`'s ``transform=`` (the Loader saves the state of
    ``transform=augmenter.train`` through its Augmenter). Training draws come from
    ``generator``: None is minialex's CPU stream ``backend.rng_for(np)``, looked up at each
    call, so ``minialex.manual_seed`` fixes them on every device; an explicit generator is
    saved by ``state_dict()``. ``last_draws`` keeps the last training draws.

    Example:
        >>> aug = Augmenter(mean=np.zeros((256, 256, 3), np.float32),
        ...                 generator=np.random.default_rng(0))
        >>> aug.train(np.zeros((4, 256, 256, 3), np.uint8)).shape
        (4, 3, 224, 224)
        >>> aug.last_draws.top.shape
        (4,)
    """

    def __init__(self, mean=None, eigvals=None, eigvecs=None, *, crop: int = CROP_SIZE,
                 random_crop: bool = True, flip: bool = True, pca_std: float | None = PCA_STD,
                 scale: float = 1.0, dtype=np.float32, generator=None):
        super().__init__(generator)
        self.crop, self.random_crop, self.flip, self.scale, self.dtype = (
            crop, random_crop, flip, scale, dtype)
        self.pca_std = pca_std if eigvals is not None and eigvecs is not None else None
        self.last_draws = None
        self._host = (mean, eigvals, eigvecs)
        self._on = {}

    @classmethod
    def from_prepared(cls, dataset, **options) -> "Augmenter":
        """Use a :class:`~minialex.data.prepare.PreparedDataset`'s mean image and RGB PCA."""
        return cls(dataset.mean, dataset.eigvals, dataset.eigvecs, **options)

    def __repr__(self):
        return (f"Augmenter(crop={self.crop}, random_crop={self.random_crop}, flip={self.flip}, "
                f"pca_std={self.pca_std}, mean={self._host[0] is not None}, scale={self.scale})")

    def _stats(self, images):
        """The mean and PCA on ``images``' device, copied there once."""
        device = backend.device_of(images)
        if device not in self._on:
            self._on[device] = tuple(None if a is None else
                                     backend.to_device(np.asarray(a), device, self.dtype)
                                     for a in self._host)
        return self._on[device]

    def apply(self, images, draws: Draws):
        """:func:`apply_augmentation` with this augmenter's statistics and options."""
        mean, eigvals, eigvecs = self._stats(images)
        return apply_augmentation(images, draws, crop=self.crop, mean=mean, eigvals=eigvals,
                                  eigvecs=eigvecs, scale=self.scale, dtype=self.dtype)

    def train(self, images):
        """Augmented ``(N, C, crop, crop)``: random crops, flips, colour noise, mean removed."""
        self.last_draws = draw_augmentation(
            self.rng(), images.shape[0], size=images.shape[1], crop=self.crop,
            random_crop=self.random_crop, flip=self.flip, pca_std=self.pca_std)
        return self.apply(images, self.last_draws)

    def eval(self, images):
        """Centre crops, mean subtracted, ``(N, C, crop, crop)``."""
        return self.apply(images, center_draws(images.shape[0], images.shape[1], self.crop))

    def ten_crop(self, images):
        """The 10 test crops, ``(10, N, C, crop, crop)`` (see :func:`ten_crop`)."""
        mean = self._stats(images)[0]
        return ten_crop(images, crop=self.crop, mean=mean, scale=self.scale, dtype=self.dtype)
