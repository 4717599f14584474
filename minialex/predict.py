r"""Use a trained model: a checkpoint's network, with the input preparation it was trained with.

:func:`load_run` rebuilds a checkpoint's run as :func:`minialex.recipe.build` makes it (model,
data, evaluation transforms) and loads its weights; :class:`Classifier` names the classes of
image files from it, with their probabilities:

- **image folders** (RGB): each file is decoded upright, its shorter side rescaled to the
  prepared size and its central square kept (the paper's preparation, Sec. 2), then the model's
  centre crop or the paper's **10 crops** (four corners, centre, and their mirrors; softmax
  averaged, Sec. 4.1) with the training set's mean image subtracted and its scale applied. The
  mean image and pixel statistics come from the prepared cache of the training folder (reused,
  not rebuilt, when the folder is unchanged), so that folder must be at hand;
- **Fashion-MNIST** (grey 28x28): each file becomes a grey 28x28 image, normalised with the
  training pixel mean and std stored in the checkpoint (so the dataset files need not be at
  hand), then scaled to the model's input as evaluation scales the test images.
  Fashion-MNIST shows light clothes on a black ground; photos of dark things on a light
  ground look nothing like it. The 10 crops need an image-folder checkpoint.

The class names are the checkpoint's (a folder's sub-folder names, in label order).

:meth:`Classifier.from_weights` does the same with imported weights (torchvision's or Caffe's
AlexNet, :func:`minialex.weights.load_pretrained`): each file's shorter side rescaled to the
weights' ``resize`` and the central square kept, then the centre ``crop`` prepared as the
weights expect (:class:`~minialex.weights.Preprocessing`); the class names are ImageNet's
(:func:`minialex.weights.imagenet_classes`) for 1,000 outputs.

>>> result = classify_files("no/such/checkpoint.npz", [])
Traceback (most recent call last):
...
FileNotFoundError: checkpoint no/such/checkpoint.npz not found
"""
from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

from . import backend, finetune, recipe
from . import functional as F
from .checks import positive_int
from .data import ArrayDataset
from .data.folder import image_extensions, load_rgb, resize_center_crop
from .report import collect_predictions
from .tensor import Tensor, no_grad
from .weights import imagenet_classes, load_pretrained

TOPK = 5
BATCH = 32              # files decoded and scored together (10x as many crops with ten_crop)


def load_run(path, *, device: str = "cpu", data_dir=None, cache=None, workers=None,
             limit_test=None, ten_crop: bool = False, splits: bool = True) -> recipe.Run:
    """The run of checkpoint ``path`` (:func:`minialex.recipe.load_checkpoint`): its model
    with the checkpoint's weights, its data and transforms. ``ten_crop`` builds the 10-crop
    transform too (image folders only); ``limit_test`` cuts the test split (default: as the
    run did); ``splits=False``: no Fashion-MNIST files needed, only the transforms."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    own = {} if limit_test is None else {"limit_test": limit_test}   # default: the run's own
    return recipe.load_checkpoint(path, device=device, data_dir=data_dir, cache=cache,
                                  workers=workers, splits=splits,
                                  ten_crop=bool(ten_crop), **own)[0]


def checkpoint_predictions(path, **options) -> tuple:
    """``(run, Predictions)``: checkpoint ``path`` on its test split (see :func:`load_run`)."""
    run = load_run(path, **options)
    return run, collect_predictions(run.model, run.test_loader, run.data.classes)


@dataclasses.dataclass
class Prediction:
    """One file's ``top`` classes, ``[(name, probability), ...]``, most probable first."""
    path: str
    top: list


class Classifier:
    """Names the classes of images with a checkpoint's model (see the module docstring)."""

    def __init__(self, run: recipe.Run):
        folder = run.data.folder
        # the side the dataset stores (Fashion-MNIST: 28, whatever the model's input): a file
        # is brought to it, and the evaluation transform takes it from there to the input size
        self._use(run.model, run.data.classes, run.test_loader.transform,
                  run.ten_crop_loader.transform if run.ten_crop_loader is not None else None,
                  size=folder.size if folder is not None else run.data.test.images.shape[-1],
                  grey=folder is None)
        self.run, self.preprocessing = run, run.preprocessing

    def _use(self, model, classes, transform, ten_crop, *, size: int, grey: bool) -> None:
        self.model, self.classes, self.size, self.grey = model, list(classes), size, grey
        self.transform, self.ten_crop_transform = transform, ten_crop
        self.device = backend.device_of(next(iter(self.model.parameters())).data)

    @classmethod
    def from_weights(cls, path, *, device: str = "cpu",
                     channel_order: str | None = None) -> "Classifier":
        """A classifier of torchvision's or Caffe's weights at ``path``, preparing files as
        the weights expect (see the module docstring); ``channel_order`` goes to
        :func:`minialex.weights.load_pretrained`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"weights {path} not found")
        model, prep = load_pretrained(path, channel_order=channel_order)
        model.to(device).eval()
        if model.num_classes == len(imagenet_classes()):
            classes = imagenet_classes()
        else:       # fc8 of another size: not ImageNet's outputs, so no names for them
            classes = [f"class {i}" for i in range(model.num_classes)]
        prepared = finetune.PreprocessedAugmenter(prep, crop=model.input_size,
                                                  random_crop=False, flip=False)
        classifier = cls.__new__(cls)
        classifier._use(model, classes, prepared.eval, prepared.ten_crop, size=prep.resize,
                        grey=False)
        classifier.run, classifier.preprocessing = None, prep
        return classifier

    @classmethod
    def from_checkpoint(cls, path, *, device: str = "cpu", ten_crop: bool = False,
                        **options) -> "Classifier":
        return cls(load_run(path, device=device, ten_crop=ten_crop, limit_test=1, splits=False,
                            **options))

    def load(self, path) -> np.ndarray:
        """An image file as the dataset stores its images: uint8 ``(1, S, S)`` grey or
        ``(S, S, 3)`` RGB. Raises what Pillow raises for an unreadable file."""
        with load_rgb(path, min_side=self.size) as image:
            if self.grey:
                with image.convert("L") as grey:
                    return resize_center_crop(grey, self.size)[None]
            return resize_center_crop(image, self.size)

    def probabilities(self, images, *, ten_crop: bool = False) -> np.ndarray:
        """Class probabilities ``(N, K)`` of a uint8 batch as :meth:`load` gives them."""
        images = backend.to_device(np.asarray(images), self.device)
        with no_grad():
            if not ten_crop:
                logits = self.model(Tensor(self.transform(images))).data
                return backend.to_numpy(F.average_softmax(logits, 1))
            if self.ten_crop_transform is None:
                raise ValueError("ten_crop: build the Classifier with ten_crop=True (image-folder "
                                 "checkpoints only)")
            crops = self.ten_crop_transform(images)      # (10, N, C, H, W)
            logits = self.model(Tensor(crops.reshape((-1,) + crops.shape[2:]))).data
            return backend.to_numpy(F.average_softmax(logits, crops.shape[0]))

    def load_folder(self, root) -> tuple:
        """``(dataset, classes, skipped)``: every readable image file under folder ``root``
        as :meth:`load` prepares it, labelled by its first sub-folder (files directly in
        ``root``: one class named ``.``), as an :class:`~minialex.data.ArrayDataset`."""
        images, names, skipped = [], [], []
        for path in image_files([root]):
            try:
                images.append(self.load(path))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                skipped.append((path, f"{type(exc).__name__}: {exc}"))
                continue
            parts = pathlib.Path(path).relative_to(root).parts
            names.append(parts[0] if len(parts) > 1 else ".")
        if not images:
            raise ValueError(f"{root}: no readable image file")
        classes = sorted(set(names))
        labels = np.array([classes.index(n) for n in names], np.int64)
        return ArrayDataset(np.stack(images), labels), classes, skipped

    def classify(self, paths, *, k: int = TOPK, ten_crop: bool = False) -> tuple:
        """``(predictions, skipped)``: the top ``k`` classes of each readable file, and
        ``[(path, reason)]`` for the files that could not be decoded."""
        positive_int("classify", "k", k)
        predictions, skipped = [], []
        for start in range(0, len(paths), BATCH):
            batch, names = [], []
            for path in paths[start:start + BATCH]:
                try:
                    batch.append(self.load(path))
                    names.append(str(path))
                except (OSError, ValueError, Image.DecompressionBombError) as exc:
                    skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
            if batch:
                probs = self.probabilities(np.stack(batch), ten_crop=ten_crop)
                predictions += [Prediction(name, top_classes(p, self.classes, k))
                                for name, p in zip(names, probs)]
        return predictions, skipped


def top_classes(probs, classes, k: int = TOPK) -> list:
    """``[(name, probability)]`` of the ``k`` most probable classes (ties by class index)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(classes[i], float(probs[i])) for i in order]


def image_files(paths) -> list:
    """The files to classify: each file as given, and every image file (by extension) under
    each folder, in sorted order. A path that does not exist raises FileNotFoundError."""
    files = []
    for path in map(pathlib.Path, paths):
        if path.is_dir():
            extensions = image_extensions()
            files += sorted(str(p) for p in path.rglob("*")
                            if p.is_file() and p.suffix.lower() in extensions
                            and not p.name.startswith("."))
        elif path.exists():
            files.append(str(path))
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def classify_files(checkpoint_path, paths, *, k: int = TOPK, ten_crop: bool = False,
                   device: str = "cpu", weights=None, **options) -> tuple:
    """``(predictions, skipped)`` for image files and folders ``paths`` with the checkpoint at
    ``checkpoint_path`` (see :class:`Classifier`); ``options`` go to :func:`load_run`. With
    ``weights`` (torchvision's or Caffe's file) instead: those weights, ImageNet's classes
    (:meth:`Classifier.from_weights`), and ``checkpoint_path`` is None."""
    source = weights if weights is not None else checkpoint_path
    if not os.path.exists(source):
        raise FileNotFoundError(f"{'weights' if weights is not None else 'checkpoint'} "
                                f"{source} not found")
    files = image_files(paths)
    if weights is not None:
        classifier = Classifier.from_weights(weights, device=device)
    else:
        classifier = Classifier.from_checkpoint(checkpoint_path, device=device,
                                                ten_crop=ten_crop, **options)
    return classifier.classify(files, k=k, ten_crop=ten_crop)


__all__ = ["Classifier", "Prediction", "checkpoint_predictions", "classify_files",
           "image_files", "load_run", "top_classes"]
