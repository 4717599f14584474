#!/usr/bin/env python3
"""Name the classes of image files with a trained checkpoint: the top 5 and their probabilities.

    python examples/predict.py runs/X/best.npz photo.jpg more_photos/
    python examples/predict.py runs/X/best.npz photos/ --ten-crop     # the paper's 10 crops
    python examples/predict.py --weights alexnet-owt-7be5be79.pth photo.jpg   # ImageNet's 1,000

Folders are searched for image files (by extension); files that cannot be decoded are skipped
and counted. The checkpoint knows its class names and input preparation
(:mod:`minialex.predict`); imported weights (``--weights``: torchvision's .pth, Caffe's
.caffemodel) bring their own preparation and name ImageNet's classes. Exit status: 0 done,
1 failed (checkpoint or path missing, nothing readable), 2 bad usage.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minialex import predict, recipe  # noqa: E402

PROG = "predict.py"


def flags(text) -> str:
    """A library message with its settings (in backquotes: `data_dir`) named as flags."""
    return re.sub(r"`(\w+)`", lambda m: "--" + m[1].replace("_", "-"), str(text))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Classify image files with a checkpoint.")
    p.add_argument("checkpoint", nargs="?",
                   help="a checkpoint written by train_alexnet.py (best.npz, ...)")
    p.add_argument("paths", nargs="*", help="image files and folders of them")
    p.add_argument("--weights", metavar="FILE", help="classify with imported weights instead "
                   "of a checkpoint (torchvision .pth or Caffe .caffemodel): ImageNet's classes")
    p.add_argument("--top", type=int, default=predict.TOPK, help="classes shown per file (5)")
    p.add_argument("--ten-crop", action="store_true",
                   help="average the paper's 10 crops (image-folder checkpoints)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="cpu",
                   help="where to run the model (default: cpu)")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    p.add_argument("--cache", metavar="DIR", help="where prepared image folders are cached")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.weights and args.checkpoint:    # with --weights every positional is an image
        args.checkpoint, args.paths = None, [args.checkpoint, *args.paths]
    if not args.paths:
        parser.error("the following arguments are required: "
                     + ("paths" if args.checkpoint or args.weights else "checkpoint, paths"))
    if args.top < 1:
        parser.error(f"argument --top: expected an integer >= 1, got {args.top}")
    try:
        found, skipped = predict.classify_files(
            args.checkpoint, args.paths, k=args.top, ten_crop=args.ten_crop,
            device=recipe.resolve_device(args.device), weights=args.weights,
            **({} if args.weights else {"data_dir": args.data_dir, "cache": args.cache}))
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{PROG}: error: {flags(exc)}", file=sys.stderr)
        return 1
    for item in found:
        print(f"{item.path}: " + ", ".join(f"{name} {p:.1%}" for name, p in item.top))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): "
              + "; ".join(f"{path} ({why})" for path, why in skipped[:5])
              + ("; ..." if len(skipped) > 5 else ""), file=sys.stderr)
    print(f"{len(found)} file(s) classified, {len(skipped)} skipped", file=sys.stderr)
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
