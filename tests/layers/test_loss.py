"""Tests for minialex/layers/loss.py: direct reference, stability, gradchecks, label errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.layers.activation import log_softmax
from minialex.layers.loss import CrossEntropyLoss, cross_entropy, nll_loss

from conftest import GRADCHECK, TOL

REDUCTIONS = ["mean", "sum", "none"]


def cross_entropy_ref(logits, labels, reduction):
    """-log(softmax(x)[n, label_n]) one row at a time, then reduced."""
    losses = np.empty(len(labels))
    for n, label in enumerate(labels):
        row = np.asarray(logits[n], dtype=np.float64)
        probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        losses[n] = -np.log(probs[label])
    return {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]


def make(N, C, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((N, C)), rng.integers(0, C, size=N)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("N, C", [(1, 1), (1, 5), (4, 3), (7, 10)])
def test_matches_direct_reference(N, C, reduction):
    x, t = make(N, C)
    loss = cross_entropy(Tensor(x), t, reduction)
    assert loss.shape == ((N,) if reduction == "none" else ())
    np.testing.assert_allclose(loss.numpy(), cross_entropy_ref(x, t, reduction),
                               **TOL[np.float64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(N=st.integers(1, 4), C=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_gradcheck(reduction, N, C, seed):
    x, t = make(N, C, seed)
    minialex.gradcheck(lambda x: cross_entropy(x, t, reduction),
                       [Tensor(x, requires_grad=True)], **GRADCHECK)
    minialex.gradcheck(lambda z: nll_loss(z, t, reduction),
                       [Tensor(x, requires_grad=True)], **GRADCHECK)


def test_gradient_is_softmax_minus_onehot_over_n():
    x, t = make(5, 4)
    xt = Tensor(x, requires_grad=True)
    cross_entropy(xt, t).backward()
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(xt.grad, (p - np.eye(4)[t]) / 5, **TOL[np.float64])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_equals_nll_of_log_softmax(reduction):
    x, t = make(6, 5)
    fused = cross_entropy(Tensor(x), t, reduction).numpy()
    composed = nll_loss(log_softmax(Tensor(x), 1), t, reduction).numpy()
    np.testing.assert_allclose(fused, composed, **TOL[np.float64])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_logits_around_1e4(dtype):
    x = np.array([[1e4, 1e4 - 2.0, -1e4], [1e4, -1e4, 1e4], [-1e4, 1e4, 0.0]], dtype=dtype)
    t = np.array([1, 0, 0])
    xt = Tensor(x, requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = cross_entropy(xt, t, reduction="none")
        loss.backward(np.ones(3, dtype=dtype))
    expected = np.array([2.0 + np.log1p(np.exp(-2.0)), np.log(2.0), 2e4])
    np.testing.assert_allclose(loss.numpy(), expected, **TOL[dtype])
    assert loss.dtype == dtype and np.all(np.isfinite(xt.grad))
    np.testing.assert_allclose(xt.grad.sum(axis=1), 0.0, **TOL["float32_unit"])  # softmax - onehot


def test_labels_as_tensor_list_or_unsigned_array():
    x, t = make(4, 3)
    expected = cross_entropy(Tensor(x), t).numpy()
    for labels in (Tensor(t), t.tolist(), t.astype(np.uint8), t.astype(np.int32)):
        np.testing.assert_allclose(cross_entropy(Tensor(x), labels).numpy(), expected,
                                   **TOL[np.float64])


def test_float32_loss_stays_float32():
    x, t = make(3, 4)
    xt = Tensor(x.astype(np.float32), requires_grad=True)
    loss = cross_entropy(xt, t)
    loss.backward()
    assert loss.dtype == np.float32 and xt.grad.dtype == np.float32
    np.testing.assert_allclose(loss.numpy(), cross_entropy_ref(x, t, "mean"), **TOL[np.float32])


def test_module():
    x, t = make(4, 3)
    criterion = CrossEntropyLoss()
    assert repr(criterion) == "CrossEntropyLoss(reduction='mean')"
    assert list(criterion.named_parameters()) == []
    np.testing.assert_allclose(criterion(Tensor(x), t).numpy(), cross_entropy_ref(x, t, "mean"),
                               **TOL[np.float64])
    np.testing.assert_allclose(CrossEntropyLoss("sum")(Tensor(x), t).numpy(),
                               cross_entropy_ref(x, t, "sum"), **TOL[np.float64])


@pytest.mark.parametrize("fn", [cross_entropy, nll_loss])
def test_label_errors_name_the_label_and_classes(fn):
    x = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"label 4 is out of range \[0, 4\) for .* C=4 classes"):
        fn(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"label -1 is out of range \[0, 4\)"):
        fn(x, np.array([0, -1, 1]))
    with pytest.raises(TypeError, match="labels must be integers .* got dtype float64"):
        fn(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="labels must be integers .* got dtype bool"):
        fn(x, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\) for .* \(3, 4\), got "
                                         r"\(2,\)"):
        fn(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\) .* got \(3, 1\)"):
        fn(x, np.zeros((3, 1), dtype=np.int64))
    with pytest.raises(ValueError, match=r"must be \(N, C\), got shape \(4,\)"):
        fn(Tensor(np.zeros(4)), np.array([0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fn(x, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(TypeError, match="floating point, got dtype int64"):
        fn(Tensor(np.zeros((3, 4), dtype=np.int64)), np.array([0, 1, 2]))


def test_module_rejects_bad_reduction():
    with pytest.raises(ValueError, match="CrossEntropyLoss: reduction must be one of"):
        CrossEntropyLoss("avg")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_device_agrees_with_cpu(device, reduction):
    x, t = make(8, 10, scale=5.0)
    x = x.astype(np.float32)
    gy = np.random.default_rng(1).standard_normal(8 if reduction == "none" else ())
    outs = []
    for dev in ("cpu", device):
        xt = Tensor(x, requires_grad=True).to(dev)
        labels = Tensor(t).to(dev)  # labels on the device, as a GPU data loader would give
        loss = cross_entropy(xt, labels, reduction)
        loss.backward(Tensor(gy.astype(np.float32)).to(dev).data)
        assert loss.device == backend.parse_device(dev)
        outs.append((loss.numpy(), backend.to_numpy(xt.grad)))
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, **TOL[np.float32])
