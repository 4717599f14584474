"""The paper's pictures: conv1's filters (Fig. 3: colour or grey, two towers as two blocks, a
trained network's unlike an untrained one's) and fc7 retrieval (Fig. 4: neighbours by Euclidean
distance, the share of the query's class)."""
import numpy as np
import pytest

import minialex
from minialex import functional as F
from minialex import nn
from minialex.data import ArrayDataset
from minialex.models import VARIANTS, alexnet
from minialex.optim import SGD
from minialex.tensor import Tensor
from minialex.visualize import (
    GAP,
    conv1_filters,
    fc7_features,
    filter_grid,
    filter_pictures,
    nearest_neighbours,
    retrieval,
    retrieval_grid,
    same_class_share,
    to_display,
)


def test_each_kernel_is_mapped_about_zero_by_its_own_largest_magnitude():
    w = np.zeros((2, 3, 2, 2), np.float32)
    w[0, :, 0, 0] = [1e-3, -1e-3, 0]        # a tiny kernel still spans the whole range
    w[1, 0] = [[4, -2], [0, 1]]
    p = filter_pictures(w)
    assert p.shape == (2, 2, 2, 3) and p.dtype == np.uint8
    assert p[0, 0, 0].tolist() == [255, 0, 128] and p[0, 1, 1].tolist() == [128, 128, 128]
    assert p[1, :, :, 0].tolist() == [[255, 64], [128, 159]]
    assert filter_pictures(w[:, :1]).shape == (2, 2, 2)       # one channel: grey


def test_the_paper_model_shows_two_towers_of_48_colour_kernels():
    minialex.manual_seed(0)
    # the paper variant's conv1 and conv2 (groups=2) alone: building all 61M weights is slow
    (c1, k1, s1, _, _), (c2, k2, _, p2, g2) = VARIANTS["paper"].convs[:2]
    picture = conv1_filters(nn.Sequential(nn.Conv2d(3, c1, k1, stride=s1),
                                          nn.Conv2d(c1, c2, k2, padding=p2, groups=g2)))
    # 48 kernels per tower in 3 rows of 16 (Fig. 3), 11x11 enlarged 4x, 1-pixel borders
    block = (1 + 3 * 45, 1 + 16 * 45)
    assert picture.shape == (2 * block[0] + GAP, block[1], 3) and picture.dtype == np.uint8
    assert (picture[block[0]:block[0] + GAP] == 255).all()
    assert picture.min() == 0 and picture.max() == 255


def test_a_trained_mini_network_has_other_filters_than_its_untrained_self():
    minialex.manual_seed(0)
    model = alexnet("mini")
    before = conv1_filters(model)
    assert before.ndim == 2                       # grey: one input channel
    assert conv1_filters(model).shape == filter_grid(model.features[0].weight.data, towers=2,
                                                     scale=8).shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(Tensor(x)), y).backward()
        optimizer.step()
    after = conv1_filters(model)
    assert after.shape == before.shape and after.dtype == np.uint8
    assert after.min() == 0 and after.max() == 255
    changed = np.abs(after.astype(int) - before.astype(int))
    assert changed.mean() > 1      # five steps already move the kernels (docs/ shows a run)
    minialex.manual_seed(0)
    change = conv1_filters(model, relative_to=alexnet("mini"))    # what the steps learned
    assert change.shape == before.shape and change.min() == 0 and change.max() == 255


def test_nearest_neighbours_are_those_of_a_full_sort():
    rng = np.random.default_rng(1)
    queries, base = rng.normal(size=(700, 5)), rng.normal(size=(90, 5))
    distance = ((queries[:, None] - base[None]) ** 2).sum(-1)
    expected = np.argsort(distance, axis=1, kind="stable")[:, :7]
    assert (nearest_neighbours(queries, base, 7, block=256) == expected).all()
    with pytest.raises(ValueError, match="k must lie in 1..90"):
        nearest_neighbours(queries, base, 91)


def test_retrieval_counts_the_share_of_the_query_class():
    assert same_class_share(np.array([[0, 1], [2, 2]]), [0, 1, 1], [0, 1]) == 0.75
    # two classes far apart in pixels: raw-pixel neighbours are all of the query's class
    rng = np.random.default_rng(2)
    labels = np.arange(60) % 2
    images = (rng.integers(0, 40, (60, 1, 6, 6)) + 200 * labels[:, None, None, None])
    data = ArrayDataset(images.astype(np.uint8), labels)
    found = retrieval(data, data.head(10), k=4)
    assert found["share"] == 1.0 and found["neighbours"].shape == (10, 4)
    assert (found["neighbours"][:, 0] == np.arange(10)).all()   # each finds itself first
    picture = retrieval_grid(data, data, found["neighbours"], rows=3, scale=2)
    assert picture.shape == (1 + 3 * 13, 1 + 13 + GAP + 1 + 4 * 13, 3)


def test_retrieval_draws_base_and_queries_from_every_class_of_a_sorted_split():
    labels = np.repeat(np.arange(6), 20)            # sorted by class, as an image folder's
    images = np.random.default_rng(4).integers(0, 256, (120, 1, 5, 5)).astype(np.uint8)
    data = ArrayDataset(images, labels)
    found = retrieval(data, data, queries=12, k=3, limit_train=30)
    assert len(set(found["query_labels"])) >= 4 and len(set(found["train_labels"])) >= 4
    assert len(set(found["queries"])) == 12 and found["train_labels"].shape == (30,)
    np.testing.assert_array_equal(found["query_labels"], labels[found["queries"]])
    # neighbours index the whole training split: each query is its own nearest when searched
    base = set(found["neighbours"].ravel())
    for query, row in zip(found["queries"], found["neighbours"]):
        assert query not in base or row[0] == query
    assert found["share"] == same_class_share(found["neighbours"], labels,
                                              labels[found["queries"]])
    again = retrieval(data, data, queries=12, k=3, limit_train=30)
    np.testing.assert_array_equal(again["neighbours"], found["neighbours"])   # seeded
    picture = retrieval_grid(data, data, found["neighbours"], queries=found["queries"], rows=2,
                             scale=1)
    first = to_display(data.get_batch(found["queries"][:1])[0])[0]
    np.testing.assert_array_equal(picture[1:6, 1:6, 0], first)


def test_fc7_features_are_the_input_of_fc8():
    minialex.manual_seed(0)
    model = alexnet("mini")
    data = ArrayDataset(np.random.default_rng(3).integers(0, 256, (5, 1, 28, 28), np.uint8),
                        np.zeros(5, int))
    features = fc7_features(model, data, lambda x: x.astype(np.float32) / 255, batch_size=2)
    assert features.shape == (5, 256) and (features >= 0).all()
    model.eval()
    logits = model(Tensor(data.images.astype(np.float32) / 255)).data
    np.testing.assert_allclose(model.classifier[-1](Tensor(features)).data, logits, rtol=1e-4,
                               atol=1e-5)
