r"""The training set's statistics that the paper's preprocessing and augmentation need.

Krizhevsky et al. 2012, Sec. 2 and 4.1, over the ``N`` prepared uint8 RGB training images
:math:`x_n[h, w, c]` (0..255):

- the per-pixel **mean image** :math:`\bar x[h, w, c] = \frac1N \sum_n x_n[h, w, c]`, subtracted
  from every image ("the mean activity over the training set", Sec. 2);
- the **PCA of RGB** (Sec. 4.1): eigenvalues :math:`\lambda_i` (descending) and eigenvectors
  :math:`p_i` (the columns of ``eigvecs``) of the 3x3 covariance of the RGB values of every pixel
  of every training image,

  .. math::  C = \frac{1}{255^2} \Big( \frac1P \sum_{n,h,w} x x^\top - \mu \mu^\top \Big),
             \qquad \mu = \frac1P \sum_{n,h,w} x, \qquad P = N H W,

  i.e. computed on pixels scaled to [0, 1]. That scale matters: the paper adds
  :math:`[p_1 p_2 p_3][\alpha_1\lambda_1, \alpha_2\lambda_2, \alpha_3\lambda_3]^T` with
  :math:`\alpha_i \sim N(0, 0.1)`, a term in *variance* units, so on 0..255 values it would shift
  colours by hundreds of levels; on [0, 1] values it moves them by a few levels, the "intensity
  and colour of the illumination" the paper describes. :mod:`minialex.data.augment` scales the
  shift back to 0..255.

Both come from three sums (:class:`Sums`) that add up over images, so parallel workers each sum
their share and the parent adds the results.

>>> x = np.zeros((2, 1, 2, 3), np.uint8)
>>> x[0, 0, 0] = (255, 255, 255)                  # one white pixel among four black ones
>>> sums = Sums.of(x)
>>> sums.mean_image()[0]
array([[127.5, 127.5, 127.5],
       [  0. ,   0. ,   0. ]], dtype=float32)
>>> eigvals, eigvecs = sums.pca()
>>> eigvals.round(4), eigvecs[:, 0].round(4)     # all variance along grey: 3 * (1/4) * (3/4)
(array([0.5625, 0.    , 0.    ]), array([0.5774, 0.5774, 0.5774]))
"""
from __future__ import annotations

import dataclasses

import numpy as np

PIXEL_MAX = 255.0       # uint8 white; the RGB covariance is computed on pixels / PIXEL_MAX


@dataclasses.dataclass
class Sums:
    r"""Sums over images that the mean image and the RGB PCA are computed from.

    Attributes:
        pixel_sum: ``(H, W, 3)`` int64, :math:`\sum_n x_n` (exact).
        rgb_outer: ``(3, 3)`` float64, :math:`\sum_{n,h,w} x x^T` (exact: integers below 2**53).
        count: number of images.
    """
    pixel_sum: np.ndarray
    rgb_outer: np.ndarray
    count: int

    @classmethod
    def zeros(cls, height: int, width: int) -> "Sums":
        return cls(np.zeros((height, width, 3), np.int64), np.zeros((3, 3)), 0)

    @classmethod
    def of(cls, images) -> "Sums":
        """The sums of a uint8 ``(N, H, W, 3)`` batch."""
        sums = cls.zeros(*images.shape[1:3])
        sums.add(images)
        return sums

    def add(self, images) -> None:
        """Add a uint8 ``(N, H, W, 3)`` batch, in place."""
        rgb = images.reshape(-1, 3).astype(np.float64)
        self.pixel_sum += images.sum(axis=0, dtype=np.int64)
        self.rgb_outer += rgb.T @ rgb
        self.count += len(images)

    def __add__(self, other: "Sums") -> "Sums":
        return Sums(self.pixel_sum + other.pixel_sum, self.rgb_outer + other.rgb_outer,
                    self.count + other.count)

    @property
    def n_pixels(self) -> int:
        return self.count * self.pixel_sum.shape[0] * self.pixel_sum.shape[1]

    def rgb_sum(self) -> np.ndarray:
        return self.pixel_sum.sum(axis=(0, 1))

    def mean_image(self) -> np.ndarray:
        r""":math:`\bar x`, ``(H, W, 3)`` float32 in 0..255."""
        return (self.pixel_sum / self.count).astype(np.float32)

    def pca(self):
        """``(eigvals, eigvecs)`` of the RGB covariance of pixels/255 (see :func:`rgb_pca`)."""
        return rgb_pca(self.rgb_sum(), self.rgb_outer, self.n_pixels)


def rgb_pca(rgb_sum, rgb_outer, n_pixels):
    r"""Eigen-decomposition of the RGB covariance, from sums over pixels in 0..255.

    :math:`C = (\sum x x^T / n - \mu\mu^T) / 255^2` with :math:`\mu = \sum x / n`. Returns
    ``(eigvals, eigvecs)`` in float64, eigenvalues descending (clipped at 0 against rounding),
    eigenvectors as columns, each signed so that its largest-magnitude entry is positive (a
    deterministic choice; PCA noise is symmetric in the sign).
    """
    mu = np.asarray(rgb_sum, dtype=np.float64) / n_pixels
    cov = (np.asarray(rgb_outer, dtype=np.float64) / n_pixels - np.outer(mu, mu)) / PIXEL_MAX**2
    eigvals, eigvecs = np.linalg.eigh(cov)
    eigvals, eigvecs = np.clip(eigvals[::-1], 0.0, None), eigvecs[:, ::-1]
    signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), np.arange(3)])
    return eigvals, eigvecs * signs
