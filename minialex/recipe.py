r"""A run from its configuration: data, model, optimiser, schedule and loaders, then fit and test.

:func:`fit` is the whole job of ``examples/train_alexnet.py``: it loads the data a
:class:`~minialex.config.RunConfig` names, builds everything from it (:func:`build`), trains
with a :class:`~minialex.train.Trainer` (or resumes one from a checkpoint), tests the best
epoch's weights on the test set once, and writes ``summary.json``. :func:`evaluate_checkpoint`
tests a saved checkpoint; :func:`find_lr` runs the learning-rate range test on the run's model
and data.

A run that does not learn fails loudly: a NaN loss or one stuck at chance stops it
(:mod:`minialex.watch`), and a run whose test accuracy ends no better than chance raises
:class:`~minialex.watch.TrainingStalled` after writing its summary, so that no such run ends as
"completed".
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import platform
import sys
import time
import warnings

import numpy as np

from . import __version__, backend, checkpoint, distributed, finetune, report, rundir
from .config import FASHION_MNIST, RunConfig, resolve
from .data import ArrayDataset, Loader, load_fashion_mnist
from .data.augment import PCA_STD, Augmenter
from .data.prepare import prepare
from .data.transforms import GreyAugmenter
from .extensions import LearningRate, standard_extensions
from .lr_finder import lr_range_test
from .models import VARIANTS, alexnet
from .optim import SGD, LinearWarmup, ReduceLROnPlateau, StepLR
from .towers import TowersSGD, two_towers
from .train import Trainer, evaluate, evaluate_ten_crop
from .watch import LossWatch, TrainingStalled, TrainingStopped, above_chance


# -- the whole run ------------------------------------------------------------------------------
def fit(config: RunConfig, *, device: str = "cpu", out: str | None = None, resume=None,
        overrides: dict | None = None, data_dir=None, cache=None, workers=None,
        stream=None, comm=None, towers=None) -> dict:
    """Train ``config``, test it, and return the summary that is also written to
    ``out/summary.json``. ``summary["stopped"]`` is ``"completed"``, ``"schedule exhausted"``
    or ``"interrupted"``; a run that stopped learning raises
    :class:`~minialex.watch.TrainingStopped` after writing a summary that says why.

    ``resume``: a checkpoint whose run to continue. Its settings are the run's, except those in
    ``overrides`` (settings given explicitly, e.g. by flags: see
    :func:`minialex.config.resolve`); by default only ``config``'s per-invocation ones
    (``epochs``, ``ten_crop``, ``print_freq``). An override that contradicts the checkpoint is
    refused (ValueError naming it).

    ``out`` is locked for the run (:mod:`minialex.rundir`): a second run there raises
    :class:`~minialex.rundir.RunDirectoryBusy` before any work, and temporary files that a
    killed save left are removed. A write that fails (disk full, quota, permission) raises
    :class:`~minialex.checkpoint.WriteError` naming the file, what ``last.npz`` still holds and
    how to resume.

    ``comm``: a :class:`~minialex.distributed.Communicator` of several processes, each calling
    ``fit`` alike (data parallel: :mod:`minialex.distributed`); ``config.batch_size`` stays
    the global batch, each process trains on its share and evaluates its share of the images,
    and the sums are added before dividing, so the metrics are those of one process. Rank 0
    alone locks ``out``, writes files and prints; every process resumes from ``resume``.
    ``towers``: two devices (or ``"gpu:0,gpu:1"``) for the paper's two towers
    (:mod:`minialex.towers`, one process); the checkpoints keep the one-device names and
    optimiser state."""
    started = time.time()
    stream = sys.stdout if stream is None else stream
    comm = distributed.create_communicator(None) if comm is None else comm
    towers = None if towers is None else resolve_towers(towers)
    if towers is not None and comm.size > 1:
        raise ValueError(f"`towers` trains in one process; {comm.size} were started")
    device = device if towers is None else towers[0]
    device = comm.device if comm.name == "nccl" else device     # this process's own GPU
    tree = source = None
    if resume is not None:
        tree = checkpoint.migrate(checkpoint.load(resume))
        if overrides is None:
            overrides = {k: getattr(config, k) for k in ("epochs", "ten_crop", "print_freq")}
        config = resolve(overrides, device, tree.get("config", {}))
        origin = finetune.Origin.from_tree(tree)
    elif config.pretrained:             # the weights fix the model before the data is sized
        source = finetune.load_source(config.pretrained)
        config = finetune.settle(config, source, overrides)
        origin = source.origin(config.preprocessing)
    else:
        origin = finetune.Origin()
    if config.batch_size % comm.size:
        raise ValueError(f"`batch_size` {config.batch_size} (the global batch) does not divide "
                         f"by the {comm.size} processes training together")
    out = out or (os.path.dirname(os.path.abspath(resume)) if resume else
                  default_out_dir(config))
    out = comm.broadcast_object(out)      # rank 0's: a default name holds the time
    # one run per folder (a second stops here, before any work); held by rank 0, which writes
    with rundir.lock(out) if comm.rank == 0 else contextlib.nullcontext(False) as locked:
        # unlocked (no fcntl), another run may be writing these files: leave them
        for partial in checkpoint.remove_partial_files(out) if locked else []:
            print(f"note: removed {partial}, left by a save that was cut short", file=stream)
        data = load_data(config, data_dir=data_dir, cache=cache, workers=workers,
                         classes=tree["classes"] if tree else None)
        run = build(config, data, device, normalization=tree["normalization"] if tree else None,
                    comm=comm, towers=towers, origin=origin, pretrained=source)
        parallel = comm.size > 1
        if parallel:
            comm.broadcast_model(run.model)     # every replica starts from rank 0's weights
            if comm.rank > 0:                   # its own dropout masks (rank 0: one process's)
                backend.manual_seed(distributed.process_seed(config.seed, comm.rank))
        if config.limit_train and config.limit_train < config.batch_size:
            print(f"note: `limit_train` {config.limit_train} is below the batch size",
                  file=stream)
        watch = LossWatch(len(data.classes), warmup=run.warmup.steps,
                          stall_steps=config.stall_steps)
        extensions = None if not parallel else standard_extensions(
            run.val_loader, scheduler=run.scheduler, warmup=run.warmup, watch=watch,
            print_freq=config.print_freq, out_dir=out) + [distributed.DataParallel(comm)]
        trainer = Trainer(run.model, run.optimizer, run.train_loader, run.val_loader,
                          scheduler=run.scheduler, warmup=run.warmup, watch=watch,
                          epochs=config.epochs, out_dir=out,
                          config={**config.to_dict(), "device": device, "processes": comm.size,
                                  "towers": None if towers is None else list(towers)},
                          extra_state={"classes": data.classes,
                                       "normalization": run.normalization, **origin.state()},
                          print_freq=config.print_freq, stream=stream, extensions=extensions,
                          rank=comm.rank, reduce_sums=comm.allreduce_sum if parallel else None)
        if tree is not None:
            trainer.load_state(tree, source=str(resume))
        _print_header(run, trainer, device, out, resume, stream)

        try:
            stopped = trainer.fit()
        except TrainingStopped:         # trainer.stopped says why (alike on every process)
            if comm.rank == 0:
                with contextlib.suppress(OSError):  # why it stopped matters more than a full disk
                    _write_summary(out, run_summary(trainer, run, device, None, started))
                # the curves say how it got there; the last weights' predictions would not
                report.write_after_fit(out, run, stream, tested=False)
            raise
        if stopped == "interrupted":      # curves and tables only: Ctrl-C asked to stop soon
            if comm.rank == 0:
                report.write_after_fit(out, run, stream, tested=False)
            return run_summary(trainer, run, device, None, started)
        test = evaluate_best(trainer, run.test_loader, comm, keep_probabilities=True)
        # the report's confusion matrix and mistakes come from this pass, not a second one;
        # each process kept its share's, joined at rank 0 in the images' order
        probabilities = comm.gather_arrays(test.pop("probabilities").reshape(
            -1, len(data.classes)))
        labels = comm.gather_arrays(test.pop("labels"))
        predictions = None if comm.rank else report.Predictions(probabilities, labels,
                                                                list(data.classes))
        # evaluate_best left its weights in the model for the ten crops
        summary = run_summary(trainer, run, device, test, started,
                              **ten_crop_results(run, trainer.reduce_sums))
        if not above_chance(test["top1"], test["images"], len(data.classes)):
            what = (f"the run ended at chance: test top-1 {test['top1']:.2%} over "
                    f"{test['images']} images of {len(data.classes)} classes is no better than "
                    f"guessing ({1 / len(data.classes):.2%})")
            summary["stopped"] = f"{TrainingStalled.reason}: {what}"
            if comm.rank == 0:
                _write_summary(out, summary)
                report.write_after_fit(out, run, stream, predictions=predictions)
            raise TrainingStalled(what)
        if comm.rank == 0:
            _write_summary(out, summary)
            report.write_after_fit(out, run, stream, predictions=predictions)  # failing: warns
    return summary


# -- its parts ---------------------------------------------------------------------------------
@dataclasses.dataclass
class RunData:
    """A run's splits and what the model and transforms need to know about them."""
    train: object
    val: object
    test: object
    classes: list
    in_channels: int
    test_split: str                  # where the final accuracy is measured
    fashion_mnist: object = None     # FashionMNIST: pixel mean and std, root
    folder: object = None            # PreparedDataset: mean image, RGB PCA, skipped files

    def describe(self, config: RunConfig) -> str:
        counts = (f"train {len(self.train):,}, val {len(self.val):,}, test "
                  f"({self.test_split}/) {len(self.test):,}")
        if self.folder is None:
            scaled = VARIANTS[config.model].input_size
            return (f"data: Fashion-MNIST from {self.fashion_mnist.root}: "
                    + counts.replace(f"({self.test_split}/) ", "")
                    + (f"; images scaled 28x28 -> {scaled}x{scaled} per batch on the device"
                       if scaled != 28 else ""))
        return f"data: {config.dataset}: {counts} | {describe_folder(self.folder)}"

    def facts(self) -> dict:
        """What a result records about an image folder's data: the split tested, the prepared
        cache and the files skipped in each split ({} for Fashion-MNIST)."""
        if self.folder is None:
            return {}
        folder = self.folder
        return {"test_split": self.test_split, "prepared": str(folder.path),
                "skipped_files": {split: folder.skipped[split] for split in folder.splits}}


def describe_folder(data, counts: bool = False) -> str:
    """One line: (with ``counts``, the images per split,) where the prepared data is, its
    classes, and what was skipped."""
    skipped = [rel for split in data.splits for rel, _ in data.skipped[split]]
    names = ", ".join(data.classes[:10]) + (", ..." if len(data.classes) > 10 else "")
    line = (f"{'reused' if data.reused else 'prepared'} {data.size}x{data.size} cache "
            f"{data.path}; {len(data.classes)} classes ({names}); "
            + (f"{len(skipped)} unreadable file(s) skipped ({', '.join(skipped[:3])}"
               f"{', ...' if len(skipped) > 3 else ''})" if skipped else "no file skipped"))
    if counts:
        line = ", ".join(f"{s} {len(data.labels[s]):,}" for s in data.splits) + " | " + line
    return line


def prepare_folder(root, size, *, cache=None, workers=None):
    """The prepared image folder (its cache reused when unchanged); unreadable files are
    counted in :func:`describe_folder`'s line instead of one warning each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare(root, size=size, cache_dir=cache, workers=workers)


def load_data(config: RunConfig, *, data_dir=None, cache=None, workers=None,
              classes=None) -> RunData:
    """The splits ``config`` names. An image folder without ``test/`` is tested on ``val/``;
    ``classes``, when given (from a checkpoint), must be the folder's."""
    limit_train, limit_test = config.limit_train, config.limit_test
    if not config.is_folder:
        data = load_fashion_mnist(data_dir, val_size=config.val_size)
        return RunData(data.train.head(limit_train), data.val.head(limit_test),
                       data.test.head(limit_test), list(data.classes), 1, "test",
                       fashion_mnist=data)
    data = prepare_folder(config.dataset, config.prepared_size, cache=cache, workers=workers)
    if classes is not None and list(classes) != list(data.classes):
        raise ValueError(f"{config.dataset}: classes {list(data.classes)} differ from the "
                         f"checkpoint's {list(classes)}")
    test_split = "test" if "test" in data.splits else "val"
    return RunData(data.split("train").head(limit_train), data.split("val").head(limit_test),
                   data.split(test_split).head(limit_test), list(data.classes), 3, test_split,
                   folder=data)


def input_scale(folder) -> float:
    """1 / the pixel std in 0..255 levels: the RGB covariance's trace (of pixels/255) is the sum
    of its eigenvalues, a third of it per channel."""
    std = 255.0 * float(np.sqrt(np.sum(folder.eigvals, dtype=np.float64) / 3))
    return 1.0 / std if std > 0 else 1.0      # a folder of flat images has no spread to undo


@dataclasses.dataclass
class Run:
    """Everything :func:`build` makes from a configuration and its data."""
    config: RunConfig
    data: RunData
    model: object
    optimizer: SGD
    scheduler: object
    warmup: LinearWarmup
    train_loader: Loader
    val_loader: Loader | None
    test_loader: Loader
    ten_crop_loader: Loader | None
    normalization: dict                # Fashion-MNIST's pixel mean and std, kept for resuming
    preprocessing: object = None       # the weights' Preprocessing the transforms apply, if any
    notes: list = dataclasses.field(default_factory=list)    # what fine-tuning changed

    def augmentation(self) -> str:
        c = self.config
        size = self.model.input_size
        if c.is_folder and self.preprocessing is not None:
            parts = [c.random_crop and f"random {size}x{size} crops", c.flip and "horizontal flips",
                     c.pca and f"PCA colour noise (std {PCA_STD:g})",
                     self.preprocessing.describe() + " preprocessing"]
        elif c.is_folder:
            parts = [c.random_crop and f"random {size}x{size} crops", c.flip and "horizontal flips",
                     c.pca and f"PCA colour noise (std {PCA_STD:g})",
                     c.subtract_mean and "mean image subtracted",
                     c.normalize and f"divided by the pixel std "
                                     f"{1 / input_scale(self.data.folder):.1f}"]
        else:
            parts = [c.crop_padding and f"random crops (padding {c.crop_padding})",
                     c.flip and "horizontal flips"]
        return ", ".join(filter(None, parts)) or "none"


def build(config: RunConfig, data: RunData, device: str = "cpu", normalization=None, *,
          comm=None, towers=None, origin=None, pretrained=None) -> Run:
    """Model, optimiser, schedule, warm-up and loaders for ``config`` on ``device``, all seeded
    from ``config.seed`` (one seed, independent streams: weights and dropout from minialex's
    generator, shuffling and augmentation from their own). ``normalization``: Fashion-MNIST's
    ``{"mean", "std"}`` to use instead of the data's (a resumed run keeps its own). ``comm``:
    the loaders give this process its share (of each training batch, of the evaluation images).
    ``towers``: the model split between these two devices (``device`` is the first).

    ``pretrained``: a :class:`minialex.finetune.Source` to start from (conv1 adapted, fc8
    replaced: :func:`minialex.finetune.start_model`); ``origin``: the input preparation and
    LRN constants of the weights the run started from (:class:`minialex.finetune.Origin`;
    None: minialex's own), for a new run and every later use of its checkpoints alike."""
    backend.manual_seed(config.seed)
    origin = origin or finetune.Origin()
    notes = []
    if pretrained is not None:
        model, notes = finetune.start_model(pretrained, config, data.in_channels,
                                            len(data.classes))
    else:
        model = alexnet(config.model, num_classes=len(data.classes),
                        in_channels=data.in_channels, init=config.init,
                        lrn_position=config.lrn_position, dropout=config.dropout,
                        dropout_mode=config.dropout_mode, activation=config.activation,
                        pool=config.pool, lrn=config.lrn)
        origin.apply(model)
    model.to("cpu" if towers else device)
    trained = model.parameters()
    if config.freeze == "features":
        if towers is not None:
            raise ValueError("freeze: frozen features are not split between `towers`")
        trained = finetune.freeze_features(model)
        notes.append("features frozen: conv1-conv5 get no gradient, no update, no weight decay")
    sgd = dict(lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if towers is not None:
        model = two_towers(model, towers)
        optimizer = TowersSGD(model, **sgd)
    else:
        optimizer = SGD(trained, **sgd)
    if config.schedule == "plateau" and not len(data.val):
        raise ValueError("schedule: plateau needs a validation set; set `val_size` > 0")
    scheduler = {"plateau": lambda: ReduceLROnPlateau(
                     optimizer, patience=config.plateau_patience,
                     # no threshold given: an improvement must beat the validation error's
                     # standard error on len(data.val) images (see ReduceLROnPlateau)
                     threshold=0.0 if config.threshold is None else config.threshold,
                     samples=len(data.val) if config.threshold is None else None),
                 "step": lambda: StepLR(optimizer, config.step_size),
                 "none": lambda: None}[config.schedule]()
    augment = np.random.default_rng([config.seed, 2])
    norm = None
    # grey data has no RGB statistics to take from the weights: it keeps its own
    prep = origin.preprocessing if data.in_channels == 3 else None
    if config.is_folder and prep is not None:
        folder = data.folder
        augmenter = finetune.PreprocessedAugmenter(
            prep, folder.eigvals, folder.eigvecs, crop=model.input_size,
            random_crop=config.random_crop, flip=config.flip,
            pca_std=PCA_STD if config.pca else None, generator=augment)
    elif config.is_folder:
        folder = data.folder
        augmenter = Augmenter(folder.mean if config.subtract_mean else None, folder.eigvals,
                              folder.eigvecs, crop=model.input_size,
                              random_crop=config.random_crop, flip=config.flip,
                              pca_std=PCA_STD if config.pca else None,
                              scale=input_scale(folder) if config.normalize else 1.0,
                              generator=augment)
    else:
        source = normalization or {"mean": data.fashion_mnist.mean,
                                   "std": data.fashion_mnist.std}
        norm = {"mean": float(source["mean"]), "std": float(source["std"])}
        augmenter = GreyAugmenter(model.input_size, norm["mean"], norm["std"],
                                  crop_padding=config.crop_padding, flip=config.flip,
                                  generator=augment)
    eval_batch = 2 * config.batch_size
    size, rank = (1, 0) if comm is None else (comm.size, comm.rank)
    # training: a share of every global batch; evaluation: a contiguous share of the images
    loader = dict(device=device, num_classes=len(data.classes), num_replicas=size, rank=rank)
    evaluation = dict(loader, shard_by="dataset")
    train_loader = Loader(data.train, config.batch_size, shuffle=True,
                          generator=np.random.default_rng([config.seed, 1]),
                          transform=augmenter.train, **loader)
    return Run(
        config, data, model, optimizer, scheduler,
        LinearWarmup(optimizer, config.warmup, planned_steps=config.epochs * len(train_loader)),
        train_loader,
        Loader(data.val, eval_batch, transform=augmenter.eval, **evaluation) if len(data.val)
        else None,
        Loader(data.test, eval_batch, transform=augmenter.eval, **evaluation),
        Loader(data.test, size * max(1, eval_batch // 10 // size), transform=augmenter.ten_crop,
               **evaluation) if config.ten_crop else None,
        norm, prep, notes)


def describe_device(device: str) -> str:
    """``cpu (2 cores, x86_64)`` or ``gpu:0 (NVIDIA H100 80GB HBM3)``."""
    if device.startswith("gpu"):
        props = backend.require_cupy().cuda.runtime.getDeviceProperties(int(device[4:]))
        name = props["name"]
        return f"{device} ({name.decode() if isinstance(name, bytes) else name})"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def resolve_device(choice: str = "auto") -> str:
    """``"auto"``: the GPU when CuPy and a GPU are usable, else the CPU; ``"gpu"`` without a
    usable GPU raises RuntimeError with the reason."""
    if choice == "auto":
        return backend.parse_device("gpu") if backend.gpu_available() else "cpu"
    return backend.parse_device(choice)


def resolve_towers(towers) -> tuple:
    """The two devices of ``towers`` (``"gpu:0,gpu:1"`` or a pair), checked before any work: a
    ValueError unless there are two, a RuntimeError (as for ``"gpu"``) where one is not usable."""
    devices = tuple(towers.split(",")) if isinstance(towers, str) else tuple(towers)
    if len(devices) != 2:
        raise ValueError(f"`towers`: expected two devices, e.g. gpu:0,gpu:1, got {towers!r}")
    return tuple(backend.parse_device(d.strip()) for d in devices)


def default_out_dir(config: RunConfig) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.model}-{stamp}")


def _print_header(run, trainer, device, out, resume, stream):
    c, model = run.config, run.model
    print(f"minialex {__version__} | device {describe_device(device)} | model {model.variant} "
          f"({model.num_parameters():,} parameters, input "
          f"{'x'.join(map(str, model.input_shape))})", file=stream)
    print(run.data.describe(c), file=stream)
    if c.pretrained:
        print("; ".join([f"fine-tuning from {c.pretrained}"] + run.notes), file=stream)
    steps = len(run.train_loader)
    print(f"training: {c.epochs} epoch{'s' * (c.epochs != 1)}, batch {c.batch_size} ({steps} "
          f"steps/epoch), SGD lr {c.lr:g} momentum {c.momentum:g} weight decay "
          f"{c.weight_decay:g}, {describe_warmup(run.warmup, c.epochs * steps)}, init {c.init}, "
          f"schedule {describe_schedule(run.scheduler)}, augmentation: {run.augmentation()}",
          file=stream)
    where = (f" | resuming {resume} at epoch {trainer.epoch + 1}, step {trainer.step}"
             if resume else "")
    print(f"output: {out}{where}", file=stream, flush=True)


def describe_warmup(warmup: LinearWarmup, planned_steps: int) -> str:
    """``warm-up 100 steps``, or with the cap said: ``warm-up 8 steps (`warmup` 100 capped:
    at most a fifth of the 40 planned steps)``."""
    text = f"warm-up {warmup.steps} step{'s' * (warmup.steps != 1)}"
    if warmup.steps < warmup.requested:
        text += (f" (`warmup` {warmup.requested} capped: at most a fifth of the {planned_steps} "
                 f"planned steps)")
    return text


def describe_schedule(scheduler) -> str:
    """``plateau (patience 1, improvement > 1 standard error of the error on 300 images)``,
    ``step (every 4 epochs)`` or ``none``."""
    if isinstance(scheduler, ReduceLROnPlateau):
        bar = (f"> 1 standard error of the error on {scheduler.samples} images"
               if scheduler.samples else f"> {scheduler.threshold:g} x the best error")
        return f"plateau (patience {scheduler.patience}, improvement {bar})"
    if isinstance(scheduler, StepLR):
        return f"step (every {scheduler.step_size} epochs)"
    return "none"


def evaluate_best(trainer: Trainer, loader, comm=None, **options) -> dict:
    """Evaluate on ``loader`` with the weights of ``best.npz`` (loaded into the model) when
    the run wrote one, else the current ones; ``"weights"`` says which. ``options`` go to
    :func:`~minialex.train.evaluate`, with the trainer's ``reduce_sums``. ``comm``: rank 0
    reads ``best.npz`` and sends its weights to every process."""
    comm = distributed.create_communicator(None) if comm is None else comm
    best = trainer.path("best.npz")
    used = "last"
    if comm.broadcast_object(best is not None and os.path.exists(best)):     # rank 0's disk
        if comm.rank == 0:
            checkpoint.load_weights(trainer.model, checkpoint.load(best), best)
        comm.broadcast_model(trainer.model)
        used = f"best (epoch {trainer.best_epoch})"
    metrics = evaluate(trainer.model, loader, reduce_sums=trainer.reduce_sums, **options)
    metrics["weights"] = used
    return metrics


def run_summary(trainer: Trainer, run: Run, device, test=None, started=None, **extra) -> dict:
    """The run's summary: test metrics (accuracies in [0, 1]), epochs, why it stopped,
    throughput, device, model, settings and versions; ``extra`` entries added as given."""
    out = {}
    if test is not None:
        out.update({"test_top1": test["top1"], "test_top5": test["top5"],
                    "test_loss": test["loss"], "test_images": test["images"],
                    "test_weights": test.get("weights", "last"),
                    "eval_images_per_second": test["images_per_second"]})
    out.update({
        "epochs": trainer.epoch, "epochs_planned": trainer.epochs, "stopped": trainer.stopped,
        "steps": trainer.global_step, "warnings": trainer.warnings,
        "best_epoch": trainer.best_epoch,
        "best_val_top1": None if trainer.best_epoch is None else 1.0 - trainer.best_val_error,
        **lr_reached(trainer),
        "images_per_second": trainer.train_images_total / max(trainer.train_seconds_total, 1e-9),
        "train_seconds": trainer.train_seconds_total,
        "device": describe_device(device),
        "model": trainer.architecture, "parameters": int(trainer.model.num_parameters()),
        "args": trainer.config, "classes": run.data.classes,
        "versions": {"minialex": __version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    if started is not None:
        out["wall_time_s"] = time.time() - started
        out["started"] = datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds")
    out["out"] = trainer.out_dir
    out["summary_file"] = os.path.join(trainer.out_dir, report.SUMMARY_FILE)
    out.update(run.data.facts())
    out.update(extra)
    return out


def lr_reached(trainer: Trainer) -> dict:
    """``max_lr``: the highest learning rate an update used (below ``lr`` when the warm-up
    never ended); ``final_lr``: the last update's; ``warmup_steps``: the warm-up's length.
    Without updates (or a LearningRate extension), the optimiser's rate stands for both."""
    rates = trainer.extension(LearningRate)
    warmup = rates.warmup if rates is not None else None
    used = rates is not None and rates.last_lr is not None
    return {"max_lr": rates.max_lr if used else trainer.optimizer.lr,
            "final_lr": rates.last_lr if used else trainer.optimizer.lr,
            "warmup_steps": None if warmup is None else warmup.steps}


def ten_crop_results(run: Run, reduce_sums=None) -> dict:
    """The model's test accuracy and loss over the paper's ten crops (Sec. 4.1), when ``run``
    has a ten-crop loader; else {}. ``reduce_sums``: see :func:`~minialex.train.evaluate`."""
    if run.ten_crop_loader is None:
        return {}
    ten = evaluate_ten_crop(run.model, run.ten_crop_loader, reduce_sums=reduce_sums)
    return {"test_top1_10crop": ten["top1"], "test_top5_10crop": ten["top5"],
            "test_loss_10crop": ten["loss"]}


def _write_summary(out, summary) -> str:
    """Write ``out/summary.json``; when that fails the trained state is in ``last.npz``, and
    resuming it (with no epochs left) tests it and writes the summary again."""
    path = os.path.join(out, report.SUMMARY_FILE)
    try:
        checkpoint.write_json(path, summary)
    except checkpoint.WriteError as exc:
        last = os.path.join(out, "last.npz")
        raise checkpoint.WriteError(path, exc, f"the trained state is in {last}; resume with "
                                               f"`resume` {last} to test it and write the "
                                               f"summary again") from None
    return path


def load_checkpoint(path, *, device: str = "cpu", dataset=None, model=None, data_dir=None,
                    cache=None, workers=None, splits: bool = True, **changes) -> tuple:
    """``(run, tree)``: checkpoint ``path`` (its tree) and its run as :func:`build` makes it,
    with the model and input normalisation it was trained with, the checkpoint's weights
    loaded and the model in eval mode. ``dataset`` and ``model`` override the checkpoint's;
    ``changes`` are settings of this call's own (``limit_test``, ``ten_crop``). The 10 crops
    need an image-folder checkpoint.

    ``splits=False``: the caller needs the model and the evaluation transform, not the
    images; a Fashion-MNIST checkpoint that stores its classes and normalisation then gets
    empty splits instead of the dataset files (an image folder's transform needs its
    prepared cache all the same)."""
    tree = checkpoint.migrate(checkpoint.load(path))
    saved = dict(tree.get("config", {}))
    saved.update({k: v for k, v in (("dataset", dataset), ("model", model)) if v is not None})
    saved.setdefault("model", tree.get("architecture"))
    config = dataclasses.replace(resolve({}, device, saved), **changes)
    if config.ten_crop and not config.is_folder:
        raise ValueError(f"ten_crop: {path} was trained on Fashion-MNIST; the paper's 10 crops "
                         f"need a checkpoint trained on an image folder")
    config.check()
    if not splits and not config.is_folder and tree["classes"] and tree["normalization"]:
        none = ArrayDataset(np.zeros((0, 1, 28, 28), np.uint8), np.zeros(0, np.int64))
        data = RunData(none, none, none, list(tree["classes"]), 1, "test")
        config = config.replace(schedule="none")    # a plateau schedule would want val images
    else:
        data = load_data(config, data_dir=data_dir, cache=cache, workers=workers,
                         classes=tree["classes"])
    run = build(config, data, device, normalization=tree["normalization"],
                origin=finetune.Origin.from_tree(tree))
    checkpoint.load_weights(run.model, tree, path)
    run.model.eval()
    return run, tree


def evaluate_checkpoint(path, *, device: str = "cpu", dataset=None, model=None, data_dir=None,
                        cache=None, workers=None, limit_test=None, ten_crop=False,
                        out=None) -> dict:
    """Test the checkpoint at ``path`` on its dataset's test split (an image folder's
    ``test/``, else ``val/``), with the model and input normalisation it was trained with
    (:func:`load_checkpoint`). ``dataset`` and ``model`` override the checkpoint's;
    ``limit_test`` None tests every image. Returns the metrics, also written to
    ``out/evaluate.json`` when ``out`` is given."""
    run, tree = load_checkpoint(path, device=device, dataset=dataset, model=model,
                                data_dir=data_dir, cache=cache, workers=workers,
                                limit_test=limit_test, ten_crop=bool(ten_crop))
    data = run.data
    metrics = evaluate(run.model, run.test_loader)
    result = {"checkpoint": str(path), "epoch": tree.get("trainer", {}).get("epoch"),
              "test_top1": metrics["top1"], "test_top5": metrics["top5"],
              "test_loss": metrics["loss"], "test_images": metrics["images"],
              "device": describe_device(device), "model": run.model.variant,
              "classes": data.classes, **ten_crop_results(run), **data.facts()}
    if out:
        os.makedirs(out, exist_ok=True)
        checkpoint.write_json(os.path.join(out, "evaluate.json"), result)
    return result


def find_lr(config: RunConfig, *, device: str = "cpu", data_dir=None, cache=None, workers=None,
            steps: int = 100, start_lr: float = 1e-5, end_lr: float = 1.0) -> dict:
    """The learning-rate range test (:func:`minialex.lr_finder.lr_range_test`) on the model,
    optimiser and training batches ``config`` builds; nothing is trained."""
    data = load_data(config, data_dir=data_dir, cache=cache, workers=workers)
    run = build(config, data, device)
    return lr_range_test(run.model, run.train_loader, run.optimizer, steps=steps,
                         start_lr=start_lr, end_lr=end_lr)


__all__ = ["FASHION_MNIST", "Run", "RunData", "build", "describe_device", "evaluate_best",
           "evaluate_checkpoint", "find_lr", "fit", "load_checkpoint", "load_data",
           "resolve_device", "run_summary"]
