r"""Progress on one status line, shared by dataset preparation and the trainer.

A *transient* line (:meth:`StatusLine.show`) reports where a long job is; a *permanent* line
(:meth:`StatusLine.print`) records a result. On a terminal the transient line is rewritten in
place: ``\r``, the new text, then spaces to erase what is left of a longer previous text. In a
log file or a pipe ``\r`` would leave one garbled line, so there every shown line is an ordinary
line, and a caller that shows often should rate-limit itself (as :class:`Progress` does).

>>> import io
>>> log = io.StringIO()
>>> line = StatusLine(log)
>>> line.show("step 1/2"); line.print("epoch 1 done")
>>> log.getvalue()
'step 1/2\nepoch 1 done\n'
"""
from __future__ import annotations

import sys
import time


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class StatusLine:
    """One status line on ``stream`` (``None``: ``sys.stdout`` as it is at each call, so
    redirection and test capture after construction still apply)."""

    def __init__(self, stream=None):
        self._stream = stream
        self._width = 0        # length of the transient text now on the terminal, 0 if none

    @property
    def stream(self):
        return sys.stdout if self._stream is None else self._stream

    def show(self, text: str) -> None:
        """A transient line: rewritten in place on a terminal, an ordinary line elsewhere."""
        stream = self.stream
        if _is_terminal(stream):
            stream.write("\r" + text.ljust(self._width))   # the padding erases the longer rest
            self._width = len(text)
        else:
            stream.write(text + "\n")
        stream.flush()

    def print(self, text: str) -> None:
        """A permanent line, written over any transient one."""
        stream = self.stream
        if self._width and _is_terminal(stream):
            stream.write("\r" + text.ljust(self._width) + "\n")
        else:
            stream.write(text + "\n")
        self._width = 0
        stream.flush()


class Progress:
    r"""A rate-limited progress bar for ``total`` items on a :class:`StatusLine`.

    ``update(n)`` counts ``n`` more items and redraws at most 5 times a second on a terminal, or
    once every 10 seconds in a log; ``close()`` prints the final count as a permanent line.
    ``enabled=False`` counts silently. ``clock`` (seconds) is there for tests.

    >>> import io
    >>> log = io.StringIO()
    >>> bar = Progress("prepare train", 4, stream=log, clock=lambda: 2.0)
    >>> bar.update(4); bar.close()
    >>> log.getvalue()
    'prepare train: [##############################] 4/4 images, 0s\n'
    """

    WIDTH = 30                      # characters of the bar
    INTERVAL = {True: 0.2, False: 10.0}   # seconds between redraws: terminal, log

    def __init__(self, label: str, total: int, *, unit: str = "images", stream=None,
                 enabled: bool = True, clock=time.monotonic):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.line, self.clock = StatusLine(stream), clock
        self.done, self.start = 0, clock()
        self.last = self.start

    def text(self, now: float) -> str:
        elapsed = max(now - self.start, 0.0)
        filled = self.WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        head = f"{self.label}: [{bar}] {self.done}/{self.total} {self.unit}"
        if self.done >= self.total or elapsed == 0:
            return f"{head}, {elapsed:.0f}s"
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        return f"{head}, {rate:.0f}/s, {left:.0f}s left"

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        interval = self.INTERVAL[_is_terminal(self.line.stream)]
        if self.enabled and self.done < self.total and now - self.last >= interval:
            self.last = now
            self.line.show(self.text(now))

    def close(self) -> None:
        if self.enabled:
            self.line.print(self.text(self.clock()))
