"""Write an image folder (ImageNet layout) of real images the recipes were not tuned on.

    python benchmarks/fmnist_folder.py OUT [--train 200] [--val 50] [--size 28]

Takes Fashion-MNIST *test* images (the training recipes are tuned on the training images, never
on these), converts each to an RGB PNG (grey copied into three channels; ``--size`` resizes
with bilinear filtering) and writes ``OUT/train/<class>/*.png`` and ``OUT/val/<class>/*.png``,
``--train`` and ``--val`` images per class, disjoint, the first ones of each class in file order.
The learning benchmark (``bench_learning.py``) and the tests train the image-folder recipe on it.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

from minialex.data.fashion_mnist import CLASSES, find_files, load_split  # noqa: E402


def class_dir_name(name: str) -> str:
    return name.lower().replace("/", "-").replace(" ", "-")


def write_folder(out, train_per_class: int = 200, val_per_class: int = 50, size: int = 28,
                 data_dir=None) -> pathlib.Path:
    """Write the folder (overwriting files of the same names); returns ``out`` as a Path."""
    images, labels = load_split(find_files(data_dir), "test")
    out = pathlib.Path(out)
    need = train_per_class + val_per_class
    for label, name in enumerate(CLASSES):
        rows = np.flatnonzero(labels == label)
        if len(rows) < need:
            raise ValueError(f"class {name!r} has {len(rows)} test images, fewer than the "
                             f"{need} asked for")
        halves = (("train", rows[:train_per_class]), ("val", rows[train_per_class:need]))
        for split, chosen in halves:
            folder = out / split / class_dir_name(name)
            folder.mkdir(parents=True, exist_ok=True)
            for row in chosen:
                img = Image.fromarray(images[row, 0]).convert("RGB")
                if size != img.width:
                    img = img.resize((size, size), Image.BILINEAR)
                img.save(folder / f"{row:05d}.png")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--train", type=int, default=200, help="training images per class")
    p.add_argument("--val", type=int, default=50, help="validation images per class")
    p.add_argument("--size", type=int, default=28, help="side of the written PNGs")
    p.add_argument("--data-dir", help="directory with the Fashion-MNIST IDX files")
    args = p.parse_args(argv)
    out = write_folder(args.out, args.train, args.val, args.size, args.data_dir)
    print(f"wrote {out}: {len(CLASSES)} classes, {args.train} train + {args.val} val per class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
