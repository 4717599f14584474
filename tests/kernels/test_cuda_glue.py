"""minialex/cuda.py, the CuPy glue, as far as it can be run without a GPU.

The ops run on the CuPy stand-in (tests/cupy_standin.py): NumPy arrays under CuPy's rules, fresh
buffers poisoned, and each compiled kernel replaced by the same kernel built for the host
(host_build.py), which refuses any argument whose type differs from the kernel's C signature as
CuPy would pass it. Every op of minialex.cuda then runs end to end (shapes, argument order and
types, work-item counts, the capped grid with its grid-stride loop replayed thread by thread) and
must agree with the plain NumPy version in the layer files; GEMM goes through the stand-in's
column-major ``gemmEx``. The last section checks CuPy's rules themselves: on real CuPy where a GPU
is usable, and the stand-in's own checks. What stays unchecked here is CuPy itself: NVRTC compiling
the files, the real launch, and cuBLAS.
"""
import inspect
import subprocess
import sys
import types

import numpy as np
import pytest

from minialex import backend, cpu, cuda
from minialex.layers.activation import relu_backward
from minialex.layers.conv import col2im, im2col
from minialex.layers.dropout import dropout_forward
from minialex.layers.lrn import (
    PAPER_ALPHA,
    PAPER_BETA,
    PAPER_K,
    PAPER_SIZE,
    lrn_backward,
    lrn_forward,
)
from minialex.layers.pool import max_pool_backward, max_pool_forward

import cupy_standin
import host_build
from conftest import TOL, shuffled_linspace

DTYPES = [np.float32, np.float64]
PAPER_LRN = (PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K)  # size, alpha, beta, k (Sec. 3.3)
CONTRACT = ["conv2d_forward", "conv2d_backward", "im2col", "col2im", "bias_add_nchw",
            "max_pool_forward", "max_pool_backward", "lrn_forward", "lrn_backward",
            "relu_forward", "relu_backward", "dropout_forward", "gemm", "set_tf32",
            "tf32_enabled"]
# The ops a layer picks in one line, ``cuda.X if is_gpu_array(x) else cpu.X``: same signature.
SIBLINGS = ["conv2d_forward", "conv2d_backward", "max_pool_forward", "max_pool_backward",
            "relu_forward", "relu_backward"]


@pytest.fixture(scope="module")
def kernels(host_kernels):
    """The session's host build of kernels/*.cu (conftest.py)."""
    return host_kernels


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


@pytest.mark.parametrize("name", SIBLINGS)
def test_cpu_and_cuda_siblings_take_the_same_arguments(name):
    cpu_parameters = list(inspect.signature(getattr(cpu, name)).parameters.values())
    cuda_parameters = list(inspect.signature(getattr(cuda, name)).parameters.values())
    # the name of what backward gets back from forward differs (x on the CPU, col on the GPU)
    assert [(p.kind, p.default) for p in cpu_parameters] == \
        [(p.kind, p.default) for p in cuda_parameters]
    differing = [(a.name, b.name) for a, b in zip(cpu_parameters, cuda_parameters)
                 if a.name != b.name]
    assert differing in ([], [("x", "col")]), differing


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


# -- the ops on the CuPy stand-in (tests/cupy_standin.py), kernels built for the host ------------
GRID_CAP = 3  # blocks: small, so most calls run several grid-stride rounds


@pytest.fixture
def on_host(standin, kernels, monkeypatch):
    """minialex.cuda on the CuPy stand-in, each launch replayed thread by thread on a grid capped
    at GRID_CAP blocks; returns the stand-in's log of launches."""
    cupy_standin.use_host_kernels(kernels, replay=True)
    monkeypatch.setattr(cuda, "_max_blocks", lambda: GRID_CAP)
    return standin.LAUNCHES


def dev(*arrays):
    """Host arrays copied to the (stand-in) device."""
    cupy = backend.require_cupy()
    copies = tuple(cupy.asarray(a) for a in arrays)
    return copies if len(copies) > 1 else copies[0]


def random(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_convolution_ops(on_host, dtype):
    x = random((2, 3, 9, 8), dtype)
    window = (3, 2, 2, 1, 1, 2)  # KH, KW, SH, SW, PH, PW
    col = cuda.im2col(dev(x), *window)
    np.testing.assert_array_equal(col.get(), im2col(x, *window))
    gcol = random(col.shape, dtype, seed=1)
    assert_close(cuda.col2im(dev(gcol), x.shape, *window).get(),
                 col2im(gcol, x.shape, *window), dtype)
    Y, b = random((5, 2 * 4 * 6), dtype), random(5, dtype, seed=2)
    y_nchw = Y.reshape(5, 2, 4, 6).transpose(1, 0, 2, 3)  # (OC, N*OH*OW) -> (N, OC, OH, OW)
    for bias, expected in ((b, y_nchw + b[:, None, None]), (None, y_nchw)):
        np.testing.assert_array_equal(
            cuda.bias_add_nchw(dev(Y), None if bias is None else dev(bias), 2, 4, 6).get(),
            expected)
    assert [name for name, _, _ in on_host] == [
        f"{op}_{'f32' if dtype == np.float32 else 'f64'}"
        for op in ("im2col", "col2im", "bias_add_nchw", "bias_add_nchw")]
    assert {block for _, _, block in on_host} == {(cuda.BLOCK,)}
    assert max(grid for _, grid, _ in on_host) == (GRID_CAP,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_ops(on_host, dtype):
    x = shuffled_linspace((2, 3, 13, 11), dtype)
    window = (3, 2, 2, 1, 1, 1)  # KH != KW and SH != SW, so a swapped pair shows
    y, argmax = cuda.max_pool_forward(dev(x), *window)
    expected_y, expected_argmax = max_pool_forward(x, *window)
    np.testing.assert_array_equal(y.get(), expected_y)
    np.testing.assert_array_equal(argmax.get(), expected_argmax)
    assert argmax.dtype == np.int32
    gy = random(y.shape, dtype)
    assert_close(cuda.max_pool_backward(dev(gy), argmax, x.shape, *window).get(),
                 max_pool_backward(gy, argmax.get(), x.shape, *window), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lrn_ops(on_host, dtype):
    x, gy = random((2, 7, 5, 4), dtype) * 3, random((2, 7, 5, 4), dtype, seed=1)
    options = (4, 0.5, 0.75, 1.5)  # size, alpha, beta, k
    y, scale = cuda.lrn_forward(dev(x), *options)
    expected_y, expected_scale = lrn_forward(x, *options)
    assert_close(y.get(), expected_y, dtype)
    assert_close(scale.get(), expected_scale, dtype)
    assert_close(cuda.lrn_backward(*dev(x, y.get(), scale.get(), gy), *options[:3]).get(),
                 lrn_backward(x, y.get(), scale.get(), gy, *options[:3]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops(on_host, dtype):
    rng = np.random.default_rng(0)
    y = np.maximum(rng.integers(-2, 3, (4, 300)), 0).astype(dtype)
    gy = random(y.shape, dtype)
    np.testing.assert_array_equal(cuda.relu_backward(*dev(y, gy)).get(),
                                  relu_backward(y, gy))
    u = rng.random(gy.shape, dtype=dtype)
    for got, expected in zip(cuda.dropout_forward(*dev(gy, u), 0.5, 2.0),
                             dropout_forward(gy, u, 0.5, 2.0)):
        np.testing.assert_array_equal(got.get(), expected)


def test_non_contiguous_inputs_are_made_contiguous(on_host):
    x = random((2, 9, 3, 8), np.float64)
    strided = dev(x).transpose(0, 3, 2, 1)  # (2, 8, 3, 9), strided
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(
        cuda.im2col(strided, 2, 2, 1, 1, 0, 0).get(),
        im2col(np.ascontiguousarray(x.transpose(0, 3, 2, 1)), 2, 2, 1, 1, 0, 0))


def test_mismatched_dtypes_are_refused(on_host):
    y, gy = dev(np.ones(4, np.float32), np.ones(4, np.float64))
    with pytest.raises(TypeError, match="relu_backward: y is float32 but the input is float64"):
        cuda.relu_backward(y, gy)


@pytest.mark.parametrize("transa", [False, True])
@pytest.mark.parametrize("transb", [False, True])
def test_gemm_through_the_stand_ins_cublas(standin, transa, transb):
    rng = np.random.default_rng(0)
    M, K, N = 3, 4, 5
    a = rng.standard_normal((K, M) if transa else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if transb else (K, N)).astype(np.float32)
    expected = (a.T if transa else a) @ (b.T if transb else b)
    got = cuda.gemm(*dev(a, b), transa, transb)
    np.testing.assert_allclose(got.get(), expected, **TOL[np.float32])
    f_contiguous = dev(np.ascontiguousarray(a.T)).T   # used in place, its flag flipped
    np.testing.assert_allclose(cuda.gemm(f_contiguous, dev(b), transa, transb).get(), expected,
                               **TOL[np.float32])


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


def test_each_op_launches_one_work_item_per_loop_iteration(standin, monkeypatch):
    """n sets the grid size: the number of output elements, or of (n, h, w) positions for LRN,
    whose threads walk the channels."""
    counts = []
    monkeypatch.setattr(cuda, "_launch", lambda op, dtype, n, args: counts.append((op, n)))
    x = dev(np.zeros((2, 3, 7, 6)))
    cuda.im2col(x, 3, 2, 2, 1, 1, 0)  # col (3*3*2, 2*4*5)
    cuda.col2im(dev(np.zeros((18, 40))), x.shape, 3, 2, 2, 1, 1, 0)
    cuda.bias_add_nchw(dev(np.zeros((5, 40))), None, 2, 4, 5)
    cuda.max_pool_forward(x, 3, 2, 2, 1, 1, 0)
    cuda.max_pool_backward(*dev(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4, 5), np.int32)),
                           x.shape, 3, 2, 2, 1, 1, 0)
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


# -- CuPy's rules, where GPU code breaks: real CuPy on a GPU, else the stand-in ------------------
def test_device_arrays_refuse_implicit_conversion_to_numpy(gpu):
    cupy = backend.require_cupy()
    x = cupy.arange(6.0).reshape(2, 3)
    assert not isinstance(x, np.ndarray)
    for convert in (np.asarray, np.array, lambda a: np.testing.assert_array_equal(a, 0)):
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
            convert(x)
    np.testing.assert_array_equal(x.get(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(cupy.asnumpy(x), x.get())
    assert backend.to_numpy(x).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_operations_refuse_numpy_operands(gpu):
    cupy = backend.require_cupy()
    x, host = cupy.ones(3), np.ones(3)
    for operation in (lambda: x + host, lambda: host * x, lambda: cupy.maximum(x, host)):
        with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
            operation()
    with pytest.raises(TypeError):   # a typed argument of cupy.matmul: its own wording
        cupy.matmul(x, host)
    np.testing.assert_array_equal((x + np.float32(2) + 1).get(), [4, 4, 4])  # scalars are fine


def test_device_sets_where_new_arrays_are_allocated(gpu):
    cupy = backend.require_cupy()
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("one GPU: Device(1) cannot be shown")
    with cupy.cuda.Device(1):
        x = cupy.ones(3)
        assert x.device.id == 1 and cupy.cuda.runtime.getDevice() == 1
        assert cupy.asarray(np.ones(2)).device.id == 1
    assert cupy.cuda.runtime.getDevice() == 0
    assert cupy.asarray(x).device.id == 0 and x.copy().device.id == 0   # copied to device 0


def test_the_stand_in_checks_kernel_arguments_against_the_c_signature(standin):
    kernel = standin.RawModule(code=cuda.kernel_source("relu.cu")).get_function(
        "relu_backward_f32")
    y, gy = standin.ones(4, np.float32), standin.ones(4, np.float32)
    gx = standin.empty(4, np.float32)
    assert np.isnan(gx.get()).all()                       # fresh memory is poisoned
    kernel((1,), (32,), (y, gy, np.int64(4), gx))
    np.testing.assert_array_equal(gx.get(), 1)
    kernel((1,), (32,), (y, gy, 4, gx))                   # long long: a Python int is int64
    with pytest.raises(TypeError, match=r"n \(long long\) needs numpy.int64, got uint64"):
        kernel((1,), (32,), (y, gy, 2**63, gx))           # ... up to 2**63 - 1, then uint64
    with pytest.raises(TypeError, match="Unsupported type <class 'str'>"):
        kernel((1,), (32,), (y, gy, "4", gx))
    with pytest.raises(TypeError, match=r"n \(long long\) needs numpy.int64, got float64"):
        kernel((1,), (32,), (y, gy, 4.0, gx))             # a Python float is a double
    with pytest.raises(TypeError, match="Only numpy.ndarrays of size one"):
        kernel((1,), (32,), (y, np.ones(4, np.float32), np.int64(4), gx))
    lrn = standin.RawModule(code=cuda.kernel_source("lrn.cu")).get_function("lrn_forward_f32")
    x = standin.ones((1, 2, 1, 1), np.float32)
    with pytest.raises(TypeError, match=r"N \(int\) needs numpy.int32, got int64"):
        lrn((1,), (32,), (x, 1, 2, 1, 1, np.int32(5), *map(np.float32, (1, 0.75, 2)), x, x))
    with pytest.raises(TypeError, match=r"alpha \(float\) needs numpy.float32, got float64"):
        lrn((1,), (32,), (x, *map(np.int32, (1, 2, 1, 1, 5)), 1e-4, *map(np.float32, (0.75, 2)),
                          x, x))


@pytest.mark.parametrize("grid, block", [((1,), (2048,)), ((1,), (32, 64)), ((0,), (256,)),
                                         ((2**31,), (256,)), ((1, 70000), (256,))])
def test_the_stand_in_refuses_launches_over_cudas_limits(standin, grid, block):
    kernel = standin.RawModule(code=cuda.kernel_source("relu.cu")).get_function(
        "relu_backward_f32")
    y = standin.ones(4, np.float32)
    with pytest.raises(RuntimeError, match="CUDA_ERROR_INVALID_VALUE"):
        kernel(grid, block, (y, y, np.int64(4), y))
    with pytest.raises(TypeError, match="must be tuples"):
        kernel(1, 256, (y, y, np.int64(4), y))


def test_the_stand_in_has_only_what_cupy_exports(standin):
    assert standin.take_along_axis is not None
    for missing in ("histogram_bin_edges", "float128"):   # NumPy names CuPy does not export
        with pytest.raises(AttributeError, match=f"module 'cupy' has no attribute '{missing}'"):
            getattr(standin, missing)


def test_the_stand_in_keeps_arrays_on_their_device(standin):
    with standin.cuda.Device(1):
        x = standin.ones(3)
        rng = standin.random.default_rng(0)
    with pytest.raises(ValueError, match=r"resides \(1\) is different from the current device "
                                         r"\(0\)"):
        x + 1
    with pytest.raises(ValueError, match="Peer access is unavailable"):
        rng.random(3)
    assert x.reshape(3, 1).device.id == 1          # a view runs no kernel
    a = standin.ones((2, 2), np.float32)
    with standin.cuda.Device(1), pytest.raises(RuntimeError, match="not on the current device"):
        cuda.gemm(a, a)
