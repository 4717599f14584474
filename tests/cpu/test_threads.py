"""Tests for minialex/cpu/threads.py, scratch.py and gemm.py: every piece runs once, a worker's
error reaches the caller, sums are cut the same way on any machine, and the blocked GEMM equals
NumPy's."""
import threading
import time
import types

import numpy as np
import pytest

from minialex.cpu import matmul as cpu_matmul
from minialex.cpu import threads as threads_module
from minialex.cpu.threads import block_bounds, cpu_parallel, piece_bounds

from conftest import TOL

BIG = 1 << 22  # work above cpu_parallel's inline threshold, so the workers run


@pytest.fixture
def four_threads(monkeypatch):
    """Four threads whatever this machine has, so pieces really go to several threads."""
    monkeypatch.setattr(threads_module, "cpu_threads", lambda: 4)


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


def test_piece_bounds_cover_the_range_in_order_whatever_the_threads(monkeypatch):
    for threads in (1, 2, 4, 64):
        monkeypatch.setattr(threads_module, "cpu_threads", lambda: threads)
        bounds = piece_bounds(37)
        assert bounds[0] == 0 and bounds[-1] == 37 and len(bounds) == threads_module.SUM_PIECES + 1
        assert all(lo < hi for lo, hi in zip(bounds, bounds[1:]))
        assert piece_bounds(3) == [0, 1, 2, 3]  # never more pieces than items
        assert piece_bounds(0) == [0]


def test_block_bounds_keep_blocks_within_block_bytes(four_threads):
    item = threads_module.BLOCK_BYTES // 3
    assert block_bounds(9, item) == [0, 3, 6, 9]
    assert block_bounds(10, item) == [0, 2, 5, 7, 10]  # even blocks of at most 3 items
    assert block_bounds(4, 2 * threads_module.BLOCK_BYTES) == [0, 1, 2, 3, 4]  # one item at least
    assert block_bounds(0, item) == [0]
    assert len(block_bounds(64, 1, per_thread=True)) == 4 * threads_module.PIECES_PER_THREAD + 1
    assert block_bounds(64, 1) == [0, 64]


def test_per_thread_blocks_give_every_piece_of_cpu_parallel_as_many_items(four_threads):
    # 32 items needing 18 blocks: rounded up to 32 blocks (a multiple of the 16 pieces), so each
    # of cpu_parallel's pieces of blocks covers 2 items; 18 blocks would give pieces of 1 to 3
    pieces = 4 * threads_module.PIECES_PER_THREAD
    bounds = block_bounds(32, threads_module.BLOCK_BYTES * 9 // 16, per_thread=True)
    assert (len(bounds) - 1) % pieces == 0
    blocks = len(bounds) - 1
    per_piece = [bounds[blocks * (i + 1) // pieces] - bounds[blocks * i // pieces]
                 for i in range(pieces)]
    assert per_piece == [2] * pieces


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


@pytest.mark.parametrize("attempt", range(3))
def test_cpu_parallel_waits_for_every_worker_before_reraising(monkeypatch, attempt):
    """A worker's error must not reach the caller while another worker still writes into the
    call's outputs. Of 7 workers, the first to start fails at once and the others are slow;
    the caller must see the slow ones finished when the error arrives."""
    monkeypatch.setattr(threads_module, "cpu_threads", lambda: 8)
    lock, failing, finished = threading.Lock(), [], []

    def piece(start, stop):
        if threading.current_thread() is threading.main_thread():
            time.sleep(0.005)  # leaves pieces for the workers
            return
        with lock:
            failing[:] = failing or [threading.get_ident()]
        if failing[0] == threading.get_ident():
            raise ValueError("piece failed")
        time.sleep(0.02)
        finished.append(start)
    with pytest.raises(ValueError, match="piece failed"):
        cpu_parallel(piece, 32, BIG)
    count = len(finished)
    time.sleep(0.2)
    assert len(finished) == count  # nothing still running after the call returned


def test_cpu_parallel_shuts_down_a_pool_it_outgrows(monkeypatch):
    monkeypatch.setattr(threads_module, "_pool", None)
    monkeypatch.setattr(threads_module, "_pool_size", 0)
    monkeypatch.setattr(threads_module, "cpu_threads", lambda: 2)
    cpu_parallel(lambda start, stop: None, 8, BIG)
    small = threads_module._pool
    monkeypatch.setattr(threads_module, "cpu_threads", lambda: 4)
    cpu_parallel(lambda start, stop: None, 8, BIG)
    assert threads_module._pool is not small and threads_module._pool_size == 3
    with pytest.raises(RuntimeError):  # shut down: takes no more work
        small.submit(print)
    threads_module._pool.shutdown()


def test_cpu_parallel_from_several_threads_while_the_pool_grows(monkeypatch):
    """Calls from several threads at once, each wanting more threads than the pool has: every
    call covers its range once and none submits to a pool another call shut down."""
    monkeypatch.setattr(threads_module, "_pool", None)
    monkeypatch.setattr(threads_module, "_pool_size", 0)
    wanted = iter(range(2, 200))
    monkeypatch.setattr(threads_module, "cpu_threads", lambda: next(wanted))
    results, errors = {}, []

    def caller(k):
        try:
            for _ in range(10):
                marks = np.zeros(64, dtype=int)

                def mark(start, stop):
                    time.sleep(0.0005)  # let the other callers replace the pool meanwhile
                    marks[start:stop] += 1
                cpu_parallel(mark, 64, BIG)
                results.setdefault(k, []).append(marks.copy())
        except Exception as exc:  # noqa: BLE001  (any error fails the test below)
            errors.append(exc)
    callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    threads_module._pool.shutdown()
    assert not errors, errors
    assert all((marks == 1).all() for runs in results.values() for marks in runs)
    assert sum(map(len, results.values())) == 40


class FakeBlas:
    """Stands in for threadpoolctl's controller: one process-wide BLAS thread count, and a limit
    that saves the count it finds and puts it back on restore, as threadpoolctl's does. (Real
    OpenBLAS 0.3.31 ignores a thread count set from a thread other than the main one after
    the main one set it, so the real library cannot show the order of events here.)"""

    def __init__(self, threads):
        self.threads = threads

    def limit(self, limits, user_api):
        saved, self.threads = self.threads, limits
        restore = lambda: setattr(self, "threads", saved)  # noqa: E731
        return types.SimpleNamespace(restore_original_limits=restore)


def test_single_threaded_blas_in_overlapping_threads_restores_blas_after_the_last(monkeypatch):
    """A enters, B enters, A leaves, B leaves: BLAS stays on one thread until B leaves, and
    has its threads back afterwards (the limit is process-wide, not per thread)."""
    blas = FakeBlas(threads=2)
    monkeypatch.setattr(threads_module, "_blas", blas)
    a_inside, b_inside, a_left, b_done = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with threads_module.single_threaded_blas():
            a_inside.set()
            b_inside.wait(10)
        a_left.set()

    def b():
        a_inside.wait(10)
        with threads_module.single_threaded_blas():
            b_inside.set()
            a_left.wait(10)
            seen["B after A left"] = blas.threads
        b_done.set()
    threads = [threading.Thread(target=f) for f in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert b_done.is_set()
    assert seen["B after A left"] == 1
    assert blas.threads == 2


def test_cpu_threads_reads_cgroup_v1_and_guards_a_zero_period(monkeypatch):
    cores = threads_module.cpu_threads.__wrapped__

    def missing():
        raise OSError("no such file")
    affinity = cores()
    monkeypatch.setattr(threads_module, "_read_cgroup_v2", missing)
    monkeypatch.setattr(threads_module, "_read_cgroup_v1", lambda: (100_000, 100_000))
    assert cores() == 1  # a one-core v1 quota
    monkeypatch.setattr(threads_module, "_read_cgroup_v1", lambda: (-1, 100_000))
    assert cores() == affinity  # v1's "no quota"
    monkeypatch.setattr(threads_module, "_read_cgroup_v2", lambda: (100_000, 0))
    assert cores() == affinity  # a zero period is ignored, not divided by
    monkeypatch.setattr(threads_module, "_read_cgroup_v1", missing)
    assert cores() == affinity
