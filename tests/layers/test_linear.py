"""Tests for minialex/layers/linear.py: loop reference, gradchecks, batch shapes, module, errors."""
import math

import numpy as np
import pytest
from every_piece import run_every_piece
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.layers.linear import (
    Flatten,
    Linear,
    LinearFunction,
    flatten,
    linear,
    linear_backward,
    linear_forward,
)

from conftest import GRADCHECK, TOL


def linear_ref(x, W, b):
    """y[..., o] = b[o] + sum_i x[..., i] * W[o, i], one output element at a time."""
    y = np.zeros(x.shape[:-1] + (W.shape[0],))
    for index in np.ndindex(*y.shape):
        *rows, o = index
        y[index] = sum(x[tuple(rows) + (i,)] * W[o, i] for i in range(W.shape[1]))
        y[index] += 0.0 if b is None else b[o]
    return y


def make(batch, in_features, out_features, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(batch + (in_features,)).astype(dtype),
            rng.standard_normal((out_features, in_features)).astype(dtype),
            rng.standard_normal(out_features).astype(dtype))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3), (2, 1, 3)])
def test_forward_matches_loop_reference(batch, bias):
    x, W, b = make(batch, 5, 3)
    b = b if bias else None
    y = linear(Tensor(x), Tensor(W), None if b is None else Tensor(b))
    assert y.shape == batch + (3,)
    np.testing.assert_allclose(y.numpy(), linear_ref(x, W, b), **TOL[np.float64])


@pytest.mark.parametrize("bias", [True, False])
@given(batch=st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple),
       in_features=st.integers(1, 5), out_features=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_gradcheck_input_weight_bias(bias, batch, in_features, out_features, seed):
    x, W, b = make(batch, in_features, out_features, seed)
    tensors = [Tensor(a, requires_grad=True) for a in (x, W, b)]
    if bias:
        minialex.gradcheck(linear, tensors, **GRADCHECK)
    else:
        minialex.gradcheck(lambda x, W: linear(x, W), tensors[:2], **GRADCHECK)


def test_gradcheck_module_parameters():
    layer = Linear(4, 3).double()
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4)), requires_grad=True)
    report = minialex.gradcheck(layer, [x], params=layer.named_parameters(), **GRADCHECK)
    assert report.checked == 8 + 12 + 3


def test_backward_skips_gradients_nobody_needs():
    x, W, b = make((3,), 4, 2)
    fn = LinearFunction()
    y = fn(Tensor(x), Tensor(W, requires_grad=True), Tensor(b))
    assert fn.saved[1] is None  # W is not kept: x needs no gradient
    gx, gW, gb = fn.backward(np.ones((3, 2)))
    assert gx is None and gb is None
    np.testing.assert_allclose(gW, np.ones((2, 3)) @ x, **TOL[np.float64])
    assert y.shape == (3, 2)


def test_non_contiguous_input():
    x, W, b = make((4, 3), 5, 2)
    xt = x.transpose(1, 0, 2)  # (3, 4, 5) strided view
    y = linear(Tensor(xt), Tensor(W), Tensor(b))
    np.testing.assert_allclose(y.numpy(), linear_ref(xt, W, b), **TOL[np.float64])
    minialex.gradcheck(lambda x: linear(x, Tensor(W), Tensor(b)),
                       [Tensor(xt, requires_grad=True)], **GRADCHECK)


def test_module_parameters_shapes_and_pytorch_init():
    layer = Linear(9, 400)
    names = [(name, p.shape, p.dtype) for name, p in layer.named_parameters()]
    assert names == [("weight", (400, 9), np.float32), ("bias", (400,), np.float32)]
    bound = 1 / math.sqrt(9)
    for p in layer.parameters():
        values = p.numpy()
        assert values.min() >= -bound and values.max() <= bound
        assert values.min() < -0.8 * bound and values.max() > 0.8 * bound  # spans the range
    assert repr(layer) == "Linear(in_features=9, out_features=400, bias=True)"
    no_bias = Linear(3, 2, bias=False)
    assert [name for name, _ in no_bias.named_parameters()] == ["weight"]
    assert repr(no_bias) == "Linear(in_features=3, out_features=2, bias=False)"
    assert no_bias(Tensor(np.ones((1, 3), dtype=np.float32))).shape == (1, 2)


def test_module_init_is_seeded():
    minialex.manual_seed(5)
    first = Linear(3, 2).weight.numpy()
    minialex.manual_seed(5)
    np.testing.assert_array_equal(Linear(3, 2).weight.numpy(), first)


def test_alexnet_classifier_parameter_counts():
    assert Linear(9216, 4096).num_parameters() == 37_752_832
    assert Linear(4096, 1000).num_parameters() == 4_097_000


@pytest.mark.parametrize("shape, start, end, expected", [
    ((2, 256, 6, 6), 1, -1, (2, 9216)),  # conv5 -> fc6
    ((2, 4, 3, 3), 1, -1, (2, 36)),
    ((2, 3, 4, 5), 0, -1, (120,)),
    ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
    ((2, 3, 4, 5), -2, -1, (2, 3, 20)),
    ((2, 3), 1, 1, (2, 3)),
    ((), 0, -1, (1,)),
])
def test_flatten_shapes_and_gradient(shape, start, end, expected):
    x = np.random.default_rng(0).standard_normal(shape)
    y = flatten(Tensor(x), start, end)
    assert y.shape == expected
    np.testing.assert_array_equal(y.numpy().ravel(), x.ravel())
    if x.size <= 120:  # central differences over 18432 summed terms would only measure noise
        minialex.gradcheck(lambda x: flatten(x, start, end), [Tensor(x, requires_grad=True)],
                           **GRADCHECK)
    assert Flatten(start, end)(Tensor(x)).shape == expected


def test_flatten_module_repr():
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"


def test_invalid_arguments_raise_naming_them():
    x = Tensor(np.ones((2, 9216), dtype=np.float32))
    W = Tensor(np.ones((4096, 9217), dtype=np.float32))
    with pytest.raises(ValueError, match=r"linear: input \(2, 9216\) has 9216 features but "
                                         r"weight \(4096, 9217\) expects in_features=9217"):
        linear(x, W)
    with pytest.raises(ValueError, match=r"weight must be \(out_features, in_features\), got "
                                         r"shape \(3,\)"):
        linear(x, Tensor(np.ones(3, dtype=np.float32)))
    small = Tensor(np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\) for weight \(3, 4\), "
                                         r"got \(4,\)"):
        linear(Tensor(np.ones((1, 4), dtype=np.float32)), small,
               Tensor(np.ones(4, dtype=np.float32)))
    with pytest.raises(TypeError, match="input is float64 but weight is float32"):
        linear(Tensor(np.ones((1, 4))), small)
    with pytest.raises(TypeError, match="input must be floating point"):
        linear(Tensor(np.ones((1, 4), dtype=np.int64)), small)
    with pytest.raises(ValueError, match="out_features must be a positive int, got 0"):
        Linear(3, 0)
    with pytest.raises(ValueError, match="in_features must be a positive int, got 2.5"):
        Linear(2.5, 3)
    with pytest.raises(ValueError, match="flatten: end_dim=4 is out of range for a tensor with "
                                         "4 dimensions"):
        flatten(Tensor(np.ones((1, 2, 3, 4))), 1, 4)
    with pytest.raises(ValueError, match="start_dim=2 comes after end_dim=1"):
        flatten(Tensor(np.ones((1, 2, 3, 4))), 2, 1)
    with pytest.raises(TypeError, match="start_dim must be an int"):
        flatten(Tensor(np.ones((1, 2))), "1")


@pytest.mark.parametrize("bias", [True, False])
def test_device_agrees_with_cpu(device, bias):
    x, W, b = make((6, 2), 7, 5, dtype=np.float32)
    gy = np.random.default_rng(1).standard_normal((6, 2, 5)).astype(np.float32)
    outs = []
    for dev in ("cpu", device):
        ts = [Tensor(a, requires_grad=True).to(dev) for a in ((x, W, b) if bias else (x, W))]
        y = flatten(linear(*ts), 0, 1)
        y.backward(Tensor(gy.reshape(12, 5)).to(dev).data)
        assert y.device == backend.parse_device(dev)
        outs.append([y.numpy()] + [backend.to_numpy(t.grad) for t in ts])
    for a, b_ in zip(*outs):
        np.testing.assert_allclose(b_, a, **TOL[np.float32])


@pytest.mark.parametrize("batch", [(7, 3), (40,)])
def test_linear_fast_paths_match_the_plain_version(device, monkeypatch, batch):
    """The CPU's blocked GEMMs with every block its own piece on 4 threads (blocks of rows, and
    of columns when the batch is the shorter side), and the GPU's cuBLAS calls."""
    run_every_piece(monkeypatch)
    x, W, b = make(batch, 9, 11)
    gy = np.random.default_rng(3).standard_normal(batch + (11,))
    ts = [Tensor(a, requires_grad=True).to(device) for a in (x, W, b)]
    y = linear(*ts)
    y.backward(Tensor(gy).to(device).data)
    np.testing.assert_allclose(y.numpy(), linear_forward(x, W, b), **TOL["float64_exact"])
    for t, expected in zip(ts, linear_backward(gy, x, W)):
        np.testing.assert_allclose(backend.to_numpy(t.grad), expected, **TOL["float64_exact"])
