r"""Training: the loop, evaluation, and a :class:`Trainer` that runs epochs with extensions.

The loop, in :func:`train_one_epoch`, is a few lines per batch::

    logits = model(Tensor(x))                 # forward
    loss = F.cross_entropy(logits, y)         # softmax cross-entropy, averaged over the batch
    before_update(loss)                       # a look at the loss; may stop the run here
    optimizer.zero_grad()
    loss.backward()                           # every parameter's .grad
    after_backward()                          # (several processes: exchange gradients here)
    optimizer.step()                          # SGD with momentum and weight decay
    after_step(running)

:func:`evaluate` scores a model on one (centre) crop per image, :func:`evaluate_ten_crop` on the
paper's ten crops per image by their averaged softmax (Sec. 4.1). Top-k accuracy: an image counts
as correct at ``k`` when fewer than ``k`` classes rank before its true class (higher scores
first, ties by class index).

:class:`Trainer` runs that loop epoch after epoch and calls its extensions
(:mod:`minialex.extensions`) at named points: the loss watch, warm-up and schedule, validation,
``metrics.jsonl``, the checkpoints ``last.npz`` and ``best.npz`` (:mod:`minialex.checkpoint`)
and the progress lines are each one extension.

Exact resumption. Everything random is drawn from generators whose state the checkpoint holds:
``minialex.backend``'s (dropout; on a GPU the dropout stream is reseeded on resume, so GPU runs
resume exactly except for dropout masks) and the training loader's (shuffling and augmentation:
``Loader.state_dict``). A checkpoint taken after step ``s`` of an epoch resumes by drawing that
epoch's order again, skipping its first ``s`` batches and carrying on with the same running
sums, so the run continues step for step.

Ctrl-C. During :meth:`Trainer.fit` the first Ctrl-C only sets a flag: the current step finishes,
``last.npz`` is saved (with the :class:`~minialex.extensions.Checkpoints` extension) and ``fit``
returns ``"interrupted"``. A second Ctrl-C raises ``KeyboardInterrupt`` at once and saves nothing
(it may land mid-update, or after the next batch's random draws), so ``last.npz`` keeps the last
state saved before. With ``catch_ctrl_c=False`` (the learning-rate finder, ablations: runs
that save nothing and mean nothing half done) the trainer leaves Ctrl-C alone: the first one
raises ``KeyboardInterrupt`` for the caller.

Stopping early. A NaN or infinite loss, or a loss stuck at chance (:mod:`minialex.watch`), raises
:class:`~minialex.watch.TrainingStopped` before the update; nothing is saved, so ``last.npz``
keeps the last good state and resumes from it.

Several processes (data parallelism) plug in at four places, nothing else changes:

1. gradients: an extension's ``after_backward(trainer)`` runs between ``loss.backward()`` and
   ``optimizer.step()``, where it can average every parameter's ``.grad`` over the processes
   (a hook, not a wrapped optimiser);
2. the loss the watch sees: with ``reduce_sums``, each step's loss is the mean over the
   processes, so that all of them stop at the same step;
3. files and printing: extensions marked ``rank0_only`` (checkpoints, ``metrics.jsonl``,
   progress) run only where ``rank == 0``;
4. metrics: :meth:`Running.totals` puts every sum (images, loss, top-1, top-5) through
   ``reduce_sums`` before dividing, in :func:`evaluate` and for the epoch's training metrics.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import os
import signal
import threading
import time

import numpy as np

from . import backend, checkpoint
from . import functional as F
from .checks import positive_int
from .extensions import Checkpoints, kept, standard_extensions, where_in_run
from .layers.loss import class_indices
from .progress import StatusLine
from .tensor import Tensor, no_grad
from .watch import TrainingStopped

TOPK = (1, 5)


# -- the loop ----------------------------------------------------------------------------------
def train_one_epoch(model, loader, optimizer, *, start=0, running=None, before_update=None,
                    after_backward=None, after_step=None):
    """One pass over ``loader`` (from its batch ``start`` on), one SGD step per batch; returns
    the :class:`Running` sums. ``before_update(loss)`` (a float), called between the loss and
    the update, may raise to stop with the weights untouched; ``after_backward()`` runs when
    the gradients are ready, before the step; ``after_step(running)`` returning True stops
    after that step. A label outside ``[0, classes)`` raises ValueError."""
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
            running.batch = len(y)
            if before_update is not None:
                before_update(value)
            optimizer.zero_grad()
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            # counted on the device, read when a progress line or the epoch's metrics need them
            running.add(len(y), value * len(y), topk_counts(logits.data, y))
            if after_step is not None and after_step(running):
                break
    finally:
        batches.close()
    return running


def evaluate(model, loader, *, keep_probabilities=False, reduce_sums=None) -> dict:
    """Loss and top-1/top-5 accuracy of ``model`` over ``loader``, in eval mode and without
    gradients: ``{"loss", "top1", "top5", "images", "images_per_second", ...}``. With
    ``keep_probabilities`` also ``"probabilities"`` (N, classes), each image's softmax, and
    ``"labels"`` (N,), NumPy arrays read back once at the end (a report's confusion matrix
    then needs no second pass). ``reduce_sums``: see :meth:`Running.totals`."""
    keep = (lambda logits: F.average_softmax(logits, 1)) if keep_probabilities else None
    return _evaluate(model, loader, _single_crop_scores, keep, reduce_sums)


def evaluate_ten_crop(model, loader, *, reduce_sums=None) -> dict:
    """:func:`evaluate` with the paper's test-time averaging: ``loader`` yields batches of
    crops ``(n_crops, N, C, H, W)`` (e.g. ``transform=Augmenter.ten_crop``); all ``n_crops * N``
    go through the model as one batch, and the mean of their softmax outputs is each image's
    prediction. ``loss`` is the cross-entropy of that mean, ``-log p[label]``; ``images``
    counts images, not crops."""
    return _evaluate(model, loader, _averaged_crop_scores, reduce_sums=reduce_sums)


def topk_counts(logits, labels, ks=TOPK):
    """How many rows of ``logits`` (N, C) have their label among the ``k`` highest scores, for
    each ``k``: an int64 array on the logits' device (NumPy or CuPy), so that nothing waits for
    the device to read it back. Ties are broken by class index, as ``argmax`` does: a network
    that gives every class the same score predicts class 0, not every class."""
    xp = backend.get_array_module(logits)
    with backend.device_scope(logits):
        labels = xp.asarray(labels)[:, None].astype(np.int64)
        true_score = xp.take_along_axis(logits, labels, axis=1)
        ahead = (logits > true_score) | ((logits == true_score)
                                         & (xp.arange(logits.shape[1]) < labels))
        rank = ahead.sum(axis=1)                     # classes ranked before the label
        return xp.stack([(rank < k).sum() for k in ks]).astype(np.int64)


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
        self.batch = 0          # images of the batch being trained, set before its update
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

    def totals(self, reduce_sums=None) -> tuple:
        """``(images, loss_sum, correct1, correct5)``. ``reduce_sums``, when given, maps the
        float64 vector of these four sums to their totals over every process (an all-reduce
        sum; None: this process alone); every mean (loss, top-1, top-5) divides those."""
        self.settle()
        sums = np.array([self.images, self.loss_sum, self.correct1, self.correct5], np.float64)
        if reduce_sums is not None:
            sums = np.asarray(reduce_sums(sums), dtype=np.float64)
        images, loss_sum, correct1, correct5 = sums.tolist()
        return int(images), loss_sum, int(correct1), int(correct5)

    def metrics(self, prefix, reduce_sums=None) -> dict:
        images, loss_sum, correct1, correct5 = self.totals(reduce_sums)
        n = max(images, 1)
        return {f"{prefix}_loss": loss_sum / n, f"{prefix}_top1": correct1 / n,
                f"{prefix}_top5": correct5 / n, f"{prefix}_images": images,
                f"{prefix}_images_per_second": images / max(self.seconds, 1e-9),
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


def _evaluate(model, loader, scores, keep=None, reduce_sums=None) -> dict:
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
    metrics = {k.split("_", 1)[1]: v for k, v in running.metrics("x", reduce_sums).items()}
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
    """Train ``model`` with ``optimizer`` on ``train_loader`` for ``epochs``, calling
    ``extensions`` (:mod:`minialex.extensions`) at their points; see the module docstring for
    resuming, Ctrl-C and stopping early.

    Args:
        model: a Module mapping a batch (N, C, H, W) to logits (N, classes), on its device.
        optimizer: e.g. :class:`minialex.optim.SGD` over ``model.parameters()``.
        train_loader: a :class:`minialex.data.Loader` (its ``state_dict`` is checkpointed).
        val_loader: a Loader for validation (needed for ``best.npz`` and ReduceLROnPlateau).
        epochs: total epochs of the run (a resumed run counts the epochs already done).
        extensions: what runs around the loop; None: ``standard_extensions`` (of
            :mod:`minialex.extensions`) of ``val_loader``, ``scheduler`` (ReduceLROnPlateau, stepped
            on the validation error, or StepLR), ``warmup`` (a LinearWarmup), ``watch`` (a
            LossWatch; without one a NaN/inf loss still stops the run), ``print_freq``
            (progress line every so many steps; 0: only the epoch lines) and ``out_dir``.
        out_dir: where checkpoints and ``metrics.jsonl`` go (None: nowhere).
        config: JSON-able run settings, stored in the checkpoints.
        extra_state: JSON-able facts stored in the checkpoints as they are (e.g. class names).
        stream: where progress goes (default ``sys.stdout``); rewritten in place on a terminal.
        rank: this process's rank among those training the model together; extensions marked
            ``rank0_only`` run only at rank 0.
        reduce_sums: sums over every process (see :meth:`Running.totals`); None: one process.
        catch_ctrl_c: the first Ctrl-C stops the run after its step (True), or raises
            ``KeyboardInterrupt`` at once as Python does (False: for runs whose caller cannot
            use an interrupted result).
    """

    def __init__(self, model, optimizer, train_loader, val_loader=None, *, epochs=1,
                 extensions=None, scheduler=None, warmup=None, watch=None, print_freq=50,
                 out_dir=None, config=None, extra_state=None, stream=None, rank=0,
                 reduce_sums=None, catch_ctrl_c=True):
        self.model, self.optimizer = model, optimizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.epochs, self.out_dir = positive_int("Trainer", "epochs", epochs), out_dir
        if extensions is None:
            extensions = standard_extensions(val_loader, scheduler=scheduler, warmup=warmup,
                                             watch=watch, print_freq=print_freq, out_dir=out_dir)
        self.rank, self.reduce_sums = rank, reduce_sums
        self.catch_ctrl_c = catch_ctrl_c
        self.extensions = sorted((e for e in extensions if rank == 0 or not e.rank0_only),
                                 key=lambda e: e.order)
        self.config, self.extra_state = dict(config or {}), dict(extra_state or {})
        self.status = StatusLine(stream)
        self.architecture = checkpoint.architecture(model)
        self.epoch, self.step = 0, 0          # epochs completed; steps done in the current one
        self.global_step = 0                  # steps done in the whole run
        self.running = Running()              # sums of the current training epoch
        self.best_val_error, self.best_epoch = math.inf, None
        self.history, self.stopped, self.warnings = [], None, []
        self.train_images_total, self.train_seconds_total = 0, 0.0
        self.last_saved = None                # (epoch, step) of the last last.npz written
        self._interrupted = False
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)

    @property
    def stream(self):
        return self.status.stream

    def path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def extension(self, kind):
        """The first extension of type ``kind``, or None."""
        return next((e for e in self.extensions if isinstance(e, kind)), None)

    def say(self, text):
        """A permanent line on the status line (at rank 0 only)."""
        if self.rank == 0:
            self.status.print(text)

    def where(self) -> str:
        """The step being taken, for messages: ``epoch 2, step 3/5 (lr 0.01)``."""
        return (f"epoch {self.epoch + 1}, step {self.step + 1}/{len(self.train_loader)} (lr "
                f"{self.optimizer.lr:g})")

    @property
    def saves(self) -> bool:
        """Whether this trainer writes ``last.npz`` (a Checkpoints extension and an
        ``out_dir``)."""
        return self.out_dir is not None and self.extension(Checkpoints) is not None

    def request_stop(self, reason: str):
        """End the run after this epoch; ``fit`` returns ``reason``."""
        self.stopped = self.stopped or reason

    def evaluate(self, loader) -> dict:
        """:func:`evaluate` of the model on ``loader``, summed over every process."""
        return evaluate(self.model, loader, reduce_sums=self.reduce_sums)

    def _call(self, point, *args):
        for extension in self.extensions:
            getattr(extension, point)(self, *args)

    def fit(self) -> str:
        """Train until ``epochs`` are done, an extension stops the run (the schedule is
        exhausted), or Ctrl-C; returns (and sets ``self.stopped`` to) ``"completed"``,
        ``"schedule exhausted"`` or ``"interrupted"``. Raises
        :class:`~minialex.watch.TrainingStopped` when the loss is NaN/inf or stuck at chance
        (``self.stopped`` then says so)."""
        self._interrupted, self.stopped = False, None
        self._call("before_fit")
        try:
            # the watch names a non-finite loss itself, once: no NumPy overflow warnings first
            ctrl_c = (_first_ctrl_c_sets_a_flag(self) if self.catch_ctrl_c
                      else contextlib.nullcontext())
            with ctrl_c, np.errstate(over="ignore", invalid="ignore"):
                while self.epoch < self.epochs and self.stopped is None:
                    if self._train_epoch():
                        self._end_epoch()
                    if self._interrupted:
                        self.stopped = "interrupted"
        except TrainingStopped as exc:
            self.stopped = f"{exc.reason}: {exc}"
            raise
        except KeyboardInterrupt:
            if self.catch_ctrl_c:           # else the caller says what Ctrl-C did
                self.say("\nstopped at once: nothing saved"
                         + (f"; {kept(self)}" if self.saves else ""))
            raise
        self.stopped = self.stopped or "completed"
        self._call("after_fit")
        if self.stopped == "interrupted":
            saved = self.last_saved == (self.epoch, self.step) and self.path("last.npz")
            self.say(f"interrupted at {where_in_run(self.epoch, self.step)}"
                     + (f"; saved {saved}" if saved else ""))
        return self.stopped

    def _train_epoch(self) -> bool:
        """One training pass (or the rest of one); False when interrupted before its end."""
        total = len(self.train_loader)

        def before_update(loss):
            if self.reduce_sums is not None:      # the mean over every process's samples
                n = self.running.batch
                loss_sum, images = self.reduce_sums(np.array([loss * n, n], np.float64))
                loss = float(loss_sum / images)
            self._call("before_update", loss)

        def after_step(running):
            self.step, self.global_step = running.steps, self.global_step + 1
            self._call("after_step")
            # on the last step, let the loader finish its epoch, so that its state is the next's
            return self._interrupted and self.step < total

        try:
            self.running = train_one_epoch(
                self.model, self.train_loader, self.optimizer, start=self.step,
                running=self.running, before_update=before_update,
                after_backward=lambda: self._call("after_backward"), after_step=after_step)
        except TrainingStopped as exc:          # say what the disk still holds
            if self.out_dir is None:
                raise
            raise type(exc)(f"{exc.what}; stopped without saving, {kept(self)}",
                            exc.advice) from None
        return not self._interrupted or self.step == total

    def _end_epoch(self):
        lr = self.optimizer.lr
        record = {"epoch": self.epoch + 1, "lr": lr, "schedule_lr": lr, "steps": self.global_step,
                  **self.running.metrics("train", self.reduce_sums)}
        self._call("validate", record)
        improved = record.get("val_error", math.inf) < self.best_val_error
        record["best"] = improved
        record["time"] = datetime.datetime.now().isoformat(timespec="seconds")
        # the epoch is complete: count it, then let the extensions schedule, log and save it
        self.train_images_total += record["train_images"]
        self.train_seconds_total += self.running.seconds
        self.epoch, self.step, self.running = self.epoch + 1, 0, Running()
        if improved:
            self.best_val_error, self.best_epoch = record["val_error"], self.epoch
        self.history.append(record)
        self._call("end_epoch", record)

    def state(self) -> dict:
        """The whole training state as a checkpoint tree (:func:`checkpoint.training_state`)."""
        self.running.settle()
        return checkpoint.training_state(self)

    def load_state(self, tree, source="checkpoint"):
        """Restore a :meth:`state` tree (from ``checkpoint.load``); ``source`` names it in
        errors. A checkpoint of another architecture is refused with the mismatches. One that
        cannot be resumed, is incomplete, or holds a part that does not load (the optimiser's,
        the loader's, an extension's) changes nothing: the parts are loaded one after another,
        so the state before is taken first and put back on any error."""
        saved = checkpoint.resumable(tree, self.model, source)
        before = self.state()
        try:
            self._load(tree, saved)
        except BaseException as exc:
            self._load(before, checkpoint.resumable(before, self.model))
            if isinstance(exc, (KeyError, TypeError)):
                raise ValueError(f"{source}: incomplete training state (missing {exc})") from None
            if isinstance(exc, ValueError):
                raise ValueError(f"{source}: {exc}") from None
            raise

    def _load(self, tree, saved):
        self.running = Running(**saved["running"])
        self.model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        self.train_loader.load_state_dict(saved["train_loader"])
        for name in checkpoint.TRAINER_FIELDS:
            setattr(self, name, saved[name])
        backend.set_rng_state(saved["backend_rng"])
        self._call("load", tree)


@contextlib.contextmanager
def _first_ctrl_c_sets_a_flag(trainer):
    """During ``trainer.fit``, the first Ctrl-C lets the step finish; the second raises
    KeyboardInterrupt. Only in the main thread, where Python delivers signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if trainer._interrupted:
            raise KeyboardInterrupt
        trainer._interrupted = True
        trainer.say("\nCtrl-C: stopping after this step"
                    + (" and saving a checkpoint" if trainer.saves else "")
                    + " (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

