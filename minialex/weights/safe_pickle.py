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

Before the unpickler sees a byte, :func:`check_opcodes` reads the pickle opcode by opcode
(:func:`pickletools.genops`, which runs nothing) and refuses what would make CPython's
unpickler allocate more than the file holds or recurse without bound: a length (``BINBYTES8``,
``FRAME``, ...) beyond the bytes left, a memo index (``LONG_BINPUT``, which resizes the memo
to it) beyond the number of opcodes, containers nested more than :data:`MAX_NESTING` deep
(hashing a tuple nested a million deep overflows the C stack). A file read here therefore
costs memory and time in proportion to its size.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import math
import pickle
import pickletools

import numpy as np

# torch's typed storages -> the NumPy dtype of their bytes (byte order added by the reader).
STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
BFLOAT16 = "BFloat16Storage"   # NumPy has no bfloat16: kept as uint16, widened by resolve()
# Containers inside containers: a state_dict needs about 6 (a wrapper dict, the OrderedDict,
# a _rebuild call's argument tuple, its size tuple); optimizer states a few more.
MAX_NESTING = 100
INT64_MAX = (1 << 63) - 1


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
    if len(size) != len(stride) or not all(isinstance(v, int) and 0 <= v <= INT64_MAX
                                           for v in size + stride + (storage_offset,)):
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
    errors. Persistent ids become :class:`StorageRef` and are collected in ``storages``.

    ``file`` is an :class:`io.BytesIO` (the file's bytes, already in memory): each
    :meth:`load` first checks the pickle at its position with :func:`check_opcodes`."""

    def __init__(self, file: io.BytesIO, filename):
        super().__init__(file, encoding="utf-8")
        self.file, self.filename, self.storages = file, filename, {}

    def load(self):
        start = self.file.tell()
        check_opcodes(self.file)
        self.file.seek(start)
        try:
            return super().load()
        except (MemoryError, RecursionError) as exc:   # not expected after the check
            raise ValueError(f"the pickle is not a state_dict's ({type(exc).__name__})"
                             ) from None

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
            # (the caller names the file)
            raise ValueError(f"unexpected persistent id {pid!r:.200}")
        if not isinstance(pid[2], (str, int)):
            raise ValueError(f"a storage key is a {type(pid[2]).__name__}")
        key = str(pid[2])
        ref = StorageRef(key, pid[1].name, pid[4])
        known = self.storages.setdefault(key, ref)
        if known != ref:
            raise ValueError(f"storage {key} is declared twice, as {known.storage_type}"
                             f"[{known.numel}] and {ref.storage_type}[{ref.numel}]")
        view = pid[5] if len(pid) == 6 else None
        if view is not None:   # legacy files only: a view of part of the storage
            if not (isinstance(view, tuple) and len(view) == 3
                    and isinstance(view[0], (str, int)) and all(
                        isinstance(v, int) and 0 <= v <= INT64_MAX for v in view[1:])):
                raise ValueError(f"storage {key} has a view {view!r:.100}")
            view_key, offset, numel = view
            return StorageRef(key, ref.storage_type, numel, (str(view_key), offset, numel))
        return ref


def _printable(text) -> str:
    return text if isinstance(text, str) and text.isprintable() else repr(text)


_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
# opcodes that add items to the container below them rather than make a new object
_FILLS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}


def check_opcodes(stream: io.BytesIO) -> None:
    """Read the pickle at ``stream``'s position (to its STOP) without running it; raise
    ``ValueError`` for a length beyond the bytes left, a memo index beyond the opcodes read,
    or containers nested deeper than :data:`MAX_NESTING`.

    :func:`pickletools.genops` checks every length against the bytes left (reading a
    ``BytesIO`` never allocates more than it holds). The nesting is followed on a model of the
    unpickler's stack holding each object's depth (0 for an atom, 1 + its items' deepest for a
    container; a filled container keeps the deeper of its own and its new items' + 1), as
    ``pickletools.dis`` follows the stack: each opcode's ``stack_before`` and ``stack_after``.
    """
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)
    stack, marks, memo = [], [], {}
    try:
        for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
            name = op.name
            if name == "FRAME" and arg > size - (pos - start):
                raise ValueError(f"a frame of {arg} bytes at byte {pos}, past the pickle's end")
            if name in _PUTS or name == "MEMOIZE":
                index = len(memo) if name == "MEMOIZE" else arg
                if index > count:   # the pickler numbers its memo from 0, one entry a PUT
                    raise ValueError(f"memo index {index} at byte {pos}, after {count} opcodes")
                memo[index] = stack[-1]
                continue
            if name in _GETS:
                stack.append(memo.get(arg, 0))
                continue
            if name == "POP" and marks and marks[-1] == len(stack):   # POP takes the mark
                marks.pop()
                continue
            before, after = op.stack_before, op.stack_after
            items = []
            if pickletools.markobject in before:
                below = before.index(pickletools.markobject)
                items = stack[marks[-1]:]
                del stack[marks.pop():]
            else:
                below = len(before)
            if below > len(stack):
                raise IndexError(f"{name} takes more items than the stack holds")
            items = stack[len(stack) - below:] + items
            del stack[len(stack) - below:]
            if pickletools.markobject in after:
                marks.append(len(stack))
            elif name == "DUP":
                stack += items * 2
            elif name in _FILLS:
                stack.append(max(items[0], 1 + max(items[1:], default=0)))
            elif after:
                stack.append(1 + max(items) if items else 0)
            if stack and stack[-1] > MAX_NESTING:
                raise ValueError(f"containers nested more than {MAX_NESTING} deep at byte "
                                 f"{pos}, which a state_dict never needs")
    except IndexError:   # an empty stack or no mark: the unpickler would refuse it too
        raise ValueError(f"a malformed pickle ({name} at byte {pos} finds too few items)"
                         ) from None


def storage_dtype(ref: StorageRef, byteorder: str) -> np.dtype:
    """The dtype of ``ref``'s bytes in a file of ``byteorder`` (``"little"`` or ``"big"``)."""
    return np.dtype(("<" if byteorder == "little" else ">") + STORAGE_DTYPES[ref.storage_type])


def to_array(tensor: TensorRef, storage: np.ndarray, name: str) -> np.ndarray:
    """The tensor as a new C-contiguous native-order array (float32 for bfloat16).

    ``storage`` holds the whole storage's elements; the tensor's elements are
    ``storage[offset + sum_d i_d * stride_d]``, all of which must lie inside it, and it may
    have no more elements than its storage. A tensor with more, such as ``x.expand(n)``
    (stride 0), is refused: a state_dict's tensors own their elements, and a copy of a
    crafted file's stride-0 tensor could need any amount of memory; save ``x.contiguous()``.
    """
    if tensor.storage.view is not None:
        _, start, numel = tensor.storage.view
        storage = storage[start:start + numel]
    count = math.prod(tensor.size)
    if count == 0:
        if any(n > INT64_MAX // 16 for n in tensor.size):
            raise ValueError(f"tensor {name} has size {tensor.size}")
        return np.zeros(tensor.size, np.float32 if tensor.storage.storage_type == BFLOAT16
                        else storage.dtype.newbyteorder("="))
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= len(storage):
        raise ValueError(f"tensor {name} of size {tensor.size}, stride {tensor.stride} at "
                         f"offset {tensor.offset} reaches past its storage of {len(storage)} "
                         f"elements")
    if count > len(storage):
        raise ValueError(f"tensor {name} of size {tensor.size}, stride {tensor.stride} has "
                         f"more elements than its storage of {len(storage)} (an expanded "
                         f"tensor, which a state_dict does not hold; save it contiguous)")
    # a stride of a dimension of size 1 never moves: 0 keeps it from overflowing in bytes
    strides = [s * storage.itemsize if n > 1 else 0 for n, s in zip(tensor.size, tensor.stride)]
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset:], shape=tensor.size,
                                           strides=strides, writeable=False)
    array = np.array(view, dtype=view.dtype.newbyteorder("="), order="C")
    if tensor.storage.storage_type == BFLOAT16:   # the top 16 bits of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def resolve(obj, storages: dict):
    """``obj`` with every :class:`TensorRef` replaced by its array; ``storages`` maps each
    storage key to its elements. Dicts, lists and tuples are walked; other values kept.

    An object the pickle refers to twice (its memo) is resolved once and shared, as torch
    shares it, so a pickle of lists of lists of the same list costs its size, not 2**depth;
    a container nested more than :data:`MAX_NESTING` deep (lists can be filled after their
    depth was checked) or holding itself is refused."""
    return _resolve(obj, storages, {}, None, 0)


def _resolve(obj, storages, done: dict, path, depth: int):
    """``path``: ``(parent's path, key)`` pairs, spelled out only for an error message."""
    if id(obj) in done:
        return done[id(obj)]
    if depth > MAX_NESTING:
        raise ValueError(f"{_path_text(path)} nests containers more than {MAX_NESTING} deep "
                         f"(or holds itself)")
    if isinstance(obj, TensorRef):
        out = to_array(obj, storages[obj.storage.key], _path_text(path))
    elif isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _resolve(v, storages, done, (path, k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        out = type(obj)(_resolve(v, storages, done, (path, i), depth + 1)
                        for i, v in enumerate(obj))
    else:
        return obj
    done[id(obj)] = out
    return out


def _path_text(path) -> str:
    """The keys on ``path`` as one name: ``features.0.weight``, ``state[3]``."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(f"[{key}]" if isinstance(key, int) else f".{key!s:.60}")
    return "".join(reversed(keys)).lstrip(".") or "(the top object)"
