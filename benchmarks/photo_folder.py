"""Write an image folder of real colour photographs: one class per photograph.

    python benchmarks/photo_folder.py OUT [--photos DIR] [--train 120] [--val 30]

No labelled colour-photo set ships with Debian or PyPI for offline use, but real photographs
do: Debian's ``mate-backgrounds`` package installs twelve nature photographs (flowers, grass,
leaves, a dune, a storm, wood, water) in ``/usr/share/backgrounds/mate/nature``. Each one becomes
a class, and its images are square crops of it: training crops from the left 65% of the
photograph, validation crops from the right 30%, so no validation pixel was seen in training.
A model must learn each scene's colours and textures, and generalise them to a part of the scene
it has not seen. Several classes are alike (three are green foliage, three orange flowers), so
the task is not solved by the mean colour.

Crops are 25-45% of the photograph's short side, at random places, saved as JPEG; the image-folder
pipeline then resizes them to the model's prepared size as it does any user's photos.
The learning benchmark (``bench_learning.py --targets photos``) trains the ``paper`` model on it.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
from PIL import Image

DEFAULT_PHOTOS = pathlib.Path("/usr/share/backgrounds/mate/nature")
INSTALL = "apt-get install mate-backgrounds"
SHORT_SIDE = 480            # photographs are shrunk to this first: crops ~120-220 px
TRAIN_PART, VAL_PART = 0.65, 0.30   # of the width; the 5% between is left out
CROP_RANGE = (0.25, 0.45)  # crop side / short side


def find_photos(photos) -> list:
    photos = pathlib.Path(photos)
    found = sorted(p for p in photos.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(found) < 2:
        raise FileNotFoundError(f"photos: found {len(found)} JPEG/PNG photographs in {photos}, "
                                f"need at least 2 (Debian: {INSTALL})")
    return found


def random_crops(image: Image.Image, left: int, right: int, count: int, rng) -> list:
    """``count`` square crops lying within columns [left, right) of ``image``."""
    short = min(image.size)
    width = right - left
    crops = []
    for _ in range(count):
        side = min(int(rng.uniform(*CROP_RANGE) * short), width, image.height)
        x = left + int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, image.height - side + 1))
        crops.append(image.crop((x, y, x + side, y + side)))
    return crops


def write_folder(out, photos=DEFAULT_PHOTOS, train_per_class: int = 120,
                 val_per_class: int = 30, seed: int = 0) -> pathlib.Path:
    """Write ``OUT/{train,val}/<photo name>/*.jpg``; returns ``out`` as a Path."""
    out = pathlib.Path(out)
    rng = np.random.default_rng(seed)
    for path in find_photos(photos):
        image = Image.open(path).convert("RGB")
        scale = SHORT_SIDE / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             Image.BILINEAR)
        name = path.stem.lower()
        val_left = int((1 - VAL_PART) * image.width)
        for split, (left, right), count in (
                ("train", (0, int(TRAIN_PART * image.width)), train_per_class),
                ("val", (val_left, image.width), val_per_class)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(random_crops(image, left, right, count, rng)):
                crop.save(folder / f"{i:04d}.jpg", quality=92)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=pathlib.Path)
    p.add_argument("--photos", default=DEFAULT_PHOTOS, type=pathlib.Path,
                   help=f"a directory of photographs, one class each (default: {DEFAULT_PHOTOS})")
    p.add_argument("--train", type=int, default=120, help="training crops per photograph")
    p.add_argument("--val", type=int, default=30, help="validation crops per photograph")
    args = p.parse_args(argv)
    try:
        out = write_folder(args.out, args.photos, args.train, args.val)
    except FileNotFoundError as e:
        print(f"photo_folder.py: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: {len(find_photos(args.photos))} classes, {args.train} train + "
          f"{args.val} val crops per photograph")
    return 0


if __name__ == "__main__":
    sys.exit(main())
