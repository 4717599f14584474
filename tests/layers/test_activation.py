"""Tests for minialex/layers/activation.py: references, gradchecks, stability, modules, errors."""
import numpy as np
import pytest
from every_piece import run_every_piece
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.layers.activation import (
    LogSoftmax,
    ReLU,
    Softmax,
    Tanh,
    average_softmax,
    log_softmax,
    relu,
    relu_backward,
    relu_forward,
    softmax,
    tanh,
)

from conftest import GRADCHECK, TOL, shuffled_linspace


def away_from_zero(shape, seed=0):
    """Values in +-[0.1, 2]: no input sits on (or within eps of) the ReLU kink."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)


def softmax_ref(x, dim):
    """exp(x) / sum(exp(x)) one slice at a time, in float64 without shifting (inputs are small)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), dim, -1)
    y = np.empty_like(x)
    for index in np.ndindex(*x.shape[:-1]):
        e = np.exp(x[index])
        y[index] = e / e.sum()
    return np.moveaxis(y, -1, dim)


def test_relu_forward_and_subgradient_at_zero():
    x = Tensor(np.array([-2.0, -0.0, 0.0, 0.5, 3.0]), requires_grad=True)
    y = relu(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 0.0, 0.5, 3.0])
    y.backward(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0, 4.0, 5.0])  # 0 at the kink


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_relu_gradcheck(shape, seed):
    x = Tensor(away_from_zero(shape, seed), requires_grad=True)
    minialex.gradcheck(relu, [x], **GRADCHECK)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_and_tanh_keep_dtype_and_match_numpy(dtype):
    x = away_from_zero((3, 4)).astype(dtype)
    np.testing.assert_allclose(relu(Tensor(x)).numpy(), np.maximum(x, 0), **TOL[dtype])
    np.testing.assert_allclose(tanh(Tensor(x)).numpy(), np.tanh(x), **TOL[dtype])
    assert relu(Tensor(x)).dtype == dtype and tanh(Tensor(x)).dtype == dtype


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_tanh_gradcheck(shape, seed):
    x = Tensor(away_from_zero(shape, seed), requires_grad=True)
    minialex.gradcheck(tanh, [x], **GRADCHECK)


@pytest.mark.parametrize("fn", [softmax, log_softmax])
@pytest.mark.parametrize("shape, dim", [((4, 6), -1), ((4, 6), 0), ((2, 3, 4), 1),
                                        ((2, 3, 2, 2), 1), ((5,), 0)])
def test_softmax_and_log_softmax_match_reference(fn, shape, dim):
    x = 3.0 * shuffled_linspace(shape)
    expected = softmax_ref(x, dim)
    if fn is log_softmax:
        expected = np.log(expected)
    np.testing.assert_allclose(fn(Tensor(x), dim).numpy(), expected, **TOL[np.float64])


@pytest.mark.parametrize("fn", [softmax, log_softmax])
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), data=st.data())
def test_softmax_and_log_softmax_gradcheck(fn, shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    x = Tensor(2.0 * np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    minialex.gradcheck(lambda x: fn(x, dim), [x], **GRADCHECK)


def test_softmax_rows_sum_to_one():
    x = np.random.default_rng(0).standard_normal((7, 10)).astype(np.float32) * 5
    y = softmax(Tensor(x), dim=1).numpy()
    np.testing.assert_allclose(y.sum(axis=1), np.ones(7), **TOL[np.float32])
    assert np.all(y > 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_at_logits_1e4(dtype):
    x = np.array([[1e4, 1e4 - 1.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    xt = Tensor(x, requires_grad=True)
    with np.errstate(over="raise", invalid="raise"):  # overflow in exp, or inf - inf, raises
        y = softmax(xt, 1)
        z = log_softmax(Tensor(x), 1)
    e = np.exp([0.0, -1.0])
    expected = np.array([[e[0] / e.sum(), e[1] / e.sum(), 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(y.numpy(), expected, **TOL[dtype])
    np.testing.assert_allclose(z.numpy()[:, :2], np.log(expected[:, :2]), **TOL[dtype])
    np.testing.assert_allclose(z.numpy()[0, 2], -2e4 - np.log1p(np.exp(-1.0)),
                               **TOL["float32_relative"])      # either dtype
    y.backward(np.ones_like(x))
    assert np.all(np.isfinite(xt.grad))


def test_log_softmax_equals_log_of_softmax_for_large_spread():
    """Where softmax underflows to 0, log_softmax stays finite: it never takes log(softmax)."""
    x = np.array([[0.0, -800.0]])
    assert softmax(Tensor(x)).numpy()[0, 1] == 0.0
    assert log_softmax(Tensor(x)).numpy()[0, 1] == pytest.approx(-800.0)


@pytest.mark.parametrize("fn", [relu, tanh, softmax, log_softmax])
def test_non_contiguous_input(fn):
    x = away_from_zero((4, 3, 2)).transpose(2, 0, 1)  # (2, 4, 3), a strided view
    assert not x.flags.c_contiguous
    minialex.gradcheck(fn, [Tensor(x, requires_grad=True)], **GRADCHECK)


def test_modules():
    x = Tensor(away_from_zero((3, 4)))
    np.testing.assert_array_equal(ReLU()(x).numpy(), relu(x).numpy())
    np.testing.assert_array_equal(Tanh()(x).numpy(), tanh(x).numpy())
    np.testing.assert_array_equal(Softmax(0)(x).numpy(), softmax(x, 0).numpy())
    np.testing.assert_array_equal(LogSoftmax(dim=1)(x).numpy(), log_softmax(x, 1).numpy())
    assert repr(ReLU()) == "ReLU()" and repr(ReLU(inplace=True)) == "ReLU(inplace=True)"
    assert repr(Softmax(dim=1)) == "Softmax(dim=1)" and repr(LogSoftmax()) == "LogSoftmax(dim=-1)"
    assert all(list(m.named_parameters()) == [] for m in (ReLU(), Tanh(), Softmax(), LogSoftmax()))


def test_relu_inplace_flag_still_leaves_the_input_alone():
    data = np.array([-1.0, 2.0])
    x = Tensor(data)
    ReLU(inplace=True)(x)
    np.testing.assert_array_equal(x.numpy(), [-1.0, 2.0])


def test_invalid_arguments_raise_naming_them():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"softmax: dim=2 is out of range for input of shape "
                                         r"\(2, 3\)"):
        softmax(x, 2)
    with pytest.raises(ValueError, match="log_softmax: dim=-3 is out of range"):
        log_softmax(x, -3)
    with pytest.raises(TypeError, match="dim must be an int, got dim=None"):
        softmax(x, None)
    for module in (Softmax, LogSoftmax):                  # refused when built, not at forward
        with pytest.raises(TypeError, match=f"^{module.__name__}: dim must be an int, got "
                                            "dim=1.0$"):
            module(dim=1.0)
    with pytest.raises(ValueError, match=r"dim=0 is out of range for input of shape \(\)"):
        softmax(Tensor(np.array(1.0)), 0)
    for fn in (relu, tanh, softmax, log_softmax):
        with pytest.raises(TypeError, match="floating point, got dtype int64"):
            fn(Tensor(np.ones(3, dtype=np.int64)))
    with pytest.raises(TypeError, match="must be a Tensor or an array, got list"):
        relu([1.0, -1.0])


@pytest.mark.parametrize("name", ["relu", "tanh", "softmax", "log_softmax"])
def test_device_agrees_with_cpu(device, name):
    fn = {"relu": relu, "tanh": tanh, "softmax": lambda x: softmax(x, 1),
          "log_softmax": lambda x: log_softmax(x, 1)}[name]
    x = away_from_zero((5, 9)).astype(np.float32)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    outs = []
    for dev in ("cpu", device):
        xt = Tensor(x, requires_grad=True).to(dev)
        y = fn(xt)
        y.backward(Tensor(gy).to(dev).data)
        assert y.device == backend.parse_device(dev)
        outs.append((y.numpy(), backend.to_numpy(xt.grad)))
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, **TOL[np.float32])


# -- average_softmax (test-time crops) -----------------------------------------------------
@pytest.mark.parametrize("n_crops", [1, 2, 10])
def test_average_softmax_is_the_mean_of_each_crops_softmax(n_crops):
    N, K = 3, 5
    logits = 4.0 * shuffled_linspace((n_crops, N, K))
    expected = np.empty((N, K))
    for n in range(N):  # loop reference: crop by crop, image by image
        expected[n] = sum(softmax_ref(logits[r, n], 0) for r in range(n_crops)) / n_crops
    np.testing.assert_allclose(average_softmax(logits, n_crops), expected, **TOL[np.float64])
    flat = logits.reshape(n_crops * N, K)  # crop-major rows, as a model sees a batch of crops
    np.testing.assert_allclose(average_softmax(Tensor(flat), n_crops), expected,
                               **TOL[np.float64])


def test_average_softmax_keeps_dtype_and_is_stable():
    logits = np.array([[1e4, 0.0], [0.0, 1e4]], dtype=np.float32)
    probs = average_softmax(logits, n_crops=2)
    assert probs.dtype == np.float32
    np.testing.assert_array_equal(probs, [[0.5, 0.5]])


def test_average_softmax_errors_name_the_argument():
    with pytest.raises(ValueError, match="logits has 5 rows, not a multiple of n_crops=2"):
        average_softmax(np.zeros((5, 3)), n_crops=2)
    with pytest.raises(ValueError, match=r"logits must be \(3\*N, K\) or \(3, N, K\), got "
                                         r"shape \(2, 4, 5\)"):
        average_softmax(np.zeros((2, 4, 5)), n_crops=3)
    with pytest.raises(ValueError, match="n_crops must be a positive int, got 0"):
        average_softmax(np.zeros((4, 3)), n_crops=0)
    with pytest.raises(TypeError, match="logits must be floating point"):
        average_softmax(np.zeros((4, 3), dtype=np.int64), n_crops=2)


def test_relu_fast_paths_match_the_plain_version(device, monkeypatch):
    """The CPU path with every slice its own piece on 4 threads, and the GPU path: the same
    values as the plain version, exactly (each element is one max or one product), zeros
    (the kink, subgradient 0) included."""
    run_every_piece(monkeypatch)
    x = away_from_zero((6, 7, 5))
    x[0, 0] = 0.0
    gy = np.random.default_rng(2).standard_normal(x.shape)
    xt = Tensor(x, requires_grad=True).to(device)
    y = relu(xt)
    y.backward(Tensor(gy).to(device).data)
    np.testing.assert_array_equal(y.numpy(), relu_forward(x))
    np.testing.assert_array_equal(backend.to_numpy(xt.grad), relu_backward(relu_forward(x), gy))
