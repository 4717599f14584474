"""Settings under which the fast CPU code runs every piece and block of a pass on small inputs.

The fast paths in minialex/cpu/ cut a pass into pieces for threads (only above
``threads.INLINE_WORK`` elements, over ``cpu_threads()`` threads) and into blocks of at most
``threads.BLOCK_BYTES`` of temporaries. At the sizes a loop reference can check, a pass would
run as one piece and one block, and a bug in the second block would pass unseen; these settings
make every pass use four threads, run pieces whatever its size, and hold one image per block.
"""
from minialex.cpu import threads

THREADS = 4


def run_every_piece(monkeypatch, threads_count=THREADS, block_bytes=1):
    """Four threads, no inline shortcut and blocks of one item (``block_bytes=1``), for the
    rest of the test."""
    monkeypatch.setattr(threads, "cpu_threads", lambda: threads_count)
    monkeypatch.setattr(threads, "INLINE_WORK", 0)
    monkeypatch.setattr(threads, "BLOCK_BYTES", block_bytes)
