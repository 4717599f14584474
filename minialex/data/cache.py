r"""The prepared-dataset cache: its folder layout, its fingerprint, and opening it.

:func:`minialex.data.prepare.prepare` writes one folder per dataset version under ``cache_dir``::

    <name>-<size>px-<fingerprint[:16]>/
        train_images.npy  (N, S, S, 3) uint8, opened memory-mapped (np.load(mmap_mode="r"))
        train_labels.npy  (N,) int64
        train_files.json  relative path of each row
        val_*.npy, val_files.json, test_* (when test/ exists)
        mean.npy          (S, S, 3) float32
        meta.json         classes, counts, skipped files, eigenvalues/vectors, fingerprint
        COMPLETE          the fingerprint; written last

The fingerprint hashes the relative paths, byte sizes and modification times of every image
with ``size``: an unchanged folder is found again without decoding; an added, removed, replaced
or touched file gives a new fingerprint and a new preparation (the older cache of the same
folder and size is then removed, :func:`remove_superseded`). A folder is written as
``<name>.tmp-<pid>`` and renamed when complete, so an interrupted run leaves nothing that
:func:`load_prepared` accepts (and :func:`remove_dead_temps` deletes it later). No pickle
anywhere: arrays are ``.npy``, metadata JSON.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil

import numpy as np

from .folder import ImageFolder

FORMAT_VERSION = 1      # bump when the decoding or the layout changes: old caches are not reused
MARKER = "COMPLETE"


@dataclasses.dataclass
class PreparedDataset:
    """A prepared dataset, opened from its cache folder.

    Attributes:
        path: the cache folder.
        classes: class names; label ``i`` is ``classes[i]``.
        size: side of the stored square images.
        images: split -> ``(N, size, size, 3)`` uint8 read-only memory map.
        labels: split -> ``(N,)`` int64.
        mean: ``(size, size, 3)`` float32 per-pixel mean of the training images, 0..255.
        eigvals: ``(3,)`` float32, descending: eigenvalues of the RGB covariance of pixels/255.
        eigvecs: ``(3, 3)`` float32; column ``i`` is the unit eigenvector of ``eigvals[i]``.
        skipped: split -> list of ``[relative path, reason]`` of files that failed to decode,
            the path as :func:`~minialex.data.folder.display_path` shows it.
        meta: the whole ``meta.json``.
        reused: True when :func:`~minialex.data.prepare.prepare` found this cache instead of
            building it.
    """
    path: pathlib.Path
    classes: tuple
    size: int
    images: dict
    labels: dict
    mean: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    skipped: dict
    meta: dict
    reused: bool = False

    @property
    def class_to_idx(self) -> dict:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def splits(self) -> tuple:
        return tuple(self.images)

    def split(self, name: str) -> "PreparedSplit":
        """One split as a dataset for :class:`~minialex.data.loader.Loader`."""
        if name not in self.images:
            raise ValueError(f"PreparedDataset: no split {name!r}; this dataset has "
                             f"{list(self.images)}")
        return PreparedSplit(self.images[name], self.labels[name])

    def files(self, split: str) -> list:
        """Relative path of the file each row of ``images[split]`` was decoded from, as Python
        names it (a name that is not valid UTF-8 keeps its surrogate escapes, so the path opens;
        :func:`~minialex.data.folder.display_path` prints it)."""
        return json.loads((self.path / f"{split}_files.json").read_text())


class PreparedSplit:
    """``len()`` and ``get_batch(indices) -> (uint8 (B, S, S, 3), int64 (B,))`` over a split.

    Images stay channels-last uint8, as stored (a quarter of float32's bytes to copy to a GPU);
    :class:`~minialex.data.augment.Augmenter` crops them to float32 NCHW on the device.
    """

    def __init__(self, images, labels):
        if len(images) != len(labels):
            raise ValueError(f"PreparedSplit: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return f"PreparedSplit({len(self)} images of {self.images.shape[1:]} uint8)"

    def get_batch(self, indices):
        return np.asarray(self.images[indices]), self.labels[indices]

    def head(self, n):
        """The first ``n`` samples (all when ``n`` is None or at least the size)."""
        if n is None or n >= len(self):
            return self
        return PreparedSplit(self.images[:n], self.labels[:n])


def default_cache_dir() -> pathlib.Path:
    """``$MINIALEX_CACHE``, else ``$XDG_CACHE_HOME/minialex``, else ``~/.cache/minialex``."""
    if os.environ.get("MINIALEX_CACHE"):
        return pathlib.Path(os.environ["MINIALEX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "minialex"


def fingerprint(folder: ImageFolder, size: int) -> str:
    """SHA-256 of format version, ``size``, classes, and each image's path, bytes and mtime."""
    digest = hashlib.sha256(json.dumps(
        {"format": FORMAT_VERSION, "size": size, "classes": list(folder.classes)}).encode())
    for split, samples in folder.samples.items():
        for rel, _ in samples:
            st = os.stat(folder.root / rel)
            # the name's own bytes (os.fsencode): a name that is not valid UTF-8 is held as
            # surrogate escapes, which str.encode() refuses; valid names give the same bytes
            digest.update(split.encode() + b"\0" + os.fsencode(rel)
                          + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: pathlib.Path, folder: ImageFolder, size: int, fp: str) -> pathlib.Path:
    return cache_dir / f"{_slug(folder.root)}-{size}px-{fp[:16]}"


def is_complete(path: pathlib.Path, fp: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and marker.read_text().strip() == fp


def load_prepared(path, *, reused: bool = False) -> PreparedDataset:
    """Open a complete cache folder written by ``prepare``; ValueError if it is not one."""
    path = pathlib.Path(path)
    meta_path = path / "meta.json"
    if not (path / MARKER).is_file() or not meta_path.is_file():
        raise ValueError(f"load_prepared: {str(path)!r} is not a complete prepared dataset "
                         f"(no {MARKER} marker); run prepare() on the image folder")
    meta = json.loads(meta_path.read_text())
    images, labels, skipped = {}, {}, {}
    for split, info in meta["splits"].items():
        # NumPy cannot memory-map zero bytes (a split whose every file was unreadable).
        images[split] = np.load(path / f"{split}_images.npy",
                                mmap_mode="r" if info["count"] else None)
        labels[split] = np.load(path / f"{split}_labels.npy")
        skipped[split] = info["skipped"]
    return PreparedDataset(
        path=path, classes=tuple(meta["classes"]), size=meta["size"], images=images,
        labels=labels, mean=np.load(path / "mean.npy"),
        eigvals=np.asarray(meta["rgb_eigvals"], dtype=np.float32),
        eigvecs=np.asarray(meta["rgb_eigvecs"], dtype=np.float32),
        skipped=skipped, meta=meta, reused=reused)


def remove_dead_temps(cache_dir: pathlib.Path, name: str) -> None:
    """Delete temp folders of this dataset left by killed runs (their process is gone)."""
    for tmp in cache_dir.glob(f"{name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_superseded(cache_dir: pathlib.Path, keep: pathlib.Path, root: pathlib.Path,
                      size: int) -> None:
    """Delete older complete caches of the same source folder and size (the dataset changed)."""
    source = str(root.resolve())
    for other in cache_dir.glob(f"{_slug(root)}-{size}px-*"):
        if other == keep or not (other / MARKER).is_file():
            continue
        try:
            meta = json.loads((other / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source") == source and meta.get("size") == size:
            shutil.rmtree(other, ignore_errors=True)


def _slug(root: pathlib.Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", root.resolve().name) or "dataset"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:        # PermissionError: alive, owned by someone else
        return True
    return True
