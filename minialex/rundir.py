r"""A run directory has one writer at a time: :func:`lock` holds ``out/.lock`` for a run's life.

Two runs writing ``last.npz`` and ``metrics.jsonl`` in one folder would interleave their epochs
and overwrite each other's checkpoints, so :func:`minialex.recipe.fit` takes this lock before it
writes anything, and a second run on the same folder stops at once with one line naming the
folder and the process that holds it.

The lock is ``fcntl.flock`` on an open file, which the operating system releases when the
process ends, however it ends: a run killed with ``kill -9`` leaves the file (with its old pid)
but not the lock, so the next run starts normally. While the lock is held no other run writes
in the folder, so what a killed save left behind can be removed safely
(:func:`minialex.checkpoint.remove_partial_files`). Where ``fcntl`` is missing (Windows) no lock
is taken, and :func:`lock` yields False: another run may be writing those files.

>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> with lock(out):
...     with lock(out):
...         pass
Traceback (most recent call last):
    ...
minialex.rundir.RunDirectoryBusy: ... is in use by another run (pid ... on ...); wait for it ...
>>> with lock(out):        # released when the first run ended
...     pass
"""
from __future__ import annotations

import contextlib
import os
import socket

from .checkpoint import WriteError

try:
    import fcntl
except ImportError:          # Windows: runs are not locked
    fcntl = None

LOCK_FILE = ".lock"


class RunDirectoryBusy(OSError):
    """Another process holds the run directory's lock; the message names both."""


@contextlib.contextmanager
def lock(directory):
    """Hold ``directory``'s lock (creating the directory) for the ``with`` block; raises
    :class:`RunDirectoryBusy` at once when another run holds it, and
    :class:`~minialex.checkpoint.WriteError` when the folder or the lock file cannot be made.
    Yields whether the folder is locked (False where ``fcntl`` is missing)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, LOCK_FILE)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:                      # e.g. a folder the user may not write to
        raise WriteError(exc.filename or path, exc) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirectoryBusy(f"{directory} is in use by another run ({_holder(fd)}); "
                                       f"wait for it to end, or choose another `out`") from None
        with contextlib.suppress(OSError):      # who holds it is a courtesy: a full disk may
            os.ftruncate(fd, 0)                 # refuse it, and the run says so when it saves
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield fcntl is not None
    finally:
        os.close(fd)                            # closing the file releases the lock


def _holder(fd) -> str:
    """``pid N on HOST`` as the holder wrote it (empty while it is still starting)."""
    with contextlib.suppress(OSError):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            return text
    return "pid unknown"
