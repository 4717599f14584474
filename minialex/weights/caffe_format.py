r"""Caffe's ``.caffemodel`` files: a ``NetParameter`` protocol buffer, read without Caffe.

The fields read here (``src/caffe/proto/caffe.proto``):

- ``NetParameter``: ``name`` = 1; the layers, either ``layer`` = 100 (``LayerParameter``,
  Caffe since 2015) or the older ``layers`` = 2 (``V1LayerParameter``, the layout of the
  model zoo's ``bvlc_alexnet.caffemodel``).
- ``LayerParameter``: ``name`` = 1, ``type`` = 2 (a string: ``"Convolution"``), ``blobs`` = 7,
  ``convolution_param`` = 106, ``lrn_param`` = 118.
- ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (an enum: :data:`V1_TYPES`), ``blobs`` = 6,
  ``convolution_param`` = 10, ``lrn_param`` = 18. (Its field 1 holds a V0 layer, the format
  before 2014, which is refused.)
- ``BlobProto``: ``data`` = 5 (float, packed or not), ``double_data`` = 8, and the shape:
  ``shape`` = 7 (``BlobShape``: ``dim`` = 1, packed int64) or the legacy 4-D ``num``,
  ``channels``, ``height``, ``width`` = 1..4.
- ``ConvolutionParameter``: ``group`` = 5. ``LRNParameter``: ``local_size`` = 1,
  ``alpha`` = 2, ``beta`` = 3, ``k`` = 5 (defaults 5, 1, 0.75, 1).

A layer's blobs are its weight then its bias: a convolution's weight is ``(out, in/group, KH,
KW)`` and an inner product's ``(out, in)``, PyTorch's layout (a legacy 4-D blob
``(1, 1, out, in)`` is the same numbers). :func:`read_caffemodel` returns every layer, with or
without blobs, in the file's order, so callers also see where the ReLU, LRN and pooling layers
sit.
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from . import protobuf

NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
NET_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 100}   # every NetParameter field: how a file is recognised
LAYER = {"name": 1, "type": 2, "blobs": 7, "convolution_param": 106, "lrn_param": 118}
V1_LAYER = {"name": 4, "type": 5, "blobs": 6, "convolution_param": 10, "lrn_param": 18}
V0_LAYER_FIELD = 1
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU",
            6: "Dropout", 20: "Softmax", 21: "SoftmaxWithLoss", 5: "Data", 1: "Accuracy"}
BLOB_NUM_TO_WIDTH, BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = (1, 2, 3, 4), 5, 7, 8
CONV_GROUP = 5
LRN_FIELDS = {1: "local_size", 2: "alpha", 3: "beta", 5: "k"}
LRN_DEFAULTS = {"local_size": 5, "alpha": 1.0, "beta": 0.75, "k": 1.0}


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a caffemodel: ``name``, ``type`` (the LayerParameter spelling, e.g.
    ``"Convolution"``), ``blobs`` (float32 arrays), ``group`` (convolutions) and ``lrn``
    (``local_size``, ``alpha``, ``beta``, ``k`` of an LRN layer, defaults filled in)."""
    name: str
    type: str
    blobs: list
    group: int = 1
    lrn: dict | None = None


def looks_like_caffemodel(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes that starts with ``head`` looks like a NetParameter:
    the fields that start in ``head`` are all NetParameter's, at least one of them a layer,
    and none runs past the file's end. Only ``head`` is read: a caffemodel's first layer
    field starts within its first few dozen bytes (after the net's name)."""
    numbers, pos = set(), 0
    try:
        while pos < len(head):
            key, pos = protobuf.read_varint(head, pos)
            number, wire = key >> 3, key & 7
            numbers.add(number)
            if wire == protobuf.VARINT:
                _, pos = protobuf.read_varint(head, pos)
            elif wire == protobuf.LENGTH:
                length, pos = protobuf.read_varint(head, pos)
                pos += length
            elif wire in protobuf.FIXED_SIZE:
                pos += protobuf.FIXED_SIZE[wire]
            else:
                return False
    except protobuf.ProtobufError:   # a varint cut by the end of the head, or too long
        if len(head) == size:
            return False
    return (pos <= size and numbers <= NET_FIELDS
            and bool(numbers & {NET_LAYERS_V1, NET_LAYER}))


def read_caffemodel(path) -> list:
    """Every layer of the caffemodel at ``path``, in order (:class:`CaffeLayer`)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        layers = []
        for number, wire, value in protobuf.fields(data):
            if number in (NET_LAYER, NET_LAYERS_V1):
                _expect(wire, protobuf.LENGTH, f"field {number} (a layer)")
                layers.append(_layer(value, LAYER if number == NET_LAYER else V1_LAYER,
                                     text_type=number == NET_LAYER))
    except protobuf.ProtobufError as exc:
        raise ValueError(f"{path}: not a readable caffemodel, truncated or corrupt ({exc})"
                         ) from None
    except _V0Layer:
        raise ValueError(f"{path}: a caffemodel of Caffe's V0 format (before 2014); upgrade it "
                         f"with Caffe's upgrade_net_proto_binary") from None
    if not layers:
        raise ValueError(f"{path}: a protocol buffer without layers, so not a caffemodel")
    return layers


class _V0Layer(Exception):
    """A V1 layer that wraps a V0 layer (field 1)."""


def _expect(wire: int, expected: int | tuple, what: str) -> None:
    """Refuse a field whose wire type is not the one its type is written with (a string's
    length read as a varint would be a number of any size)."""
    expected = expected if isinstance(expected, tuple) else (expected,)
    if wire not in expected:
        raise protobuf.ProtobufError(f"{what} has wire type {wire}, not "
                                     f"{' or '.join(map(str, expected))}")


def _layer(buf, numbers: dict, text_type: bool) -> CaffeLayer:
    layer = CaffeLayer(name="", type="", blobs=[])
    for number, wire, value in protobuf.fields(buf):
        where = f"layer {layer.name or '(unnamed)'}"
        if number == numbers["name"]:
            _expect(wire, protobuf.LENGTH, f"{where}: the name")
            layer.name = _text(value)
        elif number == numbers["type"]:   # a string, or V1's enum
            _expect(wire, protobuf.LENGTH if text_type else protobuf.VARINT, f"{where}: the type")
            layer.type = _text(value) if text_type else V1_TYPES.get(value, f"V1 type {value}")
        elif number == numbers["blobs"]:
            _expect(wire, protobuf.LENGTH, f"{where}: a blob")
            layer.blobs.append(_blob(value, f"layer {layer.name or len(layer.blobs)}"))
        elif number == numbers["convolution_param"]:
            _expect(wire, protobuf.LENGTH, f"{where}: convolution_param")
            for n, w, v in protobuf.fields(value):
                if n == CONV_GROUP:
                    _expect(w, protobuf.VARINT, f"{where}: group")
                    layer.group = v
        elif number == numbers["lrn_param"]:
            _expect(wire, protobuf.LENGTH, f"{where}: lrn_param")
            layer.lrn = dict(LRN_DEFAULTS)
            for n, w, v in protobuf.fields(value):
                if n in LRN_FIELDS:   # local_size a uint32, the others floats
                    name = LRN_FIELDS[n]
                    _expect(w, protobuf.VARINT if name == "local_size" else protobuf.FIXED32,
                            f"{where}: {name}")
                    # a run of repeated floats comes as one field: the last one counts
                    layer.lrn[name] = v if w == protobuf.VARINT else float(
                        np.frombuffer(v[-4:], "<f4")[0])
        elif not text_type and number == V0_LAYER_FIELD:
            raise _V0Layer
    if layer.type == "LRN" and layer.lrn is None:
        layer.lrn = dict(LRN_DEFAULTS)
    return layer


def _blob(buf, where: str) -> np.ndarray:
    """A BlobProto's values as a float32 array of its shape."""
    chunks, legacy, shape = [], {}, None
    for number, wire, value in protobuf.fields(buf):
        if number in (BLOB_DATA, BLOB_DOUBLE_DATA):   # packed, or a run of fixed-size fields
            dtype = np.dtype("<f4" if number == BLOB_DATA else "<f8")
            _expect(wire, (protobuf.LENGTH, protobuf.FIXED32 if number == BLOB_DATA
                           else protobuf.FIXED64), f"{where}: blob data")
            if len(value) % dtype.itemsize:
                raise protobuf.ProtobufError(f"{where}: blob data of {len(value)} bytes, not "
                                             f"a whole number of {dtype.itemsize}-byte values")
            chunks.append(np.frombuffer(value, dtype))
        elif number == BLOB_SHAPE:
            _expect(wire, protobuf.LENGTH, f"{where}: the blob's shape")
            shape = []
            for n, w, v in protobuf.fields(value):
                if n == 1:   # dim: packed, or one varint a field
                    _expect(w, (protobuf.VARINT, protobuf.LENGTH), f"{where}: a dim")
                    shape += [protobuf.as_int64(d) for d in protobuf.packed_varints(v)]
        elif number in BLOB_NUM_TO_WIDTH:
            _expect(wire, protobuf.VARINT, f"{where}: num, channels, height or width")
            legacy[number] = protobuf.as_int64(value)
    if shape is None:
        shape = [legacy.get(n, 0) for n in BLOB_NUM_TO_WIDTH] if legacy else None
    values = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if shape is None:
        shape = [len(values)]
    if any(d < 0 for d in shape) or math.prod(shape) != len(values):
        raise protobuf.ProtobufError(f"{where}: a blob of shape {tuple(shape)} holds "
                                     f"{len(values)} values")
    return values.reshape(shape)


def _text(value) -> str:
    return bytes(value).decode("utf-8", "backslashreplace")


def read_mean_binaryproto(path) -> np.ndarray:
    """The mean image of a ``.binaryproto`` (one BlobProto, e.g. Caffe's
    ``ilsvrc_2012_mean.binaryproto``): float32 ``(C, H, W)`` in Caffe's channel order (BGR).
    Its per-channel average is the mean pixel."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        blob = _blob(memoryview(data), "the blob")
    except protobuf.ProtobufError as exc:
        raise ValueError(f"{path}: not a readable BlobProto ({exc})") from None
    if blob.ndim >= 3 and math.prod(blob.shape[:-3]) != 1:
        raise ValueError(f"{path}: a blob of shape {blob.shape}, not one (C, H, W) image")
    return blob.reshape(blob.shape[-3:]) if blob.ndim >= 3 else blob
