r"""Training: the epoch loop, top-k metrics, progress, logs and resumable checkpoints.

:class:`Trainer` runs, for each epoch: a training pass over shuffled mini-batches (forward,
softmax cross-entropy, backward, optimiser step), a validation pass, one step of the learning-rate
schedule on the validation error (the paper divides the rate by 10 when it stops improving), and
then writes

- ``metrics.jsonl``: one JSON object per epoch (losses, top-1/top-5 accuracies, learning rate,
  images/s, data-loading and compute seconds);
- ``last.npz``: the whole training state (weights, optimiser velocities, schedule, epoch and step,
  best validation error, history, every random generator), written atomically
  (:mod:`minialex.checkpoint`); ``best.npz``: the same at the lowest validation error so far.

Top-k accuracy: an image counts as correct at ``k`` when fewer than ``k`` classes score strictly
higher than its true class; the top-k *error* is one minus that. :func:`evaluate` scores one
(centre) crop per image; :func:`evaluate_ten_crop` scores the paper's ten crops per image by
their averaged softmax.

Exact resumption. Everything random is drawn from generators whose state the checkpoint holds:
``minialex.backend``'s CPU generator (dropout; on a GPU the dropout stream is reseeded from the
seed on resume, so GPU runs resume exactly except for dropout masks), the loader's shuffling generator *as it was
at the start of the current epoch* (so the epoch's order can be drawn again), and any other named
generators (augmentation) as they are now. A checkpoint may be taken in the middle of an epoch,
after step ``s``: resuming redraws the epoch's order, skips its first ``s`` batches and carries on
with the same running sums, so the run continues where it stopped, step for step.

Ctrl-C. During :meth:`Trainer.fit` the first Ctrl-C only sets a flag: the current step finishes,
``last.npz`` is saved and ``fit`` returns with ``stopped == "interrupted"``. A second Ctrl-C raises
``KeyboardInterrupt`` at once and saves nothing (it may land mid-update, or after the next
batch's random draws), so ``last.npz`` keeps the last state saved before.

Divergence. A loss that is NaN or infinite raises :class:`TrainingDiverged` before the update,
naming the epoch and step; nothing is saved, so ``last.npz`` keeps the last good state.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import signal
import sys
import threading
import time

import numpy as np

from . import __version__, backend, checkpoint
from . import functional as F
from .data.augment import average_softmax
from .optim import ReduceLROnPlateau
from .tensor import Tensor, no_grad

TOPK = (1, 5)
METRICS_FILE, SUMMARY_FILE = "metrics.jsonl", "summary.json"


def topk_correct(logits, labels, ks=TOPK) -> list:
    """How many rows of ``logits`` (N, C) have their label among the ``k`` highest scores, for
    each ``k`` (ties count in the label's favour). Works on NumPy and CuPy arrays."""
    xp = backend.get_array_module(logits)
    labels = xp.asarray(labels)
    true_score = xp.take_along_axis(logits, labels[:, None].astype(np.int64), axis=1)
    rank = (logits > true_score).sum(axis=1)     # classes scoring strictly higher
    return [int((rank < k).sum()) for k in ks]


def topk_accuracy(logits, labels, k=1) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    return topk_correct(logits, labels, (k,))[0] / max(len(logits), 1)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


@dataclasses.dataclass
class Running:
    """Sums over the batches of one pass (training epoch or evaluation)."""
    images: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    data_seconds: float = 0.0
    compute_seconds: float = 0.0

    def add(self, n, loss_sum, correct):
        self.images += n
        self.steps += 1
        self.loss_sum += loss_sum
        self.correct1 += correct[0]
        self.correct5 += correct[1]

    @property
    def seconds(self):
        return self.data_seconds + self.compute_seconds

    def metrics(self, prefix) -> dict:
        n = max(self.images, 1)
        return {f"{prefix}_loss": self.loss_sum / n, f"{prefix}_top1": self.correct1 / n,
                f"{prefix}_top5": self.correct5 / n, f"{prefix}_images": self.images,
                f"{prefix}_images_per_second": self.images / max(self.seconds, 1e-9),
                f"{prefix}_data_seconds": self.data_seconds,
                f"{prefix}_compute_seconds": self.compute_seconds}


def evaluate(model, loader) -> dict:
    """Loss and top-1/top-5 accuracy of ``model`` over ``loader``, in eval mode and without
    gradients: ``{"loss", "top1", "top5", "images", "images_per_second", ...}``."""
    return _evaluate(model, loader, _single_crop_scores)


def evaluate_ten_crop(model, loader) -> dict:
    """:func:`evaluate` with the paper's test-time averaging: ``loader`` yields batches of
    crops ``(n_crops, N, C, H, W)`` (e.g. ``transform=Augmenter.ten_crop``); all ``n_crops * N``
    go through the model as one batch, and the mean of their softmax outputs
    (:func:`~minialex.data.augment.average_softmax`) is each image's prediction. ``loss`` is
    the cross-entropy of that mean, ``-log p[label]``; ``images`` counts images, not crops."""
    return _evaluate(model, loader, _averaged_crop_scores)


def _single_crop_scores(model, x, y):
    logits = model(Tensor(x))
    return float(F.cross_entropy(logits, y, reduction="sum").item()), logits.data


def _averaged_crop_scores(model, x, y):
    if x.ndim != 5:
        raise ValueError(f"evaluate_ten_crop: expected batches of crops (n_crops, N, C, H, W), "
                         f"got shape {x.shape}")
    n_crops, n = x.shape[:2]
    logits = model(Tensor(x.reshape((n_crops * n,) + x.shape[2:])))   # crop-major rows
    probs = average_softmax(logits.data, n_crops)
    xp = backend.get_array_module(probs)
    p_true = xp.take_along_axis(probs, xp.asarray(y)[:, None].astype(np.int64), axis=1)
    # an averaged probability can underflow to 0 only if every crop gave it 0: cap the loss
    loss_sum = -xp.log(xp.maximum(p_true, np.finfo(probs.dtype).tiny)).sum()
    return float(loss_sum), probs


def _evaluate(model, loader, scores) -> dict:
    """Sum ``scores(model, x, y) -> (loss summed over the batch, (N, classes) scores)`` over
    ``loader`` in eval mode without gradients; top-k is ranked on the scores."""
    running = Running()
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for x, y in _timed(loader.epoch(), running):
                loss_sum, batch_scores = scores(model, x, y)
                running.add(len(y), loss_sum, topk_correct(batch_scores, y))
    finally:
        model.train(was_training)
    return {k.split("_", 1)[1]: v for k, v in running.metrics("x").items()}


def _timed(iterator, running):
    """Yield from ``iterator``, adding the time spent waiting for each item to
    ``running.data_seconds`` and the time the caller spends on it to ``compute_seconds``
    (counted when the caller asks for the next item)."""
    end = time.perf_counter()
    for item in iterator:
        start = time.perf_counter()
        running.data_seconds += start - end
        yield item
        end = time.perf_counter()
        running.compute_seconds += end - start


def _where(epoch, step) -> str:
    """A point of the run, from (epochs completed, steps into the next one)."""
    return f"the end of epoch {epoch}" if step == 0 and epoch else f"epoch {epoch + 1}, step {step}"


def _clock(seconds) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe_device(device: str) -> str:
    """``cpu (2 cores, x86_64)`` or ``gpu:0 (NVIDIA H100 80GB HBM3)``."""
    if device.startswith("gpu"):
        props = backend.require_cupy().cuda.runtime.getDeviceProperties(int(device[4:]))
        name = props["name"]
        return f"{device} ({name.decode() if isinstance(name, bytes) else name})"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def _shape_mismatches(model, state) -> list:
    own = {k: tuple(p.shape) for k, p in model.named_parameters()}
    theirs = {k: tuple(np.shape(v)) for k, v in state.items()}
    out = [f"{k}: checkpoint {theirs[k]}, model {own[k]}" for k in own
           if k in theirs and theirs[k] != own[k]]
    out += [f"{k}: missing from the checkpoint" for k in own if k not in theirs]
    out += [f"{k}: not in the model" for k in theirs if k not in own]
    return out


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader``, validating on ``val_loader``.

    Args:
        model: a Module mapping a batch (N, C, H, W) to logits (N, classes), on its device.
        optimizer: e.g. :class:`minialex.optim.SGD` over ``model.parameters()``.
        train_loader: a :class:`minialex.data.Loader`; its ``generator`` shuffles.
        val_loader: a Loader for the validation pass (needed for ``best.npz`` and for
            ReduceLROnPlateau), or None.
        scheduler: ReduceLROnPlateau (stepped on the validation error), StepLR, or None.
        epochs: total epochs of the run (a resumed run counts the epochs already done).
        out_dir: where checkpoints, ``metrics.jsonl`` and ``summary.json`` go (None: nowhere).
        rngs: other named ``numpy.random.Generator`` s to checkpoint, e.g. augmentation's.
        config: JSON-able run settings, stored in checkpoints and the summary.
        print_freq: progress line every ``print_freq`` steps (0: only the epoch lines).
        stream: where progress goes (default ``sys.stdout``); ``\r``-updated on a terminal.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, *, scheduler=None,
                 epochs=1, out_dir=None, rngs=None, config=None, print_freq=50, stream=None):
        if isinstance(scheduler, ReduceLROnPlateau) and val_loader is None:
            raise ValueError("Trainer: ReduceLROnPlateau steps on the validation error, so it "
                             "needs a val_loader")
        if not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Trainer: epochs must be a positive int, got {epochs!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs, self.out_dir, self.print_freq = int(epochs), out_dir, print_freq
        self.rngs, self.config = dict(rngs or {}), dict(config or {})
        self.stream = sys.stdout if stream is None else stream
        self.architecture = getattr(model, "variant", type(model).__name__)
        first = next(iter(model.parameters()))
        self.device = backend.device_of(first.data)
        # progress through the run
        self.epoch, self.step = 0, 0          # epochs completed; steps done in the current one
        self.running = Running()              # sums of the current training epoch
        self.epoch_open = False               # the current epoch's order has been drawn
        self.epoch_start_state = None         # shuffle generator state when it was drawn
        self.best_val_error, self.best_epoch = math.inf, None
        self.history, self.stopped = [], None
        self.train_images_total, self.train_seconds_total = 0, 0.0
        self._interrupted = False
        self._last_saved = None               # (epoch, step) of the last last.npz written
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------
    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> str:
        """Train until ``epochs`` are done, the schedule is exhausted, or Ctrl-C; returns (and
        sets ``self.stopped`` to) ``"completed"``, ``"schedule exhausted"`` or
        ``"interrupted"``. Raises :class:`TrainingDiverged` on a NaN/inf loss."""
        self._interrupted, self.stopped = False, None
        previous = self._install_sigint()
        try:
            while self.epoch < self.epochs and self.stopped is None:
                if self._train_epoch():
                    self._end_epoch()
                if self._interrupted:
                    self.stopped = "interrupted"
                elif getattr(self.scheduler, "exhausted", False):
                    self.stopped = "schedule exhausted"
            self.stopped = self.stopped or "completed"
        except KeyboardInterrupt:
            # A second Ctrl-C lands anywhere: mid-update, or after the next batch was already
            # drawn (its crops, flips and dropout masks): saving now would not resume exactly.
            print(f"\nstopped at once: nothing saved; {self.path('last.npz')} holds the state "
                  f"saved before", file=self.stream)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.stopped == "interrupted":
            saved = self.save("last.npz")
            where = f"; saved {saved}" if saved else ""
            print(f"\ninterrupted at {_where(self.epoch, self.step)}{where}", file=self.stream)
        return self.stopped

    def _install_sigint(self):
        """First Ctrl-C: finish the step, then stop and save. Only in the main thread, where
        Python delivers signals."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            print("\nCtrl-C: stopping after this step and saving a checkpoint "
                  "(Ctrl-C again to stop at once)", file=self.stream, flush=True)

        return signal.signal(signal.SIGINT, on_sigint)

    def _train_epoch(self) -> bool:
        """One training pass (or the rest of one); False when interrupted before its end."""
        loader, shuffler = self.train_loader, self.train_loader.generator
        if not self.epoch_open:
            self.epoch_start_state = shuffler.bit_generator.state if shuffler else None
            self.running, self.step, self.epoch_open = Running(), 0, True
        elif shuffler is not None:   # continuing an epoch: draw its order again
            shuffler.bit_generator.state = self.epoch_start_state
        total = len(loader)
        batches = loader.epoch(start=self.step)
        self.model.train()
        running = self.running
        try:
            while True:
                start = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                loaded = time.perf_counter()
                n, loss_sum, correct = self._forward_backward(*batch, total)
                self.optimizer.step()
                running.add(n, loss_sum, correct)
                self.step += 1
                running.data_seconds += loaded - start
                running.compute_seconds += time.perf_counter() - loaded
                if self.print_freq and (self.step % self.print_freq == 0 or self.step == total):
                    self._progress(total)
                if self._interrupted:
                    return False
        finally:
            batches.close()
        return True

    def _forward_backward(self, x, y, total):
        """Loss and gradients of one batch; raises TrainingDiverged before any update."""
        logits = self.model(Tensor(x))
        loss = F.cross_entropy(logits, y)
        value = float(loss.item())
        if not math.isfinite(value):
            last = self.path("last.npz")
            if self._last_saved is not None:
                kept = f"{last} keeps the last good state, from {_where(*self._last_saved)}"
            elif last is not None and os.path.exists(last):
                kept = f"{last} is left as it was"
            else:
                kept = "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"training diverged: loss is {value} at epoch {self.epoch + 1}, step "
                f"{self.step + 1}/{total} (lr {self.optimizer.lr:g}); stopped without saving, "
                f"{kept}; try a lower learning rate")
        self.optimizer.zero_grad()
        loss.backward()
        return len(y), value * len(y), topk_correct(logits.data, y)

    def evaluate(self, loader) -> dict:
        """:func:`evaluate` of this trainer's model."""
        return evaluate(self.model, loader)

    def _end_epoch(self):
        val = self.evaluate(self.val_loader) if self.val_loader is not None else None
        if val is not None and not math.isfinite(val["loss"]):
            # weights that give a NaN validation loss are no "best": keep what is on disk
            raise TrainingDiverged(
                f"training diverged: validation loss is {val['loss']} after epoch "
                f"{self.epoch + 1} (lr {self.optimizer.lr:g}); stopped before saving that "
                f"epoch, so any checkpoint on disk is from an earlier one; try a lower "
                f"learning rate")
        running, lr = self.running, self.optimizer.lr
        record = {"epoch": self.epoch + 1, "lr": lr, **running.metrics("train")}
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items()})
            record["val_error"] = 1.0 - val["top1"]
        improved = val is not None and record["val_error"] < self.best_val_error
        record["best"] = improved
        record["time"] = datetime.datetime.now().isoformat(timespec="seconds")
        # the epoch is complete: advance the state, then save it
        self.train_images_total += running.images
        self.train_seconds_total += running.seconds
        self.epoch, self.step, self.epoch_open = self.epoch + 1, 0, False
        self.running = Running()
        if improved:
            self.best_val_error, self.best_epoch = record["val_error"], self.epoch
        if self.scheduler is not None:
            self.scheduler.step(record.get("val_error"))
        self.history.append(record)
        self.save("last.npz")
        if improved:
            self.save("best.npz")
        if self.out_dir is not None:
            with open(self.path(METRICS_FILE), "a") as f:
                f.write(json.dumps(record) + "\n")
        self._epoch_line(record)

    # -- output --------------------------------------------------------------------------
    def _write(self, line, end="\n"):
        live = getattr(self.stream, "isatty", lambda: False)()
        if live and end == "\r":
            self.stream.write("\r" + line.ljust(getattr(self, "_width", 0)))
            self._width = len(line)
        elif end == "\r":
            self.stream.write(line + "\n")
        else:
            self.stream.write(("\r" + " " * getattr(self, "_width", 0) + "\r" if live else "")
                              + line + end)
            self._width = 0
        self.stream.flush()

    def _progress(self, total):
        r = self.running
        steps = max(r.steps, 1)
        eta = (total - self.step) * r.seconds / steps
        self._write(f"epoch {self.epoch + 1}/{self.epochs} [{self.step:>{len(str(total))}}/"
                    f"{total}] loss {r.loss_sum / max(r.images, 1):.4f} "
                    f"acc {r.correct1 / max(r.images, 1):6.2%} "
                    f"{r.images / max(r.seconds, 1e-9):8.1f} img/s | "
                    f"data {1e3 * r.data_seconds / steps:6.1f} ms "
                    f"compute {1e3 * r.compute_seconds / steps:7.1f} ms per step | "
                    f"ETA {_clock(eta)}", end="\r")

    def _epoch_line(self, record):
        line = (f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.4f} "
                f"top1 {record['train_top1']:.2%} ({record['train_images_per_second']:.1f} "
                f"img/s, data {record['train_data_seconds']:.1f} s + compute "
                f"{record['train_compute_seconds']:.1f} s)")
        if "val_loss" in record:
            line += (f" | val loss {record['val_loss']:.4f} top1 {record['val_top1']:.2%} "
                     f"top5 {record['val_top5']:.2%}")
        line += f" | lr {record['lr']:g}" + (" | best" if record["best"] else "")
        if self.optimizer.lr != record["lr"]:
            line += f" | lr -> {self.optimizer.lr:g}"
        self._write(line)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        """The whole training state as a checkpoint tree (see the module docstring)."""
        shuffler = self.train_loader.generator
        shuffle_state = (self.epoch_start_state if self.epoch_open
                         else shuffler.bit_generator.state if shuffler else None)
        return {
            "architecture": self.architecture,
            "config": self.config,
            "model": dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "trainer": {"epoch": self.epoch, "step": self.step, "epochs": self.epochs,
                        "epoch_open": self.epoch_open,
                        "running": dataclasses.asdict(self.running),
                        "best_val_error": self.best_val_error, "best_epoch": self.best_epoch,
                        "train_images_total": self.train_images_total,
                        "train_seconds_total": self.train_seconds_total,
                        "history": self.history},
            "rng": {"backend": backend.get_rng_state(), "shuffle": shuffle_state,
                    "generators": {k: g.bit_generator.state for k, g in self.rngs.items()}},
        }

    def save(self, name):
        """Write :meth:`state` to ``out_dir/name`` atomically; returns the path (None without
        an ``out_dir``)."""
        path = self.path(name)
        if path is not None:
            checkpoint.save(path, self.state())
            if name == "last.npz":
                self._last_saved = (self.epoch, self.step)
        return path

    def load_state(self, tree, source="checkpoint"):
        """Restore a :meth:`state` tree (from ``checkpoint.load``); ``source`` names it in
        errors. A checkpoint of another architecture is refused with the mismatches."""
        arch, weights = tree.get("architecture"), tree.get("model")
        if not isinstance(weights, dict):
            raise ValueError(f"{source}: holds no model weights")
        if arch != self.architecture:
            details = _shape_mismatches(self.model, weights)
            raise ValueError(f"{source}: checkpoint of architecture {arch!r} cannot be loaded "
                             f"into a {self.architecture!r} model"
                             + (": " + "; ".join(details) if details else ""))
        try:  # read every field first, so a partial file changes nothing and says what is missing
            t, rng = tree["trainer"], tree["rng"]
            generators = rng["generators"]
            missing = [k for k in self.rngs if k not in generators]
            if missing:
                raise ValueError(f"no state for generator(s) {', '.join(missing)}")
            position = int(t["epoch"]), int(t["step"]), t["epoch_open"]
            running = Running(**t["running"])
            best = float(t["best_val_error"]), t["best_epoch"]
            totals = int(t["train_images_total"]), float(t["train_seconds_total"])
            history, backend_rng, shuffle = list(t["history"]), rng["backend"], rng["shuffle"]
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(tree["optimizer"])
            if self.scheduler is not None and tree.get("scheduler") is not None:
                self.scheduler.load_state_dict(tree["scheduler"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: incomplete training state (missing {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        self.epoch, self.step, self.epoch_open = position
        self.running = running
        self.best_val_error, self.best_epoch = best
        self.train_images_total, self.train_seconds_total = totals
        self.history = history
        backend.set_rng_state(backend_rng)
        for name, g in self.rngs.items():
            g.bit_generator.state = generators[name]
        if self.train_loader.generator is not None and shuffle is not None:
            self.train_loader.generator.bit_generator.state = shuffle
        self.epoch_start_state = shuffle if self.epoch_open else None

    # -- the end of a run ----------------------------------------------------------------
    def test(self, loader, weights="best") -> dict:
        """Evaluate on ``loader`` with the ``"best"`` checkpoint's weights (loaded into the
        model, when there is one) or the ``"last"`` (current) ones."""
        best = self.path("best.npz")
        used = "last"
        if weights == "best" and best is not None and os.path.exists(best):
            self.model.load_state_dict(checkpoint.load(best)["model"])
            used = f"best (epoch {self.best_epoch})"
        metrics = self.evaluate(loader)
        metrics["weights"] = used
        return metrics

    def summary(self, test=None, **extra) -> dict:
        """The run's summary: test metrics (accuracies in [0, 1]), epochs, throughput, device,
        model and settings; ``extra`` entries are added as given."""
        out = {}
        if test is not None:
            out.update({"test_top1": test["top1"], "test_top5": test["top5"],
                        "test_loss": test["loss"], "test_images": test["images"],
                        "test_weights": test.get("weights", "last"),
                        "eval_images_per_second": test["images_per_second"]})
        out.update({
            "epochs": self.epoch, "epochs_planned": self.epochs, "stopped": self.stopped,
            "best_epoch": self.best_epoch,
            "best_val_top1": None if self.best_epoch is None else 1.0 - self.best_val_error,
            "final_lr": self.optimizer.lr,
            "images_per_second": self.train_images_total / max(self.train_seconds_total, 1e-9),
            "train_seconds": self.train_seconds_total,
            "device": describe_device(self.device),
            "model": self.architecture, "parameters": int(self.model.num_parameters()),
            "args": self.config,
            "versions": {"minialex": __version__, "numpy": np.__version__,
                         "python": platform.python_version()},
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        })
        out.update(extra)
        return out

    def write_summary(self, summary) -> str | None:
        """Write ``summary`` to ``out_dir/summary.json`` atomically; returns the path."""
        path = self.path(SUMMARY_FILE)
        if path is not None:
            text = json.dumps(summary, indent=2) + "\n"
            checkpoint.atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path
