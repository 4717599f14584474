r"""Ablations: paired trainings that differ in one of the paper's choices, same seed, same budget.

A :class:`Study` names one switch of the paper (Sec. 3 and 4) and its two arms, the paper's
choice first; a :class:`Budget` names the run both arms get (a :class:`~minialex.config.RunConfig`
and the seeds). :func:`run_studies` trains every arm of every study once per seed through the
recipe's own :func:`~minialex.recipe.build` and :class:`~minialex.train.Trainer` with an
extension of its own (:class:`ArmRecord`; no copy of the training loop), records each step's
training loss and error, and writes per study a Markdown table, a JSON file of every run and,
with matplotlib, a PNG plot.

=================  ==============================================  ===========================
study              switch (first arm: the paper's)                 the paper's claim
=================  ==============================================  ===========================
``relu-tanh``      ``activation``: relu / tanh                     Sec. 3.1, Fig. 1: a 4-layer
                                                                   CNN reaches 25% training
                                                                   error on CIFAR-10 ~6x
                                                                   faster with ReLU
``lrn``            ``lrn``: True / False                           Sec. 3.3: top-1 -1.4%,
                                                                   top-5 -1.2%; CIFAR-10 13%
                                                                   -> 11% test error
``pooling``        ``pool``: overlapping (3/2) / non-overlapping   Sec. 3.4: top-1 -0.4%,
                   (2/2)                                           top-5 -0.3%; slightly harder
                                                                   to overfit
``dropout``        ``dropout``: 0.5 / 0                            Sec. 4.2: without it,
                                                                   substantial overfitting
``augmentation``   ``crop_padding`` and ``flip``: random           Sec. 4.1: without it,
                   translations and flips / none                   substantial overfitting
=================  ==============================================  ===========================

What is measured, per run:

- the training error of every step (the fraction of the step's batch misclassified, in
  training mode, before the update), smoothed over a window of ``budget.window`` steps, and
  *steps to target*: the first step at which that smoothed error is at or below a target
  (the paper's Fig. 1 measure, in steps rather than epochs);
- after each epoch, the *held-out error* on the validation split (Fashion-MNIST training images
  held out of training, ``val_size``; the test set is not touched);
- at the end, the training error in eval mode on the first ``budget.train_eval`` training
  images, and the *gap* (held-out minus that): how far the run overfits.

Effects are paired by seed: arm two minus arm one (differences of errors, ratios of steps),
with their mean, standard deviation over seeds and how many seeds point each way.

Both arms of a study start from the same weights wherever the shapes agree and draw the same
dropout masks (:func:`build_arm`), and get the same settings but the switch: no arm is tuned
on its own (the paper chose each Fig. 1 network's learning rate separately; here both take the
budget's).
The ``relu-tanh`` study runs without dropout and weight decay, as Fig. 1's networks ("no
regularization of any kind"); the other studies use the budget's settings. An arm whose
settings equal another study's arm (the paper's choices in ``lrn``, ``pooling``, ``dropout``
and no augmentation) is trained once per seed and reported in each.

>>> sorted(STUDIES)
['augmentation', 'dropout', 'lrn', 'pooling', 'relu-tanh']
>>> steps_to_target([0.9, 0.6, 0.5, 0.2, 0.1], 0.3, window=2)   # (0.2 + 0.1) / 2 at step 5
5
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from . import backend, checkpoint, recipe
from .checks import positive_int
from .config import CPU_PRESET, GPU_PRESET, RunConfig
from .data import Loader
from .extensions import REPORT, Extension, LearningRate, LossCheck, Validation
from .models import VARIANTS
from .train import Trainer, evaluate
from .watch import TrainingStopped

try:                    # optional (pip install matplotlib): only the plots need it
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

DATA_SETTINGS = ("dataset", "limit_train", "limit_test", "val_size")   # shared by every arm


@dataclasses.dataclass(frozen=True)
class Study:
    """One switch and its two arms ``((label, settings), (label, settings))``, the paper's
    choice first; ``base``: settings of the study that both arms share (on top of the
    budget's); ``metric``: ``"steps"`` (steps to the training-error target) or ``"error"``
    (held-out error) leads the study's summary."""
    name: str
    title: str
    arms: tuple
    metric: str
    paper: str
    base: tuple = ()             # (name, value) pairs, hashable as the dataclass is frozen

    def __post_init__(self):
        keys = [tuple(sorted(settings)) for _, settings in self.arms]
        if len(self.arms) != 2 or keys[0] != keys[1]:
            raise ValueError(f"Study {self.name!r}: expected two arms setting the same keys, "
                             f"got {self.arms!r}")
        if set(keys[0]) & set(DATA_SETTINGS):
            raise ValueError(f"Study {self.name!r}: the arms must share the data, but they set "
                             f"{sorted(set(keys[0]) & set(DATA_SETTINGS))}")
        if self.metric not in ("steps", "error"):
            raise ValueError(f"Study {self.name!r}: metric must be 'steps' or 'error', got "
                             f"{self.metric!r}")

    @property
    def switch(self) -> str:
        """``activation relu -> tanh``: what differs between the arms."""
        (_, a), (_, b) = self.arms
        return ", ".join(f"{k} {_show(a[k])} -> {_show(b[k])}" for k in a)

    def config(self, budget: "Budget", arm: int, seed: int) -> RunConfig:
        """The checked run settings of arm ``arm`` (0 or 1) at ``seed``."""
        return budget.config.replace(**dict(self.base), **self.arms[arm][1], seed=seed)


STUDIES = {s.name: s for s in (
    Study("relu-tanh", "ReLU vs tanh", (("ReLU", {"activation": "relu"}),
                                        ("tanh", {"activation": "tanh"})), "steps",
          "Sec. 3.1, Fig. 1: a four-layer CNN with ReLUs reaches 25% training error on CIFAR-10 "
          "six times faster than the same net with tanh units (learning rates chosen for each "
          "net, no regularization)", base=(("dropout", 0.0), ("weight_decay", 0.0))),
    Study("lrn", "with vs without local response normalization",
          (("LRN", {"lrn": True}), ("no LRN", {"lrn": False})), "error",
          "Sec. 3.3: LRN lowers ImageNet top-1 and top-5 error by 1.4% and 1.2%; on CIFAR-10 a "
          "four-layer CNN's test error goes from 13% without to 11% with it"),
    Study("pooling", "overlapping vs non-overlapping pooling",
          (("overlapping 3/2", {"pool": "overlapping"}),
           ("non-overlapping 2/2", {"pool": "non-overlapping"})), "error",
          "Sec. 3.4: overlapping pools (z=3, s=2) lower top-1 and top-5 error by 0.4% and 0.3% "
          "against z=s=2, and the nets are 'slightly more difficult to overfit'"),
    Study("dropout", "dropout vs none", (("dropout 0.5", {"dropout": 0.5}),
                                         ("no dropout", {"dropout": 0.0})), "error",
          "Sec. 4.2: without dropout the network overfits substantially; dropout roughly "
          "doubles the iterations needed to converge"),
    Study("augmentation", "data augmentation vs none",
          (("crops + flips", {"crop_padding": 2, "flip": True}),
           ("none", {"crop_padding": 0, "flip": False})), "error",
          "Sec. 4.1: without translations and reflections the network overfits substantially "
          "(PCA colour noise, the second form, needs colour: Fashion-MNIST is grey)"),
)}


@dataclasses.dataclass(frozen=True)
class Budget:
    """The run every arm gets: ``config`` (with the studies' switches at the paper's choices),
    ``seeds``, the training-error ``targets`` (``target``: the one the summary leads with),
    the smoothing ``window`` in steps, and ``train_eval`` training images scored in eval mode
    at the end."""
    name: str
    config: RunConfig
    seeds: tuple
    targets: tuple
    target: float
    window: int
    train_eval: int

    def describe(self) -> str:
        c = self.config
        n = c.limit_train or "all"
        return (f"`{c.model}` AlexNet, {_count(n)} Fashion-MNIST training images, {c.epochs} "
                f"epoch{'s' * (c.epochs != 1)} of batch {c.batch_size}, SGD lr {c.lr:g} "
                f"(warm-up {c.warmup} step{'s' * (c.warmup != 1)}, schedule {c.schedule}), "
                f"momentum {c.momentum:g}, weight decay {c.weight_decay:g}, init {c.init}; "
                f"held-out error on "
                f"{_count(c.limit_test or c.val_size)} validation images; "
                f"seed{'s' * (len(self.seeds) != 1)} "
                f"{', '.join(map(str, self.seeds))}")


def _budget_config(preset: RunConfig, **changes) -> RunConfig:
    """``preset`` with ``changes``, no epoch schedule (a study compares curves at one rate) and
    LRN stated explicitly, so the ``lrn`` study's arm equal to it is recognised as the same run."""
    config = preset.replace(schedule="none", print_freq=0, **changes)
    return config.replace(lrn=VARIANTS[config.model].lrn)


BUDGETS = {
    # CI: seconds on two cores (data: any Fashion-MNIST-shaped IDX files of >= 200 images)
    "tiny": Budget("tiny", _budget_config(CPU_PRESET, limit_train=64, limit_test=32,
                                          val_size=32, epochs=1, batch_size=32, warmup=1),
                   seeds=(0,), targets=(0.5,), target=0.5, window=1, train_eval=32),
    # two cores: 2,000 images seen five times in batches of 32 (315 steps), ~15 s a run when
    # quiet (~700 images/s), five seeds an arm; few images, several epochs: room to overfit
    "cpu": Budget("cpu", _budget_config(CPU_PRESET, limit_train=2000, limit_test=1000,
                                        epochs=5, batch_size=32, warmup=50),
                  seeds=(0, 1, 2, 3, 4), targets=(0.5, 0.35, 0.25, 0.15), target=0.25,
                  window=20, train_eval=500),
    # one GPU: d2l.ai's 224x224 AlexNet (GPU_PRESET), 20,000 images, four epochs, five seeds
    "gpu": Budget("gpu", _budget_config(GPU_PRESET, limit_train=20000, limit_test=5000,
                                        epochs=4),
                  seeds=(0, 1, 2, 3, 4), targets=(0.5, 0.25, 0.15), target=0.25, window=20,
                  train_eval=5000),
}


# -- one run -----------------------------------------------------------------------------------
def build_arm(config: RunConfig, reference: RunConfig | None, data,
              device: str = "cpu") -> recipe.Run:
    """:func:`minialex.recipe.build` for ``config``, started where ``reference`` (the study's
    first arm, the paper's choice; None: ``config`` itself) starts: every parameter whose shape
    agrees with the reference's at the same place (conv1's weight, ...) takes its initial
    value, and minialex's generator continues from the reference's state after its build, so
    the arms' dropout masks agree as well.

    Without this the arms of a switch that changes a shape (the pools change fc6) would share
    nothing: the layer constructors and :func:`minialex.models.initialize` draw every weight
    from one stream in order, so one larger layer moves every later draw. Shuffling and
    augmentation have their own generators seeded from ``config.seed`` alone."""
    if reference is None or reference == config:
        return recipe.build(config, data, device)
    start = recipe.build(reference, data, "cpu").model.state_dict()
    stream = backend.rng_for(np).bit_generator.state
    run = recipe.build(config, data, device)
    # paired in order, not by name: LRN's absence shifts the later layers' indices
    for initial, value in zip(start.values(), run.model.parameters()):
        if initial.shape == value.shape:
            value.data = backend.to_device(np.array(initial), device)
    backend.rng_for(np).bit_generator.state = stream
    return run


class ArmRecord(Extension):
    """What :func:`train_arm` records: each step's training loss and error (the step's batch,
    in training mode, before the update) and each epoch's held-out error and loss."""
    order = REPORT

    def __init__(self):
        self.losses, self.errors, self.held_out = [], [], []
        self._before = (0, 0.0, 0)      # the epoch's running sums after the previous step

    def after_step(self, trainer):
        running = trainer.running.settle()
        images, loss_sum, correct = (now - then for now, then in zip(
            (running.images, running.loss_sum, running.correct1), self._before))
        self.losses.append(loss_sum / images)
        self.errors.append(1.0 - correct / images)
        self._before = running.images, running.loss_sum, running.correct1

    def end_epoch(self, trainer, record):
        self._before = (0, 0.0, 0)
        self.held_out.append({"epoch": record["epoch"], "step": len(self.errors),
                              "error": record["val_error"], "loss": record["val_loss"]})


def train_arm(config: RunConfig, data, device: str = "cpu", *, train_eval: int = 1000,
              reference: RunConfig | None = None) -> dict:
    """Train ``config`` on ``data`` (:func:`minialex.recipe.load_data`'s), started as
    ``reference`` is (:func:`build_arm`), and return its record:
    per step ``train_loss`` and ``train_error``; per epoch ``held_out``; at the end
    ``held_out_error``, ``train_error_eval`` (eval mode, first ``train_eval`` training images),
    ``parameters``, ``seconds`` and ``stopped`` (None, or why the run stopped early)."""
    started = time.perf_counter()
    run = build_arm(config, reference, data, device)
    if run.val_loader is None:
        raise ValueError("train_arm: the held-out error needs a validation split; set "
                         "val_size > 0")
    arm = ArmRecord()
    # Ctrl-C raises at once: an arm cut short would be compared as if it had finished
    trainer = Trainer(run.model, run.optimizer, run.train_loader, epochs=config.epochs,
                      extensions=[LossCheck(), LearningRate(run.scheduler, run.warmup),
                                  Validation(run.val_loader), arm], catch_ctrl_c=False)
    stopped = None
    try:
        trainer.fit()
    except TrainingStopped as exc:      # the weights it stopped with are held out all the same
        stopped = str(exc)
        val = evaluate(run.model, run.val_loader)
        arm.held_out.append({"epoch": trainer.epoch + 1, "step": len(arm.errors),
                             "error": 1.0 - val["top1"], "loss": val["loss"]})
    seen = Loader(data.train.head(train_eval), run.test_loader.batch_size,
                  transform=run.test_loader.transform, device=device,
                  num_classes=run.test_loader.num_classes)
    held_out = arm.held_out
    return {"seed": config.seed, "settings": config.to_dict(), "steps": len(arm.errors),
            "train_loss": arm.losses, "train_error": arm.errors, "held_out": held_out,
            "held_out_error": held_out[-1]["error"], "held_out_loss": held_out[-1]["loss"],
            "train_error_eval": 1.0 - evaluate(run.model, seen)["top1"],
            "parameters": int(run.model.num_parameters()),
            "seconds": time.perf_counter() - started, "stopped": stopped}


def smoothed(errors, window: int) -> np.ndarray:
    """The mean of each ``window`` consecutive values: entry ``i`` covers steps
    ``i + 1 .. i + window`` (1-based), so it belongs to step ``i + window``."""
    errors = np.asarray(errors, dtype=np.float64)
    if len(errors) < window:
        return np.empty(0)
    return np.convolve(errors, np.full(window, 1.0 / window), mode="valid")


def steps_to_target(errors, target: float, window: int = 1) -> int | None:
    """The first step (1-based) at which the mean error of the last ``window`` steps is at or
    below ``target``; None when no step gets there."""
    positive_int("steps_to_target", "window", window)
    reached = np.flatnonzero(smoothed(errors, window) <= target)
    return int(reached[0]) + window if len(reached) else None


# -- a study -----------------------------------------------------------------------------------
def summarize(study: Study, budget: Budget, runs: list) -> dict:
    """Per arm (over seeds) and per seed pair: the study's numbers. ``runs[i]`` is the pair
    ``(arm one's record, arm two's record)`` of seed ``budget.seeds[i]``."""
    arms = []
    for index, (label, settings) in enumerate(study.arms):
        records = [pair[index] for pair in runs]
        arms.append({
            "label": label, "settings": settings,
            "held_out_error": [r["held_out_error"] for r in records],
            "train_error_eval": [r["train_error_eval"] for r in records],
            "gap": [r["held_out_error"] - r["train_error_eval"] for r in records],
            "final_train_loss": [float(np.mean(r["train_loss"][-budget.window:]))
                                 for r in records],
            "steps_to": {str(t): [steps_to_target(r["train_error"], t, budget.window)
                                  for r in records] for t in budget.targets},
            "steps": records[0]["steps"], "parameters": records[0]["parameters"],
            "seconds": [r["seconds"] for r in records],
            "stopped": [r["stopped"] for r in records]})
    first, second = arms
    ratios = {t: [b / a if a and b else None for a, b in zip(first["steps_to"][t],
                                                           second["steps_to"][t])]
              for t in first["steps_to"]}
    return {"study": study.name, "title": study.title, "switch": study.switch,
            "paper": study.paper, "metric": study.metric, "base": dict(study.base),
            "budget": budget.name, "budget_text": budget.describe(),
            "seeds": list(budget.seeds), "target": budget.target, "window": budget.window,
            "targets": list(budget.targets), "arms": arms,
            "effect": {"held_out_error": [b - a for a, b in zip(first["held_out_error"],
                                                                second["held_out_error"])],
                       "gap": [b - a for a, b in zip(first["gap"], second["gap"])],
                       "steps_ratio": ratios}}


def headline(summary: dict) -> str:
    """One sentence: the effect of the switch on the study's metric, its size over seeds and
    how many seeds point each way."""
    first, second = (arm["label"] for arm in summary["arms"])
    seeds = len(summary["seeds"])
    if summary["metric"] == "steps":
        target = str(summary["target"])
        a, b = (arm["steps_to"][target] for arm in summary["arms"])
        ratios = [r for r in summary["effect"]["steps_ratio"][target] if r is not None]
        missed = [(label, sum(s is None for s in steps)) for label, steps in
                  ((first, a), (second, b)) if any(s is None for s in steps)]
        text = (f"to {_pct(summary['target'])} training error, {second} took "
                f"{_spread(ratios, 'x', 2)} the steps of {first} "
                f"(more on {sum(r > 1 for r in ratios)} of {len(ratios)} seeds that both "
                f"reached it)" if ratios else
                f"no seed had both arms reach {_pct(summary['target'])} training error")
        for label, count in missed:
            text += (f"; {label} did not reach it within {summary['arms'][0]['steps']} steps "
                     f"on {count} of {seeds} seed{'s' * (seeds != 1)}")
        return text[0].upper() + text[1:] + "."
    diffs = summary["effect"]["held_out_error"]
    direction = ("higher" if np.mean(diffs) > 0 else "lower" if np.mean(diffs) < 0
                 else "unchanged")
    return (f"{second}: held-out error {_spread([100 * d for d in diffs], ' points', 1, sign=True)}"
            f" against {first} ({direction} on average; higher on {sum(d > 0 for d in diffs)}, "
            f"lower on {sum(d < 0 for d in diffs)} of {seeds} seed{'s' * (seeds != 1)}).")


def format_table(summary: dict) -> str:
    """The study as Markdown: what was run, the arms' table, the per-seed table, the effect."""
    targets = [str(t) for t in summary["targets"]]
    window = summary["window"]
    lines = [f"### {summary['study']}: {summary['title']}", "",
             f"- Switch: {summary['switch']}"
             + (f" (both arms: {', '.join(f'{k} {_show(v)}' for k, v in summary['base'].items())})"
                if summary["base"] else "") + ".",
             f"- Budget `{summary['budget']}`: {summary['budget_text']}.",
             f"- Paper: {summary['paper']}.", "",
             "| arm | steps to " + " / ".join(_pct(float(t)) for t in targets)
             + f" training error ({window}-step mean) | training loss (last {window} steps) "
             "| training error, eval mode | held-out error | gap (held-out - training) "
             "| parameters | seconds per run |",
             "|---|---|---|---|---|---|---|---|"]
    for arm in summary["arms"]:
        steps = " / ".join(_steps(arm["steps_to"][t], arm["steps"]) for t in targets)
        lines.append(f"| {arm['label']} | {steps} | {_spread(arm['final_train_loss'], '', 3)} "
                     f"| {_spread_pct(arm['train_error_eval'])} "
                     f"| {_spread_pct(arm['held_out_error'])} | {_spread_pct(arm['gap'])} "
                     f"| {arm['parameters']:,} | {_spread(arm['seconds'], '', 0)} |")
    first, second = (arm["label"] for arm in summary["arms"])
    target = str(summary["target"])
    lines += ["", f"| seed | held-out error, {first} | {second} | difference "
                  f"| steps to {_pct(summary['target'])}, {first} | {second} |",
              "|---|---|---|---|---|---|"]
    a, b = summary["arms"]
    for i, seed in enumerate(summary["seeds"]):
        lines.append(f"| {seed} | {_pct(a['held_out_error'][i])} | {_pct(b['held_out_error'][i])}"
                     f" | {100 * summary['effect']['held_out_error'][i]:+.1f} points "
                     f"| {_steps([a['steps_to'][target][i]], a['steps'])} "
                     f"| {_steps([b['steps_to'][target][i]], b['steps'])} |")
    stopped = [f"{arm['label']} (seed {seed}): {why}" for arm in summary["arms"]
               for seed, why in zip(summary["seeds"], arm["stopped"]) if why]
    lines += ["", f"**Effect** (paired by seed; mean ± standard deviation over seeds): "
                  f"{headline(summary)}"]
    if stopped:
        lines += ["", "Stopped early: " + "; ".join(stopped) + "."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs: list, path) -> str | None:
    """Save the study's curves as a PNG: smoothed training error per step (left) and held-out
    error per epoch (right), one line per seed and arm. None without matplotlib."""
    if Figure is None:
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig = Figure(figsize=(11, 4))
    left, right = fig.subplots(1, 2)
    window = summary["window"]
    for index, (arm, colour) in enumerate(zip(summary["arms"], ("tab:blue", "tab:orange"))):
        for i, pair in enumerate(runs):
            record = pair[index]
            curve = smoothed(record["train_error"], window)
            label = arm["label"] if i == 0 else None
            left.plot(np.arange(window, window + len(curve)), 100 * curve, color=colour,
                      alpha=0.8, linewidth=1, label=label)
            epochs = [h["step"] for h in record["held_out"]]
            right.plot(epochs, [100 * h["error"] for h in record["held_out"]], "o-",
                       color=colour, alpha=0.8, label=label)
    for target in summary["targets"]:
        left.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="step", ylabel=f"training error, % ({window}-step mean)",
             title=f"{summary['study']}: training error")
    right.set(xlabel="step (end of epoch)", ylabel="held-out error, %",
              title=f"{summary['study']}: held-out error")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['title']} (budget {summary['budget']}, "
                 f"seed{'s' * (len(summary['seeds']) != 1)} "
                 f"{', '.join(map(str, summary['seeds']))})")
    fig.tight_layout()
    checkpoint.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return str(path)


# -- all of it ---------------------------------------------------------------------------------
def run_studies(names=None, budget="cpu", *, device: str = "cpu", out=None, data_dir=None,
                stream=None) -> list:
    """Run the studies ``names`` (None: all) at ``budget`` (a name of :data:`BUDGETS` or a
    :class:`Budget`) on ``device``. Writes, when ``out`` is given, ``out/<study>.md``,
    ``.json`` and ``.png`` (with matplotlib) and ``out/ablations.md`` (every table, with the
    machine's load average). Returns the studies' summaries (:func:`summarize`)."""
    stream = sys.stdout if stream is None else stream
    names = list(STUDIES) if names is None else list(names)
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        raise ValueError(f"run_studies: unknown stud{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(unknown)}; choose from {', '.join(STUDIES)}")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"run_studies: budget must be one of {', '.join(BUDGETS)}, got "
                             f"{budget!r}")
        budget = BUDGETS[budget]
    started, load_before = time.time(), _load_average()
    data = recipe.load_data(budget.config, data_dir=data_dir)
    print(f"ablations: {', '.join(names)} | budget {budget.name}: {budget.describe()} | "
          f"device {recipe.describe_device(device)} | load average {load_before}",
          file=stream, flush=True)
    done, summaries, tables = {}, [], []
    for name in names:
        study = STUDIES[name]
        runs = []
        for seed in budget.seeds:
            pair = []
            for arm, (label, _) in enumerate(study.arms):
                config = study.config(budget, arm, seed)
                # a run shared by studies is trained once: every study's paper arm builds the
                # same shapes as the budget's run, so it starts alike whichever the reference
                if config not in done:
                    done[config] = train_arm(config, data, device, train_eval=budget.train_eval,
                                             reference=study.config(budget, 0, seed))
                record = done[config]
                print(f"{name} | {label} | seed {seed}: {record['steps']} steps, training "
                      f"error (last {budget.window}) "
                      f"{_pct(np.mean(record['train_error'][-budget.window:]))}, held-out "
                      f"{_pct(record['held_out_error'])}, {record['seconds']:.0f} s"
                      + (f" | stopped: {record['stopped']}" if record["stopped"] else ""),
                      file=stream, flush=True)
                pair.append(record)
            runs.append(tuple(pair))
        summary = summarize(study, budget, runs)
        table = format_table(summary)
        print(table, file=stream, flush=True)
        if out is not None:
            os.makedirs(out, exist_ok=True)
            _write_text(os.path.join(out, f"{name}.md"), table)
            checkpoint.write_json(os.path.join(out, f"{name}.json"),
                                  {"summary": summary, "runs": runs})
            picture = plot(summary, runs, os.path.join(out, f"{name}.png"))
            summary["plot"] = picture
            print(f"plot: {picture}" if picture else
                  "plot: install matplotlib (pip install matplotlib) for the curves",
                  file=stream, flush=True)
        summaries.append(summary)
        tables.append(table)
    if out is not None:
        minutes = (time.time() - started) / 60
        header = (f"# Ablations, budget `{budget.name}`\n\nDevice: "
                  f"{recipe.describe_device(device)}; {len(done)} runs in {minutes:.1f} min; "
                  f"load average (1, 5, 15 min) {load_before} before, {_load_average()} after."
                  f"\n\n")
        _write_text(os.path.join(out, "ablations.md"), header + "\n".join(tables))
    return summaries


def _write_text(path, text):
    """Atomically (:func:`minialex.checkpoint.atomic_write`): a run stopped mid-write leaves
    the file before, never half of one."""
    checkpoint.atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# -- formatting --------------------------------------------------------------------------------
def _load_average() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:                         # not every platform reports one
        return "unknown"


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _count(n) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _spread(values, unit="", digits=1, sign=False) -> str:
    """``mean ± sd`` (sample standard deviation) of ``values``, or the one value."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    fmt = f"{'+' if sign else ''}.{digits}f"
    mean = format(float(np.mean(values)), fmt)
    if len(values) == 1:
        return f"{mean}{unit}"
    return f"{mean} ± {float(np.std(values, ddof=1)):.{digits}f}{unit}"


def _spread_pct(values) -> str:
    return _spread([100 * v for v in values], "%", 1)


def _steps(values, total) -> str:
    """Steps to a target over seeds: ``mean ± sd``, or ``> total`` for seeds that did not
    reach it, as ``90 ± 4 (1 of 3: > 189)``."""
    reached = [v for v in values if v is not None]
    missed = len(values) - len(reached)
    if not reached:
        return f"> {total}"
    text = _spread(reached, "", 0)
    return text + (f" ({missed} of {len(values)}: > {total})" if missed else "")


__all__ = ["BUDGETS", "Budget", "STUDIES", "Study", "build_arm", "format_table", "headline", "plot",
           "run_studies", "smoothed", "steps_to_target", "summarize", "train_arm"]
