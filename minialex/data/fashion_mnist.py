r"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 70,000 grey 28x28 images of 10 kinds of clothing.

The four standard IDX files (gzip or not) are looked for, in order, in ``data_dir``, in
``data_dir/fashion-mnist``, and in ``/usr/share/datasets/fashion-mnist`` (where Debian's
``dataset-fashion-mnist`` package puts them). Splits:

- ``train``: the 60,000 training images less a hold-out of ``val_size`` (5,000 by default),
  chosen by a seeded permutation, so the same seed gives the same split everywhere;
- ``val``: that hold-out, for model selection and the learning-rate schedule (AlexNet lowers
  the rate when the *validation* error stops improving: Krizhevsky et al. 2012, Sec. 5);
- ``test``: the full 10,000-image test set, touched only for the final report.

Images stay ``uint8`` of shape (N, 1, 28, 28) on the host; scaling to the model's input size and
normalising happen per batch, on the device, in :mod:`minialex.data.transforms`. ``mean`` and
``std`` are the pixel statistics of the ``train`` split on the [0, 1] scale (AlexNet subtracts
the training set's mean activity, Krizhevsky et al. 2012, Sec. 2; dividing by the std as well
keeps the scale near 1).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from .idx import read_idx
from .loader import ArrayDataset

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_DIRS = (DEBIAN_DIR,)    # searched after data_dir
VAL_SIZE = 5000
HOW_TO_GET = ("install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; "
              f"files go to {DEBIAN_DIR}), or put the four IDX files (from "
              "https://github.com/zalandoresearch/fashion-mnist) in `data_dir`")


@dataclasses.dataclass(frozen=True)
class FashionMNIST:
    """The three splits, the training pixel statistics, and where the files came from."""
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    mean: float
    std: float
    root: str
    classes: tuple = CLASSES


def search_dirs(data_dir=None) -> list:
    """The directories looked in, in order."""
    dirs = []
    if data_dir is not None:
        dirs += [os.fspath(data_dir), os.path.join(os.fspath(data_dir), "fashion-mnist")]
    return dirs + list(DEFAULT_DIRS)


def find_files(data_dir=None) -> dict:
    """Name -> path of the four IDX files, from the first directory holding all four.

    Raises one FileNotFoundError that lists where it looked, what was missing and how to get
    the files.
    """
    if data_dir is not None and not os.path.isdir(data_dir):
        # an explicit directory that is not there is a typo, not a cue to train on other data
        raise FileNotFoundError(f"data_dir: no such directory: {os.fspath(data_dir)!r}")
    names = [name for pair in FILES.values() for name in pair]
    looked = []
    for directory in search_dirs(data_dir):
        found, missing = {}, []
        for name in names:
            for candidate in (name, name + ".gz"):
                path = os.path.join(directory, candidate)
                if os.path.isfile(path):
                    found[name] = path
                    break
            else:
                missing.append(name)
        if not missing:
            return found
        if not os.path.isdir(directory):
            looked.append(f"{directory} (no such directory)")
        else:
            looked.append(f"{directory} (missing {', '.join(missing)})")
    raise FileNotFoundError("Fashion-MNIST not found: looked for " + ", ".join(
        f"{n}[.gz]" for n in names) + " in " + "; ".join(looked) + "; " + HOW_TO_GET)


@functools.lru_cache(maxsize=8)
def _read_cached(path, mtime, size):
    """One read per file version per process; the array is read-only as it is shared."""
    array = read_idx(path)
    array.setflags(write=False)
    return array


def _read(path):
    st = os.stat(path)
    return _read_cached(path, st.st_mtime_ns, st.st_size)


def load_split(files: dict, split: str):
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of ``"train"`` or ``"test"``,
    checked against each other."""
    image_name, label_name = FILES[split]
    images, labels = _read(files[image_name]), _read(files[label_name])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{files[image_name]}: expected uint8 images of shape (N, H, W), got "
                         f"{images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{files[label_name]}: {labels.shape[0] if labels.ndim else 0} labels "
                         f"for {images.shape[0]} images in {files[image_name]}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{files[label_name]}: labels must lie in [0, {len(CLASSES) - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    return images[:, None], labels.astype(np.int64)


def pixel_stats(images: np.ndarray) -> tuple:
    """Mean and std of uint8 pixels on the [0, 1] scale, from a 256-bin histogram (exact, and
    far faster than float arithmetic over every pixel)."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    mean = counts @ values / counts.sum()
    var = counts @ (values - mean) ** 2 / counts.sum()
    return float(mean), float(np.sqrt(var))


def load_fashion_mnist(data_dir=None, val_size: int = VAL_SIZE, split_seed: int = 0):
    """Load Fashion-MNIST as a :class:`FashionMNIST` of train / val / test splits."""
    files = find_files(data_dir)
    train_images, train_labels = load_split(files, "train")
    if not isinstance(val_size, (int, np.integer)) or not 0 <= val_size < len(train_labels):
        raise ValueError(f"val_size: expected an int in [0, {len(train_labels)}) (the training "
                         f"images), got {val_size!r}")
    test_images, test_labels = load_split(files, "test")
    order = np.random.default_rng(split_seed).permutation(len(train_labels))
    keep, hold = np.sort(order[val_size:]), np.sort(order[:val_size])
    train = ArrayDataset(train_images[keep], train_labels[keep])
    mean, std = pixel_stats(train.images)
    return FashionMNIST(train=train, val=ArrayDataset(train_images[hold], train_labels[hold]),
                        test=ArrayDataset(test_images, test_labels), mean=mean, std=std,
                        root=os.path.dirname(files[FILES["train"][0]]))
