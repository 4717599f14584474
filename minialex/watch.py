r"""Noticing that a run has stopped learning: NaN, loss spikes, and a loss stuck at chance.

A classifier that predicts every class with the same probability has the cross-entropy
:math:`\ln C` for :math:`C` classes (2.303 for ten): that is *chance*. A network whose ReLUs have
all died outputs the same logits for every image, and weight decay then pulls those logits
towards equal, so its training loss settles at :math:`\ln C` and stays there, step after step,
while the run goes on "completing" epochs. :class:`LossWatch` watches the training loss of
every step and stops such runs early, with a message that says what happened and what to try:

- **diverged**: the loss is NaN or infinite (stop, before the update that would spread it);
- **stalled at chance**: after the warm-up, the loss stayed within ``band`` (relative) of
  :math:`\ln C` for ``stall_steps`` consecutive steps (stop). Only a run whose loss has been
  away from chance (above it, as a large initialisation starts, or below it, learning) and came
  back is counted: the paper's N(0, 0.01) initialisation starts *at* chance and may stay near
  it for many steps before it learns, which is slow, not dead (a run that never leaves chance
  is caught at its end, when its test accuracy is no better than guessing);
- **spike**: the loss jumped above ``spike_factor`` times the median of the last ``window``
  steps, and above half the chance loss (a jump from 0.01 to 0.1 is noise, not a spike): a
  warning, since runs often recover; a spike that kills the run ends as one of the above.

The trainer raises the exceptions below before the optimiser step, so the weights and the last
checkpoint stay as they were after the last good step.

>>> watch = LossWatch(num_classes=10, stall_steps=3)
>>> for step, loss in enumerate([9.4, 2.302, 2.303, 2.301]):  # doctest: +NORMALIZE_WHITESPACE
...     watch.check(step, loss)
Traceback (most recent call last):
    ...
minialex.watch.TrainingStalled: training stalled at chance: the loss stayed within 2% of
    ln(10) = 2.303 for 3 steps, up to step 4: the network has stopped learning (dead ReLUs, or a
    learning rate too high for its initialisation); try a lower `lr`, a longer `warmup`, or
    `find_lr`
"""
from __future__ import annotations

import collections
import math
import statistics

# settings of minialex.config.RunConfig (and minialex.recipe.find_lr) in backquotes: a command
# line names its own flags for them (examples/train_alexnet.py)
ADVICE = "try a lower `lr`, a longer `warmup`, or `find_lr`"
MAX_KEPT = 20           # spikes (and their warnings) kept for the summary; the rest are counted


class TrainingStopped(RuntimeError):
    """A run stopped because it was not learning. ``what`` says what happened and where,
    ``advice`` what to try; ``reason`` is a short phrase for summaries."""
    reason = "stopped"

    def __init__(self, what: str, advice: str = ADVICE):
        super().__init__(f"{what}; {advice}")
        self.what, self.advice = what, advice


class TrainingDiverged(TrainingStopped):
    """The loss became NaN or infinite."""
    reason = "diverged"


class TrainingStalled(TrainingStopped):
    """The loss sat at chance, or the run ended no better than chance."""
    reason = "stalled at chance"


def chance_loss(num_classes: int) -> float:
    """The cross-entropy of a uniform prediction over ``num_classes`` classes: ln C."""
    return math.log(num_classes)


class LossWatch:
    """Check each step's training loss (see the module docstring); steps are counted from 0 over
    the whole run. ``warmup``: steps during which stalls are not counted."""

    def __init__(self, num_classes: int, *, warmup: int = 0, stall_steps: int = 200,
                 band: float = 0.02, spike_factor: float = 10.0, window: int = 50):
        if num_classes < 2:
            raise ValueError(f"LossWatch: num_classes must be >= 2, got {num_classes!r}")
        self.chance = chance_loss(num_classes)
        self.num_classes, self.warmup, self.stall_steps = num_classes, warmup, stall_steps
        self.band, self.spike_factor = band, spike_factor
        self.recent = collections.deque(maxlen=window)
        self.left_chance = False    # the loss has been away from chance at least once
        self.at_chance = 0          # consecutive steps at chance since, after the warm-up
        self.spikes = []            # the first MAX_KEPT (step, loss, median before it)
        self.spike_count = 0

    def check(self, step: int, loss: float, where: str | None = None) -> str | None:
        """Raise TrainingDiverged / TrainingStalled, or return a warning for a spike (else
        None). ``where`` names the step in messages (default ``"step {step + 1}"``)."""
        at = where or f"step {step + 1}"
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training diverged: the loss is {loss} at {at}")
        warning = None
        if len(self.recent) >= 5:
            median = statistics.median(self.recent)
            if loss > self.spike_factor * median and loss > self.chance / 2:
                self.spike_count += 1
                if len(self.spikes) < MAX_KEPT:
                    self.spikes.append((step, loss, median))
                warning = (f"loss spike at {at}: {loss:.4g}, more than {self.spike_factor:g}x "
                           f"the recent median {median:.4g}; if it keeps happening, {ADVICE}")
        self.recent.append(loss)
        near = abs(loss - self.chance) <= self.band * self.chance
        self.left_chance = self.left_chance or not near
        counted = near and self.left_chance and step >= self.warmup
        self.at_chance = self.at_chance + 1 if counted else 0
        if self.stall_steps and self.at_chance >= self.stall_steps:
            raise TrainingStalled(
                f"training stalled at chance: the loss stayed within {self.band:.0%} of "
                f"ln({self.num_classes}) = {self.chance:.3f} for {self.at_chance} steps, up to "
                f"{at}: the network has stopped learning (dead ReLUs, or a learning rate too "
                f"high for its initialisation)")
        return warning

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "at_chance": self.at_chance,
                "left_chance": self.left_chance, "spikes": [list(s) for s in self.spikes],
                "spike_count": self.spike_count}

    def load_state_dict(self, state: dict) -> None:
        self.recent.clear()
        self.recent.extend(float(v) for v in state["recent"])
        self.at_chance, self.left_chance = int(state["at_chance"]), bool(state["left_chance"])
        self.spikes = [tuple(s) for s in state["spikes"]]
        self.spike_count = int(state["spike_count"])


def above_chance(top1: float, images: int, num_classes: int) -> bool:
    """Whether a top-1 accuracy over ``images`` images is better than guessing: above 1/C by
    more than two binomial standard deviations (for 500 images of 10 classes: > 12.7%)."""
    p = 1.0 / num_classes
    return top1 > p + 2.0 * math.sqrt(p * (1 - p) / max(images, 1))
