"""minialex/cuda.py, the CuPy glue, as far as it can be run without CuPy or a GPU.

The core test replaces CuPy by NumPy (``empty`` returning poisoned buffers) and each compiled
kernel by the same kernel built for the host (host_build.py), which refuses any argument whose
type differs from the kernel's C signature. Every op of minialex.cuda then runs end to end
(shapes, argument order and types, work-item counts, the capped grid with its grid-stride loop)
and must agree with minialex's NumPy path. What stays unchecked here is CuPy itself: NVRTC
compiling the files, the real launch, and cuBLAS (only the GEMM's column-major arithmetic is
checked, against a reference BLAS written below).
"""
import subprocess
import sys
import types

import numpy as np
import pytest

from minialex import backend, cuda
from minialex.layers.activation import _relu_backward_cpu
from minialex.layers.conv import _bias_add_nchw_cpu, _col2im_cpu, _im2col_cpu
from minialex.layers.dropout import _dropout_forward_cpu
from minialex.layers.lrn import (
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_K,
    PAPER_SIZE,
    _lrn_backward_cpu,
    _lrn_forward_cpu,
)
from minialex.layers.pool import _max_pool_backward_cpu, _max_pool_forward_cpu

import host_build
from conftest import TOL, shuffled_linspace

DTYPES = [np.float32, np.float64]
PAPER_LRN = (PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K)  # size, alpha, beta, k (Sec. 3.3)
CONTRACT = ["im2col", "col2im", "bias_add_nchw", "max_pool_forward", "max_pool_backward",
            "lrn_forward", "lrn_backward", "relu_backward", "dropout_forward", "gemm",
            "set_tf32", "tf32_enabled"]


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return host_build.load(tmp_path_factory)


# -- importing, finding the kernel files --------------------------------------------------------
def test_importing_minialex_cuda_does_not_import_cupy():
    # The layer files import minialex.cuda at the top, so importing minialex must stay CuPy-free.
    code = ("import sys, minialex, minialex.cuda\n"
            "assert 'cupy' not in sys.modules, 'cupy was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=host_build.REPO)
    assert done.returncode == 0, done.stderr


def test_the_contract_functions_exist():
    assert [name for name in CONTRACT if not callable(getattr(cuda, name, None))] == []


def test_kernel_files_are_found_in_the_checkout():
    assert cuda.kernel_dir() == host_build.KERNEL_DIR
    for op, file_name in cuda.KERNEL_FILES.items():
        signatures = host_build.kernel_signatures(cuda.kernel_source(file_name))
        assert {f"{op}_f32", f"{op}_f64"} <= set(signatures), f"{op} is not in {file_name}"


def test_every_kernel_in_the_files_has_an_op():
    exported = {name for path in host_build.KERNEL_DIR.glob("*.cu")
                for name in host_build.kernel_signatures(path.read_text())}
    assert exported == {f"{op}_{s}" for op in cuda.KERNEL_FILES for s in ("f32", "f64")}


def test_kernel_name_takes_float32_and_float64_only():
    assert cuda.kernel_name("im2col", np.float64) == "im2col_f64"
    with pytest.raises(TypeError, match="float32 or float64.*float16"):
        cuda.kernel_name("im2col", np.float16)


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_ops_raise_the_backend_error_without_a_gpu():
    x = np.zeros((1, 1, 3, 3), dtype=np.float32)
    for call in (lambda: cuda.im2col(x, 1, 1, 1, 1, 0, 0),
                 lambda: cuda.lrn_forward(x, *PAPER_LRN),
                 lambda: cuda.gemm(x[0, 0], x[0, 0])):
        with pytest.raises(RuntimeError, match="a GPU was asked for but cannot be used"):
            call()


# -- the ops, with NumPy standing in for CuPy and host-built kernels for the compiled ones ------
class FakeCupy:
    """The part of the CuPy API the kernel ops use, on NumPy; new buffers are NaN-poisoned."""

    ascontiguousarray = staticmethod(np.ascontiguousarray)

    @staticmethod
    def empty(shape, dtype):
        return np.full(shape, -7 if np.dtype(dtype) == np.int32 else np.nan, dtype=dtype)

    @staticmethod
    def empty_like(a):
        return FakeCupy.empty(a.shape, a.dtype)


GRID_CAP = 3  # blocks: small, so most calls run several grid-stride rounds


@pytest.fixture
def on_host(kernels, monkeypatch):
    """minialex.cuda running its kernels on the host build; returns the launches it made."""
    launches = []

    def get_kernel(name):
        def launch(grid, block, args):
            assert isinstance(grid, tuple) and isinstance(block, tuple)
            assert all(type(v) is int and v > 0 for v in grid + block), (grid, block)
            assert block == (cuda.BLOCK,) and grid[0] <= GRID_CAP
            launches.append((name, grid, block))
            kernels(name, *args, launch=(grid[0], block[0]))
        return launch

    monkeypatch.setattr(backend, "require_cupy", lambda: FakeCupy)
    monkeypatch.setattr(cuda, "_get_kernel", get_kernel)
    monkeypatch.setattr(cuda, "_max_blocks", lambda: GRID_CAP)
    return launches


def random(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_convolution_ops(on_host, dtype):
    x = random((2, 3, 9, 8), dtype)
    window = (3, 2, 2, 1, 1, 2)  # KH, KW, SH, SW, PH, PW
    col = cuda.im2col(x, *window)
    np.testing.assert_array_equal(col, _im2col_cpu(x, *window))
    gcol = random(col.shape, dtype, seed=1)
    assert_close(cuda.col2im(gcol, x.shape, *window), _col2im_cpu(gcol, x.shape, *window), dtype)
    Y, b = random((5, 2 * 4 * 6), dtype), random(5, dtype, seed=2)
    for bias in (b, None):
        np.testing.assert_array_equal(cuda.bias_add_nchw(Y, bias, 2, 4, 6),
                                      _bias_add_nchw_cpu(Y, bias, 2, 4, 6))
    assert [name for name, _, _ in on_host] == [
        f"{op}_{'f32' if dtype == np.float32 else 'f64'}"
        for op in ("im2col", "col2im", "bias_add_nchw", "bias_add_nchw")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_ops(on_host, dtype):
    x = shuffled_linspace((2, 3, 13, 11), dtype)
    window = (3, 2, 2, 1, 1, 1)  # KH != KW and SH != SW, so a swapped pair shows
    y, argmax = cuda.max_pool_forward(x, *window)
    expected_y, expected_argmax = _max_pool_forward_cpu(x, *window)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert argmax.dtype == np.int32
    gy = random(y.shape, dtype)
    assert_close(cuda.max_pool_backward(gy, argmax, x.shape, *window),
                 _max_pool_backward_cpu(gy, argmax, x.shape, *window), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lrn_ops(on_host, dtype):
    x, gy = random((2, 7, 5, 4), dtype) * 3, random((2, 7, 5, 4), dtype, seed=1)
    options = (4, 0.5, 0.75, 1.5)  # size, alpha, beta, k
    y, scale = cuda.lrn_forward(x, *options)
    expected_y, expected_scale = _lrn_forward_cpu(x, *options)
    assert_close(y, expected_y, dtype)
    assert_close(scale, expected_scale, dtype)
    assert_close(cuda.lrn_backward(x, y, scale, gy, *options[:3]),
                 _lrn_backward_cpu(x, y, scale, gy, *options[:3]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops(on_host, dtype):
    rng = np.random.default_rng(0)
    y = np.maximum(rng.integers(-2, 3, (4, 300)), 0).astype(dtype)
    gy = random(y.shape, dtype)
    np.testing.assert_array_equal(cuda.relu_backward(y, gy), _relu_backward_cpu(y, gy))
    u = rng.random(gy.shape, dtype=dtype)
    for got, expected in zip(cuda.dropout_forward(gy, u, 0.5, 2.0),
                             _dropout_forward_cpu(gy, u, 0.5, 2.0)):
        np.testing.assert_array_equal(got, expected)


def test_non_contiguous_inputs_are_made_contiguous(on_host):
    x = random((2, 9, 3, 8), np.float64).transpose(0, 3, 2, 1)  # (2, 8, 3, 9), strided
    np.testing.assert_array_equal(cuda.im2col(x, 2, 2, 1, 1, 0, 0),
                                  _im2col_cpu(np.ascontiguousarray(x), 2, 2, 1, 1, 0, 0))


def test_mismatched_dtypes_are_refused(on_host):
    y, gy = np.ones(4, np.float32), np.ones(4, np.float64)
    with pytest.raises(TypeError, match="relu_backward: y is float32 but the input is float64"):
        cuda.relu_backward(y, gy)


def assert_close(actual, expected, dtype):
    np.testing.assert_allclose(actual, expected, **TOL[dtype])


# -- launch sizes and the memoised loader ---------------------------------------------------------
def test_launch_grid_is_capped_and_empty_work_launches_nothing(monkeypatch):
    calls = []
    monkeypatch.setattr(cuda, "_get_kernel", lambda name: lambda *a: calls.append((name, *a)))
    monkeypatch.setattr(cuda, "_max_blocks", lambda: 10)
    for n in (1, 256, 257, 1000, 10**7, 0):
        cuda._launch("relu_backward", np.float32, n, ("args",))
    assert [grid for _, grid, _, _ in calls] == [(1,), (1,), (2,), (4,), (10,)]
    assert {(name, block, args) for name, _, block, args in calls} == {
        ("relu_backward_f32", (256,), ("args",))}


def test_each_op_launches_one_work_item_per_loop_iteration(monkeypatch):
    """n sets the grid size: the number of output elements, or of (n, h, w) positions for LRN,
    whose threads walk the channels."""
    counts = []
    monkeypatch.setattr(backend, "require_cupy", lambda: FakeCupy)
    monkeypatch.setattr(cuda, "_launch", lambda op, dtype, n, args: counts.append((op, n)))
    x = np.zeros((2, 3, 7, 6))
    cuda.im2col(x, 3, 2, 2, 1, 1, 0)  # col (3*3*2, 2*4*5)
    cuda.col2im(np.zeros((18, 40)), x.shape, 3, 2, 2, 1, 1, 0)
    cuda.bias_add_nchw(np.zeros((5, 40)), None, 2, 4, 5)
    cuda.max_pool_forward(x, 3, 2, 2, 1, 1, 0)
    cuda.max_pool_backward(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5), np.int32), x.shape,
                           3, 2, 2, 1, 1, 0)
    cuda.lrn_forward(x, *PAPER_LRN)
    cuda.lrn_backward(x, x, x, x, *PAPER_LRN[:3])
    cuda.relu_backward(x, x)
    cuda.dropout_forward(x, x, 0.5, 2.0)
    assert counts == [("im2col", 18 * 40), ("col2im", x.size), ("bias_add_nchw", 2 * 5 * 20),
                      ("max_pool_forward", 2 * 3 * 20), ("max_pool_backward", x.size),
                      ("lrn_forward", 2 * 7 * 6), ("lrn_backward", 2 * 7 * 6),
                      ("relu_backward", x.size), ("dropout_forward", x.size)]


def test_loader_compiles_each_file_once_and_memoises_kernels(monkeypatch):
    made = []

    class RawModule:
        def __init__(self, *, code):
            made.append(code)

        def get_function(self, name):
            return ("kernel", name, len(made))

    fake = types.SimpleNamespace(RawModule=RawModule)
    monkeypatch.setattr(backend, "require_cupy", lambda: fake)
    monkeypatch.setattr(cuda, "_modules", {})
    monkeypatch.setattr(cuda, "_kernels", {})
    first = cuda._get_kernel("im2col_f32")
    assert cuda._get_kernel("col2im_f64") == ("kernel", "col2im_f64", 1)
    assert cuda._get_kernel("im2col_f32") is first
    cuda._get_kernel("lrn_forward_f32")
    assert made == [cuda.kernel_source("im2col.cu"), cuda.kernel_source("lrn.cu")]


# -- GEMM: the column-major arithmetic, and the TF32 switch ---------------------------------------
def column_major_gemm(first_transposed, second_transposed, m, n, k, A, lda, B, ldb, ldc):
    """Reference BLAS gemm (alpha 1, beta 0) on flat buffers read column-major: element (i, j)
    of a matrix with leading dimension ld is at flat[i + j*ld]."""
    def read(flat, rows, cols, ld):
        return np.array([[flat[i + j * ld] for j in range(cols)] for i in range(rows)])

    opA = read(A, k, m, lda).T if first_transposed else read(A, m, k, lda)
    opB = read(B, n, k, ldb).T if second_transposed else read(B, k, n, ldb)
    C, product = np.zeros(ldc * n), opA @ opB
    for i, j in np.ndindex(m, n):
        C[i + j * ldc] = product[i, j]
    return C


@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
def test_gemm_plan_computes_the_row_major_product(transa, transb):
    rng = np.random.default_rng(0)
    M, K, N = 3, 4, 5
    a = rng.standard_normal((K, M) if transa else (M, K))
    b = rng.standard_normal((N, K) if transb else (K, N))
    plan = cuda.cublas_gemm_plan(a.shape, b.shape, transa, transb)
    C = column_major_gemm(plan["first_transposed"], plan["second_transposed"], plan["m"],
                          plan["n"], plan["k"], b.ravel(), plan["lda"], a.ravel(), plan["ldb"],
                          plan["ldc"])
    expected = (a.T if transa else a) @ (b.T if transb else b)
    np.testing.assert_allclose(C.reshape(M, N), expected, **TOL["float64_exact"])


def test_gemm_plan_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"op\(a\) is \(2, 3\) but op\(b\) is \(4, 5\)"):
        cuda.cublas_gemm_plan((2, 3), (4, 5))


def test_gemm_uses_an_f_contiguous_operand_in_place():
    a = np.arange(6.0).reshape(2, 3)
    used, transposed = cuda._gemm_operand(np, a.T, False)
    assert np.shares_memory(used, a) and used.flags.c_contiguous
    np.testing.assert_array_equal(used, a)
    assert transposed is True
    assert cuda._gemm_operand(np, a, True) == (a, True)


def test_tf32_is_off_by_default_and_switchable():
    assert cuda.tf32_enabled() is False
    try:
        cuda.set_tf32(True)
        assert cuda.tf32_enabled() is True
    finally:
        cuda.set_tf32(False)
    with pytest.raises(TypeError, match="True or False"):
        cuda.set_tf32(1)
