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

# One table of tolerances (forward comparisons and gradient checks), per dtype.
TOL = {
    np.float32: dict(atol=1e-5, rtol=1e-4),
    np.float64: dict(atol=1e-10, rtol=1e-10),
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
