"""Tests for the CPU thread helpers in minialex/layers/_common.py: every piece runs once, a
worker's error reaches the caller, and the blocked GEMM equals NumPy's."""
import threading
import time

import numpy as np
import pytest

from minialex.layers import _common
from minialex.layers._common import cpu_matmul, cpu_parallel, piece_bounds

from conftest import TOL

BIG = 1 << 22  # work above cpu_parallel's inline threshold, so the workers run


@pytest.fixture
def four_threads(monkeypatch):
    """Four threads whatever this machine has, so pieces really go to several threads."""
    monkeypatch.setattr(_common, "cpu_threads", lambda: 4)


def test_cpu_parallel_runs_every_index_once_across_threads(four_threads):
    seen, threads = [], set()

    def record(start, stop):
        seen.extend(range(start, stop))
        threads.add(threading.get_ident())
        time.sleep(0.01)  # long enough that the workers get pieces before this thread ends
    cpu_parallel(record, 37, BIG)
    assert sorted(seen) == list(range(37))
    assert len(threads) > 1


def test_cpu_parallel_reraises_a_workers_error(four_threads):
    def fail_on_last(start, stop):
        if stop == 37:
            raise ValueError("piece failed")
    with pytest.raises(ValueError, match="piece failed"):
        cpu_parallel(fail_on_last, 37, BIG)


def test_piece_bounds_cover_the_range_in_order(four_threads):
    bounds = piece_bounds(37)
    assert bounds[0] == 0 and bounds[-1] == 37 and len(bounds) == 17
    assert all(lo < hi for lo, hi in zip(bounds, bounds[1:]))
    assert piece_bounds(3) == [0, 1, 2, 3]  # never more pieces than items


@pytest.mark.parametrize("shape", [(300, 40, 7), (7, 40, 300)])  # split by rows, by columns
def test_cpu_matmul_equals_numpy(four_threads, shape):
    M, K, P = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((P, K), dtype=np.float32).T  # a transposed operand, as conv passes
    out = np.full((M, P), np.nan, dtype=np.float32)
    assert cpu_matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, **TOL[np.float32])
    np.testing.assert_allclose(cpu_matmul(a, b), a @ b, **TOL[np.float32])
