r"""What a long run adds around the training loop: extensions the Trainer calls at named points.

:func:`minialex.train.train_one_epoch` is the loop; :class:`~minialex.train.Trainer` runs it
epoch after epoch and calls, at each point below, that method of every extension in turn
(lowest ``order`` first). An extension overrides only the points it needs (the idea of
Chainer's ``Trainer`` + ``extensions`` and of fastai's callbacks):

==========================================  ==============================================
point                                       when
==========================================  ==============================================
``before_fit(trainer)``                     :meth:`~minialex.train.Trainer.fit` starts
``before_update(trainer, loss)``            a step's loss is known (``loss``: a float, the
                                            mean over the batch, and over every process
                                            when the trainer has ``reduce_sums``); raise to
                                            stop with the weights untouched
``after_backward(trainer)``                 every parameter's ``.grad`` holds the step's
                                            gradient; the optimiser has not stepped yet
``after_step(trainer)``                     the update is done; ``trainer.step`` and
                                            ``trainer.global_step`` count it
``validate(trainer, record)``               the epoch's training pass is done: add to its
                                            ``record``; raise to stop before it is counted
``end_epoch(trainer, record)``              the epoch is counted (``trainer.epoch``,
                                            ``record["best"]``, ``trainer.history``)
``after_fit(trainer)``                      ``fit`` returns; ``trainer.stopped`` says why
``state()`` / ``load(trainer, tree)``       entries of the checkpoint, and their restore
==========================================  ==============================================

The standard set (:func:`standard_extensions`), in the order they run: :class:`LossCheck`
(NaN, a stall at chance, spikes), :class:`Validation`, :class:`LearningRate` (warm-up and
epoch schedule), :class:`MetricsLog` (``metrics.jsonl``), :class:`Checkpoints`
(``best.npz``, ``last.npz``), :class:`Progress` (the progress and epoch lines). The
ablations and the learning-rate finder run the same loop with extensions of their own.

Extensions that write files or print are ``rank0_only``: with several processes training one
model (data parallelism), the trainer of rank 0 runs them and the others leave them out.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

from . import checkpoint
from .optim import ReduceLROnPlateau
from .watch import MAX_KEPT, TrainingDiverged

METRICS_FILE = "metrics.jsonl"
# orders: checks before the update, then the schedule; at an epoch's end, log, save, print
CHECK, SCHEDULE, LOG, SAVE, REPORT = 10, 20, 30, 40, 50


class Extension:
    """Does nothing at every point; subclasses override the points they need."""
    order = 50
    rank0_only = False           # writes files or prints: run only by the process of rank 0

    def before_fit(self, trainer):
        pass

    def before_update(self, trainer, loss: float):
        pass

    def after_backward(self, trainer):
        pass

    def after_step(self, trainer):
        pass

    def validate(self, trainer, record: dict):
        pass

    def end_epoch(self, trainer, record: dict):
        pass

    def after_fit(self, trainer):
        pass

    def state(self) -> dict:
        """Entries this extension adds to a checkpoint's tree (see :mod:`minialex.checkpoint`)."""
        return {}

    def load(self, trainer, tree: dict):
        """Restore from a checkpoint's tree; the trainer's own state is restored already.
        Change nothing but this extension (no file): when a later part fails to load, the
        trainer calls ``load`` again with the state it had before."""


class LossCheck(Extension):
    """A NaN or infinite loss stops the run before its update; with a
    :class:`~minialex.watch.LossWatch`, so does a loss stuck at chance, and a spike is a
    warning (kept in ``trainer.warnings`` and printed)."""
    order = CHECK

    def __init__(self, watch=None):
        self.watch = watch

    def before_update(self, trainer, loss):
        where = trainer.where()
        if self.watch is None:
            if not math.isfinite(loss):
                raise TrainingDiverged(f"training diverged: the loss is {loss} at {where}")
            return
        warning = self.watch.check(trainer.global_step, loss, where)
        if warning and len(trainer.warnings) < MAX_KEPT:      # the watch counts them all
            trainer.warnings.append(warning)
            trainer.say(f"warning: {warning}")

    def state(self):
        return {"watch": None if self.watch is None else self.watch.state_dict()}

    def load(self, trainer, tree):
        if self.watch is not None and tree.get("watch") is not None:
            self.watch.load_state_dict(tree["watch"])


class LearningRate(Extension):
    """The warm-up (:class:`~minialex.optim.LinearWarmup`, one step before each update) and the
    epoch schedule (stepped on the validation error). A plateau while the rate is still rising
    is no plateau: ReduceLROnPlateau waits for the warm-up to end. An exhausted schedule stops
    the run. ``changed``: the epoch's rate and the next one, when the schedule changed it.

    The warm-up is fitted to the run's plan (``epochs`` x steps per epoch, also when resuming
    with other ``epochs``): at most a fifth of it (:meth:`~minialex.optim.LinearWarmup.fit_to`).
    ``max_lr`` and ``last_lr``: the highest rate an update used, and the last update's."""
    order = SCHEDULE

    def __init__(self, scheduler=None, warmup=None):
        self.scheduler, self.warmup = scheduler, warmup
        self.changed = None
        self.max_lr = self.last_lr = None

    @property
    def warming_up(self) -> bool:
        return self.warmup is not None and self.warmup.active

    def before_fit(self, trainer):
        self._fit_warmup(trainer)

    def before_update(self, trainer, loss):
        if self.warmup is not None:
            self.warmup.step()

    def after_step(self, trainer):
        self.last_lr = trainer.optimizer.lr         # the rate of the update just made
        self.max_lr = max(self.max_lr or 0.0, self.last_lr)

    def end_epoch(self, trainer, record):
        lr, warming_up = record["lr"], self.warming_up
        # the rate the schedule set, which the ramp goes towards: a report marks its changes
        record["schedule_lr"] = self.warmup.target if warming_up else lr
        if self.scheduler is not None and not (
                warming_up and isinstance(self.scheduler, ReduceLROnPlateau)):
            with self.warmup.scheduling() if self.warmup else contextlib.nullcontext():
                self.scheduler.step(record.get("val_error"))
        now = trainer.optimizer.lr
        self.changed = (lr, now) if now != lr and not self.warming_up else None
        if getattr(self.scheduler, "exhausted", False):
            trainer.request_stop("schedule exhausted")

    def state(self):
        return {"scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "warmup": None if self.warmup is None else self.warmup.state_dict(),
                "lr_reached": {"max": self.max_lr, "last": self.last_lr}}

    def load(self, trainer, tree):
        for part in ("scheduler", "warmup"):
            if getattr(self, part) is not None and tree.get(part) is not None:
                getattr(self, part).load_state_dict(tree[part])
        reached = tree.get("lr_reached") or {}          # older checkpoints have none
        self.max_lr, self.last_lr = (None if reached.get(k) is None else float(reached[k])
                                     for k in ("max", "last"))
        self._fit_warmup(trainer)

    def _fit_warmup(self, trainer):
        if self.warmup is not None:
            self.warmup.fit_to(trainer.epochs * len(trainer.train_loader))


class Validation(Extension):
    """Loss and top-1/top-5 on ``loader`` after each epoch (``val_*`` and ``val_error`` in its
    record). Weights whose validation loss is not finite are no "best": the run stops before
    anything of that epoch is saved."""
    order = CHECK

    def __init__(self, loader):
        self.loader = loader

    def validate(self, trainer, record):
        val = trainer.evaluate(self.loader)
        if not math.isfinite(val["loss"]):
            raise TrainingDiverged(
                f"training diverged: validation loss is {val['loss']} after epoch "
                f"{trainer.epoch + 1} (lr {trainer.optimizer.lr:g}); stopped before saving that "
                f"epoch, so any checkpoint on disk is from an earlier one")
        record.update({f"val_{k}": v for k, v in val.items()})
        record["val_error"] = 1.0 - val["top1"]


class MetricsLog(Extension):
    """One JSON line per epoch in ``path``, written before the checkpoint that includes the
    epoch, so a kill between the two loses nothing. Lines of epochs past the trainer's (left by
    a run killed after logging, before saving) are cut when a run starts or resumes (at the
    start of ``fit``)."""
    order, rank0_only = LOG, True

    def __init__(self, path):
        self.path = path

    def before_fit(self, trainer):       # not in load: a failed load must change no file
        self._cut(trainer)

    def end_epoch(self, trainer, record):
        with writing(trainer):
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as exc:
                raise checkpoint.WriteError(self.path, exc) from None

    def _cut(self, trainer):
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            text = f.read()
        kept = "".join(json.dumps(r) + "\n" for r in read_metrics(self.path)
                       if r.get("epoch", math.inf) <= trainer.epoch)
        if kept != text:
            with writing(trainer):
                checkpoint.atomic_write(self.path, lambda f: f.write(kept.encode("utf-8")))


def read_metrics(path) -> list:
    """The records of a ``metrics.jsonl`` file, in order; a line cut short by a kill counts as
    never written. A missing file has none."""
    records = []
    with contextlib.suppress(FileNotFoundError), open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class Checkpoints(Extension):
    """``best.npz`` (lowest validation error) and ``last.npz`` in ``out_dir`` after each
    epoch, atomically, from one :meth:`~minialex.train.Trainer.state`; ``last.npz`` again when
    the run is interrupted."""
    order, rank0_only = SAVE, True

    def end_epoch(self, trainer, record):
        with writing(trainer):
            state = trainer.state()             # built once for both files
            # best first: a kill between the two leaves last.npz at the epoch before, which
            # redoes this one and rewrites best.npz; the other order would leave last.npz
            # naming a best epoch that best.npz does not hold
            if record["best"]:
                checkpoint.save(trainer.path("best.npz"), state)
            self._save_last(trainer, state)

    def after_fit(self, trainer):
        if trainer.stopped == "interrupted":
            with writing(trainer):
                self._save_last(trainer, trainer.state())

    @staticmethod
    def _save_last(trainer, state):
        checkpoint.save(trainer.path("last.npz"), state)
        trainer.last_saved = (trainer.epoch, trainer.step)


def kept(trainer) -> str:
    """What ``last.npz`` holds now, for messages."""
    last = trainer.path("last.npz")
    if trainer.last_saved is not None:
        return f"{last} keeps the last good state, from {where_in_run(*trainer.last_saved)}"
    if last is not None and os.path.exists(last):
        return f"{last} is left as it was"
    return "no checkpoint had been written yet"


@contextlib.contextmanager
def writing(trainer):
    """A failed write (disk full, quota, permission) stops the run with one line: the file, the
    cause, what the disk still holds, and how to resume."""
    try:
        yield
    except checkpoint.WriteError as exc:
        last = trainer.path("last.npz")
        then = kept(trainer) + (f"; resume with `resume` {last}" if trainer.last_saved
                                or os.path.exists(last) else "; start the run again")
        raise checkpoint.WriteError(exc.filename, exc, then) from None


def where_in_run(epoch, step) -> str:
    """A point of the run, from (epochs completed, steps into the next one)."""
    return f"the end of epoch {epoch}" if step == 0 and epoch else f"epoch {epoch + 1}, step {step}"


class Progress(Extension):
    """A progress line every ``print_freq`` steps (0: none) and at an epoch's last step, then
    one line per epoch, on the trainer's status line."""
    order, rank0_only = REPORT, True

    def __init__(self, print_freq: int = 50):
        self.print_freq = print_freq

    def after_step(self, trainer):
        total = len(trainer.train_loader)
        if self.print_freq and (trainer.step % self.print_freq == 0 or trainer.step == total):
            trainer.status.show(self.progress_line(trainer, total))

    def end_epoch(self, trainer, record):
        trainer.status.print(self.epoch_line(trainer, record))

    @staticmethod
    def progress_line(trainer, total) -> str:
        r = trainer.running.settle()
        steps = max(r.steps, 1)
        eta = (total - trainer.step) * r.seconds / steps
        return (f"epoch {trainer.epoch + 1}/{trainer.epochs} "
                f"[{trainer.step:>{len(str(total))}}/{total}] "
                f"loss {r.loss_sum / max(r.images, 1):.4f} "
                f"acc {r.correct1 / max(r.images, 1):6.2%} "
                f"{r.images / max(r.seconds, 1e-9):8.1f} img/s | data "
                f"{1e3 * r.data_seconds / steps:6.1f} ms compute "
                f"{1e3 * r.compute_seconds / steps:7.1f} ms per step | lr "
                f"{trainer.optimizer.lr:.3g} | ETA {_clock(eta)}")

    @staticmethod
    def epoch_line(trainer, record) -> str:
        line = (f"epoch {record['epoch']}/{trainer.epochs}: train loss "
                f"{record['train_loss']:.4f} top1 {record['train_top1']:.2%} "
                f"({record['train_images_per_second']:.1f} img/s, data "
                f"{record['train_data_seconds']:.1f} s + compute "
                f"{record['train_compute_seconds']:.1f} s)")
        if "val_loss" in record:
            line += (f" | val loss {record['val_loss']:.4f} top1 {record['val_top1']:.2%} "
                     f"top5 {record['val_top5']:.2%}")
        line += f" | lr {record['lr']:g}" + (" | best" if record["best"] else "")
        schedule = trainer.extension(LearningRate)
        if schedule is not None and schedule.changed:
            line += f" | lr -> {schedule.changed[1]:g}"
        return line


def standard_extensions(val_loader=None, *, scheduler=None, warmup=None, watch=None,
                        print_freq: int = 50, out_dir=None) -> list:
    """The extensions of a full run (see the module docstring); with no ``out_dir``, nothing
    is written."""
    if isinstance(scheduler, ReduceLROnPlateau) and val_loader is None:
        raise ValueError("Trainer: ReduceLROnPlateau steps on the validation error, so it "
                         "needs a val_loader")
    extensions = [LossCheck(watch), LearningRate(scheduler, warmup), Progress(print_freq)]
    if val_loader is not None:
        extensions.append(Validation(val_loader))
    if out_dir is not None:
        extensions += [MetricsLog(os.path.join(out_dir, METRICS_FILE)), Checkpoints()]
    return extensions


def _clock(seconds) -> str:
    seconds = max(int(round(seconds)), 0)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
