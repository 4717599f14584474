"""Every kernel of kernels/*.cu, built for the host (host_build.py), against NumPy.

Each kernel is compared, in float32 and float64, with two references: a plain loop-style NumPy
reference written here from the formulas in the layer docstrings, and the plain version in the
layer file (the reference minialex's fast CPU path is tested against too). Output buffers are
poisoned (NaN, or -7 for the int32 arg-max) so an element a kernel forgets to write fails the
comparison. Each call also replays a small multi-block launch (``launch = (blocks, threads)``),
which checks the grid-stride loops' own index arithmetic, not just their single-thread form.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.layers.activation import relu_backward
from minialex.layers.conv import col2im, im2col
from minialex.layers.dropout import dropout_forward
from minialex.layers.lrn import PAPER_ALPHA, PAPER_BETA, PAPER_K, lrn_backward, lrn_forward
from minialex.layers.pool import max_pool_backward, max_pool_forward

from conftest import GRADCHECK, TOL, shuffled_linspace

DTYPES = [np.float32, np.float64]
LAUNCHES = st.sampled_from([(1, 1), (2, 3), (3, 7)])  # (blocks, threads per block)
SEEDS = st.integers(0, 2**32 - 1)
i32, i64 = np.int32, np.int64


@pytest.fixture(scope="module")
def kernels(host_kernels):
    """The session's host build of kernels/*.cu (conftest.py)."""
    return host_kernels


def suffix(dtype):
    return "f32" if dtype == np.float32 else "f64"


def poisoned(shape, dtype=np.float64):
    """An output buffer no correct kernel leaves anything of: NaN, or -7 for int32."""
    return np.full(shape, -7 if dtype == np.int32 else np.nan, dtype=dtype)


def out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


@st.composite
def windows(draw, pooling=False):
    """(N, C, H, W, KH, KW, SH, SW, PH, PW) with at least one output row and column.

    Convolution padding goes past the kernel's reach (KH - 1), so some windows hold nothing
    but padding; pooling padding stays within half the window, as max-pool requires.
    """
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH = draw(st.integers(0, KH // 2 if pooling else KH + 1))
    PW = draw(st.integers(0, KW // 2 if pooling else KW + 1))
    H = draw(st.integers(max(1, KH - 2 * PH), 8))
    W = draw(st.integers(max(1, KW - 2 * PW), 8))
    return N, C, H, W, KH, KW, SH, SW, PH, PW


# -- plain references, from the formulas ------------------------------------------------------
def taps(H, W, KH, KW, SH, SW, PH, PW, kh, kw):
    """For offset (kh, kw): the unpadded rows h (OH,), columns w (OW,) it reads per window, and
    which (oh, ow) of them are inside the image."""
    h = np.arange(out_size(H, KH, SH, PH)) * SH + kh - PH
    w = np.arange(out_size(W, KW, SW, PW)) * SW + kw - PW
    inside = ((h >= 0) & (h < H))[:, None] & ((w >= 0) & (w < W))[None, :]
    return h, w, inside


def im2col_reference(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    col = np.zeros((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for c, kh, kw in np.ndindex(C, KH, KW):
        h, w, inside = taps(H, W, KH, KW, SH, SW, PH, PW, kh, kw)
        oh, ow = np.nonzero(inside)
        col[c, kh, kw][:, oh, ow] = x[:, c, h[oh], w[ow]]
    return col.reshape(C * KH * KW, N * OH * OW)


def col2im_reference(col, x_shape, KH, KW, SH, SW, PH, PW):
    """Scatter-add every col entry onto the x element it was copied from."""
    N, C, H, W = x_shape
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    fields = col.reshape(C, KH, KW, N, OH, OW).astype(np.float64)
    gx = np.zeros(x_shape)
    for c, kh, kw in np.ndindex(C, KH, KW):
        h, w, inside = taps(H, W, KH, KW, SH, SW, PH, PW, kh, kw)
        for oh, ow in zip(*np.nonzero(inside)):
            gx[:, c, h[oh], w[ow]] += fields[c, kh, kw, :, oh, ow]
    return gx


def max_pool_reference(x, KH, KW, SH, SW, PH, PW):
    """np.argmax over each flattened (kh, kw) window returns its FIRST maximum."""
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    x_pad = np.full((N, C, H + 2 * PH, W + 2 * PW), -np.inf)
    x_pad[:, :, PH:PH + H, PW:PW + W] = x
    y, argmax = np.empty((N, C, OH, OW), dtype=x.dtype), np.empty((N, C, OH, OW), np.int32)
    for oh, ow in np.ndindex(OH, OW):
        field = x_pad[:, :, oh * SH:oh * SH + KH, ow * SW:ow * SW + KW].reshape(N, C, -1)
        argmax[:, :, oh, ow] = field.argmax(axis=2)
        y[:, :, oh, ow] = field.max(axis=2)
    return y, argmax


def max_pool_backward_reference(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x_shape
    gx_pad = np.zeros((N, C, H + 2 * PH, W + 2 * PW))
    n, c = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for oh, ow in np.ndindex(*gy.shape[2:]):
        kh, kw = np.divmod(argmax[:, :, oh, ow], KW)
        np.add.at(gx_pad, (n, c, oh * SH + kh, ow * SW + kw), gy[:, :, oh, ow])
    return gx_pad[:, :, PH:PH + H, PW:PW + W]


def lrn_window(c, C, size):
    """Channels of the window of channel c: [c - size//2, c + (size-1)//2] within [0, C)."""
    return range(max(0, c - size // 2), min(C - 1, c + (size - 1) // 2) + 1)


def lrn_reference(x, size, alpha, beta, k):
    x = x.astype(np.float64)
    C = x.shape[1]
    scale = np.stack([k + alpha * sum(x[:, j] ** 2 for j in lrn_window(c, C, size))
                      for c in range(C)], axis=1)
    return x * scale ** -beta, scale


def lrn_backward_reference(x, y, scale, gy, size, alpha, beta):
    """gx_i = gy_i scale_i^-beta - 2 alpha beta x_i sum over {j : i in window(j)} of
    gy_j y_j / scale_j, with the j found by testing membership, not by a mirrored window."""
    x, y, scale, gy = (a.astype(np.float64) for a in (x, y, scale, gy))
    C = x.shape[1]
    gx = gy * scale ** -beta
    for i in range(C):
        for j in range(C):
            if i in lrn_window(j, C, size):
                gx[:, i] -= 2 * alpha * beta * x[:, i] * gy[:, j] * y[:, j] / scale[:, j]
    return gx


# -- im2col.cu ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@given(case=windows(), launch=LAUNCHES, seed=SEEDS)
def test_im2col(kernels, dtype, case, launch, seed):
    N, C, H, W, KH, KW, SH, SW, PH, PW = case
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    x = np.random.default_rng(seed).standard_normal((N, C, H, W)).astype(dtype)
    col = poisoned((C * KH * KW, N * OH * OW), dtype)
    kernels(f"im2col_{suffix(dtype)}", x, *map(i32, case), i32(OH), i32(OW), col, launch=launch)
    np.testing.assert_array_equal(col, im2col_reference(x, KH, KW, SH, SW, PH, PW))
    np.testing.assert_array_equal(col, im2col(x, KH, KW, SH, SW, PH, PW))


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=windows(), launch=LAUNCHES, seed=SEEDS)
def test_col2im(kernels, dtype, case, launch, seed):
    N, C, H, W, KH, KW, SH, SW, PH, PW = case
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    col = np.random.default_rng(seed).standard_normal((C * KH * KW, N * OH * OW)).astype(dtype)
    gx = poisoned((N, C, H, W), dtype)
    kernels(f"col2im_{suffix(dtype)}", col, *map(i32, case), i32(OH), i32(OW), gx, launch=launch)
    assert_close(gx, col2im_reference(col, (N, C, H, W), KH, KW, SH, SW, PH, PW), dtype)
    assert_close(gx, col2im(col, (N, C, H, W), KH, KW, SH, SW, PH, PW), dtype)


@given(case=windows(), seed=SEEDS)
def test_col2im_is_the_adjoint_of_im2col(kernels, case, seed):
    """<im2col(x), col> = <x, col2im(col)> for every x and col: what makes col2im the gradient."""
    N, C, H, W, KH, KW, SH, SW, PH, PW = case
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    rng = np.random.default_rng(seed)
    x, col = rng.standard_normal((N, C, H, W)), rng.standard_normal((C * KH * KW, N * OH * OW))
    sizes = [*map(i32, case), i32(OH), i32(OW)]
    im2col_x, col2im_col = poisoned(col.shape), poisoned(x.shape)
    kernels("im2col_f64", x, *sizes, im2col_x)
    kernels("col2im_f64", col, *sizes, col2im_col)
    np.testing.assert_allclose(np.vdot(im2col_x, col), np.vdot(x, col2im_col),
                               **TOL["float64_exact"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
@given(N=st.integers(1, 3), OC=st.integers(1, 7), OH=st.integers(1, 6), OW=st.integers(1, 6),
       launch=LAUNCHES, seed=SEEDS)
def test_bias_add_nchw(kernels, dtype, with_bias, N, OC, OH, OW, launch, seed):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((OC, N * OH * OW)).astype(dtype)
    b = rng.standard_normal(OC).astype(dtype) if with_bias else None
    y = poisoned((N, OC, OH, OW), dtype)
    kernels(f"bias_add_nchw_{suffix(dtype)}", Y, b, *map(i32, (OC, N, OH, OW)), y,
            launch=launch)
    expected = np.empty((N, OC, OH, OW), dtype=dtype)
    for n, o in np.ndindex(N, OC):
        expected[n, o] = Y[o, n * OH * OW:(n + 1) * OH * OW].reshape(OH, OW)
        if with_bias:
            expected[n, o] += b[o]
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("groups", [2, 3])
@given(N=st.integers(1, 2), Cg=st.integers(1, 3), OCg=st.integers(1, 3),
       K=st.integers(1, 3), S=st.integers(1, 2), P=st.integers(0, 2), H=st.integers(3, 7),
       seed=SEEDS)
def test_grouped_conv_built_from_the_kernels(kernels, groups, N, Cg, OCg, K, S, P, H, seed):
    """Conv forward (im2col, one GEMM per group, bias_add_nchw) against a direct sum, and its
    input gradient (GEMMs, col2im) through the adjoint identity <conv(x), gy> = <x, gx>."""
    G, W = groups, H + 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, G * Cg, H, W))
    weight, b = rng.standard_normal((G * OCg, Cg, K, K)), rng.standard_normal(G * OCg)
    OH, OW = out_size(H, K, S, P), out_size(W, K, S, P)
    sizes = [*map(i32, (N, G * Cg, H, W, K, K, S, S, P, P)), i32(OH), i32(OW)]
    col = poisoned((G * Cg * K * K, N * OH * OW))
    kernels("im2col_f64", x, *sizes, col)
    w_mat = weight.reshape(G, OCg, Cg * K * K)
    col_g = col.reshape(G, Cg * K * K, -1)
    Y = np.concatenate([w_mat[g] @ col_g[g] for g in range(G)])
    y = poisoned((N, G * OCg, OH, OW))
    kernels("bias_add_nchw_f64", Y, b, *map(i32, (G * OCg, N, OH, OW)), y)

    x_pad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))
    direct = np.empty_like(y)
    for o, i, j in np.ndindex(G * OCg, OH, OW):
        g = o // OCg
        field = x_pad[:, g * Cg:(g + 1) * Cg, i * S:i * S + K, j * S:j * S + K]
        direct[:, o, i, j] = b[o] + np.einsum("ncij,cij->n", field, weight[o])
    np.testing.assert_allclose(y, direct, **TOL["float64_exact"])

    gy = rng.standard_normal(y.shape)
    gY = gy.transpose(1, 0, 2, 3).reshape(G, OCg, -1)
    gcol = np.concatenate([w_mat[g].T @ gY[g] for g in range(G)])
    gx = poisoned(x.shape)
    kernels("col2im_f64", gcol, *sizes, gx)
    y_without_bias = direct - b.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(np.vdot(y_without_bias, gy), np.vdot(x, gx),
                               **TOL["float64_exact"])


# -- pool.cu -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ties", [False, True])
@given(case=windows(pooling=True), launch=LAUNCHES, seed=SEEDS)
def test_max_pool_forward(kernels, dtype, ties, case, launch, seed):
    """Distinct values (a unique arg-max), and small integers full of ties (the first max wins)."""
    N, C, H, W, KH, KW, SH, SW, PH, PW = case
    OH, OW = out_size(H, KH, SH, PH), out_size(W, KW, SW, PW)
    if ties:
        x = np.random.default_rng(seed).integers(-2, 3, (N, C, H, W)).astype(dtype)
    else:
        x = shuffled_linspace((N, C, H, W), dtype, seed=seed)
    y, argmax = poisoned((N, C, OH, OW), dtype), poisoned((N, C, OH, OW), np.int32)
    kernels(f"max_pool_forward_{suffix(dtype)}", x, *map(i32, case), i32(OH), i32(OW), y,
            argmax, launch=launch)
    for expected_y, expected_argmax in (max_pool_reference(x, KH, KW, SH, SW, PH, PW),
                                        max_pool_forward(x, KH, KW, SH, SW, PH, PW)):
        np.testing.assert_array_equal(y, expected_y)
        np.testing.assert_array_equal(argmax, expected_argmax)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_forward_propagates_nan_like_the_numpy_path(kernels, dtype):
    x = shuffled_linspace((1, 2, 5, 5), dtype)
    x[0, 0, 0, 0] = np.nan  # first element of window (0, 0): must not hide behind later ones
    x[0, 1, 2, 3] = np.nan  # row 2 is in both window rows, column 3 only in window column 1
    case = (1, 2, 5, 5, 3, 3, 2, 2, 0, 0)
    y, argmax = poisoned((1, 2, 2, 2), dtype), poisoned((1, 2, 2, 2), np.int32)
    kernels(f"max_pool_forward_{suffix(dtype)}", x, *map(i32, case), i32(2), i32(2), y, argmax)
    expected_y, _ = max_pool_forward(x, 3, 3, 2, 2, 0, 0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected_y))
    np.testing.assert_array_equal(np.isnan(y[0]), [[[True, False], [False, False]],
                                                   [[False, True], [False, True]]])
    np.testing.assert_array_equal(y[~np.isnan(y)], expected_y[~np.isnan(expected_y)])


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=windows(pooling=True), launch=LAUNCHES, seed=SEEDS)
def test_max_pool_backward(kernels, dtype, case, launch, seed):
    N, C, H, W, KH, KW, SH, SW, PH, PW = case
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (N, C, H, W)).astype(dtype)  # ties: windows sharing an arg-max
    _, argmax = max_pool_reference(x, KH, KW, SH, SW, PH, PW)
    gy = rng.standard_normal(argmax.shape).astype(dtype)
    gx = poisoned((N, C, H, W), dtype)
    OH, OW = argmax.shape[2:]
    kernels(f"max_pool_backward_{suffix(dtype)}", gy, argmax, *map(i32, case), i32(OH),
            i32(OW), gx, launch=launch)
    assert_close(gx, max_pool_backward_reference(gy, argmax, x.shape, KH, KW, SH, SW, PH, PW),
                 dtype)
    assert_close(gx, max_pool_backward(gy, argmax, x.shape, KH, KW, SH, SW, PH, PW), dtype)


# -- lrn.cu ------------------------------------------------------------------------------------
lrn_options = dict(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 8), st.integers(1, 4), st.integers(1, 5)),
    size=st.integers(1, 7),  # even sizes too: their window reaches one channel further back
    alpha=st.sampled_from([PAPER_ALPHA, 0.3, 1.0]),  # 1.0 so that the window term really matters
    beta=st.sampled_from([PAPER_BETA, 0.5, 1.5]),
    k=st.sampled_from([PAPER_K, 1.0, 0.5]),
    launch=LAUNCHES, seed=SEEDS)


@pytest.mark.parametrize("dtype", DTYPES)
@given(**lrn_options)
def test_lrn_forward(kernels, dtype, shape, size, alpha, beta, k, launch, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype) * 2
    y, scale = poisoned(shape, dtype), poisoned(shape, dtype)
    t = np.dtype(dtype).type
    kernels(f"lrn_forward_{suffix(dtype)}", x, *map(i32, shape), i32(size), t(alpha), t(beta),
            t(k), y, scale, launch=launch)
    for expected_y, expected_scale in (lrn_reference(x, size, alpha, beta, k),
                                       lrn_forward(x, size, alpha, beta, k)):
        assert_close(scale, expected_scale, dtype)
        assert_close(y, expected_y, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(**lrn_options)
def test_lrn_backward(kernels, dtype, shape, size, alpha, beta, k, launch, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2).astype(dtype)
    y, scale = (a.astype(dtype) for a in lrn_reference(x, size, alpha, beta, k))
    gy = rng.standard_normal(shape).astype(dtype)
    gx = poisoned(shape, dtype)
    t = np.dtype(dtype).type
    kernels(f"lrn_backward_{suffix(dtype)}", x, y, scale, gy, *map(i32, shape), i32(size),
            t(alpha), t(beta), gx, launch=launch)
    assert_close(gx, lrn_backward_reference(x, y, scale, gy, size, alpha, beta), dtype)
    assert_close(gx, lrn_backward(x, y, scale, gy, size, alpha, beta), dtype)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_lrn_backward_is_the_derivative_of_lrn_forward(kernels, size):
    """The two kernels agree with each other: central differences of the forward kernel's
    sum(gy * y) match the backward kernel, in float64."""
    shape, alpha, beta, k, eps = (2, 6, 2, 3), 1.0, PAPER_BETA, 1.0, GRADCHECK["eps"]
    rng = np.random.default_rng(size)
    x, gy = rng.standard_normal(shape), rng.standard_normal(shape)
    options = (*map(i32, shape), i32(size), np.float64(alpha), np.float64(beta))

    def forward(x):
        y, scale = poisoned(shape), poisoned(shape)
        kernels("lrn_forward_f64", x, *options, np.float64(k), y, scale)
        return y, scale

    y, scale = forward(x)
    gx = poisoned(shape)
    kernels("lrn_backward_f64", x, y, scale, gy, *options, gx)
    numeric = np.empty(shape)
    for index in np.ndindex(shape):
        step = np.zeros(shape)
        step[index] = eps
        numeric[index] = (np.vdot(gy, forward(x + step)[0])
                          - np.vdot(gy, forward(x - step)[0])) / (2 * eps)
    np.testing.assert_allclose(gx, numeric, **TOL["central_differences"])


def test_lrn_window_sum_survives_a_large_channel(kernels):
    """A running window sum subtracts each channel as it leaves; a large channel followed by
    tiny ones must not leave its rounding error behind in their sums. Kept in float32, the sum
    900 + 1e-6 would lose the 1e-6 outright (float32 spacing at 900 is 6e-5), and the windows
    after channel 1 would come out as 0 or as junk of order 6e-5 instead of 3e-6."""
    x = np.full((1, 12, 1, 1), 1e-3, dtype=np.float32)
    x[0, 1] = 30.0
    y, scale = poisoned(x.shape, np.float32), poisoned(x.shape, np.float32)
    options = (*map(i32, (1, 12, 1, 1, 3)), np.float32(1.0), np.float32(PAPER_BETA))
    kernels("lrn_forward_f32", x, *options, np.float32(1e-6), y, scale)
    expected_y, expected_scale = lrn_reference(x, 3, 1.0, PAPER_BETA, 1e-6)
    np.testing.assert_allclose(scale, expected_scale, **TOL["float32_relative"])
    np.testing.assert_allclose(y, expected_y, **TOL["float32_relative"])


# -- relu.cu, dropout.cu -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@given(n=st.integers(0, 300), launch=LAUNCHES, seed=SEEDS)
def test_relu_backward(kernels, dtype, n, launch, seed):
    rng = np.random.default_rng(seed)
    y = np.maximum(rng.integers(-2, 3, n), 0).astype(dtype)  # many exact zeros: the kink
    gy = rng.standard_normal(n).astype(dtype)
    gx = poisoned(n, dtype)
    kernels(f"relu_backward_{suffix(dtype)}", y, gy, i64(n), gx, launch=launch)
    np.testing.assert_array_equal(gx, np.where(y > 0, gy, 0))
    np.testing.assert_array_equal(gx, relu_backward(y, gy))


@pytest.mark.parametrize("dtype", DTYPES)
@given(n=st.integers(0, 300), p=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
       launch=LAUNCHES, seed=SEEDS)
def test_dropout_forward(kernels, dtype, n, p, launch, seed):
    rng = np.random.default_rng(seed)
    x, u = rng.standard_normal(n).astype(dtype), rng.random(n, dtype=dtype)
    u[: n // 4] = dtype(p)  # u == p exactly: kept, since the mask is u >= p
    scale = 0.0 if p == 1 else 1 / (1 - p)
    y, mask = poisoned(n, dtype), poisoned(n, dtype)
    t = np.dtype(dtype).type
    kernels(f"dropout_forward_{suffix(dtype)}", x, u, i64(n), t(p), t(scale), y, mask,
            launch=launch)
    np.testing.assert_array_equal(mask, (u >= t(p)).astype(dtype))
    np.testing.assert_array_equal(y, x * mask * t(scale))
    sibling_y, sibling_mask = dropout_forward(x, u, p, scale)
    np.testing.assert_array_equal(mask, sibling_mask)
    np.testing.assert_array_equal(y, sibling_y)


# -- the build itself --------------------------------------------------------------------------
def test_host_build_has_no_warnings(kernels):
    noisy = {name: text for name, text in kernels.warnings.items() if text}
    assert noisy == {}, "\n".join(f"{name}:\n{text}" for name, text in noisy.items())


def test_every_kernel_exists_in_float32_and_float64(kernels):
    names = set(kernels.signatures)
    assert names, "no __global__ function found in kernels/*.cu"
    stems = {name.rsplit("_", 1)[0] for name in names}
    assert names == {f"{stem}_{s}" for stem in stems for s in ("f32", "f64")}
    for stem in stems:  # the two versions differ in their float type only
        f32, f64 = kernels.signatures[f"{stem}_f32"], kernels.signatures[f"{stem}_f64"]
        assert [(t.replace("float", "double"), p) for t, p in f32] == f64
