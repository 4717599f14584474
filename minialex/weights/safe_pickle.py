r"""Reading the pickle inside a PyTorch weights file without running anything it names.

``torch.save`` pickles a state_dict: an ``OrderedDict`` of name -> tensor, each tensor written
as a call ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks)`` whose ``storage`` is a *persistent id*
``('storage', torch.FloatStorage, key, location, numel)``: a reference to raw bytes stored
outside the pickle. A pickle can name any importable function, and unpickling calls it, so
a weights file from elsewhere must never go through plain ``pickle.load``.

:class:`StateDictUnpickler` resolves every global the pickle names (``find_class``) against a
short list of stand-ins, never importing anything:

- ``collections.OrderedDict`` (the state_dict itself and an empty ``backward_hooks``);
- ``torch._utils._rebuild_tensor_v2``, ``_rebuild_tensor`` and ``_rebuild_parameter``: they
  return a :class:`TensorRef` (storage, offset, size, stride) that the caller turns into an
  array once the storage's bytes are read (:func:`resolve`);
- ``torch.FloatStorage`` and the other typed storages of :data:`STORAGE_DTYPES`, which say the
  dtype of a storage's bytes.

Any other global raises :class:`UnsafePickleError` *before* the pickle can call it, with one
line naming it: ``refusing to load w.pth: its pickle calls os.system, which a tensor
state_dict never needs``. The stand-ins are instances of classes with empty ``__slots__``, so
the pickle cannot set attributes on them either (its ``BUILD`` opcode).
"""
from __future__ import annotations

import collections
import dataclasses
import math
import pickle

import numpy as np

# torch's typed storages -> the NumPy dtype of their bytes (byte order added by the reader).
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
BFLOAT16 = "BFloat16Storage"   # NumPy has no bfloat16: kept as uint16, widened by resolve()


class UnsafePickleError(ValueError):
    """The pickle of a weights file names a global that a tensor state_dict never needs."""


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """A persistent id ``('storage', type, key, location, numel)``: ``numel`` elements of
    ``dtype`` (a :data:`STORAGE_DTYPES` name) stored outside the pickle under ``key``."""
    key: str
    storage_type: str
    numel: int
    view: tuple | None = None   # legacy format: (view key, offset, numel) into the storage


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """``storage`` viewed from element ``offset`` with ``size`` and ``stride`` (in elements),
    as ``torch.Tensor.as_strided``."""
    storage: StorageRef
    offset: int
    size: tuple
    stride: tuple


class _StorageType:
    __slots__ = ("name",)

    def __init__(self, name):
        object.__setattr__(self, "name", name)

    def __setattr__(self, name, value):
        raise AttributeError(f"{self.name} is read-only")


class _Rebuild:
    """A stand-in for one of torch's ``_rebuild_*`` functions; builds only a TensorRef."""
    __slots__ = ("build",)

    def __init__(self, build):
        object.__setattr__(self, "build", build)

    def __setattr__(self, name, value):
        raise AttributeError("read-only")

    def __call__(self, *args):
        return self.build(*args)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """``_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])``
    and the older ``_rebuild_tensor(storage, offset, size, stride)``."""
    if not isinstance(storage, StorageRef):
        raise ValueError(f"a tensor's storage is {type(storage).__name__}, not a storage")
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or not all(
            isinstance(v, int) and v >= 0 for v in size + stride + (storage_offset,)):
        raise ValueError(f"a tensor has size {size}, stride {stride}, offset {storage_offset}")
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """``_rebuild_parameter(data, requires_grad, hooks[, state])``: a Parameter is its data."""
    if not isinstance(data, TensorRef):
        raise ValueError(f"a parameter holds {type(data).__name__}, not a tensor")
    return data


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _Rebuild(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Rebuild(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Rebuild(_rebuild_parameter),
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles a tensor state_dict with the stand-ins above; ``filename`` names the file in
    errors. Persistent ids become :class:`StorageRef` and are collected in ``storages``."""

    def __init__(self, file, filename):
        super().__init__(file, encoding="utf-8")
        self.filename, self.storages = filename, {}

    def find_class(self, module, name):
        found = ALLOWED.get((module, name)) if isinstance(module, str) and isinstance(
            name, str) else None
        if found is None:
            raise UnsafePickleError(f"refusing to load {self.filename}: its pickle calls "
                                    f"{_printable(module)}.{_printable(name)}, which a tensor "
                                    f"state_dict never needs")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[3], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise ValueError(f"{self.filename}: unexpected persistent id {pid!r:.200}")
        key = str(pid[2])
        ref = StorageRef(key, pid[1].name, pid[4])
        known = self.storages.setdefault(key, ref)
        if known != ref:
            raise ValueError(f"{self.filename}: storage {key} is declared twice, as "
                             f"{known.storage_type}[{known.numel}] and {ref.storage_type}"
                             f"[{ref.numel}]")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:   # legacy files only: a view of part of the storage
            view_key, offset, numel = view
            return StorageRef(key, ref.storage_type, numel, (str(view_key), offset, numel))
        return ref


def _printable(text) -> str:
    return text if isinstance(text, str) and text.isprintable() else repr(text)


def storage_dtype(ref: StorageRef, byteorder: str) -> np.dtype:
    """The dtype of ``ref``'s bytes in a file of ``byteorder`` (``"little"`` or ``"big"``)."""
    return np.dtype(("<" if byteorder == "little" else ">") + STORAGE_DTYPES[ref.storage_type])


def to_array(tensor: TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    """The tensor as a new C-contiguous native-order array (float32 for bfloat16).

    ``storage`` holds the whole storage's elements; the tensor's elements are
    ``storage[offset + sum_d i_d * stride_d]``, all of which must lie inside it.
    """
    if tensor.storage.view is not None:
        _, start, numel = tensor.storage.view
        storage = storage[start:start + numel]
    count = math.prod(tensor.size)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if count and last >= len(storage):
        raise ValueError(f"tensor {name} of size {tensor.size}, stride {tensor.stride} at "
                         f"offset {tensor.offset} reaches past its storage of {len(storage)} "
                         f"elements")
    base = storage[tensor.offset:] if count else storage[:0]
    view = np.lib.stride_tricks.as_strided(
        base, shape=tensor.size, strides=[s * storage.itemsize for s in tensor.stride],
        writeable=False)
    array = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
    if tensor.storage.storage_type == BFLOAT16:   # the top 16 bits of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def resolve(obj, storages: dict, name: str = ""):
    """``obj`` with every :class:`TensorRef` replaced by its array; ``storages`` maps each
    storage key to its elements. Dicts, lists and tuples are walked; other values kept."""
    if isinstance(obj, TensorRef):
        return to_array(obj, storages[obj.storage.key], name)
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = resolve(v, storages, f"{name}.{k}" if name else str(k))
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(resolve(v, storages, f"{name}[{i}]") for i, v in enumerate(obj))
    return obj
