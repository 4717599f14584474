r"""Training: one epoch, evaluation, and a :class:`Trainer` that runs epochs and can be resumed.

The loop itself is four lines, in :func:`train_one_epoch`::

    logits = model(Tensor(x))                 # forward
    loss = F.cross_entropy(logits, y)         # softmax cross-entropy, averaged over the batch
    loss.backward()                           # every parameter's .grad
    optimizer.step()                          # SGD with momentum and weight decay

:func:`evaluate` scores a model on one (centre) crop per image, :func:`evaluate_ten_crop` on the
paper's ten crops per image by their averaged softmax (Sec. 4.1). Top-k accuracy: an image counts
as correct at ``k`` when fewer than ``k`` classes rank before its true class (higher scores
first, ties by class index).

:class:`Trainer` adds what a long run needs around that loop, one epoch at a time: a validation
pass, the learning-rate warm-up and schedule, a watch on the loss (:mod:`minialex.watch`), a
progress line, ``metrics.jsonl`` (one JSON line per epoch, written *before* the checkpoint that
includes that epoch, so a kill between the two loses nothing) and the checkpoints ``last.npz``
and ``best.npz`` (lowest validation error), written atomically (:mod:`minialex.checkpoint`).

Exact resumption. Everything random is drawn from generators whose state the checkpoint holds:
``minialex.backend``'s (dropout; on a GPU the dropout stream is reseeded on resume, so GPU runs
resume exactly except for dropout masks) and the training loader's (shuffling and augmentation:
``Loader.state_dict``). A checkpoint taken after step ``s`` of an epoch resumes by drawing that
epoch's order again, skipping its first ``s`` batches and carrying on with the same running
sums, so the run continues step for step.

Ctrl-C. During :meth:`Trainer.fit` the first Ctrl-C only sets a flag: the current step finishes,
``last.npz`` is saved and ``fit`` returns ``"interrupted"``. A second Ctrl-C raises
``KeyboardInterrupt`` at once and saves nothing (it may land mid-update, or after the next
batch's random draws), so ``last.npz`` keeps the last state saved before.

Stopping early. A NaN or infinite loss, or a loss stuck at chance (:mod:`minialex.watch`), raises
:class:`~minialex.watch.TrainingStopped` before the update; nothing is saved, so ``last.npz``
keeps the last good state and resumes from it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import threading
import time

import numpy as np

from . import backend, checkpoint
from . import functional as F
from .layers.loss import class_indices
from .optim import ReduceLROnPlateau
from .progress import StatusLine
from .tensor import Tensor, no_grad
from .watch import MAX_KEPT, TrainingDiverged, TrainingStopped

TOPK = (1, 5)
METRICS_FILE = "metrics.jsonl"


# -- the loop ----------------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer, *, start=0, running=None, before_update=None,
                    after_step=None):
    """One pass over ``loader`` (from its batch ``start`` on), one SGD step per batch; returns
    the :class:`Running` sums. ``before_update(loss)``, called between the loss and the update,
    may raise to stop with the weights untouched, or adjust the learning rate;
    ``after_step(running)`` returning True stops after that step."""
    running = Running() if running is None else running
    checked = getattr(loader, "num_classes", None)     # the label range the loader checked
    model.train()
    batches = loader.epoch(start=start)
    try:
        for x, y in _timed(batches, running):
            logits = model(Tensor(x))
            # a loader given the model's num_classes checked the labels on the host already
            loss = F.cross_entropy(logits, y, check_labels=checked != logits.shape[1])
            value = float(loss.item())              # the one wait for the device in a step
            if before_update is not None:
                before_update(value)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            # counted on the device, read when a progress line or the epoch's metrics need them
            running.add(len(y), value * len(y), topk_counts(logits.data, y))
            if after_step is not None and after_step(running):
                break
    finally:
        batches.close()
    return running


def evaluate(model, loader, *, keep_probabilities=False) -> dict:
    """Loss and top-1/top-5 accuracy of ``model`` over ``loader``, in eval mode and without
    gradients: ``{"loss", "top1", "top5", "images", "images_per_second", ...}``. With
    ``keep_probabilities`` also ``"probabilities"`` (N, classes), each image's softmax, and
    ``"labels"`` (N,), NumPy arrays read back once at the end (a report's confusion matrix
    then needs no second pass)."""
    keep = (lambda logits: F.average_softmax(logits, 1)) if keep_probabilities else None
    return _evaluate(model, loader, _single_crop_scores, keep)


def evaluate_ten_crop(model, loader) -> dict:
    """:func:`evaluate` with the paper's test-time averaging: ``loader`` yields batches of
    crops ``(n_crops, N, C, H, W)`` (e.g. ``transform=Augmenter.ten_crop``); all ``n_crops * N``
    go through the model as one batch, and the mean of their softmax outputs is each image's
    prediction. ``loss`` is the cross-entropy of that mean, ``-log p[label]``; ``images``
    counts images, not crops."""
    return _evaluate(model, loader, _averaged_crop_scores)


def topk_correct(logits, labels, ks=TOPK) -> list:
    """How many rows of ``logits`` (N, C) have their label among the ``k`` highest scores, for
    each ``k``. Ties are broken by class index, as ``argmax`` does: a network that gives every
    class the same score predicts class 0, not every class. Works on NumPy and CuPy arrays."""
    return [int(c) for c in backend.to_numpy(topk_counts(logits, labels, ks))]


def topk_counts(logits, labels, ks=TOPK):
    """:func:`topk_correct` as an int64 array on the logits' device, so that nothing waits for
    the device to read it back."""
    xp = backend.get_array_module(logits)
    with backend.device_scope(logits):
        labels = xp.asarray(labels)[:, None].astype(np.int64)
        true_score = xp.take_along_axis(logits, labels, axis=1)
        ahead = (logits > true_score) | ((logits == true_score)
                                         & (xp.arange(logits.shape[1]) < labels))
        rank = ahead.sum(axis=1)                     # classes ranked before the label
        return xp.stack([(rank < k).sum() for k in ks]).astype(np.int64)


def topk_accuracy(logits, labels, k=1) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores."""
    return topk_correct(logits, labels, (k,))[0] / max(len(logits), 1)


@dataclasses.dataclass
class Running:
    """Sums over the batches of one pass (training epoch or evaluation).

    Top-1/top-5 counts and loss sums given as GPU arrays are summed on the GPU; :meth:`settle`
    reads those sums back (a blocking transfer each) into ``correct1``/``correct5`` and
    ``loss_sum``. :meth:`metrics`, the trainer's progress line and its checkpoint state settle
    first; any other reader calls it.
    """
    images: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct1: int = 0
    correct5: int = 0
    data_seconds: float = 0.0
    compute_seconds: float = 0.0

    def __post_init__(self):
        self._pending = None    # GPU sum of the counts not yet added to correct1/correct5
        self._pending_loss = None    # GPU sum of the loss sums not yet added to loss_sum

    def add(self, n, loss_sum, correct):
        """One batch: ``n`` images, their summed loss (a number, or a GPU scalar), their (top-1,
        top-5) counts."""
        self.images += n
        self.steps += 1
        if backend.is_gpu_array(loss_sum):
            with backend.device_scope(loss_sum):  # in float64, as the host sums them
                loss_sum = loss_sum.astype(np.float64)
                self._pending_loss = (loss_sum if self._pending_loss is None
                                      else self._pending_loss + loss_sum)
        else:
            self.loss_sum += float(loss_sum)
        if backend.is_gpu_array(correct):
            with backend.device_scope(correct):
                self._pending = correct if self._pending is None else self._pending + correct
        else:
            self.correct1 += int(correct[0])
            self.correct5 += int(correct[1])

    def settle(self) -> Running:
        """Add the counts and loss still summed on the GPU to ``correct1``/``correct5`` and
        ``loss_sum``; returns self."""
        if self._pending_loss is not None:
            pending_loss, self._pending_loss = backend.to_numpy(self._pending_loss), None
            self.loss_sum += float(pending_loss)
        if self._pending is not None:
            pending, self._pending = backend.to_numpy(self._pending), None
            self.correct1 += int(pending[0])
            self.correct5 += int(pending[1])
        return self

    @property
    def seconds(self):
        return self.data_seconds + self.compute_seconds

    def metrics(self, prefix) -> dict:
        self.settle()
        n = max(self.images, 1)
        return {f"{prefix}_loss": self.loss_sum / n, f"{prefix}_top1": self.correct1 / n,
                f"{prefix}_top5": self.correct5 / n, f"{prefix}_images": self.images,
                f"{prefix}_images_per_second": self.images / max(self.seconds, 1e-9),
                f"{prefix}_data_seconds": self.data_seconds,
                f"{prefix}_compute_seconds": self.compute_seconds}


# The scores below return their loss as an array on the model's device: evaluation sums it there
# and reads it once at the end, not once per batch. ``checked`` is the number of classes whose
# label range the loader checked on the host (None: unchecked), as in train_one_epoch.
def _single_crop_scores(model, x, y, checked=None):
    logits = model(Tensor(x))
    loss = F.cross_entropy(logits, y, reduction="sum", check_labels=checked != logits.shape[1])
    return loss.data, logits.data


def _averaged_crop_scores(model, x, y, checked=None):
    if x.ndim != 5:
        raise ValueError(f"evaluate_ten_crop: expected batches of crops (n_crops, N, C, H, W), "
                         f"got shape {x.shape}")
    n_crops, n = x.shape[:2]
    logits = model(Tensor(x.reshape((n_crops * n,) + x.shape[2:])))   # crop-major rows
    probs = F.average_softmax(logits.data, n_crops)
    xp = backend.get_array_module(probs)
    classes = probs.shape[1]
    labels = class_indices("evaluate_ten_crop", y, classes, check_range=checked != classes,
                           context=f" for {classes} classes")
    with backend.device_scope(probs):
        labels = xp.asarray(labels)[:, None].astype(np.int64)
        p_true = xp.take_along_axis(probs, labels, axis=1)
    # an averaged probability can underflow to 0 only if every crop gave it 0: cap the loss
    loss_sum = -xp.log(xp.maximum(p_true, np.finfo(probs.dtype).tiny)).sum()
    return loss_sum, probs


def _evaluate(model, loader, scores, keep=None) -> dict:
    """Sum ``scores(model, x, y) -> (loss summed over the batch, (N, classes) scores)`` over
    ``loader`` in eval mode without gradients; top-k is ranked on the scores. ``keep(scores)``,
    when given, is kept for every image (``"probabilities"``, with ``"labels"``)."""
    running = Running()
    checked = getattr(loader, "num_classes", None)
    kept, labels = [], []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for x, y in _timed(loader.epoch(), running):
                loss_sum, batch_scores = scores(model, x, y, checked)
                running.add(len(y), loss_sum, topk_counts(batch_scores, y))
                if keep is not None:  # on the device: read back once, below
                    kept.append(keep(batch_scores))
                    labels.append(y)
    finally:
        model.train(was_training)
    metrics = {k.split("_", 1)[1]: v for k, v in running.metrics("x").items()}
    if keep is not None:
        metrics["probabilities"] = _gathered(kept, np.float32)
        metrics["labels"] = _gathered(labels, np.int64)
    return metrics


def _gathered(batches, dtype) -> np.ndarray:
    """The batches' arrays (on one device) joined, as one NumPy array of ``dtype``."""
    if not batches:
        return np.zeros(0, dtype)
    xp = backend.get_array_module(batches[0])
    with backend.device_scope(batches[0]):
        joined = xp.concatenate([xp.asarray(b) for b in batches])
    return backend.to_numpy(joined).astype(dtype, copy=False)


def _timed(iterator, running):
    """Yield from ``iterator``, adding the time spent waiting for each item to
    ``running.data_seconds`` and the time the caller spends on it to ``compute_seconds``."""
    end = time.perf_counter()
    for item in iterator:
        start = time.perf_counter()
        running.data_seconds += start - end
        yield item
        end = time.perf_counter()
        running.compute_seconds += end - start


# -- the trainer -------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` with ``optimizer`` on ``train_loader`` for ``epochs``, validating on
    ``val_loader`` after each; see the module docstring for what it writes and how it resumes.

    Args:
        model: a Module mapping a batch (N, C, H, W) to logits (N, classes), on its device.
        optimizer: e.g. :class:`minialex.optim.SGD` over ``model.parameters()``.
        train_loader: a :class:`minialex.data.Loader` (its ``state_dict`` is checkpointed).
        val_loader: a Loader for validation (needed for ``best.npz`` and ReduceLROnPlateau).
        scheduler: ReduceLROnPlateau (stepped on the validation error), StepLR, or None.
        warmup: a :class:`minialex.optim.LinearWarmup`, or None.
        watch: a :class:`minialex.watch.LossWatch`, or None (NaN/inf still stop the run).
        epochs: total epochs of the run (a resumed run counts the epochs already done).
        out_dir: where checkpoints and ``metrics.jsonl`` go (None: nowhere).
        config: JSON-able run settings, stored in the checkpoints.
        extra_state: JSON-able facts stored in the checkpoints as they are (e.g. class names).
        print_freq: progress line every ``print_freq`` steps (0: only the epoch lines).
        stream: where progress goes (default ``sys.stdout``); rewritten in place on a terminal.
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, *, scheduler=None,
                 warmup=None, watch=None, epochs=1, out_dir=None, config=None,
                 extra_state=None, print_freq=50, stream=None):
        if isinstance(scheduler, ReduceLROnPlateau) and val_loader is None:
            raise ValueError("Trainer: ReduceLROnPlateau steps on the validation error, so it "
                             "needs a val_loader")
        if not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"Trainer: epochs must be a positive int, got {epochs!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.warmup, self.watch = warmup, watch
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs, self.out_dir, self.print_freq = int(epochs), out_dir, print_freq
        self.config, self.extra_state = dict(config or {}), dict(extra_state or {})
        self.status = StatusLine(stream)
        self.architecture = getattr(model, "variant", type(model).__name__)
        self.epoch, self.step = 0, 0          # epochs completed; steps done in the current one
        self.global_step = 0                  # steps done in the whole run
        self.running = Running()              # sums of the current training epoch
        self.best_val_error, self.best_epoch = math.inf, None
        self.history, self.stopped, self.warnings = [], None, []
        self.train_images_total, self.train_seconds_total = 0, 0.0
        self._interrupted = False
        self._last_saved = None               # (epoch, step) of the last last.npz written
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)

    @property
    def stream(self):
        return self.status.stream

    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def fit(self) -> str:
        """Train until ``epochs`` are done, the schedule is exhausted, or Ctrl-C; returns (and
        sets ``self.stopped`` to) ``"completed"``, ``"schedule exhausted"`` or
        ``"interrupted"``. Raises :class:`~minialex.watch.TrainingStopped` when the loss is
        NaN/inf or stuck at chance."""
        self._interrupted, self.stopped = False, None
        self._trim_metrics()        # a fresh run starts it anew (a killed run may have left lines)
        try:
            # the watch names a non-finite loss itself, once: no NumPy overflow warnings first
            with self._first_ctrl_c_sets_a_flag(), np.errstate(over="ignore", invalid="ignore"):
                while self.epoch < self.epochs and self.stopped is None:
                    if self._train_epoch():
                        self._end_epoch()
                    if self._interrupted:
                        self.stopped = "interrupted"
                    elif getattr(self.scheduler, "exhausted", False):
                        self.stopped = "schedule exhausted"
        except KeyboardInterrupt:
            self.status.print(f"\nstopped at once: nothing saved; {self.path('last.npz')} holds "
                              f"the state saved before")
            raise
        self.stopped = self.stopped or "completed"
        if self.stopped == "interrupted":
            with self._writing():
                saved = self.save("last.npz")
            self.status.print(f"interrupted at {_where(self.epoch, self.step)}"
                              + (f"; saved {saved}" if saved else ""))
        return self.stopped

    @contextlib.contextmanager
    def _first_ctrl_c_sets_a_flag(self):
        """The first Ctrl-C lets the step finish; the second raises KeyboardInterrupt. Only in
        the main thread, where Python delivers signals."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_sigint(signum, frame):
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            self.status.print("\nCtrl-C: stopping after this step and saving a checkpoint "
                              "(Ctrl-C again to stop at once)")

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _train_epoch(self) -> bool:
        """One training pass (or the rest of one); False when interrupted before its end."""
        total = len(self.train_loader)

        def before_update(loss):
            where = (f"epoch {self.epoch + 1}, step {self.step + 1}/{total} (lr "
                     f"{self.optimizer.lr:g})")
            if self.watch is not None:
                warning = self.watch.check(self.global_step, loss, where)
                if warning and len(self.warnings) < MAX_KEPT:      # the watch counts them all
                    self.warnings.append(warning)
                    self.status.print(f"warning: {warning}")
            elif not math.isfinite(loss):
                raise TrainingDiverged(f"training diverged: the loss is {loss} at {where}")
            if self.warmup is not None:
                self.warmup.step()

        def after_step(running):
            self.step, self.global_step = running.steps, self.global_step + 1
            if self.print_freq and (self.step % self.print_freq == 0 or self.step == total):
                self.status.show(self._progress_line(total))
            # on the last step, let the loader finish its epoch, so that its state is the next's
            return self._interrupted and self.step < total

        try:
            self.running = train_one_epoch(
                self.model, self.train_loader, self.optimizer, start=self.step,
                running=self.running, before_update=before_update, after_step=after_step)
        except TrainingStopped as exc:          # say what the disk still holds
            raise type(exc)(f"{exc.what}; stopped without saving, {self._kept()}",
                            exc.advice) from None
        return not self._interrupted or self.step == total

    def _kept(self) -> str:
        last = self.path("last.npz")
        if self._last_saved is not None:
            return f"{last} keeps the last good state, from {_where(*self._last_saved)}"
        if last is not None and os.path.exists(last):
            return f"{last} is left as it was"
        return "no checkpoint had been written yet"

    @contextlib.contextmanager
    def _writing(self):
        """A failed write (disk full, quota, permission) stops the run with one line: the
        file, the cause, what the disk still holds, and how to resume."""
        try:
            yield
        except checkpoint.WriteError as exc:
            last = self.path("last.npz")
            then = self._kept() + (f"; resume with --resume {last}" if self._last_saved
                                   or os.path.exists(last) else "; start the run again")
            raise checkpoint.WriteError(exc.filename, exc, then) from None

    def _end_epoch(self):
        val = evaluate(self.model, self.val_loader) if self.val_loader is not None else None
        if val is not None and not math.isfinite(val["loss"]):
            # weights that give a NaN validation loss are no "best": keep what is on disk
            raise TrainingDiverged(
                f"training diverged: validation loss is {val['loss']} after epoch "
                f"{self.epoch + 1} (lr {self.optimizer.lr:g}); stopped before saving that "
                f"epoch, so any checkpoint on disk is from an earlier one")
        lr = self.optimizer.lr
        # schedule_lr: the rate the schedule set, which the warm-up ramps towards (lr while the
        # ramp is over): the report marks changes of it, not the ramp's
        warming_up = self.warmup is not None and self.warmup.active
        record = {"epoch": self.epoch + 1, "lr": lr,
                  "schedule_lr": self.warmup.target if warming_up else lr,
                  "steps": self.global_step, **self.running.metrics("train")}
        if val is not None:
            record.update({f"val_{k}": v for k, v in val.items()})
            record["val_error"] = 1.0 - val["top1"]
        improved = val is not None and record["val_error"] < self.best_val_error
        record["best"] = improved
        record["time"] = datetime.datetime.now().isoformat(timespec="seconds")
        # the epoch is complete: advance the state, log it, then save it
        self.train_images_total += self.running.images
        self.train_seconds_total += self.running.seconds
        self.epoch, self.step, self.running = self.epoch + 1, 0, Running()
        if improved:
            self.best_val_error, self.best_epoch = record["val_error"], self.epoch
        # a plateau while the rate is still rising is no plateau: let the warm-up end first
        if self.scheduler is not None and not (warming_up and
                                               isinstance(self.scheduler, ReduceLROnPlateau)):
            with (self.warmup.scheduling() if self.warmup else contextlib.nullcontext()):
                self.scheduler.step(record.get("val_error"))
        self.history.append(record)
        with self._writing():
            if self.out_dir is not None:
                try:
                    with open(self.path(METRICS_FILE), "a") as f:
                        f.write(json.dumps(record) + "\n")
                except OSError as exc:
                    raise checkpoint.WriteError(self.path(METRICS_FILE), exc) from None
            state = self.state()                # built once for both files
            # best first: a kill between the two leaves last.npz at the epoch before, which
            # redoes this one and rewrites best.npz; the other order would leave last.npz
            # naming a best epoch that best.npz does not hold
            if improved:
                self.save("best.npz", state)
            self.save("last.npz", state)
        self.status.print(self._epoch_line(record))

    # -- output ------------------------------------------------------------------------------
    def _progress_line(self, total) -> str:
        r = self.running.settle()
        steps = max(r.steps, 1)
        eta = (total - self.step) * r.seconds / steps
        return (f"epoch {self.epoch + 1}/{self.epochs} [{self.step:>{len(str(total))}}/{total}] "
                f"loss {r.loss_sum / max(r.images, 1):.4f} "
                f"acc {r.correct1 / max(r.images, 1):6.2%} "
                f"{r.images / max(r.seconds, 1e-9):8.1f} img/s | data "
                f"{1e3 * r.data_seconds / steps:6.1f} ms compute "
                f"{1e3 * r.compute_seconds / steps:7.1f} ms per step | lr {self.optimizer.lr:.3g}"
                f" | ETA {_clock(eta)}")

    def _epoch_line(self, record) -> str:
        line = (f"epoch {record['epoch']}/{self.epochs}: train loss {record['train_loss']:.4f} "
                f"top1 {record['train_top1']:.2%} ({record['train_images_per_second']:.1f} "
                f"img/s, data {record['train_data_seconds']:.1f} s + compute "
                f"{record['train_compute_seconds']:.1f} s)")
        if "val_loss" in record:
            line += (f" | val loss {record['val_loss']:.4f} top1 {record['val_top1']:.2%} "
                     f"top5 {record['val_top5']:.2%}")
        line += f" | lr {record['lr']:g}" + (" | best" if record["best"] else "")
        if self.optimizer.lr != record["lr"] and not (self.warmup and self.warmup.active):
            line += f" | lr -> {self.optimizer.lr:g}"
        return line

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """The whole training state as a checkpoint tree (see the module docstring)."""
        self.running.settle()
        return {
            "architecture": self.architecture,
            "config": self.config,
            **self.extra_state,
            # host copies, read from the device once however many files are written
            "model": {k: backend.to_numpy(v) for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
            "watch": None if self.watch is None else self.watch.state_dict(),
            "trainer": {"epoch": self.epoch, "step": self.step, "epochs": self.epochs,
                        "global_step": self.global_step,
                        "running": dataclasses.asdict(self.running),
                        "best_val_error": self.best_val_error, "best_epoch": self.best_epoch,
                        "train_images_total": self.train_images_total,
                        "train_seconds_total": self.train_seconds_total,
                        "history": self.history, "warnings": self.warnings},
            "rng": {"backend": backend.get_rng_state(),
                    "train_loader": self.train_loader.state_dict()},
        }

    def save(self, name, state=None):
        """Write ``state`` (default :meth:`state`) to ``out_dir/name`` atomically; returns the
        path (None without an ``out_dir``)."""
        path = self.path(name)
        if path is not None:
            checkpoint.save(path, self.state() if state is None else state)
            if name == "last.npz":
                self._last_saved = (self.epoch, self.step)
        return path

    def load_state(self, tree, source="checkpoint"):
        """Restore a :meth:`state` tree (from ``checkpoint.load``); ``source`` names it in
        errors. A checkpoint of another architecture is refused with the mismatches; a partial
        one changes nothing. ``metrics.jsonl`` is cut back to the checkpoint's epochs, so an
        epoch logged after it was saved is not logged twice."""
        arch, weights = tree.get("architecture"), tree.get("model")
        if not isinstance(weights, dict):
            raise ValueError(f"{source}: holds no model weights")
        if arch != self.architecture:
            details = _shape_mismatches(self.model, weights)
            raise ValueError(f"{source}: checkpoint of architecture {arch!r} cannot be loaded "
                             f"into a {self.architecture!r} model"
                             + (": " + "; ".join(details) if details else ""))
        if "rng" in tree and "train_loader" not in tree["rng"] and "shuffle" in tree["rng"]:
            raise ValueError(f"{source}: written by minialex before 0.2, whose loader state "
                             f"this version cannot restore: it cannot be resumed, but "
                             f"--evaluate still reads it")
        try:  # read every field first, so a partial file changes nothing and says what is missing
            t, rng = tree["trainer"], tree["rng"]
            position = int(t["epoch"]), int(t["step"]), int(t.get("global_step", 0))
            running = Running(**t["running"])
            best = float(t["best_val_error"]), t["best_epoch"]
            totals = int(t["train_images_total"]), float(t["train_seconds_total"])
            history, warnings = list(t["history"]), list(t.get("warnings", []))
            backend_rng, loader_state = rng["backend"], rng["train_loader"]
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(tree["optimizer"])
            for part in ("scheduler", "warmup", "watch"):
                if getattr(self, part) is not None and tree.get(part) is not None:
                    getattr(self, part).load_state_dict(tree[part])
            self.train_loader.load_state_dict(loader_state)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: incomplete training state (missing {exc})") from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        self.epoch, self.step, self.global_step = position
        self.running = running
        self.best_val_error, self.best_epoch = best
        self.train_images_total, self.train_seconds_total = totals
        self.history, self.warnings = history, warnings
        backend.set_rng_state(backend_rng)
        self._trim_metrics()

    def _trim_metrics(self):
        path = self.path(METRICS_FILE)
        if path is None or not os.path.exists(path):
            return
        with open(path) as f:
            lines = [line for line in f if line.strip()]
        kept = [line for line in lines if _logged_epoch(line) <= self.epoch]
        if len(kept) != len(lines):
            text = "".join(kept)
            with self._writing():
                checkpoint.atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _logged_epoch(line) -> float:
    """The epoch of a metrics.jsonl line; a line cut short by a kill counts as never written."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _where(epoch, step) -> str:
    """A point of the run, from (epochs completed, steps into the next one)."""
    return f"the end of epoch {epoch}" if step == 0 and epoch else f"epoch {epoch + 1}, step {step}"


def _clock(seconds) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _shape_mismatches(model, state) -> list:
    own = {k: tuple(p.shape) for k, p in model.named_parameters()}
    theirs = {k: tuple(np.shape(v)) for k, v in state.items()}
    out = [f"{k}: checkpoint {theirs[k]}, model {own[k]}" for k in own
           if k in theirs and theirs[k] != own[k]]
    out += [f"{k}: missing from the checkpoint" for k in own if k not in theirs]
    out += [f"{k}: not in the model" for k in theirs if k not in own]
    return out

