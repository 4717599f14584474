"""torch.save files read and written without PyTorch (minialex/weights/torch_format.py,
safe_pickle.py): the committed fixtures, files torch makes now, planted pickles, the export."""
import builtins
import collections
import io
import os
import pathlib
import pickle
import struct
import zipfile

import numpy as np
import pytest

from minialex import manual_seed
from minialex.models import alexnet
from minialex.weights import (
    UnsafePickleError,
    load_pretrained,
    safe_pickle,
    save_torchvision,
    torch_format,
)

from conftest import TOL

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
FORMATS = ("tiny_zip.pth", "tiny_legacy.pth")


# -- the committed fixtures (no PyTorch needed) --------------------------------------------------
@pytest.mark.parametrize("name", FORMATS)
def test_committed_fixture_gives_the_arrays_torch_saved(name):
    expected = np.load(FIXTURES / "tiny_expected.npz")
    state = torch_format.load_state_dict(FIXTURES / name)
    assert isinstance(state, collections.OrderedDict) and list(state) == expected.files
    for key in expected.files:
        assert state[key].dtype == expected[key].dtype, key
        assert state[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)
        assert state[key].flags.c_contiguous and state[key].flags.writeable


def test_fixtures_cover_strides_offsets_and_dtypes():
    """What the fixtures exercise is really in them: without it the test above proves less."""
    expected = np.load(FIXTURES / "tiny_expected.npz")
    assert {expected[k].dtype.name for k in expected.files} >= {"float16", "float32", "float64",
                                                                "int64"}
    pickled = zipfile.ZipFile(FIXTURES / "tiny_zip.pth").read("tiny_zip/data.pkl")
    assert b"BFloat16Storage" in pickled and b"_rebuild_parameter" in pickled
    # "transposed" (4, 6).t() has strides (1, 6); "offset_slice" starts at element 8
    assert expected["transposed"].shape == (6, 4) and expected["offset_slice"].shape == (2, 3)
    np.testing.assert_array_equal(expected["offset_slice"], expected["transposed"].T[1:3, 2:5])


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    data = zipfile.ZipFile(FIXTURES / "tiny_zip.pth")
    path = tmp_path / "bad.pth"
    with zipfile.ZipFile(path, "w") as out:
        for info in data.infolist():
            raw = data.read(info)
            if info.filename.endswith("data/0"):
                raw = raw[:-4]          # features.0.weight's storage one float short
            out.writestr(info.filename, raw)
    with pytest.raises(ValueError, match=r"bad.pth: not a readable PyTorch file.*storage 0"):
        torch_format.load_state_dict(path)


def test_truncated_legacy_file_names_the_file(tmp_path):
    path = tmp_path / "cut.pth"
    path.write_bytes((FIXTURES / "tiny_legacy.pth").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"cut.pth: not a readable PyTorch file"):
        torch_format.load_state_dict(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, world")
    with pytest.raises(ValueError, match=r"notes.txt: not a PyTorch file"):
        torch_format.load_state_dict(path)


# -- planted pickles: refused, never run ---------------------------------------------------------
class Plant:
    """Unpickling calls ``function(*args)``, which creates ``args``' marker file if it runs."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def plants(marker):
    """(the global as the pickle names it, the plant): os.system pickles as posix.system."""
    found = [Plant(os.system, (f"touch '{marker}'",)), Plant(builtins.open, (str(marker), "w"))]
    return [(f"{p.function.__module__}.{p.function.__name__}", p) for p in found]


def legacy_file(obj_pickle: bytes) -> bytes:
    head = b"".join(pickle.dumps(v, protocol=2) for v in (
        torch_format.LEGACY_MAGIC, torch_format.LEGACY_PROTOCOL, {"little_endian": True}))
    return head + obj_pickle + pickle.dumps([], protocol=2)


def zip_file(obj_pickle: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        out.writestr("archive/data.pkl", obj_pickle)
        out.writestr("archive/version", "3\n")
    return buffer.getvalue()


@pytest.mark.parametrize("container", [legacy_file, zip_file])
@pytest.mark.parametrize("which", [0, 1])
def test_planted_pickle_is_refused_without_running(tmp_path, container, which):
    marker = tmp_path / "ran"
    name, plant = plants(marker)[which]
    payload = pickle.dumps(collections.OrderedDict(w=plant), protocol=2)
    # the plant is live: plain pickle would run it
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "weights.pth"
    path.write_bytes(container(payload))
    with pytest.raises(UnsafePickleError) as info:
        torch_format.load_state_dict(path)
    assert str(info.value) == (f"refusing to load {path}: its pickle calls {name}, which a "
                               f"tensor state_dict never needs")
    assert not marker.exists()
    with pytest.raises(UnsafePickleError, match=name):    # the public entry point too
        load_pretrained(path)
    assert not marker.exists()


def test_a_storage_type_position_cannot_smuggle_a_global(tmp_path):
    payload = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00w"
               b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
               b"cposix\nsystem\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
               b"K\x00K\x01\x85K\x01\x85\x89tRu.")
    path = tmp_path / "w.pth"
    path.write_bytes(zip_file(payload))
    with pytest.raises(UnsafePickleError, match=r"calls posix.system"):
        torch_format.load_state_dict(path)


def test_the_pickle_cannot_set_attributes_on_the_stand_ins(tmp_path):
    """BUILD (setstate) on an allowed callable must fail, not rewire it for later loads."""
    for state in (b"}X\x01\x00\x00\x00aK\x01s", b"N}X\x05\x00\x00\x00buildNs\x86"):  # dict, slots
        payload = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n" + state + b"b.")
        with pytest.raises((AttributeError, TypeError)):
            safe_pickle.StateDictUnpickler(io.BytesIO(payload), "x").load()
    assert safe_pickle.ALLOWED[("torch._utils", "_rebuild_tensor_v2")].build is \
        safe_pickle._rebuild_tensor


# -- files made by torch now, full AlexNet shapes ------------------------------------------------
def torch_alexnet(torch, num_classes=1000):
    """torchvision's AlexNet (torchvision/models/alexnet.py), built from torch.nn."""
    nn = torch.nn
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    model.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    model.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(x):
        return model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
    model.forward = forward
    return model.eval()


@pytest.fixture(scope="module")
def torch_net():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch_alexnet(torch)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    return torch, model, x, logits


@pytest.mark.slow
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_file_loads_into_owt_with_torchs_logits(torch_net, tmp_path, zip_format):
    torch, model, x, logits = torch_net
    path = tmp_path / "alexnet-owt.pth"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    ours, preprocessing = load_pretrained(path)
    assert ours.variant == "owt" and not ours.training and preprocessing.source == "torchvision"
    assert ours.preprocessing is preprocessing and preprocessing.crop == 224
    for name, tensor in model.state_dict().items():      # bit for bit, then the logits
        np.testing.assert_array_equal(ours.state_dict()[name], tensor.numpy(), err_msg=name)
    np.testing.assert_allclose(ours(x).numpy(), logits, **TOL[np.float32])


@pytest.mark.slow
def test_export_loads_in_torch_with_weights_only_and_gives_the_same_logits(torch_net, tmp_path):
    torch, model, x, _ = torch_net
    manual_seed(1)
    # PyTorch's own init, as the torch-made file above: logits of order 0.1, where float32's
    # summation order (which differs between the two) stays inside the float32 row
    ours = alexnet("owt", init="torch").eval()
    path = tmp_path / "exported.pth"
    save_torchvision(path, ours)
    state = torch.load(path, weights_only=True)
    assert list(state) == [name for name, _ in ours.named_parameters()]
    for name, array in ours.state_dict().items():       # bit for bit
        assert state[name].dtype == torch.float32 and state[name].is_contiguous()
        np.testing.assert_array_equal(state[name].numpy(), array, err_msg=name)
    model.load_state_dict(state)                     # strict: every key, every shape
    with torch.no_grad():
        theirs = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours(x).numpy(), **TOL[np.float32])
    # and back: the file is also one load_pretrained reads
    again, _ = load_pretrained(path)
    for (name, a), b in zip(ours.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_export_aligns_every_storage_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "small.pth"
    state = collections.OrderedDict(a=np.arange(6, dtype=np.float32).reshape(2, 3),
                                    b=np.ones(3, np.float16), c=np.array(4, np.int64))
    torch_format.save_state_dict(path, state)
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if "/data/" in info.filename:
                f.seek(info.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0
        assert archive.read("archive/byteorder") == b"little"
    assert os.listdir(tmp_path) == ["small.pth"]
    back = torch_format.load_state_dict(path)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])
        assert back[key].dtype == state[key].dtype


def test_export_refuses_a_dtype_torch_has_no_storage_for(tmp_path):
    with pytest.raises(ValueError, match=r"save_state_dict: w is complex64"):
        torch_format.save_state_dict(tmp_path / "x.pth", {"w": np.zeros(2, np.complex64)})
    assert os.listdir(tmp_path) == []
