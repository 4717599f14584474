r"""The paper's preparation of an image folder, done once and cached (ALEXNET.md section 3).

Each image is rescaled so that its **shorter side is 256** (``size``) and its **central 256x256**
square is kept, as uint8 RGB. The training set also gives the two statistics that augmentation
needs:

- the per-pixel **mean image** :math:`\bar x[h, w, c] = \frac1N \sum_n x_n[h, w, c]` (float32,
  0..255), subtracted from every image ("the mean activity over the training set");
- the **PCA of RGB**: eigenvalues :math:`\lambda_i` (descending) and eigenvectors :math:`p_i`
  (columns of ``eigvecs``) of the 3x3 covariance of RGB values over every pixel of every training
  image, computed on pixels scaled to [0, 1]. That scale matters: the paper adds
  :math:`[p_1 p_2 p_3][\alpha_1\lambda_1, \alpha_2\lambda_2, \alpha_3\lambda_3]^T` with
  :math:`\alpha_i \sim N(0, 0.1)`, a term in *variance* units, so on 0..255 values it would shift
  colours by hundreds of levels; on [0, 1] values it moves them by a few levels, the "intensity
  and colour of the illumination" the paper describes. :mod:`minialex.data.augment` scales the
  shift back to 0..255.

Cache layout (one folder per dataset version, under ``cache_dir``)::

    <name>-<size>px-<fingerprint[:16]>/
        train_images.npy  (N, S, S, 3) uint8, opened memory-mapped (np.load(mmap_mode="r"))
        train_labels.npy  (N,) int64
        train_files.json  relative path of each row
        val_*.npy, val_files.json, test_* (when test/ exists)
        mean.npy          (S, S, 3) float32
        meta.json         classes, counts, skipped files, eigenvalues/vectors, fingerprint
        COMPLETE          the fingerprint; written last

The fingerprint hashes the relative paths, byte sizes and modification times of every image
with ``size``: re-running on an unchanged folder reuses the cache without decoding; an added,
removed, replaced or touched file gives a new fingerprint and a new preparation (the older cache
of the same folder and size is then removed). Everything is written into ``<name>.tmp-<pid>`` and
renamed when complete, so an interrupted run leaves nothing that :func:`load_prepared` accepts.
No pickle anywhere: arrays are ``.npy``, metadata JSON.

A file that fails to decode is skipped with a warning, counted in ``meta["splits"][split]
["skipped"]`` and ``PreparedDataset.skipped``; its row is filled by the split's last good image,
so rows stay dense (``*_files.json`` tells which file each row came from).

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
import dataclasses
import datetime
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import shutil
import sys
import threading
import time
import warnings

import numpy as np

from .folder import ImageFolder, load_rgb, resize_center_crop, scan_image_folder

DEFAULT_SIZE = 256      # the paper: shorter side 256, central 256x256
FORMAT_VERSION = 1      # bump when the decoding or the layout changes: old caches are not reused
PIXEL_MAX = 255.0       # uint8 white; the RGB covariance is computed on pixels / PIXEL_MAX
CHUNK = 32              # images per worker task: amortises task overhead, keeps progress smooth
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
        skipped: split -> list of ``[relative path, reason]`` of files that failed to decode.
        meta: the whole ``meta.json``.
        reused: True when :func:`prepare` found this cache instead of building it.
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
        """Relative path of the file each row of ``images[split]`` was decoded from."""
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


def default_workers() -> int:
    """One worker per CPU this process may run on (``os.cpu_count()`` within its affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def fingerprint(folder: ImageFolder, size: int) -> str:
    """SHA-256 of format version, ``size``, classes, and each image's path, bytes and mtime."""
    digest = hashlib.sha256(json.dumps(
        {"format": FORMAT_VERSION, "size": size, "classes": list(folder.classes)}).encode())
    for split, samples in folder.samples.items():
        for rel, _ in samples:
            st = os.stat(folder.root / rel)
            digest.update(f"{split}\0{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prepare(root, *, size: int = DEFAULT_SIZE, cache_dir=None, workers: int | None = None,
            progress: bool = True) -> PreparedDataset:
    """Prepare the ImageFolder dataset at ``root`` (or reuse its cache) and open it.

    Args:
        root: folder with ``train/`` and ``val/`` (and optionally ``test/``), one sub-folder per
            class (see :func:`minialex.data.folder.scan_image_folder`).
        size: side of the stored images: shorter side rescaled to ``size``, central square kept.
        cache_dir: where caches live; default :func:`default_cache_dir`.
        workers: decoding processes; ``None`` = :func:`default_workers`, ``0`` = decode in this
            process (no pool; for debugging).
        progress: show a progress bar on stderr.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"prepare: size must be a positive integer, got {size!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"prepare: workers must be a non-negative integer or None, got "
                         f"{workers!r}")
    size = int(size)
    folder = scan_image_folder(root)
    fp = fingerprint(folder, size)
    cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{_slug(folder.root)}-{size}px-{fp[:16]}"
    if _is_complete(final, fp):
        return load_prepared(final, reused=True)

    _remove_dead_temps(cache_dir, final.name)
    tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _build(folder, fp, size, tmp, default_workers() if workers is None else workers, progress)
        (tmp / MARKER).write_text(fp)
        if _is_complete(final, fp):        # another process finished the same work first
            shutil.rmtree(tmp)
            return load_prepared(final, reused=True)
        shutil.rmtree(final, ignore_errors=True)   # an incomplete leftover, if any
        os.rename(tmp, final)
    except BaseException:                  # KeyboardInterrupt too: leave no partial cache
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_superseded(cache_dir, final, folder.root, size)
    return load_prepared(final)


def load_prepared(path, *, reused: bool = False) -> PreparedDataset:
    """Open a complete cache folder written by :func:`prepare`; ValueError if it is not one."""
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


def _build(folder: ImageFolder, fp: str, size: int, out: pathlib.Path, workers: int,
           progress: bool) -> None:
    """Decode every split into ``out`` and write the statistics and meta.json (not the marker)."""
    started = time.time()
    pool = _make_pool(workers) if workers > 0 else None
    splits, stats = {}, None
    try:
        for split, samples in folder.samples.items():
            images_path = out / f"{split}_images.npy"
            np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8,
                                      shape=(len(samples), size, size, 3)).flush()
            errors, split_stats = _decode_split(pool, folder.root, samples, images_path, size,
                                                with_stats=(split == "train"),
                                                progress=_Progress(split, len(samples), progress))
            rows = list(range(len(samples)))
            if errors:
                rows = _fill_holes(images_path, rows, sorted(errors))
            if split == "train":
                if not rows:
                    raise ValueError(f"prepare: no readable image in "
                                     f"{str(folder.root / 'train')!r}")
                stats = split_stats
            np.save(out / f"{split}_labels.npy",
                    np.array([samples[r][1] for r in rows], dtype=np.int64))
            (out / f"{split}_files.json").write_text(json.dumps([samples[r][0] for r in rows]))
            splits[split] = {"count": len(rows),
                             "skipped": [[samples[i][0], errors[i]] for i in sorted(errors)],
                             "ignored_files": folder.ignored[split]}
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    pixel_sum, rgb_outer, n_images = stats
    rgb_sum = pixel_sum.sum(axis=(0, 1))
    np.save(out / "mean.npy", (pixel_sum / n_images).astype(np.float32))
    eigvals, eigvecs = rgb_pca(rgb_sum, rgb_outer, n_images * size * size)
    meta = {
        "format": FORMAT_VERSION, "fingerprint": fp, "size": size,
        "source": str(folder.root.resolve()), "classes": list(folder.classes), "splits": splits,
        "mean_rgb": (rgb_sum / (n_images * size * size)).tolist(),
        "rgb_eigvals": eigvals.tolist(), "rgb_eigvecs": eigvecs.tolist(),
        "rgb_scale": "covariance of pixel values / 255; eigenvectors are the columns",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 3),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


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


def _decode_file(path: str, size: int) -> np.ndarray:
    return resize_center_crop(load_rgb(path, min_side=size), size)


def _decode_chunk(images_path: str, root: str, size: int, start: int, relpaths: list,
                  with_stats: bool):
    """Worker task: decode ``relpaths`` into rows ``start...`` of the .npy memory map.

    Writing straight into the shared file keeps pixels out of the inter-process pipe; only the
    chunk's statistics (integer per-pixel sums, RGB outer products summed over pixels) come back.
    Returns ``({row: reason} for files that failed, stats or None, number of files)``.
    """
    images = np.lib.format.open_memmap(images_path, mode="r+")
    errors = {}
    if with_stats:
        pixel_sum, rgb_outer, count = np.zeros((size, size, 3), np.int64), np.zeros((3, 3)), 0
    for i, rel in enumerate(relpaths):
        try:
            x = _decode_file(os.path.join(root, rel), size)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "unreadable file"
            errors[start + i] = f"{type(exc).__name__}: {exc}"
            continue
        images[start + i] = x
        if with_stats:
            pixel_sum += x
            rgb = x.reshape(-1, 3).astype(np.float64)   # exact: sums stay below 2**53
            rgb_outer += rgb.T @ rgb
            count += 1
    images.flush()
    del images
    return errors, ((pixel_sum, rgb_outer, count) if with_stats else None), len(relpaths)


def _decode_split(pool, root, samples, images_path, size, with_stats, progress):
    tasks = [(str(images_path), str(root), size, start,
              [rel for rel, _ in samples[start:start + CHUNK]], with_stats)
             for start in range(0, len(samples), CHUNK)]
    if pool is None:
        results = (_decode_chunk(*task) for task in tasks)
    else:
        futures = [pool.submit(_decode_chunk, *task) for task in tasks]
        results = (future.result() for future in concurrent.futures.as_completed(futures))
    errors, total = {}, None
    for task_errors, stats, n_files in results:
        for row, reason in task_errors.items():
            warnings.warn(f"prepare: skipping unreadable image {samples[row][0]!r} ({reason})",
                          stacklevel=4)   # points at the caller of prepare()
        errors.update(task_errors)
        if stats is not None:
            total = stats if total is None else tuple(a + b for a, b in zip(total, stats))
        progress.update(n_files)
    progress.close()
    return errors, total


def _fill_holes(images_path: pathlib.Path, rows: list, holes: list) -> list:
    """Move the last good rows into the failed ones, then cut the .npy to the good count.

    Moves one row per failed file (not the whole tail), so a corrupt file costs nothing at
    ImageNet scale; ``rows`` (sample index of each row) is permuted the same way.
    """
    n, hole_set = len(rows), set(holes)
    kept = n - len(holes)
    targets = [h for h in holes if h < kept]
    sources = [i for i in range(kept, n) if i not in hole_set]
    images = np.lib.format.open_memmap(images_path, mode="r+")
    for target, source in zip(targets, sources):
        images[target] = images[source]
        rows[target] = rows[source]
    images.flush()
    row_bytes = images[0].nbytes if n else 0
    del images
    with open(images_path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f)
        offset = f.tell()
        f.seek(0)
        write = (np.lib.format.write_array_header_1_0 if version == (1, 0)
                 else np.lib.format.write_array_header_2_0)
        write(f, {"shape": (kept,) + shape[1:], "fortran_order": fortran,
                  "descr": np.lib.format.dtype_to_descr(dtype)})
        # NumPy pads headers so that the first axis can grow to 21 digits: same length.
        assert f.tell() == offset, "npy header changed length"
        f.truncate(offset + kept * row_bytes)
    return rows[:kept]


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


def _slug(root: pathlib.Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", root.resolve().name) or "dataset"


def _is_complete(path: pathlib.Path, fp: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and marker.read_text().strip() == fp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_dead_temps(cache_dir: pathlib.Path, name: str) -> None:
    """Delete temp folders of this dataset left by killed runs (their process is gone)."""
    for tmp in cache_dir.glob(f"{name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_superseded(cache_dir: pathlib.Path, keep: pathlib.Path, root: pathlib.Path,
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


class _Progress:
    """A progress bar on stderr: redrawn in place 5 times a second on a terminal; in a log
    file, one line every 10 seconds and one at the end."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self.tty = enabled and sys.stderr.isatty()
        self.done, self.start, self.last = 0, time.time(), time.time()

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if self.enabled and self.done < self.total and now - self.last > (0.2 if self.tty else 10):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        start, end = ("\r", " ") if self.tty else ("", "\n")
        sys.stderr.write(f"{start}prepare {self.label}: [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} images, {rate:.0f}/s, {eta:.0f}s left{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.time())
            if self.tty:
                sys.stderr.write("\n")
            sys.stderr.flush()
