"""What pixels the weights expect (minialex/weights/preprocessing.py) and ImageNet's class names
(minialex/weights/imagenet.py)."""
import configparser
import json
import pathlib

import numpy as np
import pytest

from minialex.weights import CAFFE, TORCHVISION, Preprocessing, imagenet_classes

from conftest import TOL

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_torchvision_pixels_by_hand():
    pixel = np.array([[[[255, 0, 128]]]], np.uint8)
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(TORCHVISION.normalize(pixel).ravel(), expected,
                               **TOL["float32_unit"])


def test_caffe_pixels_are_bgr_grey_levels_minus_the_mean_pixel():
    pixels = np.array([[[[10, 20, 30], [200, 100, 50]]]], np.uint8)     # (1, 1, 2, 3) RGB
    x = CAFFE.normalize(pixels)
    assert x.shape == (1, 3, 1, 2) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], [30 - 104, 20 - 117, 10 - 123],
                               **TOL["grey_levels"])
    np.testing.assert_allclose(x[0, :, 0, 1], [50 - 104, 100 - 117, 200 - 123],
                               **TOL["grey_levels"])


@pytest.mark.parametrize("prep", [TORCHVISION, CAFFE], ids=["torchvision", "caffe"])
def test_minialex_terms_give_the_same_input(prep):
    """scale_rgb * (pixel - mean_rgb_255), per RGB channel, then the network's order."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    ours = (pixels - np.array(prep.mean_rgb_255)) * np.array(prep.scale_rgb)
    expected = ours[..., list(prep.rgb_index)].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(prep.normalize(pixels), expected, **TOL["float32_unit"])


def test_round_trips_through_json_and_refuses_nonsense():
    for prep in (TORCHVISION, CAFFE):
        assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
    base = TORCHVISION.to_dict()
    for change, message in [(dict(channel_order="GBR"), "channel_order must be one of"),
                            (dict(crop=300), r"crop \(300\) must not exceed resize \(256\)"),
                            (dict(std=(1, 0, 1)), "std must be positive"),
                            (dict(mean=(1, 2)), "mean must be 3 finite numbers"),
                            (dict(resize=0), "resize must be a positive int")]:
        with pytest.raises(ValueError, match=message):
            Preprocessing(**{**base, **change})
    with pytest.raises(ValueError, match="missing scale"):
        Preprocessing.from_dict({k: v for k, v in base.items() if k != "scale"})
    with pytest.raises(ValueError, match=r"expected RGB images \(N, H, W, 3\)"):
        CAFFE.normalize(np.zeros((2, 3, 4, 4), np.uint8))


def test_imagenet_classes_are_ilsvrc_2012s_in_index_order():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len(set(classes)) == 1000
    # a few fixed points of the synset order (n01440764 tench ... n15075141 toilet tissue)
    assert (classes[0], classes[1], classes[281], classes[409], classes[999]) == (
        "tench", "goldfish", "tabby", "analog clock", "toilet tissue")
    assert all(name == name.strip() and name for name in classes)


def test_the_class_list_ships_with_the_package():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "minialex.weights" in config["options"]["packages"].split()
    assert config["options.package_data"]["minialex.weights"] == "imagenet_classes.txt"
