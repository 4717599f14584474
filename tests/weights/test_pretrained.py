"""load_pretrained's choices (minialex/weights/pretrained.py) without PyTorch: formats told
apart by content, wrappers and prefixes, the refusals, and the export read back."""
import collections
import pathlib

import numpy as np
import pytest

from minialex import checkpoint, manual_seed
from minialex.models import alexnet
from minialex.weights import detect_format, load_pretrained, pretrained, save_torchvision

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_formats_are_told_apart_by_content_not_name(tmp_path):
    for name in ("tiny_zip.pth", "tiny_legacy.pth"):
        renamed = tmp_path / "weights.caffemodel"
        renamed.write_bytes((FIXTURES / name).read_bytes())
        assert detect_format(renamed) == "torch"
    npz = tmp_path / "last.pth"
    checkpoint.save(npz, {"model": {"w": np.zeros(2, np.float32)}})
    with pytest.raises(ValueError, match=r"last.pth is a minialex checkpoint, not foreign"):
        detect_format(npz)
    with pytest.raises(IsADirectoryError, match="is a directory, not a weights file"):
        detect_format(tmp_path)


def test_a_state_dict_of_another_net_is_refused_naming_what_it_holds():
    with pytest.raises(ValueError, match=r"tiny_zip.pth is not torchvision's AlexNet: .* among "
                                         r"its 11 tensors \(features.0.weight, transposed"):
        load_pretrained(FIXTURES / "tiny_zip.pth")
    with pytest.raises(ValueError, match="torchvision's weights take RGB input"):
        load_pretrained(FIXTURES / "tiny_zip.pth", channel_order="BGR")


def test_wrappers_and_dataparallel_prefix_are_unwrapped():
    w = np.zeros(2, np.float32)
    inner = collections.OrderedDict([("module.a", w), ("module.b", w)])
    for wrapped in (inner, {"state_dict": inner, "epoch": 3}, {"model": inner}):
        assert list(pretrained._state_dict_in(wrapped, "f")) == ["a", "b"]
    with pytest.raises(ValueError, match=r"f holds a list that is not a state_dict"):
        pretrained._state_dict_in([w], "f")


@pytest.mark.slow
def test_export_reads_back_into_owt_with_its_classes(tmp_path):
    manual_seed(0)
    model = alexnet("owt", num_classes=7)
    path = tmp_path / "owt.pth"
    save_torchvision(path, model)
    again, preprocessing = load_pretrained(path)
    assert again.num_classes == 7 and preprocessing.source == "torchvision"
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    mismatched = collections.OrderedDict(model.state_dict())
    mismatched["features.3.weight"] = np.zeros((192, 64, 3, 3), np.float32)
    save_torchvision(path, type("M", (), {"state_dict": lambda self: mismatched})())
    with pytest.raises(ValueError, match=r"owt.pth: the weights do not fit alexnet\('owt'\): .*"
                                         r"features.3.weight: checkpoint \(192, 64, 3, 3\)"):
        load_pretrained(path)
