r"""PyTorch's ``torch.save`` files of tensors, read and written without PyTorch.

Two formats (``torch/serialization.py``), both holding a pickle whose tensors refer to
*storages* (raw bytes) by key; the pickle is read by :mod:`minialex.weights.safe_pickle`,
which runs nothing from the file.

**Zip** (PyTorch 1.6 and later): an uncompressed zip archive whose members all lie in one
folder (``archive/`` or the file's stem): ``data.pkl`` (the pickle), ``data/<key>`` (each
storage's bytes), ``byteorder`` (``little`` or ``big``; little when absent), ``version``, and
a few others that need not be read.

**Legacy** (before 1.6, e.g. torchvision's ``alexnet-owt-7be5be79.pth``): one stream of
pickles and bytes: the magic number ``0x1950A86A20F9469CFC6C``, the protocol version 1001,
a dict of system information (``little_endian``, type sizes), the object (its persistent ids
``('storage', type, key, location, numel, view)``), the list of storage keys, and then for
each key in that order an int64 element count followed by the storage's bytes.

(PyTorch before 1.0 wrote a tar archive, which is refused with a message.)

Writing (:func:`save_state_dict`) uses the zip format, the one ``torch.load(path,
weights_only=True)`` reads: the pickle is written opcode by opcode (:func:`state_dict_pickle`),
each storage starts at a multiple of 64 bytes in the file as PyTorch's own writer aligns it,
and the file appears atomically (:func:`minialex.checkpoint.atomic_write`).
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from .. import backend
from ..checkpoint import atomic_write
from .safe_pickle import (
    STORAGE_DTYPES,
    StateDictUnpickler,
    UnsafePickleError,
    resolve,
    storage_dtype,
)

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
TAR_MAGIC_OFFSET, TAR_MAGIC = 257, b"ustar"
ARCHIVE = "archive"          # the folder torch.save uses when it writes to a file object
ALIGNMENT = 64               # torch.save puts every storage at a multiple of 64 bytes
PAD_FIELD = 0x4246           # "FB": the zip extra field torch's writer pads with
ZIP_LOCAL_HEADER = 30        # bytes of a zip local file header before its name and extra
FILE_FORMAT_VERSION = "3"    # torch's reader accepts versions 1 to 10 or so; 3 is what it writes
DTYPE_STORAGES = {np.dtype(v): k for k, v in STORAGE_DTYPES.items() if k != "BFloat16Storage"}
# what zipfile raises for a damaged archive (a version or method it does not know, offsets
# out of the file: OSError from a seek, once the file itself has opened)
CORRUPT_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError,
               struct.error, ValueError, OSError)

__all__ = ["load_state_dict", "save_state_dict", "state_dict_pickle", "torch_format_of",
           "UnsafePickleError"]


def torch_format_of(head: bytes) -> str | None:
    """``"zip"``, ``"legacy"`` or ``"tar"`` from a file's first 512 bytes; None otherwise.

    The legacy magic number is compared as bytes, never unpickled: unpickling even a file's
    first 32 bytes can call any function they name (``cposix\\nsystem\\n...R.``)."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
        return "tar"
    if _starts_with_legacy_magic(head):
        return "legacy"
    return None


# The magic number as pickle writes it (LONG1: 10 bytes little-endian, then STOP), after
# PROTO 2 (torch.save's default) to 5; protocols 4 and 5 put a FRAME (8-byte length) first.
LEGACY_MAGIC_PICKLED = b"\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little") + b"."
PICKLE_PROTOCOLS, PICKLE_FRAME = (2, 3, 4, 5), b"\x95"


def _starts_with_legacy_magic(head: bytes) -> bool:
    if head[:1] != b"\x80" or head[1:2] not in [bytes([p]) for p in PICKLE_PROTOCOLS]:
        return False
    body = head[2:]
    if body.startswith(PICKLE_FRAME):
        body = body[9:]
    return body.startswith(LEGACY_MAGIC_PICKLED)


def load_state_dict(path):
    """The object ``torch.save`` wrote to ``path`` (usually an ``OrderedDict`` of name ->
    tensor), with every tensor as a NumPy array.

    Raises :class:`UnsafePickleError` if the pickle names anything but what a state_dict
    needs, and ``ValueError`` naming the file if it is not a readable ``torch.save`` file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(512)
    kind = torch_format_of(head)
    try:
        if kind == "zip":
            return _load_zip(path)
        if kind == "legacy":
            return _load_legacy(path)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, KeyError, TypeError, AttributeError, IndexError,
            OverflowError, MemoryError, RecursionError, *CORRUPT_ZIP) as exc:
        raise ValueError(f"{path}: not a readable PyTorch file, truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    if kind == "tar":
        raise ValueError(f"{path}: a tar archive of PyTorch before 1.0; load it with torch and "
                         f"save it again with a newer PyTorch")
    raise ValueError(f"{path}: not a PyTorch file (starts with {head[:8]!r}, neither a zip "
                     f"archive nor the legacy magic number)")


def _read_member(archive, name: str, file_size: int) -> bytes:
    """A member's bytes, refused unless stored uncompressed (as torch.save always writes it)
    and no bigger than the archive: a compressed member could inflate to any size."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        raise ValueError(f"{name} is compressed or encrypted; torch.save stores every "
                         f"member uncompressed")
    if info.file_size > file_size:
        raise ValueError(f"{name} claims {info.file_size} bytes, more than the file's "
                         f"{file_size}")
    return archive.read(info)


def _load_zip(path):
    file_size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            scripted = any(n.endswith("/constants.pkl") for n in names)
            raise ValueError("a TorchScript archive (torch.jit.save), not a state_dict"
                             if scripted else "a zip archive without <folder>/data.pkl")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = _read_member(archive, prefix + "byteorder", file_size).decode("ascii")
            if byteorder not in ("little", "big"):
                raise ValueError(f"unknown byte order {byteorder!r}")
        pickled = _read_member(archive, pickles[0], file_size)
        unpickler = StateDictUnpickler(io.BytesIO(pickled), path)
        obj = unpickler.load()
        storages = {}
        for key, ref in unpickler.storages.items():
            dtype = storage_dtype(ref, byteorder)
            raw = _read_member(archive, f"{prefix}data/{key}", file_size)
            if len(raw) < ref.numel * dtype.itemsize:
                raise ValueError(f"storage {key} holds {len(raw)} bytes, {ref.numel} "
                                 f"elements of {dtype.itemsize} bytes expected")
            storages[key] = np.frombuffer(raw, dtype, count=ref.numel)
    return resolve(obj, storages)


def _load_legacy(path):
    with open(path, "rb") as f:
        data = f.read()   # in memory: each pickle is checked before the unpickler reads it
    stream = io.BytesIO(data)
    header = [StateDictUnpickler(stream, path).load() for _ in range(3)]
    if header[0] != LEGACY_MAGIC or header[1] != LEGACY_PROTOCOL:
        raise ValueError(f"magic number {header[0]!r:.40} and protocol {header[1]!r:.40}, "
                         f"expected {LEGACY_MAGIC:#x} and {LEGACY_PROTOCOL}")
    info = header[2] if isinstance(header[2], dict) else {}
    byteorder = "little" if info.get("little_endian", True) else "big"
    unpickler = StateDictUnpickler(stream, path)
    obj = unpickler.load()
    keys = StateDictUnpickler(stream, path).load()
    if not isinstance(keys, list):
        raise ValueError(f"the storage keys are a {type(keys).__name__}, not a list")
    storages = {}
    for key in keys:
        ref = unpickler.storages.get(str(key))
        if ref is None:
            raise ValueError(f"storage {key!s:.60} is listed but no tensor uses it")
        dtype = storage_dtype(ref, byteorder)
        (numel,) = struct.unpack("<q" if byteorder == "little" else ">q", stream.read(8))
        start = stream.tell()
        left = (len(data) - start) // dtype.itemsize
        if numel != ref.numel or numel > left:   # checked before anything is read
            raise ValueError(f"storage {key}: {ref.numel} elements expected, the file says "
                             f"{numel} and holds {left} more elements")
        storages[str(key)] = np.frombuffer(data, dtype, count=numel, offset=start)
        stream.seek(start + numel * dtype.itemsize)
    missing = sorted(set(unpickler.storages) - set(storages))
    if missing:
        raise ValueError(f"storages {', '.join(missing)} are used but not stored")
    return resolve(obj, storages)


# -- writing -----------------------------------------------------------------------------------
def _pickle_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data             # BINUNICODE


def _pickle_int(value: int) -> bytes:
    if 0 <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)                      # BININT
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data                      # LONG1


def _pickle_ints(values) -> bytes:
    return b"(" + b"".join(_pickle_int(int(v)) for v in values) + b"t"   # MARK ... TUPLE


def _pickle_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"   # GLOBAL


def state_dict_pickle(entries) -> bytes:
    """The pickle (protocol 2) of an ``OrderedDict`` of tensors, as ``torch.save`` writes it.

    ``entries``: ``(name, storage key, storage type, shape)`` per tensor, each tensor
    contiguous over its whole storage. Each value is
    ``_rebuild_tensor_v2(<persistent id ('storage', type, key, 'cpu', numel)>, 0, shape,
    contiguous strides, False, OrderedDict())``.
    """
    ordered_dict = _pickle_global("collections", "OrderedDict") + b")R"   # OrderedDict()
    out = [b"\x80\x02", ordered_dict, b"("]
    for name, key, storage_type, shape in entries:
        numel = int(np.prod(shape, dtype=np.int64))
        strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
        storage = (b"(" + _pickle_str("storage") + _pickle_global("torch", storage_type)
                   + _pickle_str(key) + _pickle_str("cpu") + _pickle_int(numel) + b"t")
        out += [_pickle_str(name), _pickle_global("torch._utils", "_rebuild_tensor_v2"),
                b"(", storage, b"Q", _pickle_int(0), _pickle_ints(shape),
                _pickle_ints(strides), b"\x89", ordered_dict, b"t", b"R"]
    out.append(b"u.")                                                 # SETITEMS, STOP
    return b"".join(out)


def save_state_dict(path, state_dict) -> None:
    """Write ``state_dict`` (name -> array, NumPy or CuPy) to ``path`` in ``torch.save``'s zip
    format, atomically: ``torch.load(path, weights_only=True)`` gives the same names, shapes,
    dtypes and values. Arrays of float16/32/64, signed integers, uint8 and bool."""
    arrays = collections.OrderedDict()
    for name, value in state_dict.items():
        value = getattr(value, "data", value)
        array = np.ascontiguousarray(backend.to_numpy(value) if backend.is_gpu_array(value)
                                     else np.asarray(value))
        if array.dtype not in DTYPE_STORAGES:
            raise ValueError(f"save_state_dict: {name} is {array.dtype}, which has no torch "
                             f"storage here; use one of {sorted(map(str, DTYPE_STORAGES))}")
        if not isinstance(name, str):
            raise ValueError(f"save_state_dict: names must be strings, got {name!r}")
        arrays[name] = array
    entries = [(name, str(i), DTYPE_STORAGES[a.dtype], a.shape)
               for i, (name, a) in enumerate(arrays.items())]
    records = [("data.pkl", state_dict_pickle(entries)), ("byteorder", b"little")]
    records += [(f"data/{i}", a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
                for i, a in enumerate(arrays.values())]
    records.append(("version", FILE_FORMAT_VERSION.encode() + b"\n"))
    atomic_write(path, lambda f: _write_zip(f, records))


def _write_zip(f, records) -> None:
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            info = zipfile.ZipInfo(f"{ARCHIVE}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            if name.startswith("data/"):
                info.extra = _padding(archive.fp.tell(), len(info.filename.encode()))
            archive.writestr(info, data)


def _padding(offset: int, name_length: int) -> bytes:
    """The extra field that makes a member's data, after its local header at ``offset``, start
    at a multiple of :data:`ALIGNMENT`."""
    before = offset + ZIP_LOCAL_HEADER + name_length + 4     # 4: the extra field's own header
    pad = -before % ALIGNMENT
    return struct.pack("<HH", PAD_FIELD, pad) + b"Z" * pad
