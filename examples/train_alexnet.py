#!/usr/bin/env python3
"""Train an AlexNet on Fashion-MNIST or on your own image folder, and report honest accuracy.

    python examples/train_alexnet.py                 # GPU if usable, else the CPU preset
    python examples/train_alexnet.py --device gpu    # fmnist AlexNet at 224x224, 10 epochs
    python examples/train_alexnet.py --device cpu    # the `mini` AlexNet at 28x28, minutes
    python examples/train_alexnet.py --resume runs/X/last.npz      # continue a stopped run
    python examples/train_alexnet.py --evaluate runs/X/best.npz    # test a checkpoint
    python examples/train_alexnet.py --dataset PATH --model paper --ten-crop   # the paper's way

Defaults depend on the device (see PRESETS); every flag overrides its preset. The 60,000
training images are split into 55,000 for training and a seeded hold-out of 5,000 for
validation (which picks the best epoch and drives the learning-rate schedule); the test top-1 and
top-5 accuracy are measured once, at the end, on the full 10,000-image test set with the best
epoch's weights. A run directory (``--out``) receives ``metrics.jsonl`` (one line per epoch),
``last.npz`` and ``best.npz`` checkpoints and ``summary.json``. Ctrl-C saves ``last.npz`` and
exits; ``--resume`` continues exactly from it (on a GPU, dropout masks are redrawn).

Image folders. ``--dataset PATH`` names a folder with ``train/`` and ``val/`` (and optionally
``test/``), one sub-folder per class (the ImageNet layout; see minialex/data/folder.py). It is
prepared once (shorter side ``--image-size``, default 256, central square, uint8 cache under
``--cache``; ``--prepare-only`` stops there) and trained with the paper's recipe: SGD momentum
0.9, weight decay 5e-4, lr 0.01 divided by 10 when the validation error stops improving, random
crops of the model's input size, horizontal flips, PCA colour noise and mean-image subtraction
(``--no-random-crop``, ``--no-flip``, ``--no-pca``, ``--no-subtract-mean`` turn each off). One
departure: inputs are divided by the pixel std, the unit scale the default Kaiming init expects
(``--no-normalize --init paper`` is the paper's 0..255 scale and N(0, 0.01) init). The
final accuracy is measured on ``test/``, or on ``val/`` when there is none, on the centre crop
and, with ``--ten-crop``, on the softmax averaged over the paper's ten crops too. The classes
(label ``i`` is ``classes[i]``) and any unreadable files skipped are saved in ``summary.json``;
the classes also in the checkpoints.

Exit status: 0 done, 1 failed (data or checkpoint missing or unreadable, loss diverged), 2 bad
usage (including --device gpu without a usable GPU), 130 interrupted (checkpoint saved).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import minialex  # noqa: E402
from minialex import backend, checkpoint  # noqa: E402
from minialex.data import Loader, load_fashion_mnist  # noqa: E402
from minialex.data.augment import PCA_STD, Augmenter  # noqa: E402
from minialex.data.prepare import DEFAULT_SIZE, default_cache_dir, prepare  # noqa: E402
from minialex.data.transforms import image_transforms  # noqa: E402
from minialex.models import INITS, LRN_POSITIONS, VARIANTS, alexnet  # noqa: E402
from minialex.optim import SGD, ReduceLROnPlateau, StepLR  # noqa: E402
from minialex.train import (Trainer, TrainingDiverged, describe_device, evaluate,  # noqa: E402
                            evaluate_ten_crop)

PROG = "train_alexnet.py"
FASHION_MNIST = "fashion-mnist"
SCHEDULES = ("plateau", "step", "none")
# Per-device defaults. GPU: the d2l.ai Fashion-MNIST AlexNet at 224x224, as the issue asks.
# CPU: the `mini` AlexNet at the images' own 28x28, sized to finish on 2 cores in minutes with
# test top-1 >= 0.85. Measured on a 2-core AMD EPYC: 4.6 min, test top-1 0.874. Batch 64 runs
# as many images/s as 128 there (~440) and takes twice the steps; one epoch at lr 0.02, then
# one at 0.002 (the paper's divide-by-10, on a fixed step since two epochs give no plateau to
# detect). Augmentation is off: two epochs underfit rather than overfit.
PRESETS = {
    "gpu": dict(model="fmnist", epochs=10, batch_size=128, lr=0.003, schedule="plateau",
                step_size=1, crop_padding=0, flip=True),
    "cpu": dict(model="mini", epochs=2, batch_size=64, lr=0.02, schedule="step",
                step_size=1, crop_padding=0, flip=False),
    # An image folder, on any device: the paper's recipe (ALEXNET.md section 5), ~90 epochs,
    # fewer when the plateau schedule is exhausted first.
    "images": dict(model="paper", epochs=90, batch_size=128, lr=0.01, schedule="plateau",
                   step_size=1, crop_padding=0, flip=True),
}
COMMON = dict(momentum=0.9, weight_decay=5e-4, init="kaiming", seed=0, lrn_position="paper",
              dropout=0.5, dropout_mode="inverted", val_size=5000, limit_train=None,
              limit_test=None, print_freq=50, dataset=FASHION_MNIST, image_size=DEFAULT_SIZE,
              random_crop=True, pca=True, subtract_mean=True, normalize=True, ten_crop=False)
# What a checkpoint fixes about its run; on --resume these come from the checkpoint.
RUN_KEYS = ("model", "batch_size", "lr", "momentum", "weight_decay", "init", "seed", "schedule",
            "step_size", "crop_padding", "flip", "lrn_position", "dropout", "dropout_mode",
            "val_size", "limit_train", "limit_test", "dataset", "image_size", "random_crop",
            "pca", "subtract_mean", "normalize")


def _checked(kind, ok, expected):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _checked(float, lambda v: 0 < v < float("inf"), "a finite number > 0")
nonneg_float = _checked(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")
unit_float = _checked(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Train an AlexNet on Fashion-MNIST or an image folder with "
                               "minialex.",
        epilog="Defaults marked 'preset' depend on the device: "
               + "; ".join(f"{d}: " + ", ".join(f"{k}={v}" for k, v in s.items())
                           for d, s in PRESETS.items()))
    a = p.add_argument
    a("--device", choices=("auto", "cpu", "gpu"), default="auto",
      help="where to train; auto = the GPU when CuPy and a GPU are usable (default: auto)")
    a("--model", choices=tuple(VARIANTS), help="AlexNet variant (preset)")
    a("--dataset", metavar="fashion-mnist|PATH", help="fashion-mnist, or a folder with train/ "
      "and val/ (optionally test/), one sub-folder per class (default: fashion-mnist)")
    a("--data-dir", help="directory with the Fashion-MNIST IDX files (searched before "
                         "/usr/share/datasets/fashion-mnist)")
    a("--epochs", type=positive_int, help="epochs in all, counting those already done when "
                                          "resuming (preset)")
    a("--batch-size", type=positive_int, help="images per training step (preset)")
    a("--lr", type=positive_float, help="initial learning rate (preset)")
    a("--momentum", type=unit_float, help="SGD momentum (default: 0.9, the paper's)")
    a("--weight-decay", type=nonneg_float, help="weight decay (default: 0.0005, the paper's)")
    a("--init", choices=INITS, help="weight initialisation (default: kaiming)")
    a("--seed", type=nonneg_int, help="seed of weights, shuffling, dropout, augmentation "
                                      "(default: 0)")
    a("--schedule", choices=SCHEDULES, help="learning-rate schedule: plateau = divide by 10 "
      "when the validation error stops improving, at most 3 times, then stop (the paper's); "
      "step = divide by 10 every --step-size epochs (preset)")
    a("--step-size", type=positive_int, help="epochs between divisions for --schedule step "
                                             "(preset)")
    a("--crop-padding", type=nonneg_int, help="random crops after padding by this many pixels; "
                                              "0 = off (preset)")
    a("--flip", action=argparse.BooleanOptionalAction, help="random horizontal flips (preset)")
    g = p.add_argument_group("image folders (--dataset PATH)").add_argument
    g("--image-size", type=positive_int, help=f"side of the prepared images: shorter side "
      f"rescaled to it, central square kept (default: {DEFAULT_SIZE}, the paper's)")
    g("--cache", metavar="DIR", help=f"where prepared datasets are cached (default: "
                                     f"$MINIALEX_CACHE or {default_cache_dir()})")
    g("--workers", type=nonneg_int, help="decoding processes while preparing (default: one "
                                         "per CPU; 0: decode in this process)")
    g("--prepare-only", action="store_true", help="prepare the dataset (or find its cache) "
                                                  "and exit")
    g("--random-crop", action=argparse.BooleanOptionalAction, help="random crops of the "
      "model's input size while training, else the centre (default: on)")
    g("--pca", action=argparse.BooleanOptionalAction, help="PCA colour noise, alpha ~ N(0, "
      f"{PCA_STD}) per image (default: on)")
    g("--subtract-mean", action=argparse.BooleanOptionalAction, help="subtract the training "
      "set's mean image (default: on)")
    g("--normalize", action=argparse.BooleanOptionalAction, help="divide by the training set's "
      "pixel std, the unit scale Kaiming init expects; --no-normalize feeds 0..255 levels as "
      "the paper did (with --init paper) (default: on)")
    g("--ten-crop", action="store_true", help="also report the final accuracy on the softmax "
      "averaged over ten crops (corners, centre, mirrored)")
    a("--lrn-position", choices=LRN_POSITIONS, help="LRN before (paper) or after (caffe) the "
                                                    "pool (default: paper)")
    a("--dropout", type=unit_float, help="dropout probability on fc6 and fc7 (default: 0.5)")
    a("--dropout-mode", choices=("inverted", "paper"), help="dropout scaling (default: inverted)")
    a("--val-size", type=nonneg_int, help="Fashion-MNIST training images held out for "
                                          "validation (default: 5000)")
    a("--limit-train", type=positive_int, help="train on the first N training images only")
    a("--limit-test", type=positive_int, help="validate and test on the first N images only")
    a("--out", help="run directory (default: runs/<model>-<date-time>; when resuming, the "
                    "checkpoint's directory)")
    a("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    a("--evaluate", metavar="PATH", help="only evaluate this checkpoint on the test set")
    a("--print-freq", type=nonneg_int, help="progress line every N steps; 0 = per epoch only "
                                            "(default: 50)")
    return p


def resolve_device(choice: str) -> str:
    if choice == "auto":
        return backend.parse_device("gpu") if backend.gpu_available() else "cpu"
    return backend.parse_device(choice)     # RuntimeError with the reason when no GPU


def settings(args, device, saved=None) -> tuple:
    """The run's settings: explicit flags, else (when resuming) the checkpoint's, else the
    preset (of the device for Fashion-MNIST; the paper's for an image folder). Returns (config,
    notes about flags a resume ignores)."""
    dataset = (saved or {}).get("dataset") or args.dataset or FASHION_MNIST
    kind = ("images" if dataset != FASHION_MNIST else
            "gpu" if device.startswith("gpu") else "cpu")
    preset = {**COMMON, **PRESETS[kind]}
    config, notes = {}, []
    for key, default in preset.items():
        given = getattr(args, key, None)
        if saved is not None and key in RUN_KEYS and key in saved:
            if given is not None and given != saved[key] and key != "model":
                notes.append(f"--{key.replace('_', '-')} {given} ignored: resuming keeps the "
                             f"checkpoint's {saved[key]}")
            config[key] = given if key == "model" and given is not None else saved[key]
        elif key == "epochs" and given is None and saved is not None:
            config[key] = saved.get("epochs", default)
        else:
            config[key] = default if given is None else given
    if saved is not None and "classes" in saved:
        config["classes"] = saved["classes"]      # load_data checks the folder still has them
    return config, notes


def is_folder(config) -> bool:
    return config["dataset"] != FASHION_MNIST


def build_model(config, device, data):
    """The run's AlexNet: RGB and the folder's classes, or Fashion-MNIST's 10 grey ones."""
    num_classes, in_channels = (len(data.classes), 3) if is_folder(config) else (10, 1)
    minialex.manual_seed(config["seed"])
    model = alexnet(config["model"], num_classes=num_classes, in_channels=in_channels,
                    init=config["init"], lrn_position=config["lrn_position"],
                    dropout=config["dropout"], dropout_mode=config["dropout_mode"])
    return model.to(device)


def prepare_folder(args, root, size):
    """The prepared image folder (its cache reused when unchanged)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # unreadable files are counted in one line instead
        return prepare(root, size=size, cache_dir=args.cache, workers=args.workers)


def load_data(args, config):
    """(dataset, train, val, test) of the run. An image folder without test/ is tested on val/;
    its classes must be those the run (when resuming) or the checkpoint was trained on."""
    if not is_folder(config):
        data = load_fashion_mnist(args.data_dir, val_size=config["val_size"])
        return (data, data.train.head(config["limit_train"]),
                data.val.head(config["limit_test"]), data.test.head(config["limit_test"]))
    crop, size = VARIANTS[config["model"]].input_size, config["image_size"]
    if crop > size:      # before preparing: that can take hours
        raise ValueError(f"--model {config['model']} takes {crop}x{crop} crops, larger than "
                         f"the {size}x{size} prepared images; use --image-size {crop} or more")
    data = prepare_folder(args, config["dataset"], size)
    if config.get("classes") not in (None, list(data.classes)):
        raise ValueError(f"{config['dataset']}: classes {list(data.classes)} differ from the "
                         f"checkpoint's {config['classes']}")
    config["classes"] = list(data.classes)
    return (data, data.split("train").head(config["limit_train"]),
            data.split("val").head(config["limit_test"]),
            data.split(eval_split(data)).head(config["limit_test"]))


def eval_split(data) -> str:
    return "test" if "test" in data.splits else "val"


def transforms(config, data, model, generator=None):
    """(train, eval, ten-crop) batch transforms to ``model``'s input; ten-crop is None for
    Fashion-MNIST."""
    if not is_folder(config):
        if config["ten_crop"]:
            raise ValueError("--ten-crop needs an image folder (--dataset PATH)")
        return (*image_transforms(model.input_size, config["mean"], config["std"],
                                  crop_padding=config["crop_padding"], flip=config["flip"],
                                  generator=generator), None)
    augmenter = Augmenter(data.mean if config["subtract_mean"] else None, data.eigvals,
                          data.eigvecs, crop=model.input_size, random_crop=config["random_crop"],
                          flip=config["flip"], pca_std=PCA_STD if config["pca"] else None,
                          scale=input_scale(data) if config["normalize"] else 1.0,
                          generator=generator)
    return augmenter.train, augmenter.eval, augmenter.ten_crop


def input_scale(data) -> float:
    """1 / the pixel std in 0..255 levels: the RGB covariance's trace (of pixels/255) is the sum
    of its eigenvalues, a third of it per channel."""
    std = 255.0 * float(np.sqrt(np.sum(data.eigvals, dtype=np.float64) / 3))
    return 1.0 / std if std > 0 else 1.0      # a folder of flat images has no spread to undo


def describe_folder(data) -> str:
    """One line: where the prepared data is, its classes, and what was skipped."""
    skipped = [rel for split in data.splits for rel, _ in data.skipped[split]]
    names = ", ".join(data.classes[:10]) + (", ..." if len(data.classes) > 10 else "")
    return (f"{'reused' if data.reused else 'prepared'} {data.size}x{data.size} cache "
            f"{data.path}; {len(data.classes)} classes ({names}); "
            + (f"{len(skipped)} unreadable file(s) skipped ({', '.join(skipped[:3])}"
               f"{', ...' if len(skipped) > 3 else ''})" if skipped else "no file skipped"))


def folder_summary(data) -> dict:
    return {"classes": list(data.classes), "test_split": eval_split(data),
            "skipped_files": {split: data.skipped[split] for split in data.splits},
            "prepared": str(data.path)}


def eval_batch(config):
    return 2 * config["batch_size"]


def ten_crop_batch(config):
    return max(1, eval_batch(config) // 10)     # each image becomes 10 crops


def ten_crop_metrics(metrics) -> dict:
    return {"test_top1_10crop": metrics["top1"], "test_top5_10crop": metrics["top5"],
            "test_loss_10crop": metrics["loss"]}


def evaluate_only(args, device) -> int:
    """Test a checkpoint: the model it names (or --model), its normalisation, the full test
    set (or --limit-test); for an image folder, its test/ (else val/) split."""
    tree = checkpoint.load(args.evaluate)
    config = {**COMMON, **tree.get("config", {})}
    config["model"] = args.model or config.get("model") or tree.get("architecture")
    config["dataset"] = args.dataset or config["dataset"]
    config["limit_test"], config["ten_crop"] = args.limit_test, args.ten_crop
    data, _, _, test = load_data(args, config)
    if not is_folder(config):
        config.setdefault("mean", data.mean)
        config.setdefault("std", data.std)
    model = build_model(config, device, data)
    arch = tree.get("architecture")
    if arch != model.variant:
        raise ValueError(f"{args.evaluate}: checkpoint of architecture {arch!r} cannot be "
                         f"loaded into a {model.variant!r} model")
    try:
        model.load_state_dict(tree["model"])
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{args.evaluate}: {exc}") from None
    _, eval_tf, ten_tf = transforms(config, data, model)
    metrics = evaluate(model, Loader(test, eval_batch(config), transform=eval_tf, device=device))
    result = {"checkpoint": args.evaluate, "epoch": tree.get("trainer", {}).get("epoch"),
              "test_top1": metrics["top1"], "test_top5": metrics["top5"],
              "test_loss": metrics["loss"], "test_images": metrics["images"],
              "device": describe_device(device), "model": model.variant}
    if config["ten_crop"]:
        result.update(ten_crop_metrics(evaluate_ten_crop(
            model, Loader(test, ten_crop_batch(config), transform=ten_tf, device=device))))
    if is_folder(config):
        result.update(folder_summary(data))
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "evaluate.json"), "w") as f:
            json.dump(result, f, indent=2)
    return 0


def train(args, device, started) -> int:
    tree = checkpoint.load(args.resume) if args.resume else None
    saved = tree.get("config", {}) if tree is not None else None
    config, notes = settings(args, device, saved)
    for note in notes:
        print(f"{PROG}: note: {note}")
    data, train_set, val_set, test_set = load_data(args, config)
    if not is_folder(config):   # a folder's mean image and RGB PCA stay in its cache
        saved_stats = saved or {}   # when resuming, normalise exactly as that run did
        config["mean"] = saved_stats.get("mean", data.mean)
        config["std"] = saved_stats.get("std", data.std)
    model = build_model(config, device, data)
    if config["limit_train"] and config["limit_train"] < config["batch_size"]:
        print(f"{PROG}: note: --limit-train {config['limit_train']} is below the batch size")
    optimizer = SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"],
                    weight_decay=config["weight_decay"])
    scheduler = {"plateau": lambda: ReduceLROnPlateau(optimizer),
                 "step": lambda: StepLR(optimizer, config["step_size"]),
                 "none": lambda: None}[config["schedule"]]()
    if isinstance(scheduler, ReduceLROnPlateau) and not len(val_set):
        raise ValueError("--schedule plateau needs a validation set; use --val-size > 0")
    # one seed, independent streams: shuffling and augmentation never share draws
    shuffle_rng = np.random.default_rng([config["seed"], 1])
    augment_rng = np.random.default_rng([config["seed"], 2])
    train_tf, eval_tf, ten_tf = transforms(config, data, model, augment_rng)
    train_loader = Loader(train_set, config["batch_size"], shuffle=True, generator=shuffle_rng,
                          transform=train_tf, device=device)
    val_loader = (Loader(val_set, eval_batch(config), transform=eval_tf, device=device)
                  if len(val_set) else None)
    test_loader = Loader(test_set, eval_batch(config), transform=eval_tf, device=device)
    ten_loader = (Loader(test_set, ten_crop_batch(config), transform=ten_tf, device=device)
                  if config["ten_crop"] else None)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume
                       else os.path.join("runs", f"{config['model']}-{stamp}"))
    record = {**config, "device": device}
    trainer = Trainer(model, optimizer, train_loader, val_loader, scheduler=scheduler,
                      epochs=config["epochs"], out_dir=out, rngs={"augment": augment_rng},
                      config=record, print_freq=config["print_freq"])
    if tree is not None:
        trainer.load_state(tree, source=args.resume)

    if is_folder(config):
        augment = [config["random_crop"] and f"random {model.input_size}x{model.input_size} "
                                             f"crops", config["flip"] and "horizontal flips",
                   config["pca"] and f"PCA colour noise (std {PCA_STD:g})",
                   config["subtract_mean"] and "mean image subtracted",
                   config["normalize"] and f"divided by the pixel std {1 / input_scale(data):.1f}"]
    else:
        augment = [config["crop_padding"] and f"random crops (padding {config['crop_padding']})",
                   config["flip"] and "horizontal flips"]
    augment = ", ".join(filter(None, augment)) or "none"
    print(f"minialex {minialex.__version__} | device {describe_device(device)} | model "
          f"{model.variant} ({model.num_parameters():,} parameters, input "
          f"{'x'.join(map(str, model.input_shape))})")
    if is_folder(config):
        print(f"data: {config['dataset']}: train {len(train_set):,}, val {len(val_set):,}, "
              f"test ({eval_split(data)}/) {len(test_set):,} | {describe_folder(data)}")
    else:
        print(f"data: Fashion-MNIST from {data.root}: train {len(train_set):,}, val "
              f"{len(val_set):,}, test {len(test_set):,}"
              + (f"; images scaled 28x28 -> {model.input_size}x{model.input_size} per batch "
                 f"on the device" if model.input_size != 28 else ""))
    epochs = config["epochs"]
    print(f"training: {epochs} epoch{'s' * (epochs != 1)}, batch {config['batch_size']} "
          f"({len(train_loader)} steps/epoch), SGD lr {optimizer.lr:g} momentum "
          f"{config['momentum']:g} weight decay {config['weight_decay']:g}, schedule "
          f"{config['schedule']}, augmentation: {augment}")
    where = (f"resuming {args.resume} at epoch {trainer.epoch + 1}, step {trainer.step}"
             if tree is not None else "")
    print(f"output: {out}" + (f" | {where}" if where else ""), flush=True)

    stopped = trainer.fit()
    if stopped == "interrupted":
        print(f"resume with: python {sys.argv[0] if sys.argv[0].endswith('.py') else PROG} "
              f"--resume {trainer.path('last.npz')}")
        return 130
    test = trainer.test(test_loader)
    extra = folder_summary(data) if is_folder(config) else {}
    ten = ""
    if ten_loader is not None:       # test() left the weights it used in the model
        extra.update(ten_crop_metrics(evaluate_ten_crop(model, ten_loader)))
        ten = (f" | 10-crop top-1 {extra['test_top1_10crop']:.2%}, top-5 "
               f"{extra['test_top5_10crop']:.2%}, loss {extra['test_loss_10crop']:.4f}")
    summary = trainer.summary(test, wall_time_s=time.time() - started,
                              started=datetime.datetime.fromtimestamp(started)
                              .isoformat(timespec="seconds"), **extra)
    path = trainer.write_summary(summary)
    print(f"test ({test['weights']} weights, {test['images']:,} images): top-1 "
          f"{test['top1']:.2%}, top-5 {test['top5']:.2%}, loss {test['loss']:.4f}{ten} | "
          f"{stopped} after {trainer.epoch} epoch{'s' * (trainer.epoch != 1)} | wall time "
          f"{summary['wall_time_s'] / 60:.1f} min | {path}")
    return 0


def prepare_only(args) -> int:
    data = prepare_folder(args, args.dataset, args.image_size or DEFAULT_SIZE)
    counts = ", ".join(f"{split} {len(data.labels[split]):,}" for split in data.splits)
    print(f"data: {args.dataset}: {counts} | {describe_folder(data)}")
    return 0


def main(argv=None) -> int:
    started = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset not in (None, FASHION_MNIST) and not os.path.isdir(args.dataset):
        parser.error(f"argument --dataset: expected {FASHION_MNIST!r} or an image folder "
                     f"with train/ and val/, got {args.dataset!r} (no such directory)")
    if args.resume and args.evaluate:
        parser.error("argument --evaluate: not allowed with --resume")
    if args.prepare_only and args.dataset in (None, FASHION_MNIST):
        parser.error("argument --prepare-only: needs an image folder (--dataset PATH)")
    try:
        device = "cpu" if args.prepare_only else resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.prepare_only:
            return prepare_only(args)
        if args.evaluate:
            return evaluate_only(args, device)
        return train(args, device, started)
    except (OSError, ValueError, TrainingDiverged) as exc:   # OSError: FileNotFoundError too
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
