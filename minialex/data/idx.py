r"""IDX files: the array format of MNIST and Fashion-MNIST, read and written with NumPy.

Layout (big-endian throughout)::

    offset 0   2 bytes   0x00 0x00
    offset 2   1 byte    element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                       0x0D float32, 0x0E float64
    offset 3   1 byte    number of dimensions D
    offset 4   4*D bytes each dimension as an unsigned 32-bit integer
    then       the elements in C (row-major) order

A file may be gzip-compressed (as distributed, ``*.gz``); that is told from its first two
bytes, not from its name. A file whose header is malformed or whose size disagrees with the
header raises one ``ValueError`` naming the file.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
>>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
>>> read_idx(path).shape
(2, 3, 4)
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# element type code -> big-endian dtype
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path) -> np.ndarray:
    """The array stored in IDX file ``path`` (gzip or not), in native byte order.

    Raises FileNotFoundError when the file is absent and ValueError (naming the file) when the
    header is not IDX or the data size disagrees with the header.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
                         f"expected 0000 then a type code in "
                         f"{sorted(f'{c:02x}' for c in IDX_DTYPES)} and a dimension count)")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for "
                         f"{ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX size mismatch: header says shape {shape} of {dtype.name} "
                         f"({expected} bytes in all) but the file holds {len(raw)} bytes "
                         f"(truncated or corrupt)")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native order


def write_idx(path, array, compress=None) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``compress`` (default: name ends
    in ``.gz``)."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("=").str: code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX type code; use one of "
                        f"uint8, int8, int16, int32, float32, float64")
    if array.ndim > 255:
        raise ValueError(f"write_idx: IDX holds at most 255 dimensions, got {array.ndim}")
    body = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
            + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
    path = os.fspath(path)
    if compress is None:
        compress = path.endswith(".gz")
    with open(path, "wb") as f:
        f.write(gzip.compress(body, compresslevel=6) if compress else body)
