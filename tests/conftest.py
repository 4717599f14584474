"""Shared test settings: tolerances per dtype, the device fixture, tie-free inputs."""
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minialex
from minialex import backend, cuda

import cupy_standin
import host_build

# CI runs on 2 cores within minutes: few but varied hypothesis draws; locally the same.
settings.register_profile("default", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("MINIALEX_HYPOTHESIS", "default"))

# One table of tolerances: a row per dtype for comparing two computations of the same values, then
# named rows where a comparison needs other bounds, each with why. Tests take a row, never a number.
TOL = {
    np.float32: dict(atol=1e-5, rtol=1e-4),
    np.float64: dict(atol=1e-10, rtol=1e-10),
    # float64, the same arithmetic in another order or form (im2col + GEMM against loops, adjoint
    # identities, cuBLAS's column-major call, a PCA rebuilt, hand-worked decimals): ~1e-16 an op.
    "float64_exact": dict(atol=1e-12, rtol=1e-12),
    # float32 against a float64 reference where values go down to 1e-6 (LRN's k, small
    # eigenvalues): relative only, a few float32 roundings (eps 1.2e-7); an atol would hide them.
    "float32_relative": dict(atol=0, rtol=1e-6),
    # float32 values of order 1 that may cancel to ~0 (normalised pixels, row sums of softmax -
    # onehot, a weight one step from 1, a rebuilt covariance): a few float32 ulps at 1 (1.2e-7).
    "float32_unit": dict(atol=1e-6, rtol=0),
    # float32 images and means in grey levels 0..255: the float32 ulp at 255 is 1.5e-5.
    "grey_levels": dict(atol=1e-4, rtol=0),
    # float64 central differences (GRADCHECK's eps) of one smooth kernel on O(1) inputs: ~1e-10
    # truncation and rounding. GRADCHECK below is looser because it covers every op.
    "central_differences": dict(atol=1e-8, rtol=1e-6),
    # two frameworks training the same float32 net on the same batches: their summation orders
    # differ (~1e-7 a step) and SGD carries the difference forward for a dozen steps.
    "float32_training": dict(atol=0, rtol=1e-3),
    # one float64 net trained by one process and by several sharing each batch: the gradients'
    # sums are split and added in another order (~1e-16), amplified over ten SGD steps.
    "data_parallel": dict(atol=1e-12, rtol=1e-9),
    # the same in float32 at a learning rate small enough that no ReLU or max-pool switch flips
    # in ten steps: the rounding (1e-7) stays put; atol for the biases, which start near 1e-3.
    "data_parallel_float32": dict(atol=1e-7, rtol=1e-5),
}
# Central differences in float64 with eps=1e-6 carry ~1e-9 truncation/rounding error.
GRADCHECK = dict(eps=1e-6, atol=1e-7, rtol=1e-5)


STANDIN_TESTS = {}   # node id -> outcome of each test that ran on the CuPy stand-in
REAL_GPU_TESTS = {}  # node id -> outcome of each GPU test that ran on real CuPy
STANDIN_RUNS = []    # lines from the example run as a script under the stand-in


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """kernels/*.cu built for the host once per session (skips without a C++ compiler)."""
    return host_build.load(tmp_path_factory)


def _use_a_gpu(request, monkeypatch):
    """Real CuPy where a GPU is usable; else the CuPy stand-in (tests/cupy_standin.py), installed
    as ``cupy`` for this test only, with minialex's cached CuPy state reset around it."""
    if backend.gpu_available():
        REAL_GPU_TESTS[request.node.nodeid] = None
        return
    cupy_standin.use_host_kernels(request.getfixturevalue("host_kernels"))
    monkeypatch.setitem(sys.modules, "cupy", cupy_standin.module())
    for name, value in (("_cupy", None), ("_cupy_error", None), ("_rngs", {})):
        monkeypatch.setattr(backend, name, value)
    for name in ("_modules", "_kernels", "_max_blocks_of"):
        monkeypatch.setattr(cuda, name, {})
    assert backend.gpu_available(), backend._cupy_error
    STANDIN_TESTS[request.node.nodeid] = None


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """Runs a test on the CPU, and again on the GPU: real CuPy where a GPU is usable, else the
    CuPy stand-in."""
    if request.param == "gpu":
        _use_a_gpu(request, monkeypatch)
    return request.param


@pytest.fixture
def gpu(request, monkeypatch):
    """For GPU-only tests: real CuPy where a GPU is usable, else the CuPy stand-in."""
    _use_a_gpu(request, monkeypatch)
    return "gpu"


@pytest.fixture
def standin(request, monkeypatch):
    """The CuPy stand-in even where a GPU is usable: for tests of placement on two devices,
    and of transfer counts, that real CuPy cannot show on one GPU."""
    if backend.gpu_available():
        pytest.skip("placement and transfer counts are shown on the CuPy stand-in")
    _use_a_gpu(request, monkeypatch)
    return sys.modules["cupy"]


@pytest.fixture(autouse=True)
def _seed():
    minialex.manual_seed(0)


def shuffled_linspace(shape, dtype=np.float64, seed=0):
    """Distinct values in random order: no ties, so max-pool's arg-max is unique."""
    n = int(np.prod(shape))
    values = np.linspace(-1.0, 1.0, n, dtype=dtype)
    np.random.default_rng(seed).shuffle(values)
    return values.reshape(shape)


def pytest_collection_modifyitems(items):
    """Tests that take the ``gpu`` fixture are ``gpu`` tests: ``pytest -m gpu`` selects them."""
    for item in items:
        if {"gpu", "standin"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gpu)


def pytest_runtest_logreport(report):
    for record in (STANDIN_TESTS, REAL_GPU_TESTS):
        if report.nodeid in record and (report.when == "call" or report.outcome != "passed"):
            if record[report.nodeid] in (None, "passed"):
                record[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter):
    """How many GPU tests ran, and on what: the stand-in in CI, real CuPy on a GPU."""
    for record, where in ((STANDIN_TESTS, "on the CuPy stand-in (tests/cupy_standin.py)"),
                          (REAL_GPU_TESTS, "on real CuPy")):
        if record:
            outcomes = list(record.values())
            terminalreporter.write_line(
                f"{len(record)} gpu tests ran {where}: {outcomes.count('passed')} passed, "
                f"{outcomes.count('failed')} failed, {outcomes.count('skipped')} skipped")
    for line in STANDIN_RUNS:
        terminalreporter.write_line(line)
