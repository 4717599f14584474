r"""The paper's preparation of an image folder, done once and cached.

Krizhevsky et al. 2012, Sec. 2: each image is rescaled so that its **shorter side is 256**
(``size``) and its **central 256x256** square is kept, as uint8 RGB. The training images also
give the mean image and the RGB PCA that augmentation needs (:mod:`minialex.data.stats`).
The result lives in a cache folder (:mod:`minialex.data.cache`: layout, fingerprint, opening);
running again on an unchanged folder reuses it without decoding anything.

Decoding runs in ``workers`` processes, each writing its images straight into the split's
``.npy`` file (so pixels never travel through a pipe) and returning only its share of the
statistics. The file's data starts after a header sized for every file of the split; the header
itself is written once, at the end, with the final number of rows.

A file that fails to decode is skipped with a warning, counted in ``meta["splits"][split]
["skipped"]`` and ``PreparedDataset.skipped``; the split's last good images move into the
failed rows and the file is cut to the good count, so rows stay dense (``*_files.json`` tells
which file each row came from).

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for split in ("train", "val"):
    ...     (root / split / "red").mkdir(parents=True)
    ...     Image.new("RGB", (40, 30), (200, 10, 10)).save(root / split / "red" / "a.png")
    >>> ds = prepare(root, size=16, cache_dir=root / "cache", workers=0, progress=False)
    >>> ds.images["train"].shape, ds.labels["val"].tolist(), ds.classes
    ((1, 16, 16, 3), [0], ('red',))
    >>> prepare(root, size=16, cache_dir=root / "cache", workers=0, progress=False).reused
    True
    >>> import shutil; shutil.rmtree(root)
"""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import multiprocessing
import os
import pathlib
import shutil
import struct
import sys
import threading
import time
import warnings

import numpy as np

from ..checks import non_negative_int, positive_int
from ..progress import Progress
from .augment import IMAGE_SIZE
from .cache import (  # noqa: F401
    FORMAT_VERSION,
    MARKER,
    PreparedDataset,
    PreparedSplit,
    cache_path,
    default_cache_dir,
    fingerprint,
    is_complete,
    load_prepared,
    remove_dead_temps,
    remove_superseded,
)
from .folder import ImageFolder, display_path, load_rgb, resize_center_crop, scan_image_folder
from .stats import PIXEL_MAX, Sums, rgb_pca  # noqa: F401  (rgb_pca, PIXEL_MAX: old home)

DEFAULT_SIZE = IMAGE_SIZE      # the paper: shorter side 256, central 256x256
CHUNK = 32              # images per worker task: amortises task overhead, keeps progress smooth
NPY_MAGIC = b"\x93NUMPY\x01\x00"   # .npy format version 1.0


def default_workers() -> int:
    """One worker per CPU this process may run on (``os.cpu_count()`` within its affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def prepare(root, *, size: int = DEFAULT_SIZE, cache_dir=None, workers: int | None = None,
            progress: bool = True) -> PreparedDataset:
    """Prepare the ImageFolder dataset at ``root`` (or reuse its cache) and open it.

    Args:
        root: folder with ``train/`` and ``val/`` (and optionally ``test/``), one sub-folder per
            class (see :func:`minialex.data.folder.scan_image_folder`).
        size: side of the stored images: shorter side rescaled to ``size``, central square kept.
        cache_dir: where caches live; default :func:`~minialex.data.cache.default_cache_dir`.
        workers: decoding processes; ``None`` = :func:`default_workers`, ``0`` = decode in this
            process (no pool; for debugging).
        progress: show a progress bar on stderr.
    """
    size = positive_int("prepare", "size", size)
    if workers is not None:
        workers = non_negative_int("prepare", "workers", workers)
    folder = scan_image_folder(root)
    fp = fingerprint(folder, size)
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_path(cache_dir, folder, size, fp)
    if is_complete(final, fp):
        return load_prepared(final, reused=True)

    remove_dead_temps(cache_dir, final.name)
    tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(folder, fp, size, tmp, default_workers() if workers is None else workers, progress)
        (tmp / MARKER).write_text(fp)
        if is_complete(final, fp):         # another process finished the same work first
            shutil.rmtree(tmp)
            return load_prepared(final, reused=True)
        shutil.rmtree(final, ignore_errors=True)   # an incomplete leftover, if any
        os.rename(tmp, final)
    except BaseException:                  # KeyboardInterrupt too: leave no partial cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_superseded(cache_dir, final, folder.root, size)
    return load_prepared(final)


def _build(folder: ImageFolder, fp: str, size: int, out: pathlib.Path, workers: int,
           progress: bool) -> None:
    """Decode every split into ``out`` and write the statistics and meta.json (not the marker)."""
    started = time.time()
    pool = _make_pool(workers) if workers > 0 else None
    splits, stats = {}, None
    try:
        for split, samples in folder.samples.items():
            n, row_shape = len(samples), (size, size, 3)
            target = _NpyTarget(out / f"{split}_images.npy", n, row_shape)
            errors, split_stats = _decode_split(
                pool, folder.root, samples, target, with_stats=(split == "train"),
                progress=Progress(f"prepare {split}", n, stream=sys.stderr, enabled=progress))
            rows = target.compact(sorted(errors))
            if split == "train":
                if not len(rows):
                    raise ValueError(f"prepare: no readable image in "
                                     f"{str(folder.root / 'train')!r}")
                stats = split_stats
            np.save(out / f"{split}_labels.npy",
                    np.array([samples[r][1] for r in rows], dtype=np.int64))
            (out / f"{split}_files.json").write_text(json.dumps([samples[r][0] for r in rows]))
            splits[split] = {"count": len(rows),
                             "skipped": [[display_path(samples[i][0]), errors[i]]
                                         for i in sorted(errors)],
                             "ignored_files": folder.ignored[split]}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    np.save(out / "mean.npy", stats.mean_image())
    eigvals, eigvecs = stats.pca()
    meta = {
        "format": FORMAT_VERSION, "fingerprint": fp, "size": size,
        "source": str(folder.root.resolve()), "classes": list(folder.classes), "splits": splits,
        "mean_rgb": (stats.rgb_sum() / stats.n_pixels).tolist(),
        "rgb_eigvals": eigvals.tolist(), "rgb_eigvecs": eigvecs.tolist(),
        "rgb_scale": "covariance of pixel values / 255; eigenvectors are the columns",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def npy_header(shape, dtype, length: int | None = None) -> bytes:
    """A ``.npy`` version 1.0 header for a C-order array of ``shape`` and ``dtype``.

    The format (``numpy.lib.format``): magic string and version, the little-endian 2-byte length
    of the rest, a Python dict literal, spaces, a newline. The spaces pad it to ``length`` bytes
    (default: the next multiple of 64, NumPy's alignment), so a header for fewer rows fits in
    the space of one for more: their dicts differ only in a shorter first dimension.

    >>> import io
    >>> header = npy_header((2, 3), np.uint8, length=256)
    >>> len(npy_header((2, 3), np.uint8)), len(header), np.load(io.BytesIO(header + bytes(6)))
    (128, 256, array([[0, 0, 0],
           [0, 0, 0]], dtype=uint8))
    """
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                 "fortran_order": False, "shape": tuple(int(d) for d in shape)}).encode("latin1")
    need = len(NPY_MAGIC) + 2 + len(text) + 1
    length = -(-need // 64) * 64 if length is None else length
    if not need <= length <= len(NPY_MAGIC) + 2 + 0xFFFF:
        raise ValueError(f"npy_header: a header for shape {tuple(shape)} needs {need} bytes, "
                         f"{length} asked for")
    return NPY_MAGIC + struct.pack("<H", length - len(NPY_MAGIC) - 2) + text + b" " * (
        length - need) + b"\n"


class _NpyTarget:
    """A split's ``.npy`` file while it is being filled: ``n`` rows of ``row_shape`` uint8.

    The data starts after room for the header of all ``n`` rows; the header is written once, by
    :meth:`compact`, with the number of rows actually kept (no more than ``n``, so it fits).
    Workers open the rows with :meth:`rows` (the object is small and pickles).
    """

    def __init__(self, path: pathlib.Path, n: int, row_shape: tuple):
        self.path, self.n, self.row_shape = str(path), n, tuple(row_shape)
        self.offset = len(npy_header((n,) + self.row_shape, np.uint8))
        self.row_bytes = int(np.prod(self.row_shape))
        with open(self.path, "wb") as f:
            f.truncate(self.offset + n * self.row_bytes)    # sparse: no bytes written yet

    def rows(self) -> np.memmap:
        return np.memmap(self.path, np.uint8, mode="r+", offset=self.offset,
                         shape=(self.n,) + self.row_shape)

    def compact(self, holes: list) -> np.ndarray:
        """Move the last good rows into the failed ones, cut the file to the good count and
        write its header. Returns the sample index of each kept row.

        Moves one row per failed file (not the whole tail), so a corrupt file costs nothing at
        ImageNet scale.
        """
        holes = np.asarray(holes, dtype=np.int64)
        kept = self.n - len(holes)
        order = np.arange(self.n)
        if len(holes):
            tail = order[kept:]
            sources, targets = tail[~np.isin(tail, holes)], holes[holes < kept]
            images = self.rows()
            images[targets] = images[sources]
            images.flush()
            del images
            order[targets] = sources
        with open(self.path, "r+b") as f:
            f.truncate(self.offset + kept * self.row_bytes)
            f.write(npy_header((kept,) + self.row_shape, np.uint8, self.offset))
        return order[:kept]


def _decode_file(path: str, size: int) -> np.ndarray:
    return resize_center_crop(load_rgb(path, min_side=size), size)


def _decode_chunk(target: _NpyTarget, root: str, start: int, relpaths: list, with_stats: bool):
    """Worker task: decode ``relpaths`` into rows ``start...`` of ``target``.

    Returns ``({row: reason} for files that failed, Sums or None, number of files)``.
    """
    images = target.rows()
    size = target.row_shape[0]
    errors, stats = {}, Sums.zeros(size, size) if with_stats else None
    for i, rel in enumerate(relpaths):
        try:
            x = _decode_file(os.path.join(root, rel), size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable file"
            errors[start + i] = display_path(f"{type(exc).__name__}: {exc}")   # may name it
            continue
        images[start + i] = x
        if with_stats:
            stats.add(x[None])
    images.flush()
    del images
    return errors, stats, len(relpaths)


def _decode_split(pool, root, samples, target, with_stats, progress):
    tasks = [(target, str(root), start, [rel for rel, _ in samples[start:start + CHUNK]],
              with_stats) for start in range(0, len(samples), CHUNK)]
    if pool is None:
        results = (_decode_chunk(*task) for task in tasks)
    else:
        futures = [pool.submit(_decode_chunk, *task) for task in tasks]
        results = (future.result() for future in concurrent.futures.as_completed(futures))
    errors, total = {}, None
    for task_errors, stats, n_files in results:
        for row, reason in task_errors.items():
            warnings.warn(f"prepare: skipping unreadable image '{display_path(samples[row][0])}' "
                          f"({reason})",
                          stacklevel=4)   # points at the caller of prepare()
        errors.update(task_errors)
        if stats is not None:
            total = stats if total is None else total + stats
        progress.update(n_files)
    progress.close()
    return errors, total


def _make_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # fork starts workers at once and needs no `if __name__ == "__main__"` guard in the caller's
    # script; it is unsafe only when other threads may hold locks, so then start clean processes.
    # (A CUDA context in the parent is harmless: the workers never touch the GPU.)
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        method = "fork"
    else:
        method = "forkserver" if "forkserver" in methods else "spawn"
    context = multiprocessing.get_context(method)
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
