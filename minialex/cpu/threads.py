r"""Threads for the CPU passes: how many cores, a pool that takes pieces of a pass in turn,
BLAS held to one thread inside it, and the fixed cuts that keep sums independent of the core
count.

Why minialex runs its own threads: OpenBLAS's worker threads spin-wait between calls, so on a
machine with few cores they hold every core through the copies that follow each GEMM (im2col,
col2im, pooling), and on a busy machine they fight other processes for cores and wait on each
other. Instead BLAS runs single-threaded inside minialex's CPU ops, and each big pass (GEMMs
included) is cut into pieces that this thread and a few sleeping workers take in turn: a worker
that the scheduler sets aside delays only its own piece, and nothing spins.

The settings below are module attributes read at every call, so a test can shrink them to run
every piece and block of a pass on small inputs.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from threadpoolctl import ThreadpoolController

PIECES_PER_THREAD = 4  # more pieces than threads, so a slowed thread leaves its share to others
SUM_PIECES = 8  # partial sums of a reduction (conv's gw, gb): a constant, so its bits never
# depend on the machine's core count (see piece_bounds). Not more: a piece of one image makes
# thin gw GEMMs and one more (OC, K) partial to add; where 8 pieces are fewer than the threads,
# they run one after another with BLAS's own threads (cpu_parallel_gemms)
BLOCK_BYTES = 8 << 20  # a block's temporaries (its columns) at most: each thread keeps that much
# scratch for the life of the process, and a smaller block fits more of the caches
INLINE_WORK = 1 << 20  # elements touched below which a pass runs on this thread alone: starting
# threads would cost more than they save
_pool = None  # worker threads, made at the first call that is large enough to use them
_pool_size = 0  # how many workers _pool has
_pool_lock = threading.Lock()  # guards _pool and _pool_size
_blas = None  # threadpoolctl's handle on NumPy's BLAS, made at the first GEMM


@functools.lru_cache(maxsize=None)
def cpu_threads() -> int:
    """The cores this process may use: its CPU affinity (``os.sched_getaffinity``), or fewer
    where a cgroup CPU quota (a container's ``--cpus``: ``cpu.max`` in cgroup v2,
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in v1) allows less. Read once; a quota that
    cannot be read or makes no sense leaves the affinity as it is."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores or 1, quota)
    return max(1, cores or 1)


def _cgroup_cpu_quota() -> int | None:
    """The cores a cgroup v2 or v1 CPU quota allows (rounded up), or None without one."""
    for read in (_read_cgroup_v2, _read_cgroup_v1):
        try:
            quota, period = read()
        except (OSError, ValueError, IndexError):
            continue  # not this cgroup version, or unreadable: try the next
        if quota > 0 and period > 0:  # v2 "max" and v1 -1 mean no quota; 0 guards the division
            return math.ceil(quota / period)
    return None


def _read_cgroup_v2() -> tuple[int, int]:
    with open("/sys/fs/cgroup/cpu.max") as f:
        quota, period = f.read().split()[:2]
    return (-1 if quota == "max" else int(quota)), int(period)


def _read_cgroup_v1() -> tuple[int, int]:
    with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
        quota = int(f.read())
    with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
        return quota, int(f.read())


def cpu_parallel(fn, n: int, work: int) -> None:
    """Run ``fn(start, stop)`` over ``range(n)`` cut into pieces, on this thread and workers.

    Why: NumPy's copies and ufuncs (im2col, col2im, the pooling loops) and single-threaded
    GEMMs use one core each; they release the GIL, so threads over independent slices
    (channels, images, output columns) let them run on all cores. ``work`` (elements touched)
    below :data:`INLINE_WORK` runs inline. ``fn`` must give the same result however
    ``range(n)`` is cut: each piece writes only its own part of the outputs. ``fn`` must not
    call cpu_parallel itself: its pieces would wait for workers busy with the outer pieces.
    """
    global _pool, _pool_size
    threads = min(cpu_threads(), n)
    if threads <= 1 or work < INLINE_WORK:
        fn(0, n)
        return
    pieces = min(n, threads * PIECES_PER_THREAD)
    bounds = [n * i // pieces for i in range(pieces + 1)]
    taken = itertools.count()  # next() on it is atomic under the GIL: each piece goes once

    def take_pieces():
        while (i := next(taken)) < pieces:
            fn(bounds[i], bounds[i + 1])
    with _pool_lock:  # two threads running CPU ops at once must not both replace the pool
        if _pool is None or _pool_size < threads - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)  # its idle threads end; those still busy end after
            _pool = ThreadPoolExecutor(max_workers=threads - 1,
                                       thread_name_prefix="minialex-cpu")
            _pool_size = threads - 1
        # submitted under the lock, so no other call shuts this pool down before they are in
        # (a shut-down pool still runs what was submitted to it)
        futures = [_pool.submit(take_pieces) for _ in range(threads - 1)]
    try:
        take_pieces()
    finally:
        # Every worker must stop writing into this call's outputs before it returns or raises:
        # wait for all of them, then re-raise the first error (this thread's comes first).
        errors = [future.exception() for future in futures]
    for error in errors:
        if error is not None:
            raise error


def piece_bounds(n: int) -> list:
    """``range(n)`` cut into :data:`SUM_PIECES` pieces (fewer when ``n`` is smaller):
    ``bounds[i]:bounds[i + 1]`` is piece i. For passes that keep one partial result per piece
    and sum them in a fixed order: the cuts depend on ``n`` alone, never on the thread count,
    so such a sum has the same bits on any machine and whichever thread took which piece."""
    pieces = min(n, SUM_PIECES)
    return [n * i // pieces for i in range(pieces + 1)] if pieces else [0]


def block_bounds(n: int, item_bytes: int, per_thread: bool = False) -> list:
    """``range(n)`` cut into even blocks, as few as keep each block's temporaries
    (``item_bytes`` per item) within :data:`BLOCK_BYTES` (a block holds at least one item).
    With ``per_thread``, a multiple of :data:`PIECES_PER_THREAD` blocks per thread (fewer when
    ``n`` is smaller), so that :func:`cpu_parallel`'s pieces of blocks hold as many items each:
    only for passes whose results do not depend on how the items are grouped."""
    blocks = math.ceil(n * item_bytes / BLOCK_BYTES)
    if per_thread:  # a multiple of cpu_parallel's pieces, so that each piece gets as many items
        unit = cpu_threads() * PIECES_PER_THREAD
        blocks = max(unit, math.ceil(blocks / unit) * unit)
    blocks = min(n, blocks)
    return [n * i // blocks for i in range(blocks + 1)] if blocks else [0]


def cpu_parallel_gemms(fn, n: int, work: int) -> None:
    """:func:`cpu_parallel` for pieces that run GEMMs, with BLAS single-threaded inside.

    With fewer pieces than threads (one image, a small batch) the pieces would leave cores
    idle, so they run here one after another and each GEMM gets BLAS's own threads instead.
    """
    if n < cpu_threads():
        fn(0, n)
        return
    with single_threaded_blas():
        cpu_parallel(fn, n, work)


_blas_lock = threading.Lock()  # guards the two below
_blas_users = 0  # threads now inside single_threaded_blas
_blas_limiter = None  # threadpoolctl's saved limits, restored when the last user leaves


@contextlib.contextmanager
def single_threaded_blas():
    """NumPy's BLAS on one thread inside the block (see above), as it was after it.

    The limit is process-wide (BLAS has one thread count), so threads that overlap share it:
    the first one in sets it and the last one out restores what the first one found. Saving
    and restoring per thread would let one thread's exit give BLAS its threads back while
    another is still inside, and the last exit then leave BLAS on one thread for good.
    """
    global _blas, _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            if _blas is None:
                _blas = ThreadpoolController()
            _blas_limiter = _blas.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None

