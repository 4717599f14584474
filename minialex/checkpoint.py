r"""Checkpoints: nested training state saved atomically to one ``.npz`` file, loaded without pickle.

A checkpoint is a *tree* of dicts, lists and tuples whose leaves are numbers, strings, booleans,
``None`` and arrays (NumPy or CuPy; GPU arrays are copied to the host). :func:`save` splits it
into

- the arrays, each stored as its own ``.npy`` member of an uncompressed zip (``np.savez``),
  named after its place in the tree (``arrays/model/features.0.weight``), and
- the rest, as JSON in a ``uint8`` array named ``__meta__``, with each array replaced by
  ``{"__array__": name}``,

so :func:`load` needs only ``np.load(path, allow_pickle=False)`` and ``json``: opening a
checkpoint never runs code from the file.

Writing is atomic: the file is written under a temporary name in the same directory
(``.last.npz.partial-XXXX.tmp``), flushed and ``fsync``-ed, then ``os.replace``-d over the
target, so a crash, a kill or Ctrl-C while saving leaves the previous checkpoint intact. A write
that fails (disk full, quota, permission) removes its temporary file and raises
:class:`WriteError`, which names the file and the cause; a temporary file left by a killed
process is removed by :func:`remove_partial_files` when the next run starts.

Reading: a missing file raises ``FileNotFoundError``, a directory ``IsADirectoryError``, a file
that cannot be opened the ``OSError`` of its cause, and a truncated or corrupt one a single
``ValueError``, each naming the path.

A *training* checkpoint (:func:`training_state`, written by :class:`minialex.train.Trainer`)
is the tree

- ``architecture`` (the model's variant name), ``config`` (the run's settings), and the facts a
  run keeps beside them (``classes``, ``normalization``);
- ``model``: ``{parameter name: array}``, ``optimizer``: its ``state_dict``;
- ``scheduler``, ``warmup``, ``watch``: the extensions' states (None when the run had none);
- ``trainer``: where the run is (``epoch`` completed, ``step`` into the next, ``global_step``),
  the current epoch's running sums, the best validation error and its epoch, the training
  totals, every epoch's record (``history``) and the warnings;
- ``rng``: minialex's generators (``backend``) and the training loader's (``train_loader``).

:func:`resumable` checks a tree before a trainer takes it (architecture, completeness, the
loader state that checkpoints before minialex 0.2 lack), :func:`load_weights` before a model
takes its weights, and :func:`migrate` moves what checkpoints before 0.2 kept in their settings
(class names, Fashion-MNIST's mean and std) to where this version keeps it.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
>>> save(path, {"epoch": 3, "w": np.ones((2, 2), np.float32), "lrs": (0.1, 0.01)})
>>> tree = load(path)
>>> tree["epoch"], tree["w"].dtype, tree["lrs"]
(3, dtype('float32'), (0.1, 0.01))
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from . import backend

FORMAT = "minialex-checkpoint"
VERSION = 1
META = "__meta__"
ZIP_MAGIC = b"PK\x03\x04"   # every .npz is a zip archive whose first member starts here
ARRAY, TUPLE, ITEMS = "__array__", "__tuple__", "__items__"   # JSON markers
_RESERVED = (ARRAY, TUPLE, ITEMS)
PARTIAL = ".partial-"                  # in the name of a temporary file, between target and id


class WriteError(OSError):
    """Writing ``filename`` failed part-way (disk full, quota, permission, ...). ``errno`` and
    ``strerror`` are the cause's; ``str()`` is one line naming the file, the cause and, when
    given, ``then``: what the disk still holds and what to do."""

    def __init__(self, filename, cause: OSError, then: str = ""):
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(filename))
        self.then = then

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}" + (
            f"; {self.then}" if self.then else "")


def _encode(obj, path, arrays):
    """JSON-able form of ``obj``; arrays go into ``arrays`` under their tree path."""
    if backend.is_gpu_array(obj) or isinstance(obj, np.ndarray):
        array = backend.to_numpy(obj)
        if array.dtype.hasobject:
            raise TypeError(f"checkpoint: {path or 'root'} is an object array, which cannot be "
                            f"stored without pickle")
        name = "arrays/" + (path or "root")
        while name in arrays:   # keys holding "/" could collide; keep each array anyway
            name += "'"
        arrays[name] = array
        return {ARRAY: name}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, f"{path}/{i}" if path else str(i), arrays) for i, v in enumerate(obj)]
        return {TUPLE: items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) and k not in _RESERVED for k in obj)
        if plain:
            return {k: _encode(v, f"{path}/{k}" if path else k, arrays) for k, v in obj.items()}
        return {ITEMS: [[_encode(k, path, {}), _encode(v, f"{path}/{k}" if path else str(k),
                                                       arrays)] for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot store {type(obj).__name__} at {path or 'root'}; use "
                    f"dicts, lists, tuples, numbers, strings, None and arrays")


def _decode(obj, arrays):
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if ARRAY in obj:
            return arrays[obj[ARRAY]]
        if TUPLE in obj:
            return tuple(_decode(v, arrays) for v in obj[TUPLE])
        if ITEMS in obj:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in obj[ITEMS]}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then flush, fsync and rename
    it over ``path``; on any error the temporary file is removed and ``path`` is untouched. An
    ``OSError`` of the file system (disk full, quota, permission) becomes a
    :class:`WriteError` naming ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}{PARTIAL}",
                                   suffix=".tmp")
    except OSError as exc:
        raise WriteError(path, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(path, exc) from None
        raise
    # make the rename itself durable; not every platform can open a directory
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_json(path, value) -> None:
    """``value`` as indented JSON in ``path``, written atomically (:func:`atomic_write`)."""
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def remove_partial_files(directory) -> list:
    """Remove the temporary files that :func:`atomic_write` leaves in ``directory`` when its
    process is killed before the rename; returns their paths. Only for a directory no other
    process is writing to (see :mod:`minialex.rundir`)."""
    found = sorted(glob.glob(os.path.join(glob.escape(os.fspath(directory)),
                                          f".*{PARTIAL}*.tmp")))
    for tmp in found:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return found


def _directory_given(path) -> str:
    """The one-line refusal of a directory where a checkpoint file was expected."""
    held = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(path), "*.npz")))
    if not held:
        return f"checkpoint: {path} is a directory, not a checkpoint file, and holds no .npz"
    pick = "last.npz" if "last.npz" in held else held[0]
    return (f"checkpoint: {path} is a directory, not a checkpoint file; pass one of its "
            f"checkpoints ({', '.join(held)}), e.g. {os.path.join(path, pick)}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(path, tree: dict) -> None:
    """Write ``tree`` (a dict) to ``path`` atomically as an ``.npz`` checkpoint."""
    if not isinstance(tree, dict):
        raise TypeError(f"checkpoint.save: expected a dict, got {type(tree).__name__}")
    arrays = {}
    meta = {"format": FORMAT, "version": VERSION, "tree": _encode(tree, "", arrays)}
    arrays[META] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path) -> dict:
    """Read a checkpoint written by :func:`save`; arrays come back as NumPy arrays."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(_directory_given(path))
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:     # e.g. no permission: the file may be fine, so not "corrupt"
        raise type(exc)(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    try:
        if magic != ZIP_MAGIC:   # np.load would try .npy and pickle next; refuse here instead
            raise ValueError(f"starts with {magic!r}, not with the zip signature of an .npz")
        with np.load(path, allow_pickle=False) as archive:
            if META not in archive.files:
                raise ValueError(f"no {META} entry, so not a minialex checkpoint")
            meta = json.loads(archive[META].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise ValueError(f"version {meta.get('version')!r}, this minialex reads "
                                 f"version {VERSION}")
            arrays = {name: archive[name] for name in archive.files if name != META}
            return _decode(meta["tree"], arrays)
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable minialex checkpoint, truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None


# -- what a training checkpoint holds ----------------------------------------------------------
EXTENSION_PARTS = ("scheduler", "warmup", "watch")      # None when a run has no such extension
TRAINER_FIELDS = ("epoch", "step", "global_step", "best_val_error", "best_epoch",
                  "train_images_total", "train_seconds_total", "history", "warnings")


def architecture(model) -> str:
    """The name a checkpoint gives ``model``'s architecture: its variant, else its class."""
    return getattr(model, "variant", type(model).__name__)


def training_state(trainer) -> dict:
    """The tree of a training checkpoint (see the module docstring) from a
    :class:`~minialex.train.Trainer` whose running sums are settled; arrays are host copies,
    read from the device once however many files are written."""
    tree = {"architecture": trainer.architecture, "config": trainer.config,
            **trainer.extra_state,
            "model": {k: backend.to_numpy(v) for k, v in trainer.model.state_dict().items()},
            "optimizer": trainer.optimizer.state_dict(), **dict.fromkeys(EXTENSION_PARTS)}
    for extension in trainer.extensions:
        tree.update(extension.state())
    position = {name: getattr(trainer, name) for name in TRAINER_FIELDS}
    tree["trainer"] = {**position, "epochs": trainer.epochs,
                       "running": dataclasses.asdict(trainer.running)}
    tree["rng"] = {"backend": backend.get_rng_state(),
                   "train_loader": trainer.train_loader.state_dict()}
    return tree


def resumable(tree, model, source="checkpoint") -> dict:
    """The fields a trainer of ``model`` resumes from ``tree``: :data:`TRAINER_FIELDS`,
    ``running`` (a dict), ``backend_rng`` and ``train_loader``. Raises one ValueError naming
    ``source`` for another architecture, a checkpoint written before minialex 0.2 (whose loader
    state cannot be restored) or an incomplete one; reads everything before a caller changes
    anything."""
    check_architecture(tree, model, source)
    if "rng" in tree and "train_loader" not in tree["rng"] and "shuffle" in tree["rng"]:
        raise ValueError(f"{source}: written by minialex before 0.2, whose loader state this "
                         f"version cannot restore: it cannot be resumed, but it can still be "
                         f"evaluated")
    try:
        t, rng = tree["trainer"], tree["rng"]
        return {"epoch": int(t["epoch"]), "step": int(t["step"]),
                "global_step": int(t.get("global_step", 0)), "running": dict(t["running"]),
                "best_val_error": float(t["best_val_error"]), "best_epoch": t["best_epoch"],
                "train_images_total": int(t["train_images_total"]),
                "train_seconds_total": float(t["train_seconds_total"]),
                "history": list(t["history"]), "warnings": list(t.get("warnings", [])),
                "backend_rng": rng["backend"], "train_loader": rng["train_loader"]}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{source}: incomplete training state (missing {exc})") from None


def check_architecture(tree, model, source="checkpoint") -> dict:
    """``tree``'s weights, after checking that they are ``model``'s architecture; another is
    refused with one ValueError naming ``source`` and the parameters that differ."""
    arch, weights = tree.get("architecture"), tree.get("model")
    if not isinstance(weights, dict):
        raise ValueError(f"{source}: holds no model weights")
    if arch != architecture(model):
        details = _shape_mismatches(model, weights)
        raise ValueError(f"{source}: checkpoint of architecture {arch!r} cannot be loaded into "
                         f"a {architecture(model)!r} model"
                         + (": " + "; ".join(details) if details else ""))
    return weights


def load_weights(model, tree, source="checkpoint") -> None:
    """Load ``tree``'s weights into ``model`` (:func:`check_architecture` first)."""
    weights = check_architecture(tree, model, source)
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def migrate(tree) -> dict:
    """``tree`` with ``classes`` and ``normalization`` where this version keeps them: before
    0.2 the class names and Fashion-MNIST's pixel mean and std were in its settings."""
    saved = tree.get("config", {})
    classes = tree.get("classes") or saved.get("classes")
    normalization = tree.get("normalization") or (
        {"mean": saved["mean"], "std": saved["std"]} if "mean" in saved else None)
    return {**tree, "classes": classes, "normalization": normalization}


def _shape_mismatches(model, state) -> list:
    own = {k: tuple(p.shape) for k, p in model.named_parameters()}
    theirs = {k: tuple(np.shape(v)) for k, v in state.items()}
    out = [f"{k}: checkpoint {theirs[k]}, model {own[k]}" for k in own
           if k in theirs and theirs[k] != own[k]]
    out += [f"{k}: missing from the checkpoint" for k in own if k not in theirs]
    out += [f"{k}: not in the model" for k in theirs if k not in own]
    return out
