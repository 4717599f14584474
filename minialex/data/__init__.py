"""Data: datasets, mini-batch loading with prefetching, and device-side batch transforms.

- :mod:`~minialex.data.idx`: the IDX array format (MNIST, Fashion-MNIST).
- :mod:`~minialex.data.fashion_mnist`: the default dataset, with a seeded validation hold-out.
- :mod:`~minialex.data.loader`: :class:`ArrayDataset` and :class:`Loader` (shuffled batches,
  a background thread loading the next batch while the current one computes).
- :mod:`~minialex.data.transforms`: uint8 to float, normalise, bilinear resize, random crop and
  flip, on whole batches, on the CPU or the GPU.
"""
from .fashion_mnist import CLASSES, FashionMNIST, find_files, load_fashion_mnist
from .idx import read_idx, write_idx
from .loader import ArrayDataset, Loader
from . import transforms

__all__ = ["ArrayDataset", "CLASSES", "FashionMNIST", "Loader", "find_files",
           "load_fashion_mnist", "read_idx", "transforms", "write_idx"]
