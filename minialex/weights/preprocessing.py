r"""What a network expects of its input pixels: ``Preprocessing``, remembered with imported weights.

A set of weights only works on images prepared as it was trained: torchvision's AlexNet wants
RGB pixels in 0..1, centred and scaled per channel by ImageNet's statistics; Caffe's wants BGR
pixels in 0..255 minus the mean pixel. Fed the other one's input, either network still runs
and silently misclassifies, so the loaders of :mod:`minialex.weights` return the weights'
preprocessing beside the model, and a checkpoint stores it (:meth:`Preprocessing.to_dict`).

For a pixel :math:`p_c \in [0, 255]` of RGB channel :math:`c`, the network's input channel
:math:`i` (``channel_order[i]`` names the RGB channel :math:`c(i)` it takes) is

.. math::

    x_i = \frac{p_{c(i)} \cdot \text{scale} / 255 - \text{mean}_i}{\text{std}_i}

with ``mean`` and ``std`` given in the network's channel order and in the units of ``scale``
(1: pixels in 0..1, torchvision; 255: grey levels, Caffe). In minialex's own terms
(:mod:`minialex.data.augment`: :math:`y = s (p - \bar p)` per RGB channel) that is a mean of
:attr:`Preprocessing.mean_rgb_255` grey levels and a scale of :attr:`Preprocessing.scale_rgb`.

Geometry: the shorter side is rescaled to ``resize`` and the central ``crop`` square kept
(torchvision's ``Resize(256)`` + ``CenterCrop(224)``). Caffe's ImageNet databases were made by
squashing every image to 256x256 (``convert_imageset --resize_height/--resize_width``), so
for Caffe's weights this keeps the aspect ratio where Caffe did not; the difference is a
fraction of a point of accuracy.

>>> CAFFE.channel_order, CAFFE.mean_rgb_255
('BGR', (123.0, 117.0, 104.0))
>>> pixels = np.full((1, 2, 2, 3), (123, 117, 104), dtype=np.uint8)   # RGB, channels last
>>> CAFFE.normalize(pixels).shape, float(abs(CAFFE.normalize(pixels)).max())
((1, 3, 2, 2), 0.0)
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import backend
from ..checks import positive_int

CHANNEL_ORDERS = ("RGB", "BGR")
PIXEL_MAX = 255.0


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How pixels become a network's input (see the module docstring for the formula).

    Attributes:
        source: where the weights came from (``"torchvision"``, ``"caffe"``, ...), for messages.
        channel_order: ``"RGB"`` or ``"BGR"``: the order of the network's input channels.
        resize: the shorter side is rescaled to this many pixels ...
        crop: ... and the central ``crop`` x ``crop`` square is fed to the network.
        mean: per input channel, in the network's channel order, in the units of ``scale``.
        std: per input channel, likewise; the centred value is divided by it.
        scale: what a pixel of 255 becomes before ``mean`` is subtracted (1 or 255).
    """
    source: str
    channel_order: str
    resize: int
    crop: int
    mean: tuple
    std: tuple
    scale: float

    def __post_init__(self):
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"Preprocessing: channel_order must be one of {CHANNEL_ORDERS}, "
                             f"got {self.channel_order!r}")
        positive_int("Preprocessing", "resize", self.resize)
        positive_int("Preprocessing", "crop", self.crop)
        if self.crop > self.resize:
            raise ValueError(f"Preprocessing: crop ({self.crop}) must not exceed resize "
                             f"({self.resize})")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(float(v)) for v in values):
                raise ValueError(f"Preprocessing: {name} must be 3 finite numbers, got "
                                 f"{values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not all(v > 0 for v in self.std):
            raise ValueError(f"Preprocessing: std must be positive, got {self.std!r}")
        if not (math.isfinite(float(self.scale)) and float(self.scale) > 0):
            raise ValueError(f"Preprocessing: scale must be a positive number, got "
                             f"{self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def rgb_index(self) -> tuple:
        """For each input channel of the network, the RGB channel it takes (``(2, 1, 0)`` for
        BGR)."""
        return tuple("RGB".index(c) for c in self.channel_order)

    @property
    def mean_rgb_255(self) -> tuple:
        """The mean in grey levels 0..255, per RGB channel (R, G, B)."""
        return self._per_rgb(m * PIXEL_MAX / self.scale for m in self.mean)

    @property
    def scale_rgb(self) -> tuple:
        """The factor on ``pixel - mean_rgb_255``, per RGB channel (R, G, B)."""
        return self._per_rgb(self.scale / (PIXEL_MAX * s) for s in self.std)

    def _per_rgb(self, values) -> tuple:
        values, out = list(values), [0.0] * 3
        for i, c in enumerate(self.rgb_index):
            out[c] = values[i]
        return tuple(out)

    def normalize(self, images) -> np.ndarray:
        """``(N, H, W, 3)`` RGB pixels in 0..255 (uint8 or float, channels last, as
        :mod:`minialex.data.prepare` stores them) to the network's float32 ``(N, 3, H, W)``."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Preprocessing.normalize: expected RGB images (N, H, W, 3), got "
                             f"shape {images.shape}")
        x = images[..., list(self.rgb_index)].astype(np.float32) * np.float32(
            self.scale / PIXEL_MAX)
        x -= np.asarray(self.mean, np.float32)
        x /= np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def finish(self, x):
        """The network's input from ``x``: float ``(..., 3, H, W)`` (NumPy or CuPy) RGB pixels
        in 0..255 minus :attr:`mean_rgb_255`, as minialex's augmentation makes them with that
        mean and a scale of 1: each channel times :attr:`scale_rgb`, then the channels in the
        network's order. :meth:`normalize` of the same pixels gives the same numbers."""
        xp = backend.get_array_module(x)
        x = x * xp.asarray(self.scale_rgb, dtype=x.dtype)[:, None, None]
        if self.rgb_index != (0, 1, 2):
            x = x[..., list(self.rgb_index), :, :]
        return xp.ascontiguousarray(x)

    def describe(self) -> str:
        """One line: ``torchvision's: RGB, 256 -> 224, mean (0.485, ...), std (0.229, ...) of
        pixels in 0..1``."""
        unit = "0..1" if self.scale == 1 else f"0..{self.scale:g}"
        return (f"{self.source}'s: {self.channel_order}, {self.resize} -> {self.crop}, mean "
                f"{_numbers(self.mean)}, std {_numbers(self.std)} of pixels in {unit}")

    def to_dict(self) -> dict:
        """A JSON-able dict (for a checkpoint's metadata); :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        if not isinstance(d, dict):
            raise ValueError(f"Preprocessing.from_dict: expected a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"Preprocessing.from_dict: missing {', '.join(missing)}")
        return cls(**{n: tuple(d[n]) if n in ("mean", "std") else d[n] for n in names})


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# torchvision's ImageNet models (the transforms of AlexNet_Weights.IMAGENET1K_V1).
TORCHVISION = Preprocessing(source="torchvision", channel_order="RGB", resize=256, crop=224,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1.0)
# Caffe's bvlc_alexnet: BGR grey levels minus the mean pixel of ilsvrc_2012_mean.binaryproto
# (104, 117, 123 in B, G, R, rounded as Caffe's examples use it), 227x227 crops.
CAFFE = Preprocessing(source="caffe", channel_order="BGR", resize=256, crop=227,
                      mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), scale=PIXEL_MAX)
