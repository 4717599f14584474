"""Crafted and corrupt weights files (minialex/weights/): each is refused with one ValueError
naming the file, quickly and in little memory, and nothing in it ever runs; the committed
fixtures, truncated and with bytes flipped, either load or raise ValueError."""
import io
import os
import pathlib
import pickle
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from minialex.weights import (
    caffe_format,
    detect_format,
    load_pretrained,
    pretrained,
    safe_pickle,
    torch_format,
)
from minialex.weights.torch_format import _pickle_global, _pickle_int, _pickle_ints, _pickle_str

from protobuf_writer import f_bytes as f_len
from protobuf_writer import f_float, varint
from protobuf_writer import f_varint as f_var

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
MINIALEX = HERE.parent.parent / "minialex"


class TookTooLong(Exception):
    pass


def within(seconds, function, *args):
    """``function(*args)``, failing the test (not hanging it) past ``seconds``."""
    def alarm(*_):
        raise TookTooLong(f"{function.__name__} took over {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return function(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def refused(function, path, match=None, seconds=5):
    """``function(path)`` raises exactly a ValueError (or subclass) that names ``path`` once."""
    with pytest.raises(ValueError) as info:
        within(seconds, function, path)
    message = str(info.value)
    assert message.count(str(path)) == 1, message
    if match:
        assert re.search(match, message), message
    return message


# -- the legacy probe never unpickles ----------------------------------------------------------
SHORT_PLANTS = [  # each at most 32 bytes before its STOP, so the old probe ran all of it
    b"cposix\nsystem\n(S'touch PWNED'\ntR.",
    b"cos\nsystem\n(S'touch PWNED'\ntR.",
    b"cbuiltins\nopen\n(S'PWNED'\nS'w'\ntR.",
]


@pytest.mark.parametrize("payload", SHORT_PLANTS, ids=["posix.system", "os.system", "open"])
def test_a_short_pickle_is_never_run_while_telling_formats_apart(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    pickle.loads(payload)           # the plant is live: plain pickle makes the marker
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "w.pth"
    path.write_bytes(payload)
    assert torch_format.torch_format_of(payload) is None
    for function in (detect_format, load_pretrained, torch_format.load_state_dict):
        refused(function, path)
        assert not marker.exists(), function.__name__


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_legacy_magic_is_recognised_as_bytes_in_every_protocol(protocol):
    head = pickle.dumps(torch_format.LEGACY_MAGIC, protocol=protocol) + b"\x80\x02K\x01."
    assert torch_format.torch_format_of(head) == "legacy"
    for other in (torch_format.LEGACY_MAGIC + 1, str(torch_format.LEGACY_MAGIC)):
        assert torch_format.torch_format_of(pickle.dumps(other, protocol=protocol)) is None
    assert torch_format.torch_format_of(head[:12]) is None   # cut inside the number


def test_no_pickle_in_minialex_is_read_unrestricted():
    """Every unpickling goes through safe_pickle.StateDictUnpickler."""
    allowed = {("weights/safe_pickle.py", "class StateDictUnpickler(pickle.Unpickler):")}
    found = []
    for path in sorted(MINIALEX.rglob("*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            code = line.split("#")[0]
            if re.search(r"(?<![`\w.])pickle\.(loads?|Unpickler)\b|\b(cPickle|dill|shelve)\b"
                         r"|\bmarshal\.loads?\b|allow_pickle\s*=\s*True", code):
                found.append((path.relative_to(MINIALEX).as_posix(), line.strip()))
    assert set(found) <= allowed, found


# -- crafted pickles: checked before the unpickler reads them ----------------------------------
def zip_with(pickled: bytes, *members, compress=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as out:
        out.writestr("archive/data.pkl", pickled)
        for name, data in members:
            out.writestr("archive/" + name, data)
    return buffer.getvalue()


def tensor_pickle(size, stride, numel, storage="FloatStorage"):
    """``OrderedDict(w=_rebuild_tensor_v2(storage '0' of numel, 0, size, stride, ...))``."""
    od = _pickle_global("collections", "OrderedDict") + b")R"
    st = (b"(" + _pickle_str("storage") + _pickle_global("torch", storage) + _pickle_str("0")
          + _pickle_str("cpu") + _pickle_int(numel) + b"t")
    return (b"\x80\x02" + od + b"(" + _pickle_str("w")
            + _pickle_global("torch._utils", "_rebuild_tensor_v2") + b"(" + st + b"Q"
            + _pickle_int(0) + _pickle_ints(size) + _pickle_ints(stride) + b"\x89" + od
            + b"tR" + b"u.")   # TUPLE, REDUCE, SETITEMS, STOP


CRAFTED = {
    # LONG_BINPUT 0xFFFFFFF0: CPython grows the memo to twice the index (~68 GB)
    "memo": (r"memo index 4294967280", zip_with(
        b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b".")),
    # BINBYTES8 of 100 GB: CPython allocates the bytes before reading them
    "bytes8": (r"expected 107374182400 bytes", zip_with(
        b"\x80\x04\x8e" + struct.pack("<Q", 100 << 30) + b"abc.")),
    "frame": (r"a frame of 107374182400 bytes", zip_with(
        b"\x80\x04\x95" + struct.pack("<Q", 100 << 30) + b"N.")),
    "deep-lists": (r"nested more than 100 deep", zip_with(
        b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b".")),
    # a tensor of 10**11 elements through stride 0, from one stored float
    "zero-stride": (r"more elements than its storage", zip_with(
        tensor_pickle((100000, 100000, 10), (0, 0, 0), 1), ("data/0", bytes(4)))),
    "expanded": (r"more elements than its storage of 1 \(an expanded tensor", zip_with(
        tensor_pickle((3,), (0,), 1), ("data/0", bytes(4)))),
    "huge-stride": (r"reaches past its storage", zip_with(
        tensor_pickle((1, 2), (1 << 62, 1 << 62), 4), ("data/0", bytes(16)))),
    "bad-persistent-id": (r"unexpected persistent id", zip_with(
        b"\x80\x02(X\x07\x00\x00\x00storageNNNNtQ.")),
    # a list that holds itself
    "self-holding": (r"\(or holds itself\)", zip_with(b"\x80\x02]q\x00h\x00a.")),
    "deflated": (r"compressed or encrypted", zip_with(
        tensor_pickle((1,), (1,), 1), ("data/0", bytes(4)), compress=zipfile.ZIP_DEFLATED)),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_pickle_is_refused_quickly_naming_the_file(tmp_path, name):
    match, data = CRAFTED[name]
    path = tmp_path / f"{name}.pth"
    path.write_bytes(data)
    refused(torch_format.load_state_dict, path, r"not a readable PyTorch file.*" + match)
    refused(load_pretrained, path, match)


def test_a_storage_larger_than_the_archive_is_refused_before_it_is_read(tmp_path):
    data = bytearray(zip_with(tensor_pickle((1,), (1,), 1), ("data/0", bytes(4))))
    central = data.rfind(b"PK\x01\x02")    # the last entry: data/0
    data[central + 24:central + 28] = struct.pack("<I", 0xFFFFFFF0)   # uncompressed size
    path = tmp_path / "big.pth"
    path.write_bytes(bytes(data))
    refused(torch_format.load_state_dict, path, r"claims 4294967280 bytes")


def test_the_zero_stride_rule_leaves_ordinary_tensors_alone(tmp_path):
    """A tensor may repeat an element (stride 0) as long as it has no more elements than its
    storage; size-1 dimensions may have any stride, as torch writes them."""
    path = tmp_path / "ok.pth"
    path.write_bytes(zip_with(tensor_pickle((2, 1, 2), (0, 1 << 62, 1), 4),
                              ("data/0", np.arange(4, dtype="<f4").tobytes())))
    np.testing.assert_array_equal(torch_format.load_state_dict(path)["w"],
                                  [[[0, 1]], [[0, 1]]])
    path.write_bytes(zip_with(tensor_pickle((0, 1 << 40), (1, 1), 0), ("data/0", b"")))
    assert torch_format.load_state_dict(path)["w"].shape == (0, 1 << 40)


def test_a_deep_tuple_used_as_a_key_is_refused_not_crashing_the_process(tmp_path):
    """Hashing a tuple nested a million deep overflows CPython's C stack (a segfault, which
    no except clause catches): run in a child process, it must end with a ValueError."""
    path = tmp_path / "deep.pth"
    path.write_bytes(zip_with(b"\x80\x02}" + b")" + b"\x85" * 1_000_000 + b"Ns."))
    code = ("import sys; from minialex.weights import torch_format\n"
            "try: torch_format.load_state_dict(sys.argv[1])\n"
            "except ValueError as e: print('ValueError', e)\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                          text=True, timeout=60, cwd=MINIALEX.parent)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert "ValueError" in done.stdout and "nested more than" in done.stdout


def test_a_pickle_sharing_one_list_at_every_level_resolves_in_linear_time(tmp_path):
    """L1 = [L0, L0], L2 = [L1, L1], ...: 60 levels are 2**60 paths but 60 lists."""
    body = b"]q\x00"                                    # L0, memo 0
    for level in range(1, 61):
        body += b"(h" + bytes([level - 1]) + b"h" + bytes([level - 1]) + b"lq" + bytes([level])
    path = tmp_path / "laughs.pth"
    path.write_bytes(zip_with(b"\x80\x02" + body + b"."))
    top = within(5, torch_format.load_state_dict, path)
    assert top[0] is top[1] and top[0][0] is top[1][1]


def test_the_persistent_id_error_names_the_file_once(tmp_path):
    path = tmp_path / "pid.pth"
    path.write_bytes(CRAFTED["bad-persistent-id"][1])
    refused(torch_format.load_state_dict, path, r"unexpected persistent id")


def test_legacy_storage_length_is_checked_before_reading(tmp_path):
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        torch_format.LEGACY_MAGIC, torch_format.LEGACY_PROTOCOL, {"little_endian": True}))
    body = tensor_pickle((1,), (1,), 1) + pickle.dumps(["0"], protocol=2)
    path = tmp_path / "legacy.pth"
    path.write_bytes(head + body + struct.pack("<q", 25 << 30) + bytes(16))
    refused(torch_format.load_state_dict, path, r"storage 0: 1 elements expected, the file "
                                                r"says 26843545600")
    path.write_bytes(head + body + struct.pack("<q", 2) + bytes(8))    # enough bytes for 2
    refused(torch_format.load_state_dict, path, r"storage 0: 1 elements expected, the file "
                                                r"says 2 ")
    path.write_bytes(head + body + struct.pack("<q", 1) + bytes(4))    # and the honest one
    np.testing.assert_array_equal(torch_format.load_state_dict(path)["w"], [0])


# -- crafted caffemodels ------------------------------------------------------------------------
def net(*layers, v1=False) -> bytes:
    return f_len(1, b"net") + b"".join(f_len(2 if v1 else 100, layer) for layer in layers)


def new_layer(name, kind, *rest) -> bytes:
    return f_len(1, name.encode()) + f_len(2, kind.encode()) + b"".join(rest)


def blob(array) -> bytes:
    array = np.asarray(array, "<f4")
    return f_len(7, f_len(7, f_len(1, b"".join(varint(d) for d in array.shape)))
                 + f_len(5, array.tobytes()))


def lrn(local_size=5, alpha=1e-4) -> bytes:
    return f_len(118, f_var(1, local_size) + f_float(2, alpha) + f_float(3, 0.75))


CRAFTED_CAFFE = {
    # a string's length as a varint of 2**40: bytes(int) allocated that many bytes
    "type-varint": (net(f_len(1, b"conv1") + f_var(2, 1 << 40)), r"the type has wire type 0"),
    "v1-type-string": (net(f_len(4, b"conv1") + f_len(5, b"abc"), v1=True),
                       r"the type has wire type 2"),
    "name-varint": (net(f_var(1, 7) + f_len(2, b"ReLU")), r"the name has wire type 0"),
    "odd-blob-data": (net(new_layer("conv1", "Convolution", f_len(7, f_len(5, b"abcde")))),
                      r"blob data of 5 bytes"),
    "empty-lrn-float": (net(new_layer("n", "LRN", f_len(118, f_len(2, b"")))),
                        r"alpha has wire type 2"),
    "group-bytes": (net(new_layer("c", "Convolution", f_len(106, f_len(5, b"xy")))),
                    r"group has wire type 2"),
    "layer-varint": (f_len(1, b"net") + f_var(100, 5), r"field 100 \(a layer\) has wire type 0"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED_CAFFE))
def test_crafted_caffemodel_is_refused_naming_the_file(tmp_path, name):
    data, match = CRAFTED_CAFFE[name]
    path = tmp_path / f"{name}.caffemodel"
    path.write_bytes(data)
    refused(caffe_format.read_caffemodel, path, match)
    refused(load_pretrained, path, match)


def alexnet_layers(conv1_weight=None, lrns=(lrn(), lrn())):
    """bvlc_alexnet's layer list with one-value blobs (the model is never built here)."""
    tiny = blob(np.zeros((1, 1, 1, 1)))
    conv1 = blob(conv1_weight) if conv1_weight is not None else tiny
    layers = [new_layer("conv1", "Convolution", conv1, tiny), new_layer("norm1", "LRN", lrns[0]),
              new_layer("conv2", "Convolution", tiny, tiny), new_layer("norm2", "LRN", lrns[1])]
    layers += [new_layer(f"conv{i}", "Convolution", tiny, tiny) for i in (3, 4, 5)]
    layers += [new_layer(f"fc{i}", "InnerProduct", tiny, tiny) for i in (6, 7)]
    layers.append(new_layer("fc8", "InnerProduct", blob(np.zeros((10, 4096))), blob(np.zeros(10))))
    return net(*layers)


def test_a_caffe_conv_weight_that_is_not_4d_is_refused(tmp_path):
    path = tmp_path / "flat.caffemodel"
    path.write_bytes(alexnet_layers(conv1_weight=np.zeros(7)))
    refused(load_pretrained, path, r"layer conv1's weight has shape \(7,\)")


def test_a_conv1_or_fc8_the_model_would_inflate_is_refused_before_it_is_built(tmp_path):
    """conv1 (1, C, 1, 1) would make alexnet('paper') allocate 96 * 121 floats per file value."""
    path = tmp_path / "inflating.caffemodel"
    path.write_bytes(alexnet_layers(conv1_weight=np.zeros((1, 50_000, 1, 1))))
    refused(load_pretrained, path, r"conv1's weight is \(1, 50000, 1, 1\), not \(96, channels"
                                   r", 11, 11\)", seconds=2)


def test_lrn_layers_with_different_constants_are_refused_naming_them(tmp_path):
    path = tmp_path / "two_lrns.caffemodel"
    path.write_bytes(alexnet_layers(conv1_weight=np.zeros((96, 3, 11, 11)),
                                    lrns=(lrn(5), lrn(3))))
    refused(load_pretrained, path, r"LRN layers differ \(norm1 .*'local_size': 5.*; norm2 "
                                   r".*'local_size': 3")


def test_detect_format_reads_only_the_first_bytes(tmp_path, monkeypatch):
    path = tmp_path / "big.caffemodel"
    path.write_bytes(net(new_layer("fc", "InnerProduct", blob(np.zeros(250_000)))))
    read = []

    class Counting(io.FileIO):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    monkeypatch.setattr(pretrained, "open", lambda p, mode: Counting(p, mode), raising=False)
    assert detect_format(path) == "caffe"
    assert 0 < sum(read) <= pretrained.HEAD_BYTES, read
    path.write_bytes(path.read_bytes()[:pretrained.HEAD_BYTES + 100])   # a layer cut short
    with pytest.raises(ValueError, match="neither a PyTorch file"):
        detect_format(path)


def test_a_corrupt_zip_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"PK\x03\x04" + bytes(60))
    refused(load_pretrained, path, r"not a readable PyTorch file")


def test_a_mean_binaryproto_of_several_images_is_refused(tmp_path):
    path = tmp_path / "means.binaryproto"
    path.write_bytes(f_len(7, f_len(1, varint(2) + varint(3) + varint(1) + varint(1)))
                     + f_len(5, bytes(24)))
    refused(caffe_format.read_mean_binaryproto, path, r"not one \(C, H, W\) image")


# -- fuzz: every committed fixture cut and flipped -----------------------------------------------
def small_caffemodel() -> bytes:
    rng = np.random.default_rng(0)
    return net(new_layer("conv1", "Convolution", blob(rng.standard_normal((2, 1, 3, 3))),
                         blob(np.zeros(2)), f_len(106, f_var(5, 1))),
               new_layer("norm1", "LRN", lrn()),
               f_len(1, b"pool1") + f_len(2, b"Pooling"))


def fuzz_sources():
    sources = {name: (FIXTURES / name).read_bytes()
               for name in sorted(os.listdir(FIXTURES))}
    sources["small.caffemodel"] = small_caffemodel()
    return sources


CUTS, FLIPS, SECONDS = 60, 120, 5


@pytest.mark.parametrize("name", sorted(fuzz_sources()))
def test_cut_and_flipped_fixtures_load_or_raise_value_error(tmp_path, monkeypatch, name):
    """Truncations at random lengths and 1-3 random bytes changed (seeded): each file either
    loads or raises ValueError, within seconds, through every reader, and writes nothing."""
    monkeypatch.chdir(tmp_path)
    original = fuzz_sources()[name]
    rng = np.random.default_rng(sum(name.encode()))
    variants = [original[:n] for n in rng.integers(0, len(original), CUTS)]
    for _ in range(FLIPS):
        data = bytearray(original)
        for at in rng.integers(0, len(data), rng.integers(1, 4)):
            data[at] = int(rng.integers(0, 256))
        variants.append(bytes(data))
    readers = (load_pretrained, torch_format.load_state_dict, caffe_format.read_caffemodel)
    path = tmp_path / "fuzzed"
    outcomes = {}
    start = time.perf_counter()
    for data in variants:
        path.write_bytes(data)
        for reader in readers:
            try:
                within(SECONDS, reader, path)
                outcomes["loaded"] = outcomes.get("loaded", 0) + 1
            except ValueError:
                outcomes["ValueError"] = outcomes.get("ValueError", 0) + 1
    assert os.listdir(tmp_path) == ["fuzzed"]
    assert outcomes.get("ValueError", 0) > len(variants), outcomes   # the fuzz bites
    assert time.perf_counter() - start < 60


def test_a_flipped_pickle_inside_an_intact_zip_loads_or_raises_value_error(tmp_path):
    """The zip's CRC catches most flips above before the pickle is read; here the pickle
    itself is changed and zipped again, so every variant reaches the pickle checks."""
    with zipfile.ZipFile(FIXTURES / "tiny_zip.pth") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pickled = members["tiny_zip/data.pkl"]
    rng = np.random.default_rng(7)
    path = tmp_path / "flipped.pth"
    errors = 0
    for n in range(FLIPS):
        data = bytearray(pickled[:rng.integers(0, len(pickled))] if n % 5 == 0 else pickled)
        for at in rng.integers(0, len(data), rng.integers(1, 4)) if n % 5 else ():
            data[at] = int(rng.integers(0, 256))
        path.write_bytes(zip_with(bytes(data), *[(name[len("tiny_zip/"):], value) for name,
                                                 value in members.items()
                                                 if not name.endswith("data.pkl")]))
        try:
            within(SECONDS, torch_format.load_state_dict, path)
        except ValueError:
            errors += 1
    assert errors > FLIPS // 2


def test_the_nesting_limit_is_far_above_what_a_state_dict_needs():
    state = zipfile.ZipFile(FIXTURES / "tiny_zip.pth").read("tiny_zip/data.pkl")
    depths = []
    original = safe_pickle.MAX_NESTING
    for limit in range(1, 20):
        safe_pickle.MAX_NESTING = limit
        try:
            safe_pickle.check_opcodes(io.BytesIO(state))
            depths.append(limit)
        except ValueError:
            pass
        finally:
            safe_pickle.MAX_NESTING = original
    assert depths and depths[0] <= 10 < original
