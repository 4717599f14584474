"""Data: datasets, mini-batch loading with prefetching, and device-side batch transforms.

- :mod:`~minialex.data.idx`: the IDX array format (MNIST, Fashion-MNIST).
- :mod:`~minialex.data.fashion_mnist`: the default dataset, with a seeded validation hold-out.
- :mod:`~minialex.data.folder`: image folders in the ImageFolder layout, scanned and decoded.
- :mod:`~minialex.data.stats`: the training set's mean image and RGB PCA (Krizhevsky et al. 2012).
- :mod:`~minialex.data.cache`: the prepared-dataset cache: layout, fingerprint, opening it.
- :mod:`~minialex.data.prepare`: an image folder to 256x256 uint8 images, once, in parallel.
- :mod:`~minialex.data.loader`: :class:`ArrayDataset` and :class:`Loader` (shuffled batches, a
  prefetching thread, a saved and restored random state).
- :mod:`~minialex.data.crops`: random crops and mirrors, one gather for both pipelines.
- :mod:`~minialex.data.transforms`: the grey pipeline: to float, normalise, resize, crop, flip.
- :mod:`~minialex.data.augment`: AlexNet's RGB augmentation and 10-crop test (same, Sec. 4.1).
"""
from . import transforms
from .fashion_mnist import CLASSES, FashionMNIST, find_files, load_fashion_mnist
from .idx import read_idx, write_idx
from .loader import ArrayDataset, Loader

__all__ = ["ArrayDataset", "CLASSES", "FashionMNIST", "Loader", "find_files",
           "load_fashion_mnist", "read_idx", "transforms", "write_idx"]
