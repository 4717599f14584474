r"""The learning-rate range test: which learning rates make this model learn on this data.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2017), Sec. 3.3, as fastai's
``lr_find`` runs it: train for a few hundred steps while the learning rate grows exponentially
from ``start_lr`` to ``end_lr``,

.. math::

    \epsilon_t = \epsilon_0 \, (\epsilon_1 / \epsilon_0)^{t / (T - 1)}, \qquad t = 0 \ldots T-1,

and record with each rate the loss its update led to. Exactly: update ``t`` uses ``lrs[t]``,
and ``losses[t]`` is the loss of the next batch under the weights that update made, computed
before that batch's own update; ``T`` rates take ``T + 1`` batches, the first batch's loss
(``initial_loss``) being the start. (fastai's ``lr_find`` records with a rate the loss of the
batch that rate then updates on, computed before the update: the effect of the rates before
it, which puts each loss one rate too high and never measures the last rate.)

The losses are smoothed by an exponential moving average (debiased, as Adam's moments are)
that starts from ``initial_loss``: at the first, tiny, rates the weights barely move, so that
loss is one more sample of the same level, and one lucky batch at the start weighs less. At
small rates the loss barely moves; over a range it falls fastest; past it the loss rises and
diverges. The suggestion is the rate at the lowest smoothed loss divided
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

from . import backend, checkpoint
from .checks import is_int, is_real
from .extensions import Extension
from .train import Trainer

try:                    # optional (pip install matplotlib): only the picture needs it
    from matplotlib.figure import Figure
except ImportError:
    Figure = None


class RangeTest(Extension):
    """The range test as an extension of the training loop. Before each update the batch's
    loss is what the previous update did: it is recorded with that update's rate and smoothed;
    then the test either stops (before this update) or sets the next rate for it."""

    def __init__(self, start_lr, ratio, steps, smoothing, diverge):
        self.start_lr, self.ratio, self.steps = start_lr, ratio, steps
        self.smoothing, self.diverge = smoothing, diverge
        self.lrs, self.losses, self.smoothed = [], [], []
        self.average, self.count, self.best, self.stopped_early = 0.0, 0, math.inf, False
        self.initial_loss = self.applied = None     # applied: the rate of the last update

    def before_update(self, trainer, loss):
        if self.applied is None:                # the first batch: no update made yet
            self.initial_loss = loss
            self._smoothed(loss)
        else:
            self._record(self.applied, loss)
        if not math.isfinite(loss) or self.stopped_early or len(self.lrs) == self.steps:
            raise _Done
        self.applied = trainer.optimizer.lr = self.start_lr * self.ratio ** len(self.lrs)

    def _record(self, lr, loss):
        self.lrs.append(lr)
        self.losses.append(loss)
        if not math.isfinite(loss):
            self.stopped_early = True
            return
        self.smoothed.append(self._smoothed(loss))
        self.best = min(self.best, self.smoothed[-1])
        self.stopped_early = self.smoothed[-1] > self.diverge * self.best

    def _smoothed(self, loss):
        """The debiased moving average of the losses so far, ``loss`` included."""
        self.count += 1
        self.average = self.smoothing * loss + (1 - self.smoothing) * self.average
        return self.average / (1 - (1 - self.smoothing) ** self.count)


class _Done(Exception):
    """The range test has its last loss: stop before that step's update."""


def lr_range_test(model, loader, optimizer, *, start_lr: float = 1e-5, end_lr: float = 1.0,
                  steps: int = 100, smoothing: float = 0.05, diverge: float = 4.0) -> dict:
    """Run the range test on ``loader``'s training batches (as many epochs as ``steps``
    needs), through :class:`~minialex.train.Trainer` with :class:`RangeTest` as its one
    extension. Returns ``{"lrs", "losses", "smoothed", "initial_loss", "suggested_lr",
    "min_loss_lr", "stopped_early"}``: ``losses[t]`` is the loss after the update at ``lrs[t]``
    (see the module docstring). Ctrl-C raises ``KeyboardInterrupt`` at once, after the model,
    optimiser, generator and loader are put back: a test cut short suggests nothing."""
    if not (is_real(start_lr) and is_real(end_lr) and 0 < start_lr < end_lr):
        raise ValueError(f"lr_range_test: expected 0 < start_lr < end_lr, got {start_lr!r} "
                         f"and {end_lr!r}")
    if not is_int(steps) or steps < 2:
        raise ValueError(f"lr_range_test: steps must be an int >= 2, got {steps!r}")
    saved = ({k: v.copy() for k, v in model.state_dict().items()}, optimizer.state_dict(),
             optimizer.lr, backend.get_rng_state(), loader.state_dict())
    test = RangeTest(start_lr, (end_lr / start_lr) ** (1.0 / (steps - 1)), steps, smoothing,
                     diverge)
    batches = steps + 1                 # the last rate's loss is the next batch's
    trainer = Trainer(model, optimizer, loader, epochs=-(-batches // max(len(loader), 1)) + 1,
                      extensions=[test], catch_ctrl_c=False)
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
    if test.initial_loss is None:
        raise ValueError("lr_range_test: the loader gave no batch")
    if not math.isfinite(test.initial_loss):
        raise ValueError("lr_range_test: the loss was not finite before any update; the "
                         "model or data is broken, not the learning rate")
    if not test.smoothed:
        raise ValueError(f"lr_range_test: the loss was not finite after the first update, at "
                         f"`start_lr` {start_lr:g}; try a smaller one")
    at_min = int(np.argmin(test.smoothed))
    return {"lrs": test.lrs, "losses": test.losses, "smoothed": test.smoothed,
            "initial_loss": test.initial_loss, "min_loss_lr": test.lrs[at_min],
            "suggested_lr": test.lrs[at_min] / 10, "stopped_early": test.stopped_early}


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


def figure(result: dict):
    """Loss against learning rate (log scale) as a matplotlib ``Figure``; None when matplotlib
    is not installed (``pip install matplotlib``).

    The y-axis spans the smoothed losses *before* the divergence that stopped the test, as
    fastai's plot leaves out the last steps: a diverged point (a loss of 58 where the curve
    lives between 2 and 9, or an infinite one) would flatten the curve that chooses the rate.
    That point is marked instead, at the top edge, with its value in the legend."""
    if Figure is None:
        return None
    lrs, smoothed = result["lrs"], result["smoothed"]
    # a non-finite loss has no smoothed value; a finite diverged one is the last smoothed value
    diverged = bool(result.get("stopped_early")) and len(smoothed) > 1
    curve = smoothed[:-1] if diverged and len(smoothed) == len(lrs) else smoothed
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(lrs[:len(curve)], curve)
    low, high = min(curve), max(curve)
    pad = 0.05 * ((high - low) or abs(high) or 1.0)
    ax.set_ylim(low - pad, high + pad)
    if diverged:
        losses = result.get("losses") or smoothed
        value = smoothed[-1] if len(curve) < len(smoothed) else losses[len(curve)]
        ax.plot([lrs[len(curve)]], [high + pad], marker="^", linestyle="none", color="red",
                clip_on=False, label=f"diverged (loss {value:.3g}), off the axis")
    ax.axvline(result["suggested_lr"], linestyle="--", color="grey", label="suggested")
    ax.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)",
           title="learning-rate range test")
    ax.legend()
    fig.tight_layout()
    return fig


def plot(result: dict, path) -> str | None:
    """Save :func:`figure` as a PNG; None when matplotlib is not installed."""
    fig = figure(result)
    if fig is None:
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # atomically: a test stopped mid-write leaves the previous picture, not half of one
    checkpoint.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return str(path)
