r"""Fine-tuning: a run that starts from trained weights instead of random ones.

A :class:`~minialex.config.RunConfig` with ``pretrained`` names a file (:func:`load_source`):
torchvision's or Caffe's ImageNet AlexNet (:func:`minialex.weights.load_pretrained`), or any
minialex checkpoint. :func:`start_model` then makes the run's model from it:

1. **the architecture is the file's**: ``model``, ``lrn_position``, ``lrn``, ``activation`` and
   ``pool`` are read from the weights (:func:`settle`; a setting that contradicts them is
   refused), and Caffe's LRN constants (``k = 1``, ``alpha / n``) are kept, in the checkpoints
   too (:class:`Origin`), since ``alexnet()`` gives its LRNs the paper's;
2. **conv1 takes the data's channels**. Grey weights (minialex's own Fashion-MNIST ones, one
   input channel) meeting RGB images get the grey kernel on each of R, G and B, divided by 3:

   .. math::  W'_{o,c} = W_o / 3 \quad (c = R, G, B), \qquad
              \textstyle\sum_c W'_{o,c} * p = W_o * p,

   so a grey image (R = G = B = p) gives exactly the grey network's response; RGB weights
   meeting grey images get the sum of their three kernels, :math:`W'_o = \sum_c W_{o,c}`, the
   response the RGB network gives to that grey image. The run prints which rule it used;
3. **fc8 is new**, ``Linear(hidden, classes)`` for the data's classes, drawn from
   :math:`N(0, 0.01^2)` with zero bias, as Caffe's fine-tuning example draws its new last layer
   (``fc8_flickr``): small logits, so the first loss is at chance and no warm-up is needed;
4. ``freeze="features"`` (:func:`freeze_features`): every parameter of ``features`` gets
   ``requires_grad = False`` and is left out of the optimiser: no gradient is computed for it,
   no update and no weight decay touch it;
5. **the input preparation follows the weights** (``preprocessing="weights"``): torchvision's
   RGB 0..1 pixels normalised with ImageNet's mean and std, Caffe's BGR grey levels minus the
   mean pixel (:class:`~minialex.weights.Preprocessing`). :class:`PreprocessedAugmenter` gives
   minialex's augmentation (crops, flips, PCA colour noise) those numbers, for training,
   evaluation and prediction alike; a checkpoint stores it (:class:`Origin`) and every later
   use of it (resume, evaluate, predict) prepares images the same way. Weights without one
   (minialex checkpoints of Fashion-MNIST or an image folder) use the new data's own
   statistics, as a run from scratch does. Grey data (Fashion-MNIST) always uses its own.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile

import numpy as np

from . import backend, checkpoint, nn
from .data.augment import Augmenter
from .models import VARIANTS, alexnet
from .weights import (
    Preprocessing,
    detect_format,
    load_pretrained,
    lrn_constants,
    set_lrn_constants,
)
from .weights.pretrained import CAFFE_VARIANT, TORCHVISION_VARIANT

ARCHITECTURE = ("model", "lrn_position", "lrn", "activation", "pool")  # fixed by the weights
FC8_STD = 0.01      # Caffe's finetune_flickr_style: fc8_flickr's gaussian weight_filler


@dataclasses.dataclass(frozen=True)
class Origin:
    """What a run keeps of the weights it started from, in its checkpoints: the input
    ``preprocessing`` (None: minialex's own, from the data) and the ``lrn`` constants (None:
    the paper's, as ``alexnet()`` builds them)."""
    preprocessing: Preprocessing | None = None
    lrn: dict | None = None

    def state(self) -> dict:
        """Top-level checkpoint entries (JSON-able)."""
        return {"preprocessing": None if self.preprocessing is None
                else self.preprocessing.to_dict(), "lrn": self.lrn}

    @classmethod
    def from_tree(cls, tree: dict) -> "Origin":
        """The origin a checkpoint stored (checkpoints before fine-tuning existed: none)."""
        prep = tree.get("preprocessing")
        return cls(None if prep is None else Preprocessing.from_dict(prep), tree.get("lrn"))

    def apply(self, model) -> None:
        """Give ``model`` the stored LRN constants."""
        if self.lrn is not None:
            set_lrn_constants(model, self.lrn)


@dataclasses.dataclass
class Source:
    """Weights to start from: the ``model`` they load into, where they came from (``kind``:
    ``"torchvision"``, ``"caffe"`` or ``"minialex"``), and their ``preprocessing`` (None:
    minialex's own)."""
    path: str
    kind: str
    model: object
    preprocessing: Preprocessing | None

    def describe(self) -> str:
        m = self.model
        return (f"{self.path} ({self.kind} weights of {m.variant}, {m.in_channels} input "
                f"channel{'s' * (m.in_channels != 1)}, {m.num_classes} classes)")

    def origin(self, preprocessing: str = "weights") -> Origin:
        """The run's :class:`Origin`; ``preprocessing="dataset"`` leaves the weights' out."""
        return Origin(self.preprocessing if preprocessing == "weights" else None,
                      lrn_constants(self.model))


def is_checkpoint(path) -> bool:
    """Whether ``path`` is a minialex checkpoint (an .npz with its ``__meta__`` entry)."""
    with open(path, "rb") as f:
        if f.read(4) != checkpoint.ZIP_MAGIC:
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            return checkpoint.META + ".npy" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def variant_of(path) -> str | None:
    """The AlexNet variant of the weights at ``path``, read without loading them (a
    checkpoint's metadata, a file's format); None when ``path`` is no readable file (loading
    it then says why)."""
    try:
        if is_checkpoint(path):
            with zipfile.ZipFile(path) as archive:
                meta = json.loads(np.frombuffer(_npy_payload(archive.read(
                    checkpoint.META + ".npy")), np.uint8).tobytes())
            return meta["tree"].get("architecture")
        return {"torch": TORCHVISION_VARIANT, "caffe": CAFFE_VARIANT}[detect_format(path)]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _npy_payload(data: bytes) -> bytes:
    """The bytes after a .npy header (magic, version, header length, header)."""
    size = int.from_bytes(data[8:10], "little") if data[6] == 1 else int.from_bytes(
        data[8:12], "little")
    return data[(10 if data[6] == 1 else 12) + size:]


def load_source(path) -> Source:
    """The weights at ``path``: torchvision's or Caffe's AlexNet, or a minialex checkpoint
    (any variant, rebuilt with its run's settings). A missing file raises FileNotFoundError,
    anything else unreadable a ValueError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: {path} not found")
    if not is_checkpoint(path):
        model, prep = load_pretrained(path)
        return Source(path, prep.source, model, prep)
    tree = checkpoint.migrate(checkpoint.load(path))
    weights, saved = tree.get("model"), tree.get("config", {})
    arch = tree.get("architecture")
    if arch not in VARIANTS or not isinstance(weights, dict) or "features.0.weight" not in weights:
        raise ValueError(f"pretrained: {path} holds no AlexNet weights (architecture {arch!r})")
    fc8 = [k for k in weights if k.startswith("classifier.") and k.endswith(".weight")][-1]
    model = alexnet(arch, num_classes=weights[fc8].shape[0],
                    in_channels=weights["features.0.weight"].shape[1],
                    **{k: saved[k] for k in ARCHITECTURE[1:] if k in saved})
    origin = Origin.from_tree(tree)
    origin.apply(model)
    checkpoint.load_weights(model, tree, path)
    return Source(path, "minialex", model.eval(), origin.preprocessing)


def architecture_of(model) -> dict:
    """The settings of :data:`ARCHITECTURE` that rebuild ``model``'s shape, read from its
    layers."""
    layers = list(model.features)
    kinds = [type(m) for m in layers]
    norm = kinds.index(nn.LocalResponseNorm) if nn.LocalResponseNorm in kinds else None
    pool = kinds.index(nn.MaxPool2d)
    first_pool = layers[pool]
    return {"model": model.variant,
            "lrn_position": "caffe" if norm is not None and pool < norm else "paper",
            "lrn": norm is not None,
            "activation": "tanh" if nn.Tanh in kinds else "relu",
            "pool": "overlapping" if first_pool.kernel_size != first_pool.stride
            else "non-overlapping"}


def settle(config, source: Source, given: dict | None = None):
    """``config`` with the weights' architecture (:data:`ARCHITECTURE`). A setting in
    ``given`` (set explicitly) that contradicts the weights is refused: one ValueError naming
    every such setting."""
    own = architecture_of(source.model)
    given = given or {}
    wrong = [f"`{k}` {given[k]} (the weights': {own[k]})" for k in ARCHITECTURE
             if given.get(k) is not None and given[k] != own[k]
             and not (k == "lrn_position" and not own["lrn"])]
    if wrong:
        raise ValueError(f"pretrained: {', '.join(wrong)} "
                         f"{'contradicts' if len(wrong) == 1 else 'contradict'} "
                         f"{source.path}; the model is the weights' own, so leave "
                         f"{'it' if len(wrong) == 1 else 'them'} out")
    return config.replace(**own)


def adapt_conv1(weight, in_channels: int):
    """conv1's kernels ``(O, C, KH, KW)`` for ``in_channels`` inputs and the rule used (see
    the module docstring): ``(weight, None)`` when ``C`` already fits."""
    channels = weight.shape[1]
    if channels == in_channels:
        return weight, None
    if channels == 1 and in_channels == 3:
        return (np.repeat(weight, 3, axis=1) / np.float32(3),
                "conv1 adapted from 1 to 3 input channels: each grey kernel copied to R, G "
                "and B and divided by 3, so a grey image gives the grey network's response")
    if channels == 3 and in_channels == 1:
        return (weight.sum(axis=1, keepdims=True),
                "conv1 adapted from 3 input channels to 1: each kernel's R, G and B summed, so "
                "a grey image gives the RGB network's response")
    raise ValueError(f"pretrained: conv1 takes {channels} input channels and the data has "
                     f"{in_channels}; only 1 <-> 3 can be adapted")


def start_model(source: Source, config, in_channels: int, num_classes: int) -> tuple:
    """``(model, notes)``: ``config``'s model (its architecture :func:`settle`-d to the
    weights') holding the weights of ``source``, conv1 adapted to ``in_channels``, a new fc8
    for ``num_classes`` drawn from minialex's generator; ``notes``: lines saying what
    changed."""
    model = alexnet(config.model, num_classes=num_classes, in_channels=in_channels,
                    lrn_position=config.lrn_position, dropout=config.dropout,
                    dropout_mode=config.dropout_mode, activation=config.activation,
                    pool=config.pool, lrn=config.lrn, init=config.init)
    state = {k: backend.to_numpy(v) for k, v in source.model.state_dict().items()}
    conv1 = next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))
    state[f"{conv1}.weight"], note = adapt_conv1(state[f"{conv1}.weight"], in_channels)
    fc8 = model.classifier[-1]
    rng = backend.rng_for(np)
    weight = rng.standard_normal(fc8.weight.shape, dtype=np.float32) * np.float32(FC8_STD)
    fc8_name = f"classifier.{len(model.classifier) - 1}"
    state[f"{fc8_name}.weight"] = weight
    state[f"{fc8_name}.bias"] = np.zeros(fc8.bias.shape, np.float32)
    model.load_state_dict(state)
    lrn = lrn_constants(source.model)
    if lrn is not None:
        set_lrn_constants(model, lrn)
    notes = [f"fc8 replaced: {source.model.num_classes} classes -> {num_classes}, drawn from "
             f"N(0, {FC8_STD:g}^2)"] + ([note] if note else [])
    return model, notes


def freeze_features(model) -> list:
    """Set ``requires_grad = False`` on every parameter of ``model.features``; returns the
    parameters that still train (the optimiser's)."""
    for p in model.features.parameters():
        p.requires_grad = False
    return [p for p in model.parameters() if p.requires_grad]


class PreprocessedAugmenter:
    """minialex's :class:`~minialex.data.augment.Augmenter` (crops, flips, PCA colour noise,
    the ten crops) with a :class:`~minialex.weights.Preprocessing`'s numbers instead of the
    folder's mean image and pixel std: the weights' mean pixel subtracted in 0..255, then
    :meth:`Preprocessing.finish` (each channel's scale, the network's channel order)."""

    def __init__(self, preprocessing: Preprocessing, eigvals=None, eigvecs=None, *, crop: int,
                 random_crop: bool = True, flip: bool = True, pca_std=None, generator=None):
        self.preprocessing = preprocessing
        self.augmenter = Augmenter(np.asarray(preprocessing.mean_rgb_255, np.float32), eigvals,
                                   eigvecs, crop=crop, random_crop=random_crop, flip=flip,
                                   pca_std=pca_std, generator=generator)

    def __repr__(self):
        return f"PreprocessedAugmenter({self.preprocessing.source}, {self.augmenter!r})"

    def train(self, images):
        return self.preprocessing.finish(self.augmenter.train(images))

    def eval(self, images):
        return self.preprocessing.finish(self.augmenter.eval(images))

    def ten_crop(self, images):
        return self.preprocessing.finish(self.augmenter.ten_crop(images))

    def state_dict(self) -> dict:
        return self.augmenter.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.augmenter.load_state_dict(state)


__all__ = ["Origin", "PreprocessedAugmenter", "Source", "adapt_conv1", "architecture_of",
           "freeze_features", "is_checkpoint", "load_source", "settle", "start_model",
           "variant_of"]
