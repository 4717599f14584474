#!/usr/bin/env python3
"""Train an AlexNet on Fashion-MNIST or on your own image folder, and report honest accuracy.

    python examples/train_alexnet.py                 # GPU if usable, else the CPU preset
    python examples/train_alexnet.py --resume runs/X/last.npz      # continue a stopped run
    python examples/train_alexnet.py --evaluate runs/X/best.npz    # test a checkpoint
    python examples/train_alexnet.py --dataset PATH --find-lr      # which learning rate?
    python examples/train_alexnet.py --dataset PATH --model paper --ten-crop
    mpiexec -n 2 python -m mpi4py examples/train_alexnet.py --data-parallel   # 2 processes

Flags -> minialex.config.RunConfig (flags not given take the dataset's and device's preset, or
on --resume the checkpoint's settings) -> minialex.recipe.fit -> one line of results. Exit
status: 0 done, 1 failed (unreadable data or checkpoint, a failed write, --out in use, a run
diverged or stalled, final accuracy at chance), 2 bad usage (or --device gpu without a usable
GPU), 130 Ctrl-C (saved). The library names settings in backquotes (`lr`): printed as flags.
"""
import argparse
import json
import os
import re
import sys
from dataclasses import replace
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minialex import config as cfg  # noqa: E402
from minialex import distributed, lr_finder, recipe  # noqa: E402
from minialex.data.augment import PCA_STD  # noqa: E402
from minialex.models import INITS, LRN_POSITIONS, VARIANTS  # noqa: E402
from minialex.watch import TrainingStopped  # noqa: E402

PROG = "train_alexnet.py"
BOOL = argparse.BooleanOptionalAction


def build_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{name}: model {p.model}, {p.epochs} epochs, batch {p.batch_size}, lr "
                        f"{p.lr:g}, warm-up {p.warmup}" for name, p in cfg.PRESETS.items())
    p = argparse.ArgumentParser(prog=PROG, description="Train an AlexNet with minialex.",
                                epilog=f"Presets: {presets}.")
    a = p.add_argument
    a("--device", choices=("auto", "cpu", "gpu"), default="auto",
      help="where to train; auto = the GPU when CuPy and a GPU are usable (default: auto)")
    a("--model", choices=tuple(VARIANTS), help="AlexNet variant (preset)")
    a("--dataset", metavar="fashion-mnist|PATH", help="fashion-mnist, or a folder with train/ "
      "and val/ (optionally test/), one sub-folder per class (default: fashion-mnist)")
    a("--data-dir", help="directory with the Fashion-MNIST IDX files")
    a("--epochs", type=int, help="epochs in all, counting those already done (preset)")
    a("--batch-size", type=int, help="images per training step (preset)")
    a("--lr", type=float, help="learning rate after the warm-up (preset)")
    a("--momentum", type=float, help="SGD momentum (default: 0.9, the paper's)")
    a("--weight-decay", type=float, help="weight decay (default: 0.0005, the paper's)")
    a("--init", choices=INITS, help="weight initialisation (default: kaiming)")
    a("--warmup", type=int, help="lr warm-up steps (<= 1/5 of the run); 0 = the paper's (preset)")
    a("--schedule", choices=cfg.SCHEDULES, help="lr/10 on plateaus (3 times) or every --step-size")
    a("--step-size", type=int, help="epochs between divisions for --schedule step")
    a("--patience", type=int, help="plateau: epochs let pass before lr/10 (default epochs // 20)")
    a("--stall-steps", type=int, help="stop after this many steps at chance; 0 = never (200)")
    a("--crop-padding", type=int, help="Fashion-MNIST: random crops after zero padding (preset)")
    a("--flip", action=BOOL, help="random horizontal flips (preset)")
    g = p.add_argument_group("image folders (--dataset PATH)").add_argument
    g("--image-size", type=int, help="side of the prepared images (default: input x 256/224)")
    g("--cache", metavar="DIR", help="prepared datasets' cache (default: $MINIALEX_CACHE or "
                                     "~/.cache/minialex)")
    g("--workers", type=int, help="decoding processes while preparing (default: one per CPU)")
    g("--prepare-only", action="store_true", help="prepare the dataset, then exit")
    g("--random-crop", action=BOOL, help="random crops of the model's input (default: on)")
    g("--pca", action=BOOL, help=f"PCA colour noise, alpha ~ N(0, {PCA_STD}) (default: on)")
    g("--subtract-mean", action=BOOL, help="subtract the mean image (default: on)")
    g("--normalize", action=BOOL, help="divide by the pixel std (default: on; off: the paper)")
    g("--ten-crop", action="store_true", help="also report the paper's 10-crop accuracy")
    a("--lrn-position", choices=LRN_POSITIONS, help="LRN before (paper) or after (caffe) pool")
    a("--dropout", type=float, help="dropout probability on fc6 and fc7 (default: 0.5)")
    a("--dropout-mode", choices=("inverted", "paper"), help="dropout scaling (default: inverted)")
    a("--val-size", type=int, help="Fashion-MNIST training images held out (default: 5000)")
    a("--limit-train", type=int, help="train on the first N training images only")
    a("--limit-test", type=int, help="validate and test on the first N images only")
    a("--seed", type=int, help="seed of weights, shuffling, dropout, augmentation (default: 0)")
    a("--out", help="run directory (default: runs/<model>-<time>, or the resumed one's)")
    a("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    a("--pretrained", metavar="FILE", help="start from these weights (torchvision .pth, Caffe "
      ".caffemodel or a minialex checkpoint): its model, fc8 replaced, the fine-tuning preset")
    a("--freeze", choices=("features",), help="--pretrained: train the classifier only")
    a("--preprocessing", choices=cfg.PREPROCESSING, help="--pretrained: the weights' input "
      "preparation (default) or the dataset's statistics")
    a("--evaluate", metavar="PATH", help="only evaluate this checkpoint on the test set")
    a("--find-lr", action="store_true", help="learning-rate range test; trains nothing")
    a("--print-freq", type=int, help="progress line every N steps; 0 = per epoch (50)")
    a("--data-parallel", action="store_true", help="one of mpiexec's processes (README)")
    a("--towers", metavar="DEV,DEV", help="--model paper's two towers on two devices (gpu:0,gpu:1)")
    return p


def flags(text) -> str:
    """A message of the library's, or a run's note or warning, with its settings as flags."""
    return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-"), str(text))


def run(args, device, comm) -> int:
    sys.stdout = sys.stdout if comm.rank == 0 else open(os.devnull, "w")    # rank 0 speaks
    if args.prepare_only:
        preset = cfg.preset_for(args.dataset, device)     # only its sizes: nothing is trained
        size = args.image_size or replace(preset, model=args.model or preset.model).prepared_size
        data = recipe.prepare_folder(args.dataset, size, cache=args.cache, workers=args.workers)
        print(f"data: {args.dataset}: {recipe.describe_folder(data, counts=True)}")
        return 0
    data = dict(device=device, data_dir=args.data_dir, cache=args.cache, workers=args.workers)
    if args.evaluate:
        print(json.dumps(recipe.evaluate_checkpoint(
            args.evaluate, dataset=args.dataset, model=args.model, limit_test=args.limit_test,
            ten_crop=args.ten_crop, out=args.out, **data), indent=2))
        return 0
    config = settings(args, device)
    if args.find_lr:
        result = recipe.find_lr(config, **data)
        print(lr_finder.format_table(result))
        out = args.out or recipe.default_out_dir(config)
        picture = lr_finder.plot(result, os.path.join(out, "lr_find.png"))
        print(f"plot: {picture}" if picture else "plot: install matplotlib for a picture")
        print(f"train with: --lr {result['suggested_lr']:.2g}")
        return 0
    flagged = SimpleNamespace(write=lambda text: sys.stdout.write(flags(text)),
                              flush=sys.stdout.flush, isatty=sys.stdout.isatty)
    summary = recipe.fit(config, out=args.out, resume=args.resume, overrides=given(args),
                         stream=flagged, comm=comm, towers=args.towers, **data)
    if summary["stopped"] == "interrupted":
        script = sys.argv[0] if sys.argv[0].endswith(".py") else PROG
        print(f"resume with: python {script} --resume {os.path.join(summary['out'], 'last.npz')}")
        return 130
    ten = (f" | 10-crop top-1 {summary['test_top1_10crop']:.2%}, top-5 "
           f"{summary['test_top5_10crop']:.2%}" if "test_top1_10crop" in summary else "")
    print(f"test ({summary['test_weights']} weights, {summary['test_images']:,} images): top-1 "
          f"{summary['test_top1']:.2%}, top-5 {summary['test_top5']:.2%}, loss "
          f"{summary['test_loss']:.4f}{ten} | {summary['stopped']} after {summary['epochs']} "
          f"epoch{'s' * (summary['epochs'] != 1)} | wall time {summary['wall_time_s'] / 60:.1f} "
          f"min | {summary['summary_file']}")
    return 0


def given(args) -> dict:        # the run settings given as flags (None: not given)
    return {k: v for k, v in vars(args).items() if k in cfg.RunConfig.__dataclass_fields__}


def settings(args, device, parser=None):
    """The flags' RunConfig; a value out of range (RunConfig.check) is an argparse error."""
    try:
        return cfg.resolve(given(args), device)
    except cfg.SettingError as exc:
        if parser is None:
            raise
        parser.error(f"argument --{exc.name.replace('_', '-')}: {exc.problem}")
    except ValueError:          # settings that conflict: checked again when the run is built
        if parser is None:      # (with the checkpoint's own settings, when there is one): exit 1
            raise


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset not in (None, cfg.FASHION_MNIST) and not os.path.isdir(args.dataset):
        parser.error(f"argument --dataset: expected {cfg.FASHION_MNIST!r} or an image folder "
                     f"with train/ and val/, got {args.dataset!r} (no such directory)")
    for first, second in (("evaluate", "resume"), ("evaluate", "find_lr"), ("find_lr", "resume"),
                          ("evaluate", "pretrained")):
        if getattr(args, first) and getattr(args, second):
            parser.error(f"argument --{first.replace('_', '-')}: not allowed with "
                         f"--{second.replace('_', '-')}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"argument --workers: expected an integer >= 0, got {args.workers}")
    if args.prepare_only and args.dataset in (None, cfg.FASHION_MNIST):
        parser.error("argument --prepare-only: needs an image folder (--dataset PATH)")
    try:
        device = "cpu" if args.prepare_only else recipe.resolve_device(args.device)
        if args.towers:
            recipe.resolve_towers(args.towers)
        comm = distributed.communicator_for(args.data_parallel, device)
    except (RuntimeError, ValueError) as exc:     # a GPU (or MPI) asked for and not usable
        print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 2
    try:
        settings(args, device, parser)      # a value out of range: exit 2 before any work
        with comm.abort_on_error(alike=TrainingStopped, wording=flags):  # one fails: all end
            return run(args, device, comm)
    except (OSError, ValueError, TrainingStopped) as exc:   # OSError: FileNotFoundError too
        if comm.rank == 0:                                  # several: a stop they all made
            print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
