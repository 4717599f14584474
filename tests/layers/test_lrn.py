"""Tests for minialex/layers/lrn.py: loop reference, both conventions, gradchecks, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.layers.lrn import (
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_K,
    PAPER_SIZE,
    LocalResponseNorm,
    LocalResponseNormFunction,
    local_response_norm,
)

from conftest import GRADCHECK, TOL


def lrn_ref(x, size, alpha, beta, k, convention="paper"):
    """b[n,c,h,w] = a / (k + alpha' * sum_{j=max(0,c-size//2)}^{min(C-1,c+(size-1)//2)} a_j^2)^beta,
    one element at a time."""
    coef = alpha / size if convention == "pytorch" else alpha
    C = x.shape[1]
    y = np.empty_like(x)
    for n, c, h, w in np.ndindex(*x.shape):
        total = 0.0
        for j in range(max(0, c - size // 2), min(C - 1, c + (size - 1) // 2) + 1):
            total += x[n, j, h, w] ** 2
        y[n, c, h, w] = x[n, c, h, w] / (k + coef * total) ** beta
    return y


def inputs(shape, dtype=np.float64, seed=0, scale=2.0):
    """Activities of order 1-3, so alpha=1 makes the normaliser dominate k."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("convention", ["paper", "pytorch"])
@pytest.mark.parametrize("alpha", [PAPER_ALPHA, 1.0])
@pytest.mark.parametrize("C", [3, 8])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_forward_matches_loop_reference(size, C, alpha, convention):
    x = inputs((2, C, 3, 4))
    y = local_response_norm(Tensor(x), size, alpha, PAPER_BETA, PAPER_K, convention)
    np.testing.assert_allclose(y.numpy(), lrn_ref(x, size, alpha, PAPER_BETA, PAPER_K, convention),
                               **TOL[np.float64])


@given(N=st.integers(1, 3), C=st.integers(1, 9), H=st.integers(1, 4), W=st.integers(1, 4),
       size=st.integers(1, 9), alpha=st.floats(0.0, 2.0), beta=st.floats(-1.0, 2.0),
       k=st.floats(0.5, 3.0), convention=st.sampled_from(["paper", "pytorch"]),
       seed=st.integers(0, 2**16))
def test_forward_matches_loop_reference_drawn(N, C, H, W, size, alpha, beta, k, convention,
                                              seed):
    x = inputs((N, C, H, W), seed=seed)
    y = local_response_norm(Tensor(x), size, alpha, beta, k, convention)
    np.testing.assert_allclose(y.numpy(), lrn_ref(x, size, alpha, beta, k, convention),
                               **TOL[np.float64])


def test_alpha_matters_at_alpha_one():
    """The alpha=1 cases above are meaningful: the normaliser changes y by far more than TOL."""
    x = inputs((1, 6, 2, 2))
    y = local_response_norm(Tensor(x), alpha=1.0, k=PAPER_K).numpy()
    assert np.abs(y - x / PAPER_K ** PAPER_BETA).max() > 0.1


def test_conventions_convert_by_size():
    """alpha_torch = size * alpha_paper gives the same layer."""
    x = inputs((2, 7, 3, 3))
    paper = local_response_norm(Tensor(x), PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K,
                                convention="paper")
    torch_like = local_response_norm(Tensor(x), PAPER_SIZE, PAPER_SIZE * PAPER_ALPHA, PAPER_BETA,
                                     PAPER_K, convention="pytorch")
    np.testing.assert_allclose(paper.numpy(), torch_like.numpy(), **TOL[np.float64])


@pytest.mark.parametrize("convention", ["paper", "pytorch"])
@pytest.mark.parametrize("alpha", [PAPER_ALPHA, 1.0])
@pytest.mark.parametrize("size", [2, 3, 5])
def test_gradcheck(size, alpha, convention):
    x = Tensor(inputs((2, 6, 3, 3)), requires_grad=True)
    minialex.gradcheck(
        lambda x: local_response_norm(x, size, alpha, PAPER_BETA, PAPER_K, convention), [x],
        **GRADCHECK)


@given(C=st.integers(1, 7), size=st.integers(1, 8), alpha=st.floats(1e-4, 1.5),
       beta=st.floats(0.25, 1.5), k=st.floats(1.0, 3.0), seed=st.integers(0, 2**16))
def test_gradcheck_drawn(C, size, alpha, beta, k, seed):
    x = Tensor(inputs((2, C, 2, 3), seed=seed), requires_grad=True)
    minialex.gradcheck(lambda x: local_response_norm(x, size, alpha, beta, k), [x],
                       **GRADCHECK)


@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 5), (1, 6, 2, 3, 2)])
def test_other_ranks_normalise_axis_1(shape):
    """(N, C), (N, C, L) and (N, C, D, H, W) act like (N, C, positions, 1)."""
    x = inputs(shape)
    x4 = x.reshape(shape[0], shape[1], -1, 1)
    y = local_response_norm(Tensor(x), 3, 1.0, PAPER_BETA, PAPER_K)
    assert y.shape == shape
    np.testing.assert_allclose(y.numpy().reshape(x4.shape),
                               lrn_ref(x4, 3, 1.0, PAPER_BETA, PAPER_K), **TOL[np.float64])
    xt = Tensor(x, requires_grad=True)
    minialex.gradcheck(lambda x: local_response_norm(x, 3, 1.0, PAPER_BETA, PAPER_K), [xt],
                       **GRADCHECK)


def test_empty_batch():
    assert local_response_norm(Tensor(np.ones((0, 3, 5)))).shape == (0, 3, 5)


def test_non_contiguous_input():
    x = inputs((3, 4, 6, 2)).transpose(3, 1, 0, 2)  # (2, 4, 3, 6), a strided view
    assert not x.flags.c_contiguous
    y = local_response_norm(Tensor(x), 5, 1.0)
    np.testing.assert_allclose(y.numpy(), lrn_ref(x, 5, 1.0, PAPER_BETA, PAPER_K),
                               **TOL[np.float64])
    xt = Tensor(x, requires_grad=True)
    minialex.gradcheck(lambda x: local_response_norm(x, 5, 1.0), [xt], **GRADCHECK)


@pytest.mark.parametrize("alpha", [PAPER_ALPHA, 1.0])
def test_float32_agrees_with_float64(alpha):
    x64 = np.abs(inputs((2, 8, 5, 5)))  # post-ReLU activities, as in AlexNet
    gy = np.random.default_rng(1).standard_normal(x64.shape)
    results = {}
    for dtype in (np.float32, np.float64):
        x = Tensor(x64.astype(dtype), requires_grad=True)
        y = local_response_norm(x, alpha=alpha)
        y.backward(gy.astype(dtype))
        assert y.dtype == dtype and x.grad.dtype == dtype
        results[dtype] = y.numpy(), x.grad
    for a32, a64 in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(a32, a64, **TOL[np.float32])


def test_backward_closed_form_matches_function_directly():
    """Calling the Function's forward/backward on raw arrays (no graph) gives the formula."""
    x = inputs((1, 4, 2, 2))
    gy = np.random.default_rng(3).standard_normal(x.shape)
    fn = LocalResponseNormFunction(3, 0.5, 0.75, 2.0)
    fn.needs_input_grad = (True,)
    y = fn.forward(x)
    gx = fn.backward(gy)
    scale = (x / y) ** (1 / 0.75)  # y = x * scale^-beta
    expected = gy * scale ** -0.75
    for n, i, h, w in np.ndindex(*x.shape):
        for j in range(max(0, i - 1), min(3, i + 1) + 1):  # j with i in window(j), size 3
            expected[n, i, h, w] -= (2 * 0.5 * 0.75 * x[n, i, h, w] * gy[n, j, h, w]
                                     * y[n, j, h, w] / scale[n, j, h, w])
    np.testing.assert_allclose(gx, expected, **TOL["float64_exact"])


def test_module_defaults_are_the_papers():
    lrn = LocalResponseNorm()
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.convention) == (
        PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K, "paper")
    assert repr(lrn) == "LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=2.0)"
    assert list(lrn.named_parameters()) == []
    x = inputs((2, 7, 3, 3))
    expected = lrn_ref(x, PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K)
    np.testing.assert_allclose(lrn(Tensor(x)).numpy(), expected, **TOL[np.float64])
    torch_like = LocalResponseNorm(3, 1.0, 0.5, 1.0, convention="pytorch")
    assert "convention='pytorch'" in repr(torch_like)
    np.testing.assert_allclose(torch_like(Tensor(x)).numpy(),
                               lrn_ref(x, 3, 1.0, 0.5, 1.0, "pytorch"), **TOL[np.float64])


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=0), "size must be a positive int, got 0"),
    (dict(size=2.5), "size must be a positive int"),
    (dict(size=True), "size must be a positive int"),
    (dict(alpha=-1.0), "alpha must be finite and >= 0"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(beta="0.75"), "beta must be"),
    (dict(k=0.0), r"k must be finite and > 0, got k=0.0"),
    (dict(convention="caffe"), "convention must be one of"),
])
def test_invalid_options_raise_naming_them(kwargs, match):
    x = Tensor(np.ones((1, 3, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=match):
        local_response_norm(x, **kwargs)
    with pytest.raises(ValueError, match=match):
        LocalResponseNorm(**kwargs)


def test_invalid_inputs_raise_naming_them():
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
        local_response_norm(Tensor(np.ones(5)))
    with pytest.raises(TypeError, match="floating point, got dtype int64"):
        local_response_norm(Tensor(np.ones((1, 3, 2, 2), dtype=np.int64)))
    with pytest.raises(TypeError, match="must be a Tensor or an array, got list"):
        local_response_norm([[1.0, 2.0]])


@pytest.mark.parametrize("convention", ["paper", "pytorch"])
def test_device_agrees_with_cpu(device, convention):
    x = np.abs(inputs((2, 7, 4, 4), dtype=np.float32))
    gy = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    outs = []
    for dev in ("cpu", device):
        xt = Tensor(x, requires_grad=True).to(dev)
        y = local_response_norm(xt, 5, 1.0, PAPER_BETA, PAPER_K, convention)
        y.backward(Tensor(gy).to(dev).data)
        assert y.device == backend.parse_device(dev)
        outs.append((y.numpy(), backend.to_numpy(xt.grad)))
    for a, b in zip(*outs):
        np.testing.assert_allclose(b, a, **TOL[np.float32])


@pytest.mark.parametrize("size, alpha, beta, k", [(PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K),
                                                  (5, 1.0, 0.75, 1.0),
                                                  (4, 0.5, 0.6, 1.5), (2, 2.0, 1.2, 1.0),
                                                  (9, 0.1, 0.75, 2.0)])
def test_matches_torch(size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = inputs((2, 6, 3, 4))
    gy = np.random.default_rng(1).standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k)
    yt.backward(torch.tensor(gy))
    ours = Tensor(x, requires_grad=True)
    y = local_response_norm(ours, size, alpha, beta, k, convention="pytorch")
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **TOL[np.float64])
    np.testing.assert_allclose(ours.grad, xt.grad.numpy(), **TOL[np.float64])
