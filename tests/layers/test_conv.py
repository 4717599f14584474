"""Tests for minialex/layers/conv.py: the plain version against loops, both fast paths (minialex/cpu
with every block and piece run, minialex/cuda on the device) against the plain version,
adjointness, gradchecks, module, errors."""
import math

import numpy as np
import pytest
from every_piece import run_every_piece
from hypothesis import given
from hypothesis import strategies as st

import minialex
from minialex import Tensor, backend
from minialex.cpu import threads
from minialex.layers.conv import (
    Conv2d,
    col2im,
    conv2d,
    conv2d_backward,
    conv2d_forward,
    im2col,
)

from conftest import GRADCHECK, TOL


# -- loop references, written from the formulas in the docstring ----------------------------
def pad_ref(x, PH, PW):
    return np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))


def conv2d_ref(x, W, b, stride, padding, groups):
    """y[n, o, i, j] = b[o] + sum over the group's channels and the window, element by element."""
    (SH, SW), (PH, PW) = stride, padding
    N, C, H, Wd = x.shape
    OC, Cg, KH, KW = W.shape
    OCg = OC // groups
    OH, OW = (H + 2 * PH - KH) // SH + 1, (Wd + 2 * PW - KW) // SW + 1
    x_pad = pad_ref(x, PH, PW)
    y = np.zeros((N, OC, OH, OW), dtype=x.dtype)
    for n, o, i, j in np.ndindex(*y.shape):
        g = o // OCg
        field = x_pad[n, g * Cg:(g + 1) * Cg, i * SH:i * SH + KH, j * SW:j * SW + KW]
        y[n, o, i, j] = np.sum(field * W[o]) + (0 if b is None else b[o])
    return y


def conv2d_backward_ref(x, W, gy, stride, padding, groups):
    """(gx, gW, gb) by scattering each gy element over its window: the chain rule element-wise."""
    (SH, SW), (PH, PW) = stride, padding
    OC, Cg, KH, KW = W.shape
    OCg = OC // groups
    x_pad = pad_ref(x, PH, PW)
    gx_pad, gW, gb = np.zeros_like(x_pad), np.zeros_like(W), np.zeros(OC, dtype=gy.dtype)
    for n, o, i, j in np.ndindex(*gy.shape):
        g = o // OCg
        rows, cols = slice(i * SH, i * SH + KH), slice(j * SW, j * SW + KW)
        channels = slice(g * Cg, (g + 1) * Cg)
        gx_pad[n, channels, rows, cols] += gy[n, o, i, j] * W[o]
        gW[o] += gy[n, o, i, j] * x_pad[n, channels, rows, cols]
        gb[o] += gy[n, o, i, j]
    H, Wd = x.shape[2:]
    return gx_pad[:, :, PH:PH + H, PW:PW + Wd], gW, gb


def im2col_ref(x, KH, KW, SH, SW, PH, PW):
    """col[(c*KH + kh)*KW + kw, (n*OH + i)*OW + j] = x[n, c, i*SH + kh - PH, j*SW + kw - PW]."""
    N, C, H, W = x.shape
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    col = np.zeros((C * KH * KW, N * OH * OW), dtype=x.dtype)
    for n, c, kh, kw, i, j in np.ndindex(N, C, KH, KW, OH, OW):
        h, w = i * SH + kh - PH, j * SW + kw - PW
        if 0 <= h < H and 0 <= w < W:
            col[(c * KH + kh) * KW + kw, (n * OH + i) * OW + j] = x[n, c, h, w]
    return col


# Configurations: (N, C, H, W, OC, (KH, KW), stride, padding, groups), chosen to cover
# groups 1/2/3, strides > 1, padding, kernel > stride (overlap), non-square kernels and inputs.
CONFIGS = [
    (2, 3, 7, 7, 4, (3, 3), (1, 1), (0, 0), 1),
    (2, 4, 8, 9, 6, (3, 3), (2, 2), (1, 1), 2),
    (1, 6, 9, 7, 3, (2, 3), (2, 1), (1, 0), 3),
    (2, 3, 11, 11, 2, (5, 5), (4, 4), (2, 2), 1),   # conv1-like: kernel > stride
    (1, 4, 6, 6, 4, (5, 5), (1, 1), (2, 2), 2),     # conv2-like: grouped 5x5, pad 2
    (3, 2, 5, 8, 5, (1, 4), (1, 3), (0, 1), 1),
    (1, 6, 4, 4, 6, (4, 4), (1, 1), (0, 0), 6),     # depthwise, kernel = input
]


def make(config, dtype=np.float64, bias=True, seed=0):
    N, C, H, W, OC, (KH, KW), stride, padding, groups = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((OC, C // groups, KH, KW)).astype(dtype)
    b = rng.standard_normal(OC).astype(dtype) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, groups=groups)


# -- forward --------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_matches_loop_reference(config, bias):
    x, w, b, kw = make(config, bias=bias)
    y = conv2d(Tensor(x), Tensor(w), None if b is None else Tensor(b), **kw)
    expected = conv2d_ref(x, w, b, kw["stride"], kw["padding"], kw["groups"])
    assert y.shape == expected.shape
    assert y.data.flags.c_contiguous
    np.testing.assert_allclose(y.numpy(), expected, **TOL[np.float64])


def test_conv2d_accepts_int_stride_and_padding():
    x, w, b, _ = make(CONFIGS[1])
    y = conv2d(Tensor(x), Tensor(w), Tensor(b), stride=2, padding=1, groups=2)
    np.testing.assert_allclose(y.numpy(), conv2d_ref(x, w, b, (2, 2), (1, 1), 2),
                               **TOL[np.float64])


def test_conv2d_non_contiguous_input():
    x, w, b, kw = make(CONFIGS[2])
    x_t = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # same values
    assert not x_t.flags.c_contiguous
    y = conv2d(Tensor(x_t), Tensor(w[:, :, ::-1]), Tensor(b), **kw)  # a negative-stride weight
    np.testing.assert_allclose(y.numpy(), conv2d_ref(x, w[:, :, ::-1], b, kw["stride"],
                                                     kw["padding"], kw["groups"]),
                               **TOL[np.float64])


@pytest.mark.parametrize("config", CONFIGS[:4])
def test_conv2d_float32_agrees_with_float64(config):
    x, w, b, kw = make(config)
    y64 = conv2d(Tensor(x), Tensor(w), Tensor(b), **kw).numpy()
    y32 = conv2d(Tensor(x.astype(np.float32)), Tensor(w.astype(np.float32)),
                 Tensor(b.astype(np.float32)), **kw)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32.numpy(), y64, **TOL[np.float32])


def test_alexnet_conv1_conv2_output_sizes():
    x = Tensor(np.zeros((1, 3, 227, 227), dtype=np.float32))
    y1 = Conv2d(3, 96, 11, stride=4)(x)
    assert y1.shape == (1, 96, 55, 55)
    y2 = Conv2d(96, 256, 5, padding=2, groups=2)(Tensor(np.zeros((1, 96, 27, 27), np.float32)))
    assert y2.shape == (1, 256, 27, 27)


# -- im2col / col2im ------------------------------------------------------------------------
@pytest.mark.parametrize("KH, KW, SH, SW, PH, PW", [
    (3, 3, 1, 1, 0, 0), (3, 2, 2, 1, 1, 0), (2, 3, 1, 3, 2, 1), (1, 1, 2, 2, 0, 0),
    (5, 5, 4, 4, 2, 2),
])
def test_im2col_matches_contract_formula(KH, KW, SH, SW, PH, PW):
    x = np.random.default_rng(1).standard_normal((2, 3, 7, 6))
    col = im2col(x, KH, KW, SH, SW, PH, PW)
    np.testing.assert_array_equal(col, im2col_ref(x, KH, KW, SH, SW, PH, PW))


@st.composite
def window_configs(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, KH - 2 * PH), 8))
    W = draw(st.integers(max(1, KW - 2 * PW), 8))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return (N, C, H, W), (KH, KW, SH, SW, PH, PW)


@given(window_configs(), st.integers(0, 2**16))
def test_col2im_is_the_adjoint_of_im2col(config, seed):
    shape, args = config
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    col = im2col(x, *args)
    np.testing.assert_array_equal(col, im2col_ref(x, *args))
    c = rng.standard_normal(col.shape)
    gx = col2im(c, shape, *args)
    assert gx.shape == shape and gx.flags.c_contiguous
    # <im2col(x), c> == <x, col2im(c)> for every x and c defines col2im as the adjoint.
    assert math.isclose(np.sum(col * c), np.sum(x * gx), rel_tol=1e-12, abs_tol=1e-12)


def test_col2im_sums_overlapping_windows():
    # Ones in every column: each x element receives the number of windows that cover it.
    shape, args = (1, 1, 5, 5), (3, 3, 2, 2, 0, 0)
    counts = col2im(np.ones((9, 4)), shape, *args)[0, 0]
    expected = np.array([[1, 1, 2, 1, 1]] * 2 + [[2, 2, 4, 2, 2]] + [[1, 1, 2, 1, 1]] * 2)
    np.testing.assert_array_equal(counts, expected)


# -- gradients ------------------------------------------------------------------------------
@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    C, OC = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, KH - 2 * PH), 6))
    W = draw(st.integers(max(1, KW - 2 * PW), 6))
    return (draw(st.integers(1, 2)), C, H, W, OC, (KH, KW), (SH, SW), (PH, PW), groups)


@given(conv_configs(), st.booleans())
def test_conv2d_gradcheck_drawn(config, bias):
    x, w, b, kw = make(config, bias=bias)
    x, w = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    params = [w] if b is None else [w, Tensor(b, requires_grad=True)]
    minialex.gradcheck(lambda x: conv2d(x, *params, **kw), [x], params, **GRADCHECK)


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[3]])
def test_conv2d_gradcheck_non_contiguous_input(config):
    x, w, b, kw = make(config)
    x_t = Tensor(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2),
                 requires_grad=True)
    assert not x_t.data.flags.c_contiguous
    w, b = Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    minialex.gradcheck(lambda x: conv2d(x, w, b, **kw), [x_t], [w, b], **GRADCHECK)


def test_conv2d_skips_unneeded_gradients():
    x, w, b, kw = make(CONFIGS[1])
    xt, wt, bt = Tensor(x), Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    conv2d(xt, wt, bt, **kw).sum().backward()
    assert xt.grad is None and wt.grad.shape == w.shape and bt.grad.shape == b.shape
    xt, wt = Tensor(x, requires_grad=True), Tensor(w)
    conv2d(xt, wt, **kw).sum().backward()
    assert xt.grad.shape == x.shape and wt.grad is None


def geometry(kw):
    """(SH, SW, PH, PW, G) of a make() config's keyword arguments."""
    return (*kw["stride"], *kw["padding"], kw["groups"])


@pytest.mark.parametrize("config", CONFIGS)
def test_plain_version_matches_the_loop_references(config):
    x, w, b, kw = make(config)
    y = conv2d_forward(x, w, b, *geometry(kw))
    np.testing.assert_allclose(y, conv2d_ref(x, w, b, kw["stride"], kw["padding"], kw["groups"]),
                               **TOL["float64_exact"])
    gy = np.random.default_rng(1).standard_normal(y.shape)
    expected = conv2d_backward_ref(x, w, gy, kw["stride"], kw["padding"], kw["groups"])
    for mine, loops in zip(conv2d_backward(gy, x, w, *geometry(kw)), expected):
        np.testing.assert_allclose(mine, loops, **TOL["float64_exact"])


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_cpu_every_block_and_piece_matches_the_plain_version(monkeypatch, bias):
    """19 images on 4 threads, one image per block: the forward's blocks, and the backward's 8
    pieces of 2 or 3 blocks each, whose gw and gb must add up across blocks and pieces."""
    run_every_piece(monkeypatch)
    config = (19, 4, 9, 8, 6, (3, 3), (2, 2), (1, 1), 2)
    x, w, b, kw = make(config, bias=bias, seed=3)
    xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    bt = None if b is None else Tensor(b, requires_grad=True)
    y = conv2d(xt, wt, bt, **kw)
    gy = np.random.default_rng(4).standard_normal(y.shape)
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), conv2d_forward(x, w, b, *geometry(kw)),
                               **TOL["float64_exact"])
    gx, gw, gb = conv2d_backward(gy, x, w, *geometry(kw))
    np.testing.assert_allclose(xt.grad, gx, **TOL["float64_exact"])
    np.testing.assert_allclose(wt.grad, gw, **TOL["float64_exact"])
    if bias:
        np.testing.assert_allclose(bt.grad, gb, **TOL["float64_exact"])


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_empty_batch_forward_and_backward(bias):
    """N = 0: an empty output, an empty gx, and zero gw and gb (sums over no images)."""
    rng = np.random.default_rng(5)
    x = Tensor(np.zeros((0, 4, 9, 9)), requires_grad=True)
    w = Tensor(rng.standard_normal((6, 2, 3, 3)), requires_grad=True)
    b = Tensor(rng.standard_normal(6), requires_grad=True) if bias else None
    y = conv2d(x, w, b, stride=2, padding=1, groups=2)
    assert y.shape == (0, 6, 5, 5)
    y.backward(np.zeros((0, 6, 5, 5)))
    assert x.grad.shape == (0, 4, 9, 9)
    np.testing.assert_array_equal(w.grad, np.zeros(w.shape))
    if bias:
        np.testing.assert_array_equal(b.grad, np.zeros(6))


@pytest.mark.parametrize("block_bytes", [threads.BLOCK_BYTES, 1 << 12])
def test_conv2d_output_and_gradients_have_the_same_bits_on_any_core_count(monkeypatch,
                                                                         block_bytes):
    """gw and gb sum over the images; the order of that sum must not follow the thread count,
    or a run's weights would depend on the machine (or a container's CPU quota). y and gx must
    not follow it either: how the threads group images into blocks changes a GEMM's width, and
    BLAS results change with it, so each image's output comes from a product of its own; the
    same image in a batch of one gives the same bits."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 8, 45, 45)).astype(np.float32)
    w = rng.standard_normal((12, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    gy = rng.standard_normal((7, 12, 23, 23)).astype(np.float32)
    monkeypatch.setattr(threads, "BLOCK_BYTES", block_bytes)  # one or several blocks a piece
    grads, outputs = [], []
    for count in (1, 2, 4, 16):
        monkeypatch.setattr(threads, "cpu_threads", lambda: count)
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = conv2d(xt, wt, bt, stride=2, padding=1, groups=2)
        y.backward(gy)
        grads.append((xt.grad, wt.grad, bt.grad))
        outputs.append(y.numpy())
    for gx, gw, gb in grads[1:]:
        assert np.array_equal(gw, grads[0][1]) and np.array_equal(gb, grads[0][2])
        assert np.array_equal(gx, grads[0][0])
    for y in outputs[1:]:
        assert np.array_equal(y, outputs[0])
    alone = conv2d(Tensor(x[3:4]), Tensor(w), Tensor(b), stride=2, padding=1, groups=2)
    assert np.array_equal(alone.numpy()[0], outputs[0][3])


def test_conv2d_small_batch_lets_blas_use_its_threads(monkeypatch):
    """One image on 4 cores: conv must not hold BLAS to one thread (there is one block, so the
    GEMMs are what can use the cores); a batch with a block per thread does."""
    monkeypatch.setattr(threads, "cpu_threads", lambda: 4)
    entered, single_threaded_blas = [], threads.single_threaded_blas

    def recording():
        entered.append(True)
        return single_threaded_blas()
    monkeypatch.setattr(threads, "single_threaded_blas", recording)
    rng = np.random.default_rng(6)
    w = Tensor(rng.standard_normal((8, 3, 3, 3)), requires_grad=True)
    x = Tensor(rng.standard_normal((1, 3, 40, 40)), requires_grad=True)
    conv2d(x, w, padding=1).sum().backward()
    assert entered == []
    conv2d(Tensor(rng.standard_normal((16, 3, 40, 40))), w, padding=1)
    assert entered


# -- CPU and GPU against the plain version --------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[2], CONFIGS[3]])
def test_conv2d_forward_backward_on_device(device, dtype, config):
    x, w, b, kw = make(config)
    expected_y = conv2d_forward(x, w, b, *geometry(kw))
    gy = np.random.default_rng(5).standard_normal(expected_y.shape)
    expected = conv2d_backward(gy, x, w, *geometry(kw))
    xt, wt, bt = (Tensor(a.astype(dtype), requires_grad=True).to(device) for a in (x, w, b))
    y = conv2d(xt, wt, bt, **kw)
    assert y.device == xt.device and y.dtype == dtype
    y.backward(Tensor(gy.astype(dtype)).to(device).data)
    np.testing.assert_allclose(y.numpy(), expected_y, **TOL[dtype])
    for t, e in zip((xt, wt, bt), expected):
        np.testing.assert_allclose(backend.to_numpy(t.grad), e, **TOL[dtype])


# -- module ---------------------------------------------------------------------------------
def test_conv2d_module_parameters_and_init():
    m = Conv2d(6, 40, (3, 2), stride=(2, 1), padding=1, groups=2)
    names = [(n, p.shape, p.dtype) for n, p in m.named_parameters()]
    assert names == [("weight", (40, 3, 3, 2), np.float32), ("bias", (40,), np.float32)]
    bound = 1 / math.sqrt(3 * 3 * 2)  # fan_in = in_channels/groups * KH * KW
    for p in m.parameters():
        assert np.all(np.abs(p.numpy()) <= bound)
    assert np.abs(m.weight.numpy()).max() > 0.9 * bound  # 720 draws fill the interval
    assert abs(m.weight.numpy().mean()) < 0.1 * bound
    assert Conv2d(3, 96, 11, stride=4).num_parameters() == 34_944         # the paper's conv1
    assert Conv2d(96, 256, 5, padding=2, groups=2).num_parameters() == 307_456  # conv2


def test_conv2d_module_init_is_seeded():
    minialex.manual_seed(7)
    a = Conv2d(2, 3, 3).weight.numpy()
    minialex.manual_seed(7)
    np.testing.assert_array_equal(a, Conv2d(2, 3, 3).weight.numpy())


def test_conv2d_module_without_bias_and_repr():
    m = Conv2d(4, 8, 3, padding=(1, 0), groups=4, bias=False)
    assert [n for n, _ in m.named_parameters()] == ["weight"] and m.bias is None
    assert repr(m) == "Conv2d(4, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 0), " \
                      "groups=4, bias=False)"
    assert repr(Conv2d(3, 96, 11, stride=4)) == \
        "Conv2d(3, 96, kernel_size=(11, 11), stride=(4, 4))"


def test_conv2d_module_forward_matches_functional_and_double():
    m = Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 7))
    expected = conv2d_ref(x, m.weight.numpy(), m.bias.numpy(), (2, 2), (1, 1), 2)
    np.testing.assert_allclose(m(Tensor(x)).numpy(), expected, **TOL[np.float64])
    xt = Tensor(x[:, :, :5, :5], requires_grad=True)
    minialex.gradcheck(m, [xt], m.named_parameters(), **GRADCHECK)


# -- validation -----------------------------------------------------------------------------
def _args(x=(2, 4, 6, 6), w=(6, 2, 3, 3), b=(6,), dtype=np.float32, w_dtype=None, **kw):
    kw.setdefault("groups", 2)
    return ((Tensor(np.zeros(x, dtype)), Tensor(np.zeros(w, w_dtype or dtype)),
             None if b is None else Tensor(np.zeros(b, dtype))), kw)


@pytest.mark.parametrize("args, error, match", [
    (_args(x=(4, 6, 6)), ValueError, r"input must be \(N, C, H, W\), got shape \(4, 6, 6\)"),
    (_args(w=(6, 2, 3)), ValueError,
     r"weight must be \(OC, C/groups, KH, KW\), got shape \(6, 2, 3\)"),
    (_args(x=(2, 5, 6, 6)), ValueError, r"input has 5 channels, not divisible by groups=2"),
    (_args(w=(5, 2, 3, 3), b=(5,)), ValueError,
     r"weight has 5 out_channels, not divisible by groups=2"),
    (_args(w=(6, 3, 3, 3)), ValueError,
     r"weight \(6, 3, 3, 3\) expects in_channels/groups = 3 .* input \(2, 4, 6, 6\) has 4 "),
    (_args(b=(5,)), ValueError, r"bias must have shape \(6,\) .* got \(5,\)"),
    (_args(b=(6, 1)), ValueError, r"bias must be \(OC,\), got shape \(6, 1\)"),
    (_args(w=(6, 2, 7, 3)), ValueError, r"kernel \(7, 3\) is larger than the padded input"),
    (_args(w=(6, 2, 9, 3), padding=1), ValueError,
     r"kernel \(9, 3\) is larger than the padded input \(8, 8\)"),
    (_args(stride=0), ValueError, r"stride must be >= 1, got \(0, 0\)"),
    (_args(stride=(1, -1)), ValueError, r"stride must be >= 1"),
    (_args(padding=-1), ValueError, r"padding must be >= 0, got \(-1, -1\)"),
    (_args(stride=1.5), TypeError, r"stride must be an int or a pair of ints, got 1.5"),
    (_args(padding=(1, 2, 3)), TypeError, r"padding must be an int or a pair"),
    (_args(groups=0), ValueError, r"groups must be a positive int, got 0"),
    (_args(w_dtype=np.float64), TypeError, r"input is float32 but weight is float64"),
    (_args(dtype=np.int64), TypeError, r"input must be floating point, got dtype int64"),
])
def test_conv2d_validation_errors(args, error, match):
    (x, w, b), kw = args
    with pytest.raises(error, match="conv2d: " + match):
        conv2d(x, w, b, **kw)


def test_conv2d_bias_dtype_mismatch():
    x, w = Tensor(np.zeros((1, 2, 4, 4), np.float32)), Tensor(np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d: input is float32 but bias is float64"):
        conv2d(x, w, Tensor(np.zeros(2)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=5, out_channels=4, kernel_size=3, groups=2), "in_channels=5 is not div"),
    (dict(in_channels=4, out_channels=5, kernel_size=3, groups=2), "out_channels=5 is not div"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels must be a positive int"),
    (dict(in_channels=4, out_channels=4, kernel_size=0),
     r"kernel_size must be >= 1, got \(0, 0\)"),
])
def test_conv2d_module_validation(kwargs, match):
    with pytest.raises(ValueError, match="Conv2d: " + match):
        Conv2d(**kwargs)


# -- optional cross-check with PyTorch (not required: the loop references are the oracle) ---
@pytest.mark.parametrize("config", CONFIGS)
def test_conv2d_matches_torch(config):
    torch = pytest.importorskip("torch")
    x, w, b, kw = make(config)
    xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
    y = conv2d(xt, wt, bt, **kw)
    gy = np.random.default_rng(3).standard_normal(y.shape)
    y.backward(gy)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, **kw)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[np.float64])
    for mine, theirs in ((xt, tx), (wt, tw), (bt, tb)):
        np.testing.assert_allclose(mine.grad, theirs.grad.numpy(), **TOL[np.float64])
