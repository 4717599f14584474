"""Loader shares for several processes: every global batch, and every sample's random draws, as
one process has them (minialex/data/shards.py, Loader's num_replicas/rank/shard_by)."""
import numpy as np
import pytest

from minialex.data import shards
from minialex.data import transforms as T
from minialex.data.augment import Augmenter
from minialex.data.loader import ArrayDataset, Loader


def loader(kind, num_replicas=1, rank=0, batch_size=6, n=23, prefetch=0, **options):
    """A shuffling loader with a random transform (the grey pipeline or the RGB Augmenter)
    over ``n`` numbered images, as process ``rank`` of ``num_replicas``."""
    rng = np.random.default_rng(9)
    augment = np.random.default_rng(1)
    if kind == "grey":
        images = rng.integers(0, 256, (n, 1, 6, 6), dtype=np.uint8)
        transform = T.Compose([T.ToFloat(), T.RandomCrop(None, 2, augment),
                               T.RandomHorizontalFlip(0.5, augment), T.Normalize(0.5, 0.25)])
    else:
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        transform = Augmenter(images.mean(axis=0), np.array([0.1, 0.01, 0.001]), np.eye(3),
                              crop=5, generator=augment).train
    return Loader(ArrayDataset(images, np.arange(n)), batch_size, shuffle=True,
                  transform=transform, generator=np.random.default_rng(0), prefetch=prefetch,
                  num_replicas=num_replicas, rank=rank, **options)


@pytest.mark.parametrize("kind", ["grey", "rgb"])
@pytest.mark.parametrize("num_replicas", [2, 3])
def test_the_shares_of_every_batch_are_the_one_process_batch_with_its_augmentation(
        kind, num_replicas):
    one = loader(kind)
    parts = [loader(kind, num_replicas, rank, prefetch=rank % 2)
             for rank in range(num_replicas)]
    for epoch in range(2):     # the second epoch: every generator is still in step
        want = list(one.epoch())
        got = [list(p.epoch()) for p in parts]
        assert all(len(g) == len(want) == len(p) for g, p in zip(got, parts))
        for i, (x, y) in enumerate(want):
            shares = [g[i] for g in got]
            assert [len(s[1]) for s in shares] == [b - a for a, b in (
                shards.share_bounds(len(y), r, num_replicas) for r in range(num_replicas))]
            np.testing.assert_array_equal(np.concatenate([s[1] for s in shares]), y)
            np.testing.assert_array_equal(np.concatenate([s[0] for s in shares]), x)
        assert [p.state_dict() for p in parts] == [one.state_dict()] * num_replicas


def test_a_share_of_a_full_batch_is_the_contiguous_slice():
    one = [y for _, y in loader("grey")]
    second = [y for _, y in loader("grey", 2, 1)]
    for y, share in zip(one[:-1], second[:-1]):
        np.testing.assert_array_equal(share, y[3:6])     # rank*b : (rank+1)*b, b = 6 / 2
    assert len(one[-1]) == 5 and second[-1].tolist() == one[-1][2:].tolist()


def test_a_resumed_share_continues_as_the_uninterrupted_one():
    reference = loader("rgb", 2, 1)
    want = list(reference.epoch())
    interrupted = loader("rgb", 2, 1)
    batches = interrupted.epoch()
    next(batches), next(batches)
    state = interrupted.state_dict()
    batches.close()
    resumed = loader("rgb", 2, 1)
    resumed.load_state_dict(state)
    for (x, y), (x0, y0) in zip(resumed.epoch(start=2), want[2:]):
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("n", [23, 24, 2])
def test_evaluation_shares_are_contiguous_and_cover_the_samples_once(n):
    data = ArrayDataset(np.zeros((n, 1, 1, 1), np.uint8), np.arange(n))
    shares = [Loader(data, 4, num_replicas=2, rank=r, shard_by="dataset") for r in range(2)]
    labels = [np.concatenate([y for _, y in s] or [np.zeros(0, int)]) for s in shares]
    np.testing.assert_array_equal(np.concatenate(labels), np.arange(n))
    assert [len(y) for y in labels] == [n // 2, n - n // 2]
    assert all(len(b) <= 2 for s in shares for _, b in s)        # batches of 4 / 2
    assert [len(s) for s in shares] == [-(-len(y) // 2) for y in labels]


def test_the_global_batch_must_divide_by_the_processes():
    with pytest.raises(ValueError, match="global batch_size 10 does not divide by the 3 "
                                         "processes"):
        loader("grey", 3, 0, batch_size=10)
    with pytest.raises(ValueError, match=r"rank must be an int in 0\.\.1 .*got 2"):
        loader("grey", 2, 2)
    with pytest.raises(ValueError, match="shard_by must be one of"):
        loader("grey", 2, 0, shard_by="samples")


def test_a_last_batch_smaller_than_the_processes_is_refused_unless_dropped():
    # 20 = 3 batches of 6 and a last of 2: with 3 processes, one would train on no sample
    with pytest.raises(ValueError, match=r"the last batch holds 2 sample\(s\) \(20 samples in "
                                         r"batches of 6\), fewer than the 3 processes"):
        loader("grey", 3, 2, n=20)
    dropped = loader("grey", 3, 2, n=20, drop_last=True)
    assert [len(y) for _, y in dropped] == [2, 2, 2]
    assert [len(y) for _, y in loader("grey", 2, 1, n=20)][-1] == 1   # 2 processes: one each
    assert len(loader("grey", 3, 0, n=18)) == 3                       # no last batch


def test_evaluation_shares_refuse_drop_last():
    with pytest.raises(ValueError, match="drop_last=True with shard_by='dataset'"):
        loader("grey", 2, 0, shard_by="dataset", drop_last=True)
    assert len(loader("grey", 1, 0, shard_by="dataset", drop_last=True)) == 3   # 23 // 6


@pytest.mark.parametrize("bad", [True, 0, 2.0, "4"])
def test_a_batch_size_is_a_positive_int_not_a_bool(bad):
    with pytest.raises(ValueError, match=f"Loader: batch_size must be a positive int, got "
                                         f"{bad!r}"):
        Loader(ArrayDataset(np.zeros((3, 1, 1, 1)), np.zeros(3)), bad)


def test_a_share_refuses_draws_that_are_not_one_per_sample():
    with shards.batch_share(0, 2, 4):
        rng = shards.drawing_for(np.random.default_rng(0))
        assert rng.standard_normal((2, 3)).shape == (2, 3)
        with pytest.raises(ValueError, match=r"integers\(size=5\) on a share of 2 samples"):
            rng.integers(0, 3, size=5)
        with pytest.raises(AttributeError, match="may draw only integers, random and "
                                                 "standard_normal"):
            rng.permutation(4)
    assert isinstance(shards.drawing_for(np.random.default_rng(0)), np.random.Generator)
