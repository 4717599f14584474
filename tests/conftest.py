"""Shared test settings: tolerances per dtype, the device fixture, tie-free inputs."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import minialex
from minialex import backend

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
}
# Central differences in float64 with eps=1e-6 carry ~1e-9 truncation/rounding error.
GRADCHECK = dict(eps=1e-6, atol=1e-7, rtol=1e-5)


def _gpu_skip_reason():
    if backend.gpu_available():
        return None
    backend.gpu_available()
    return "no usable GPU here: " + (backend._cupy_error or "unknown reason")


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """Runs a test on the CPU, and again on the GPU where one is usable (skipped with why not)."""
    if request.param == "gpu":
        reason = _gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@pytest.fixture
def gpu():
    """For GPU-only tests: skips with the reason when no GPU can be used."""
    reason = _gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    return "gpu"


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
        if "gpu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
