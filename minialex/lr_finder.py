r"""The learning-rate range test: which learning rates make this model learn on this data.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2017), Sec. 3.3, as fastai's
``lr_find`` runs it: train for a few hundred steps while the learning rate grows exponentially
from ``start_lr`` to ``end_lr``,

.. math::

    \epsilon_t = \epsilon_0 \, (\epsilon_1 / \epsilon_0)^{t / (T - 1)}, \qquad t = 0 \ldots T-1,

and record the loss of each step, smoothed by an exponential moving average (debiased, as
Adam's moments are). At small rates the loss barely moves; over a range it falls fastest; past
it the loss rises and diverges. The suggestion is the rate at the lowest smoothed loss divided
by 10: the largest rate that is still safely on the falling side (fastai's "minimum / 10").
The test stops early once the smoothed loss exceeds ``diverge`` times its minimum.

The test runs the training loop of :class:`~minialex.train.Trainer` with one extension,
:class:`RangeTest`. The model's weights, the optimiser's state and learning rate, and
minialex's random generator are restored afterwards: the test leaves nothing behind but its
numbers.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import backend
from .checks import is_int, is_real
from .extensions import Extension
from .train import Trainer

try:                    # optional (pip install matplotlib): only the picture needs it
    from matplotlib.figure import Figure
except ImportError:
    Figure = None


class RangeTest(Extension):
    """The range test as an extension of the training loop: before each update, record the
    step's loss, smooth it, and either stop (before the update) or set the rate of that update."""

    def __init__(self, start_lr, ratio, steps, smoothing, diverge):
        self.start_lr, self.ratio, self.steps = start_lr, ratio, steps
        self.smoothing, self.diverge = smoothing, diverge
        self.lrs, self.losses, self.smoothed = [], [], []
        self.average, self.best, self.stopped_early = 0.0, math.inf, False

    def before_update(self, trainer, loss):
        lr = self.start_lr * self.ratio ** len(self.lrs)
        self.lrs.append(lr)
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.stopped_early = True
            raise _Done
        self.average = self.smoothing * loss + (1 - self.smoothing) * self.average
        self.smoothed.append(self.average / (1 - (1 - self.smoothing) ** len(self.lrs)))
        self.best = min(self.best, self.smoothed[-1])
        self.stopped_early = self.smoothed[-1] > self.diverge * self.best
        if self.stopped_early or len(self.lrs) == self.steps:
            raise _Done
        trainer.optimizer.lr = lr


class _Done(Exception):
    """The range test has its last loss: stop before that step's update."""


def lr_range_test(model, loader, optimizer, *, start_lr: float = 1e-5, end_lr: float = 1.0,
                  steps: int = 100, smoothing: float = 0.05, diverge: float = 4.0) -> dict:
    """Run the range test on ``loader``'s training batches (as many epochs as ``steps``
    needs), through :class:`~minialex.train.Trainer` with :class:`RangeTest` as its one
    extension. Returns ``{"lrs", "losses", "smoothed", "suggested_lr", "min_loss_lr",
    "stopped_early"}``."""
    if not (is_real(start_lr) and is_real(end_lr) and 0 < start_lr < end_lr):
        raise ValueError(f"lr_range_test: expected 0 < start_lr < end_lr, got {start_lr!r} "
                         f"and {end_lr!r}")
    if not is_int(steps) or steps < 2:
        raise ValueError(f"lr_range_test: steps must be an int >= 2, got {steps!r}")
    saved = ({k: v.copy() for k, v in model.state_dict().items()}, optimizer.state_dict(),
             optimizer.lr, backend.get_rng_state(), loader.state_dict())
    test = RangeTest(start_lr, (end_lr / start_lr) ** (1.0 / (steps - 1)), steps, smoothing,
                     diverge)
    trainer = Trainer(model, optimizer, loader, epochs=-(-steps // max(len(loader), 1)) + 1,
                      extensions=[test])
    try:
        trainer.fit()
    except _Done:
        pass
    finally:
        weights, opt_state, lr, rng, loader_state = saved
        model.load_state_dict(weights)
        optimizer.load_state_dict(opt_state)
        optimizer.lr = lr
        backend.set_rng_state(rng)
        loader.load_state_dict(loader_state)
    if not test.smoothed:
        raise ValueError("lr_range_test: the loss was not finite at the first step; the "
                         "model or data is broken, not the learning rate")
    at_min = int(np.argmin(test.smoothed))
    return {"lrs": test.lrs, "losses": test.losses, "smoothed": test.smoothed,
            "min_loss_lr": test.lrs[at_min], "suggested_lr": test.lrs[at_min] / 10,
            "stopped_early": test.stopped_early}


def format_table(result: dict, rows: int = 16) -> str:
    """The smoothed loss at about ``rows`` learning rates, one line each, with a bar."""
    lrs, smoothed = result["lrs"], result["smoothed"]
    at_min = int(np.argmin(smoothed))
    picks = sorted(set(np.linspace(0, len(smoothed) - 1, rows).round().astype(int)) | {at_min})
    low, high = min(smoothed), max(smoothed[i] for i in picks)
    lines = ["      lr     loss"]
    for i in picks:
        bar = "#" * int(round(30 * (smoothed[i] - low) / max(high - low, 1e-12)))
        mark = "  <- lowest" if i == at_min else ""
        lines.append(f"{lrs[i]:8.2e} {smoothed[i]:8.4f} {bar}{mark}")
    lines.append(f"suggested lr: {result['suggested_lr']:.3g} (lowest smoothed loss at "
                 f"{result['min_loss_lr']:.3g}, divided by 10)"
                 + ("; stopped early: the loss diverged" if result["stopped_early"] else ""))
    return "\n".join(lines)


def plot(result: dict, path) -> str | None:
    """Save loss against learning rate (log scale) as a PNG with matplotlib; None when
    matplotlib is not installed (``pip install matplotlib``)."""
    if Figure is None:
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(result["lrs"][:len(result["smoothed"])], result["smoothed"])
    ax.axvline(result["suggested_lr"], linestyle="--", color="grey", label="suggested")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title="learning-rate range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return str(path)
