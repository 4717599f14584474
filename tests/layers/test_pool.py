"""Tests for minialex/layers/pool.py and adaptive_pool.py: the plain versions against loops, the
fast max-pool paths (minialex/cpu with every piece run, minialex/cuda on the device) against the
plain version, ties, gradchecks, modules, errors."""
import math

import numpy as np
import pytest
from every_piece import run_every_piece
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend, cpu
from minialex.layers.adaptive_pool import AdaptiveAvgPool2d, adaptive_avg_pool2d
from minialex.layers.pool import (
    AvgPool2d,
    MaxPool2d,
    avg_pool2d,
    max_pool2d,
    max_pool_backward,
    max_pool_forward,
)

from conftest import GRADCHECK, TOL, shuffled_linspace

# The plain version in the layer file and the fast CPU path: both route ties the same way.
MAX_POOL_FORWARDS = [pytest.param(max_pool_forward, id="plain"),
                     pytest.param(cpu.max_pool_forward, id="cpu")]


# -- loop references ------------------------------------------------------------------------
def windows_ref(x, kernel, stride, padding, pad_value):
    """Yield (n, c, i, j, window) for every output element of a KH x KW window pool."""
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    N, C, H, W = x.shape
    x_pad = np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)), constant_values=pad_value)
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        yield (n, c, i, j), x_pad[n, c, i * SH:i * SH + KH, j * SW:j * SW + KW], (OH, OW)


def max_pool_ref(x, kernel, stride, padding):
    """(y, argmax, gx for a given gy): max of each window, first max in row-major order."""
    N, C = x.shape[:2]
    cells = list(windows_ref(x, kernel, stride, padding, -np.inf))
    OH, OW = cells[0][2]
    y, argmax = np.empty((N, C, OH, OW), x.dtype), np.empty((N, C, OH, OW), np.int32)
    for index, window, _ in cells:
        y[index] = window.max()
        argmax[index] = np.argmax(window)  # np.argmax returns the first maximum of the flat window
    return y, argmax


def max_pool_backward_ref(x, gy, kernel, stride, padding):
    (_, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    _, argmax = max_pool_ref(x, kernel, stride, padding)
    gx_pad = np.zeros((x.shape[0], x.shape[1], x.shape[2] + 2 * PH, x.shape[3] + 2 * PW))
    for n, c, i, j in np.ndindex(*gy.shape):
        kh, kw = divmod(int(argmax[n, c, i, j]), KW)
        gx_pad[n, c, i * SH + kh, j * SW + kw] += gy[n, c, i, j]
    return gx_pad[:, :, PH:PH + x.shape[2], PW:PW + x.shape[3]]


def avg_pool_ref(x, kernel, stride, padding):
    cells = list(windows_ref(x, kernel, stride, padding, 0.0))
    y = np.empty(x.shape[:2] + cells[0][2], x.dtype)
    for index, window, _ in cells:
        y[index] = window.sum() / window.size  # the padding zeros count (count_include_pad)
    return y


def adaptive_avg_pool_ref(x, OH, OW):
    N, C, H, W = x.shape
    y = np.empty((N, C, OH, OW), x.dtype)
    for n, c, i, j in np.ndindex(*y.shape):
        h0, h1 = math.floor(i * H / OH), math.ceil((i + 1) * H / OH)
        w0, w1 = math.floor(j * W / OW), math.ceil((j + 1) * W / OW)
        y[n, c, i, j] = x[n, c, h0:h1, w0:w1].mean()
    return y


def adaptive_avg_pool_backward_ref(x, gy):
    """Each bin's gy, divided by the bin size, added to every element of the bin."""
    N, C, H, W = x.shape
    OH, OW = gy.shape[2:]
    gx = np.zeros(x.shape)
    for n, c, i, j in np.ndindex(*gy.shape):
        h0, h1 = math.floor(i * H / OH), math.ceil((i + 1) * H / OH)
        w0, w1 = math.floor(j * W / OW), math.ceil((j + 1) * W / OW)
        gx[n, c, h0:h1, w0:w1] += gy[n, c, i, j] / ((h1 - h0) * (w1 - w0))
    return gx


# (shape, kernel, stride, padding): AlexNet's overlapping 3/2, plain 2/2, padding, non-square.
POOL_CONFIGS = [
    ((2, 3, 7, 7), (3, 3), (2, 2), (0, 0)),
    ((1, 2, 8, 8), (2, 2), (2, 2), (0, 0)),
    ((2, 2, 6, 7), (3, 3), (1, 1), (1, 1)),
    ((1, 3, 9, 6), (3, 2), (2, 1), (1, 0)),
    ((2, 1, 5, 5), (5, 5), (1, 1), (2, 2)),
    ((1, 2, 7, 9), (3, 3), (2, 2), (1, 1)),
]


# -- max pool -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS)
def test_max_pool_plain_version_matches_the_loop_references(shape, kernel, stride, padding):
    x = shuffled_linspace(shape)
    y, argmax = max_pool_forward(x, *kernel, *stride, *padding)
    y_ref, argmax_ref = max_pool_ref(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(argmax, argmax_ref)
    gy = np.random.default_rng(1).standard_normal(y.shape)
    np.testing.assert_allclose(max_pool_backward(gy, argmax, x.shape, *kernel, *stride, *padding),
                               max_pool_backward_ref(x, gy, kernel, stride, padding),
                               **TOL["float64_exact"])


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS)
def test_max_pool_cpu_every_piece_matches_the_plain_version(monkeypatch, shape, kernel, stride,
                                                            padding):
    """Every image its own piece on 4 threads; a tie-free input, so y and argmax match exactly."""
    run_every_piece(monkeypatch)
    x = shuffled_linspace((7,) + shape[1:], seed=3)
    xt = Tensor(x, requires_grad=True)
    y = max_pool2d(xt, kernel, stride, padding)
    y_plain, argmax_plain = max_pool_forward(x, *kernel, *stride, *padding)
    np.testing.assert_array_equal(y.numpy(), y_plain)
    np.testing.assert_array_equal(y.creator.argmax, argmax_plain)
    gy = np.random.default_rng(4).standard_normal(y.shape)
    y.backward(gy)
    np.testing.assert_allclose(xt.grad, max_pool_backward(gy, argmax_plain, x.shape, *kernel,
                                                          *stride, *padding),
                               **TOL["float64_exact"])


@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS)
def test_max_pool_forward_matches_loop_reference(shape, kernel, stride, padding):
    x = shuffled_linspace(shape)
    y = max_pool2d(Tensor(x, requires_grad=True), kernel, stride, padding)
    y_ref, argmax_ref = max_pool_ref(x, kernel, stride, padding)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    assert y.creator.argmax.dtype == np.int32
    np.testing.assert_array_equal(y.creator.argmax, argmax_ref)


def test_max_pool_cpu_gives_the_same_bits_on_any_core_count(monkeypatch):
    """Overlapping windows (3/2) add their shares onto shared elements: however the images are
    cut into pieces for the threads, each element's sum is made in the same order."""
    x = np.random.default_rng(5).standard_normal((9, 3, 13, 11))
    gy = np.random.default_rng(6).standard_normal((9, 3, 7, 6))
    results = []
    for count in (1, 2, 4, 16):
        run_every_piece(monkeypatch, threads_count=count)
        xt = Tensor(x, requires_grad=True)
        y = max_pool2d(xt, 3, stride=2, padding=1)
        y.backward(gy)
        results.append((y.numpy(), xt.grad))
    for y, gx in results[1:]:
        assert np.array_equal(y, results[0][0]) and np.array_equal(gx, results[0][1])


def test_max_pool_without_grad_skips_the_argmax_and_gives_the_same_output():
    x = shuffled_linspace((3, 4, 13, 13), seed=2)
    y = max_pool2d(Tensor(x), 3, stride=2, padding=1)
    assert y.creator is None  # nothing to route a gradient through
    trained = max_pool2d(Tensor(x, requires_grad=True), 3, stride=2, padding=1)
    np.testing.assert_array_equal(y.numpy(), trained.numpy())
    assert cpu.max_pool_forward(x, 3, 3, 2, 2, 1, 1, with_argmax=False)[1] is None


def test_max_pool_alexnet_sizes():
    pool = MaxPool2d(3, stride=2)
    sizes = [pool(Tensor(np.zeros((1, 1, s, s), np.float32))).shape[-1] for s in (55, 27, 13)]
    assert sizes == [27, 13, 6]


@pytest.mark.parametrize("forward", MAX_POOL_FORWARDS)
def test_max_pool_ties_go_to_the_first_maximum(forward):
    # Constant input: every element of every window ties, so the top-left (offset 0) wins.
    x = np.zeros((1, 1, 5, 5))
    y, argmax = forward(x, 3, 3, 2, 2, 0, 0)
    np.testing.assert_array_equal(argmax, 0)
    xt = Tensor(x, requires_grad=True)
    max_pool2d(xt, 3, stride=2).backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    expected = np.zeros((5, 5))
    expected[0, 0], expected[0, 2], expected[2, 0], expected[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(xt.grad[0, 0], expected)


@pytest.mark.parametrize("forward", MAX_POOL_FORWARDS)
def test_max_pool_tie_prefers_earlier_row_major_offset_and_ignores_padding(forward):
    x = np.array([[[[0.0, 5.0], [5.0, 1.0]]]])  # 5 appears at offsets (0,1) and (1,0)
    _, argmax = forward(x, 2, 2, 2, 2, 0, 0)
    assert argmax.item() == 1  # (0, 1) comes first in row-major order
    neg = -np.ones((1, 1, 2, 2))  # all negative: the -inf padding must never win
    y, argmax = forward(neg, 3, 3, 1, 1, 1, 1)
    np.testing.assert_array_equal(y, -1.0)
    np.testing.assert_array_equal(argmax[0, 0], [[4, 3], [1, 0]])


@st.composite
def pool_configs(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    H = draw(st.integers(max(1, KH - 2 * PH), 7))
    W = draw(st.integers(max(1, KW - 2 * PW), 7))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    return shape, (KH, KW), (SH, SW), (PH, PW)


@given(pool_configs(), st.integers(0, 2**16))
def test_max_pool_forward_and_gradcheck_drawn(config, seed):
    shape, kernel, stride, padding = config
    x = shuffled_linspace(shape, seed=seed)  # distinct values, >= 2/size apart, far above eps
    xt = Tensor(x, requires_grad=True)
    y = max_pool2d(xt, kernel, stride, padding)
    np.testing.assert_array_equal(y.numpy(), max_pool_ref(x, kernel, stride, padding)[0])
    minialex.gradcheck(lambda x: max_pool2d(x, kernel, stride, padding), [xt], **GRADCHECK)


def test_max_pool_gradcheck_non_contiguous_input():
    x = shuffled_linspace((2, 3, 7, 7), seed=4).transpose(0, 1, 3, 2)
    assert not x.flags.c_contiguous
    xt = Tensor(x, requires_grad=True)
    np.testing.assert_array_equal(max_pool2d(xt, 3, 2).numpy(), max_pool_ref(x, (3, 3), (2, 2),
                                                                             (0, 0))[0])
    minialex.gradcheck(lambda x: max_pool2d(x, 3, 2), [xt], **GRADCHECK)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS[:4])
def test_max_pool_forward_backward_on_device(device, dtype, shape, kernel, stride, padding):
    x = shuffled_linspace(shape, seed=1)
    y_ref, argmax_ref = max_pool_forward(x, *kernel, *stride, *padding)
    gy = np.random.default_rng(2).standard_normal(y_ref.shape)
    gx_ref = max_pool_backward(gy, argmax_ref, x.shape, *kernel, *stride, *padding)
    xt = Tensor(x.astype(dtype), requires_grad=True).to(device)
    y = max_pool2d(xt, kernel, stride, padding)
    assert y.device == xt.device and y.dtype == dtype
    np.testing.assert_array_equal(backend.to_numpy(y.creator.argmax), argmax_ref)
    y.backward(Tensor(gy.astype(dtype)).to(device).data)
    np.testing.assert_allclose(y.numpy(), y_ref, **TOL[dtype])
    np.testing.assert_allclose(backend.to_numpy(xt.grad), gx_ref, **TOL[dtype])


# -- average pool ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS)
def test_avg_pool_forward_matches_loop_reference(shape, kernel, stride, padding):
    x = np.random.default_rng(0).standard_normal(shape)
    y = avg_pool2d(Tensor(x), kernel, stride, padding)
    np.testing.assert_allclose(y.numpy(), avg_pool_ref(x, kernel, stride, padding),
                               **TOL[np.float64])


@given(pool_configs(), st.integers(0, 2**16))
def test_avg_pool_forward_and_gradcheck_drawn(config, seed):
    shape, kernel, stride, padding = config
    x = np.random.default_rng(seed).standard_normal(shape)
    xt = Tensor(x, requires_grad=True)
    np.testing.assert_allclose(avg_pool2d(xt, kernel, stride, padding).numpy(),
                               avg_pool_ref(x, kernel, stride, padding), **TOL[np.float64])
    minialex.gradcheck(lambda x: avg_pool2d(x, kernel, stride, padding), [xt], **GRADCHECK)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_avg_pool_forward_backward_on_device(device, dtype):
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 6))
    xt = Tensor(x.astype(dtype), requires_grad=True).to(device)
    y = avg_pool2d(xt, 3, 2, 1)
    np.testing.assert_allclose(y.numpy(), avg_pool_ref(x, (3, 3), (2, 2), (1, 1)), **TOL[dtype])
    gy = np.random.default_rng(4).standard_normal(y.shape)
    y.backward(Tensor(gy.astype(dtype)).to(device).data)
    # gx is the adjoint: <avg_pool(x'), gy> == <x', gx> for any x'
    probe = np.random.default_rng(5).standard_normal(x.shape)
    lhs = np.sum(avg_pool_ref(probe, (3, 3), (2, 2), (1, 1)) * gy)
    assert math.isclose(lhs, float(np.sum(probe * backend.to_numpy(xt.grad))),
                        rel_tol=TOL[dtype]["rtol"], abs_tol=10 * TOL[dtype]["atol"])


# -- adaptive average pool ------------------------------------------------------------------
@pytest.mark.parametrize("shape, output_size, expected", [
    ((2, 3, 6, 6), (6, 6), (6, 6)),       # identity (torchvision AlexNet at 224/227 input)
    ((2, 3, 13, 13), 6, (6, 6)),          # bins of 3, overlapping by one
    ((1, 2, 5, 7), (3, 2), (3, 2)),
    ((1, 2, 3, 4), (5, 7), (5, 7)),       # output larger than input: bins repeat elements
    ((1, 1, 5, 7), (None, 3), (5, 3)),    # None keeps that input size
])
def test_adaptive_avg_pool_matches_loop_reference(shape, output_size, expected):
    x = np.random.default_rng(0).standard_normal(shape)
    y = adaptive_avg_pool2d(Tensor(x), output_size)
    assert y.shape == shape[:2] + expected
    np.testing.assert_allclose(y.numpy(), adaptive_avg_pool_ref(x, *expected), **TOL[np.float64])


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 5), st.integers(1, 5),
       st.integers(0, 2**16))
def test_adaptive_avg_pool_forward_and_gradcheck_drawn(H, W, OH, OW, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, H, W))
    xt = Tensor(x, requires_grad=True)
    np.testing.assert_allclose(adaptive_avg_pool2d(xt, (OH, OW)).numpy(),
                               adaptive_avg_pool_ref(x, OH, OW), **TOL[np.float64])
    minialex.gradcheck(lambda x: adaptive_avg_pool2d(x, (OH, OW)), [xt], **GRADCHECK)


def test_adaptive_avg_pool_gradcheck_non_contiguous_input():
    x = np.random.default_rng(1).standard_normal((2, 7, 3, 5)).transpose(0, 2, 3, 1)
    xt = Tensor(x, requires_grad=True)
    minialex.gradcheck(lambda x: adaptive_avg_pool2d(x, (2, 3)), [xt], **GRADCHECK)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adaptive_avg_pool_forward_backward_on_device(device, dtype):
    x = np.random.default_rng(6).standard_normal((2, 3, 13, 11))
    xt = Tensor(x.astype(dtype), requires_grad=True).to(device)
    y = adaptive_avg_pool2d(xt, (6, 4))
    assert y.device == xt.device and y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), adaptive_avg_pool_ref(x, 6, 4), **TOL[dtype])
    gy = np.random.default_rng(7).standard_normal(y.shape)
    y.backward(Tensor(gy.astype(dtype)).to(device).data)
    np.testing.assert_allclose(backend.to_numpy(xt.grad), adaptive_avg_pool_backward_ref(x, gy),
                               **TOL[dtype])


# -- float32 agrees with float64 ------------------------------------------------------------
@pytest.mark.parametrize("fn, args", [
    (max_pool2d, (3, 2, 1)), (avg_pool2d, (3, 2, 1)), (adaptive_avg_pool2d, ((3, 4),)),
])
def test_float32_agrees_with_float64(fn, args):
    x = shuffled_linspace((2, 3, 9, 8), seed=3) * 10
    y64 = fn(Tensor(x), *args).numpy()
    y32 = fn(Tensor(x.astype(np.float32)), *args)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.numpy(), y64, **TOL[np.float32])


# -- modules --------------------------------------------------------------------------------
def test_pool_modules_have_no_parameters_and_print_like_pytorch():
    for m in (MaxPool2d(3, 2), AvgPool2d(2), AdaptiveAvgPool2d((6, 6))):
        assert list(m.named_parameters()) == []
    assert repr(MaxPool2d(3, stride=2)) == "MaxPool2d(kernel_size=3, stride=2, padding=0)"
    assert repr(MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0)"
    assert repr(AvgPool2d((3, 2), padding=1)) == \
        "AvgPool2d(kernel_size=(3, 2), stride=(3, 2), padding=1)"
    assert repr(AdaptiveAvgPool2d((6, 6))) == "AdaptiveAvgPool2d(output_size=(6, 6))"


def test_pool_modules_match_functionals():
    x = Tensor(shuffled_linspace((2, 3, 9, 9)))
    np.testing.assert_array_equal(MaxPool2d(3, 2, 1)(x).numpy(), max_pool2d(x, 3, 2, 1).numpy())
    np.testing.assert_array_equal(AvgPool2d(3, 2)(x).numpy(), avg_pool2d(x, 3, 2).numpy())
    np.testing.assert_array_equal(AdaptiveAvgPool2d(4)(x).numpy(),
                                  adaptive_avg_pool2d(x, 4).numpy())


# -- validation -----------------------------------------------------------------------------
X = Tensor(np.zeros((1, 2, 6, 6), np.float32))


@pytest.mark.parametrize("fn", [max_pool2d, avg_pool2d])
@pytest.mark.parametrize("x, kwargs, error, match", [
    (X, dict(kernel_size=3, padding=2), ValueError,
     r"padding must be between 0 and half the kernel size \(1, 1\), got padding \(2, 2\)"),
    (X, dict(kernel_size=3, padding=-1), ValueError, r"padding must be between 0 and half"),
    (X, dict(kernel_size=3, stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    (X, dict(kernel_size=0), ValueError, r"kernel_size must be >= 1, got \(0, 0\)"),
    (X, dict(kernel_size=(7, 3)), ValueError,
     r"kernel \(7, 3\) is larger than the padded input \(6, 6\)"),
    (X, dict(kernel_size=2.0), TypeError, r"kernel_size must be an int or a pair of ints"),
    (Tensor(np.zeros((2, 6, 6))), dict(kernel_size=2), ValueError,
     r"input must be \(N, C, H, W\), got shape \(2, 6, 6\)"),
    (Tensor(np.zeros((1, 1, 6, 6), np.int32)), dict(kernel_size=2), TypeError,
     r"input must be floating point, got dtype int32"),
])
def test_window_pool_validation(fn, x, kwargs, error, match):
    with pytest.raises(error, match=f"{fn.__name__}: {match}"):
        fn(x, **kwargs)


@pytest.mark.parametrize("x, output_size, error, match", [
    (X, 0, ValueError, r"output_size must be >= 1, got \(0, 0\)"),
    (X, (2, -1), ValueError, r"output_size must be >= 1, got \(2, -1\)"),
    (X, (2, 2, 2), TypeError, r"output_size must be an int or a pair"),
    (X, 2.5, TypeError, r"output_size must be an int or a pair of ints"),
    (Tensor(np.zeros((6, 6))), 2, ValueError, r"input must be \(N, C, H, W\), got shape \(6, 6\)"),
    (Tensor(np.zeros((1, 1, 6, 6), np.int64)), 2, TypeError, r"input must be floating point"),
])
def test_adaptive_avg_pool_validation(x, output_size, error, match):
    with pytest.raises(error, match=f"adaptive_avg_pool2d: {match}"):
        adaptive_avg_pool2d(x, output_size)


@pytest.mark.parametrize("output_size, error, match", [
    (0, ValueError, r"output_size must be >= 1, got \(0, 0\)"),
    ((2, 2, 2), TypeError, r"output_size must be an int or a pair"),
    (2.5, TypeError, r"output_size must be an int or a pair of ints"),
])
def test_adaptive_avg_pool_module_refuses_a_bad_size_when_built(output_size, error, match):
    with pytest.raises(error, match=f"AdaptiveAvgPool2d: {match}"):
        AdaptiveAvgPool2d(output_size)
    assert AdaptiveAvgPool2d((None, 3))(X).shape == (*X.shape[:3], 3)   # None keeps H


# -- optional cross-check with PyTorch ------------------------------------------------------
@pytest.mark.parametrize("shape, kernel, stride, padding", POOL_CONFIGS)
def test_pools_match_torch(shape, kernel, stride, padding):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = shuffled_linspace(shape)
    tx = torch.tensor(x)
    np.testing.assert_array_equal(max_pool2d(Tensor(x), kernel, stride, padding).numpy(),
                                  F.max_pool2d(tx, kernel, stride, padding).numpy())
    np.testing.assert_allclose(avg_pool2d(Tensor(x), kernel, stride, padding).numpy(),
                               F.avg_pool2d(tx, kernel, stride, padding).numpy(),
                               **TOL[np.float64])
    np.testing.assert_allclose(adaptive_avg_pool2d(Tensor(x), (3, 2)).numpy(),
                               F.adaptive_avg_pool2d(tx, (3, 2)).numpy(), **TOL[np.float64])
