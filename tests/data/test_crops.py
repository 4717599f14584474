"""Shared crops and flips, and the random-stream convention (minialex/data/crops.py)."""
import json

import numpy as np
import pytest

import minialex
from minialex import backend
from minialex.data import augment as aug
from minialex.data import crops
from minialex.data import transforms as T

from conftest import TOL


def by_slicing(x, top, left, flip, size, image, channels_last):
    """Reference: one crop at a time, plain slicing, to (C, OH, OW)."""
    OH, OW = size
    out = []
    for m, t, lt, f in zip(image, top, left, flip):
        img = x[m].transpose(2, 0, 1) if channels_last else x[m]
        c = img[:, t:t + OH, lt:lt + OW]
        out.append(c[..., ::-1] if f else c)
    return np.stack(out)


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_flip_equals_slicing_in_either_layout(channels_last):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 7, 9, 2) if channels_last else (3, 2, 7, 9), dtype=np.uint8)
    top, left = rng.integers(0, 3, 5), rng.integers(0, 5, 5)
    flip, image = np.array([True, False, True, False, True]), np.array([2, 0, 0, 1, 2])
    out = crops.crop_flip(x, top, left, flip, (5, 5), image=image, channels_last=channels_last)
    assert out.shape == (5, 2, 5, 5) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, by_slicing(x, top, left, flip, (5, 5), image,
                                                  channels_last))


def test_draw_crops_order_range_and_switches():
    top, left, flip = crops.draw_crops(np.random.default_rng(1), 4000, 3, 5)
    assert set(top.tolist()) == {0, 1, 2, 3} and set(left.tolist()) == set(range(6))
    assert abs(flip.mean() - 0.5) < 0.05
    by_hand = np.random.default_rng(1)      # the documented order: top, left, flip
    np.testing.assert_array_equal(top, by_hand.integers(0, 4, 4000))
    np.testing.assert_array_equal(left, by_hand.integers(0, 6, 4000))
    np.testing.assert_array_equal(flip, by_hand.random(4000) < 0.5)
    rng, untouched = np.random.default_rng(2), np.random.default_rng(2)
    t, lt, f = crops.draw_crops(rng, 6, 4, 8, random_crop=False, p_flip=0)
    assert t.tolist() == [2] * 6 and lt.tolist() == [4] * 6 and not f.any()
    assert rng.bit_generator.state == untouched.bit_generator.state    # nothing was drawn


def random_transforms(generator):
    """One of each random transform, all drawing from ``generator``."""
    train = T.GreyAugmenter(16, 0.3, 0.4, crop_padding=2, flip=True, generator=generator)
    augmenter = aug.Augmenter(np.zeros((12, 12, 3), np.float32), np.array([0.2, 0.02, 0.01]),
                              np.eye(3), crop=8, generator=generator)
    grey = np.random.default_rng(3).integers(0, 256, (6, 1, 10, 10), dtype=np.uint8)
    rgb = np.random.default_rng(4).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    return [(T.RandomCrop(None, 2, generator), grey),
            (T.RandomHorizontalFlip(0.5, generator), grey), (train, grey), (augmenter, rgb)]


def call(transform, x):
    return transform.train(x) if hasattr(transform, "train") else transform(x)


@pytest.mark.parametrize("index", range(4))
def test_none_draws_from_minialex_stream_at_each_call(index):
    transform, x = random_transforms(None)[index]      # built before the seed is set
    minialex.manual_seed(3)
    first = call(transform, x)
    minialex.manual_seed(3)
    np.testing.assert_array_equal(call(transform, x), first)
    minialex.manual_seed(4)
    assert not np.array_equal(call(transform, x), first)
    assert transform.state_dict() == {} or all(s == {} for s in transform.state_dict().values())


@pytest.mark.parametrize("index", range(4))
def test_state_dict_restores_an_explicit_generator(index):
    transform, x = random_transforms(np.random.default_rng(5))[index]
    call(transform, x)
    state = json.loads(json.dumps(transform.state_dict()))        # JSON-able
    expected = [call(transform, x) for _ in range(2)]
    transform.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(call(transform, x), want)


def test_load_state_dict_refuses_a_mismatched_state():
    with pytest.raises(ValueError, match="has a generator but this transform uses the CPU"):
        T.RandomCrop(None, 1).load_state_dict(
            T.RandomCrop(None, 1, np.random.default_rng(0)).state_dict())
    with pytest.raises(ValueError, match="has no generator"):
        aug.Augmenter(generator=np.random.default_rng(0)).load_state_dict({})
    with pytest.raises(ValueError, match=r"Compose: state for transforms \[\]"):
        T.GreyAugmenter(8, 0.5, 0.5, flip=True).load_state_dict({})
    with pytest.raises(ValueError, match="generator must be None or a numpy.random.Generator"):
        T.RandomHorizontalFlip(0.5, generator=np.random.RandomState(0))


@pytest.mark.parametrize("index", range(4))
def test_the_same_seed_gives_the_same_augmentation_on_every_device(index, device):
    transform, x = random_transforms(None)[index]
    minialex.manual_seed(7)
    cpu = call(transform, x)
    minialex.manual_seed(7)
    out = call(transform, backend.to_device(x, device))
    assert backend.device_of(out) == backend.parse_device(device)
    np.testing.assert_allclose(backend.to_numpy(out), cpu, **TOL[np.float32])
