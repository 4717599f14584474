"""Tests for minialex/layers/dropout.py: mask statistics, both modes, backward, seeding, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.layers.dropout import PAPER_P, Dropout, DropoutFunction, dropout

from conftest import GRADCHECK, TOL

MODES = ["inverted", "paper"]


def train_scale(p, mode):
    return 1.0 / (1.0 - p) if mode == "inverted" else 1.0


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_is_bernoulli_one_minus_p(p):
    x = Tensor(np.ones(200_000, dtype=np.float32), requires_grad=True)
    mask = dropout(x, p).creator.mask
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
    sigma = np.sqrt(p * (1 - p) / mask.size)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma


@pytest.mark.parametrize("mode", MODES)
@given(p=st.floats(0.0, 0.95), shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_training_output_is_x_times_mask_times_scale(mode, p, shape, dtype):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y = dropout(Tensor(x, requires_grad=True), p, mode=mode)
    mask = y.creator.mask
    assert y.dtype == dtype and mask.shape == x.shape and mask.dtype == dtype
    np.testing.assert_allclose(y.numpy(), x * mask * train_scale(p, mode), **TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_training_expectation_equals_evaluation(mode, p):
    """E[y_train] = y_eval in both modes: inverted scales at train time, paper at test time."""
    x = np.linspace(-2.0, 3.0, 5)
    draws = np.broadcast_to(x, (40_000, 5)).copy()
    y_train = dropout(Tensor(draws), p, training=True, mode=mode).numpy()
    y_eval = dropout(Tensor(x), p, training=False, mode=mode).numpy()
    expected_eval = x if mode == "inverted" else (1 - p) * x
    np.testing.assert_allclose(y_eval, expected_eval, **TOL[np.float64])
    sigma = np.abs(x) * train_scale(p, mode) * np.sqrt(p * (1 - p) / len(draws))
    assert np.all(np.abs(y_train.mean(axis=0) - y_eval) <= 5 * sigma + 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_evaluation_is_deterministic_and_differentiable(mode):
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = dropout(x, 0.3, training=False, mode=mode)
    factor = 1.0 if mode == "inverted" else 0.7
    np.testing.assert_allclose(y.numpy(), factor * x.numpy(), **TOL[np.float64])
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad, np.full((2, 3), factor), **TOL[np.float64])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_is_gy_times_mask_times_scale(mode, dtype):
    x = Tensor(np.random.default_rng(0).standard_normal((4, 7)).astype(dtype), requires_grad=True)
    y = dropout(x, 0.4, mode=mode)
    mask = y.creator.mask.copy()  # backward frees what the Function kept
    gy = np.random.default_rng(1).standard_normal((4, 7)).astype(dtype)
    y.backward(gy)
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad, gy * mask * train_scale(0.4, mode), **TOL[dtype])


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_with_the_mask_held_fixed(mode):
    """Dropout is random, so the test reseeds before every evaluation: the same mask each time."""
    def fixed_mask_dropout(x):
        minialex.manual_seed(7)
        return dropout(x, 0.3, mode=mode)

    x = Tensor(np.random.default_rng(0).standard_normal((3, 5)), requires_grad=True)
    report = minialex.gradcheck(fixed_mask_dropout, [x], **GRADCHECK)
    assert report.checked == 15


def test_function_backward_called_directly():
    fn = DropoutFunction(0.5, 2.0)
    fn.needs_input_grad = (True,)
    x = np.arange(1.0, 9.0)
    y = fn.forward(x)
    np.testing.assert_allclose(y, x * fn.mask * 2.0, **TOL[np.float64])
    np.testing.assert_allclose(fn.backward(np.ones(8)), fn.mask * 2.0, **TOL[np.float64])


def test_reproducible_with_manual_seed_and_fresh_per_call():
    x = Tensor(np.ones((50, 50)))
    minialex.manual_seed(123)
    first, second = dropout(x, 0.5).numpy(), dropout(x, 0.5).numpy()
    minialex.manual_seed(123)
    np.testing.assert_array_equal(dropout(x, 0.5).numpy(), first)
    np.testing.assert_array_equal(dropout(x, 0.5).numpy(), second)
    assert not np.array_equal(first, second)


def test_does_not_touch_numpy_global_random_state():
    state = np.random.get_state()[1].copy()
    dropout(Tensor(np.ones(100)), 0.5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize("mode", MODES)
def test_p_one_drops_everything_without_division_by_zero(mode):
    x = Tensor(np.ones((3, 4), dtype=np.float32), requires_grad=True)
    with np.errstate(all="raise"):
        y = dropout(x, 1.0, mode=mode)
        y.backward(np.ones((3, 4), dtype=np.float32))
    np.testing.assert_array_equal(y.numpy(), 0.0)
    np.testing.assert_array_equal(x.grad, 0.0)


def test_p_zero_keeps_everything():
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(dropout(Tensor(x), 0.0).numpy(), x)


def test_module_follows_train_and_eval():
    layer = Dropout(0.5)
    assert repr(layer) == "Dropout(p=0.5)"
    assert repr(Dropout(0.25, mode="paper")) == "Dropout(p=0.25, mode='paper')"
    assert list(layer.named_parameters()) == []
    x = Tensor(np.ones(1000))
    y_train = layer(x).numpy()
    assert set(np.unique(y_train)) == {0.0, 2.0}
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())
    paper = minialex.Sequential(Dropout(PAPER_P, mode="paper")).eval()
    np.testing.assert_array_equal(paper(x).numpy(), (1 - PAPER_P) * x.numpy())


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_invalid_p_raises_naming_p(p):
    x = Tensor(np.ones(3))
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got p="):
        dropout(x, p)
    with pytest.raises(ValueError, match="p must be a probability"):
        Dropout(p)


def test_invalid_mode_training_and_input_raise():
    x = Tensor(np.ones(3))
    with pytest.raises(ValueError, match="mode must be one of"):
        dropout(x, 0.5, mode="scaled")
    with pytest.raises(ValueError, match="mode must be one of"):
        Dropout(0.5, mode="scaled")
    with pytest.raises(TypeError, match="training must be a bool"):
        dropout(x, 0.5, training="yes")
    with pytest.raises(TypeError, match="floating point, got dtype int64"):
        dropout(Tensor(np.ones(3, dtype=np.int64)), 0.5)


@pytest.mark.parametrize("mode", MODES)
def test_device_forward_and_backward(device, mode):
    """Each device has its own random stream, so the check is y = x*mask*scale with that
    device's mask, and gx = gy*mask*scale."""
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    xt = Tensor(x, requires_grad=True).to(device)
    y = dropout(xt, 0.5, mode=mode)
    mask = backend.to_numpy(y.creator.mask)
    assert y.device == backend.parse_device(device)
    assert abs(mask.mean() - 0.5) < 5 * np.sqrt(0.25 / mask.size)
    y.backward(Tensor(gy).to(device).data)
    scale = train_scale(0.5, mode)
    np.testing.assert_allclose(y.numpy(), x * mask * scale, **TOL[np.float32])
    np.testing.assert_allclose(backend.to_numpy(xt.grad), gy * mask * scale, **TOL[np.float32])
