"""A small protocol-buffer writer for the tests that make caffemodels: the wire format as
minialex/weights/protobuf.py's docstring describes it (varint keys, varint, length-delimited
and 32-bit fields)."""
import struct

from minialex.weights import protobuf


def varint(value: int) -> bytes:
    """Base-128 varint, least significant group first; negatives as their 64-bit two's
    complement, as protobuf writes them."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number, wire):
    return varint(number << 3 | wire)


def f_varint(number, value):
    return key(number, protobuf.VARINT) + varint(value)


def f_bytes(number, data):
    return key(number, protobuf.LENGTH) + varint(len(data)) + data


def f_float(number, value):
    return key(number, protobuf.FIXED32) + struct.pack("<f", value)
