"""Prepare an image folder the paper's way, once, so training can start from the cache.

    python examples/prepare_dataset.py PATH [--model small | --size 256] [--workers N] [--cache DIR]

PATH holds train/ and val/ (optionally test/), one sub-folder per class (ImageNet layout). Every
image is rescaled so its shorter side is the prepared size and its central square kept, as uint8
in a memory-mapped .npy cache, with the training set's per-pixel mean image and RGB PCA (for the
colour noise). The size is the one train_alexnet.py uses for --model (its input side x 256/224,
as the paper's 224 of 256), or --size. Re-running on an unchanged folder reuses the cache at once;
a changed folder is prepared again. Unreadable files are skipped, listed here and counted in the
cache's meta.json. This is the same preparation as `train_alexnet.py --prepare-only`.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

from minialex import recipe  # noqa: E402  (after the sys.path line above)
from minialex.config import RunConfig  # noqa: E402
from minialex.data.cache import default_cache_dir  # noqa: E402
from minialex.models import VARIANTS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=pathlib.Path, help="folder with train/ and val/")
    parser.add_argument("--model", choices=tuple(VARIANTS), default="paper",
                        help="size the images for this AlexNet variant (default %(default)s)")
    parser.add_argument("--size", type=int, default=None,
                        help="side of the stored images (default: from --model)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per CPU; 0: no pool)")
    parser.add_argument("--cache", type=pathlib.Path, default=None,
                        help=f"cache folder (default $MINIALEX_CACHE or {default_cache_dir()})")
    args = parser.parse_args(argv)
    size = args.size or RunConfig(dataset=str(args.path), model=args.model).prepared_size
    try:
        ds = recipe.prepare_folder(args.path, size, cache=args.cache, workers=args.workers)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"prepare_dataset: {exc}\n")

    print(recipe.describe_folder(ds))
    for split in ds.splits:
        print(f"{split}: {len(ds.labels[split])} images of {ds.size}x{ds.size}")
        for rel, reason in ds.skipped[split][:10]:
            print(f"  skipped {rel}: {reason}")
    print("mean RGB: " + ", ".join(f"{v:.1f}" for v in ds.meta["mean_rgb"]))
    print("RGB PCA eigenvalues (pixels/255): " + ", ".join(f"{v:.4g}" for v in ds.eigvals))
    if not ds.reused:
        print(f"took {ds.meta['seconds']:.1f} s")


if __name__ == "__main__":
    main()
