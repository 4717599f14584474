r"""The protocol-buffer wire format, read without the protobuf library (Caffe's files use it).

A message is a sequence of fields, each a *key* then a value. The key is the varint
``field_number << 3 | wire_type``; a varint stores 7 bits a byte, least significant first,
with the high bit set on every byte but the last. The wire type says how long the value is:

- 0, varint: a varint (int32, int64, uint64, bool, enum);
- 1, 64-bit: 8 bytes little-endian (double, fixed64);
- 2, length-delimited: a varint length, then that many bytes (string, bytes, a nested
  message, or a *packed* repeated scalar: the values back to back);
- 5, 32-bit: 4 bytes little-endian (float, fixed32).

(Types 3 and 4, the deprecated groups, are refused.) A repeated float is written either packed
(one length-delimited field) or not (one 32-bit field per value); readers must take both.

:func:`fields` yields ``(number, wire_type, value)``: an int for a varint, the value's bytes
for the others (a ``memoryview`` into the message for a length-delimited value, so that a
nested message of 200 MB is not copied). It reads a run of unpacked fixed-size values of the
same field at once, vectorised (a weight of 38 million floats is 38 million fields), and
yields it as *one* field whose bytes are the values back to back, as if it had been packed.

>>> [(n, w, bytes(v) if w == LENGTH else v)
...  for n, w, v in fields(bytes([0x08, 0x96, 0x01, 0x12, 0x02, 0x68, 0x69]))]
[(1, 0, 150), (2, 2, b'hi')]
"""
from __future__ import annotations

import numpy as np

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
FIXED_SIZE = {FIXED64: 8, FIXED32: 4}


class ProtobufError(ValueError):
    """The bytes do not follow the wire format."""


def read_varint(buf, pos: int) -> tuple:
    """``(value, next position)`` of the varint at ``buf[pos]``."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("a varint runs past the end of the message")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("a varint is longer than 10 bytes")


def fields(buf):
    """``(field number, wire type, value)`` of each field of the message ``buf``, in order."""
    buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError(f"field number 0 at byte {start}")
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == LENGTH:
            length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise ProtobufError(f"field {number} of {length} bytes runs past the end of "
                                    f"its message")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in FIXED_SIZE:
            size = FIXED_SIZE[wire]
            if pos + size > end:
                raise ProtobufError(f"field {number} runs past the end of its message")
            if pos - start == 1:     # a one-byte key: take the whole run of this field at once
                value, pos = _fixed_run(buf, start, size, end)
            else:
                value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            raise ProtobufError(f"field {number} has wire type {wire}, which is not one of "
                                f"0, 1, 2, 5 (groups are not supported)")
        yield number, wire, value


def _fixed_run(buf, start: int, size: int, end: int) -> tuple:
    """The values of the consecutive records ``key, size bytes`` that begin at ``start``, all
    with the key byte ``buf[start]``: ``(their value bytes back to back, position after)``."""
    record = 1 + size
    count = (end - start) // record
    records = np.frombuffer(buf, np.uint8, count=count * record, offset=start).reshape(
        count, record)
    other = np.flatnonzero(records[:, 0] != buf[start])
    run = int(other[0]) if len(other) else count
    return records[:run, 1:].tobytes(), start + run * record


def packed_varints(value) -> list:
    """The ints of a packed repeated varint field (or of one unpacked value)."""
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = read_varint(value, pos)
        out.append(v)
    return out


def as_int64(value: int) -> int:
    """A varint read back as a signed int64 (two's complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value
