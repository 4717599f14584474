"""Prepare an image folder the paper's way, once, so training can start from the cache.

    python examples/prepare_dataset.py PATH [--size 256] [--workers N] [--cache DIR]

PATH holds train/ and val/ (optionally test/), one sub-folder per class (ImageNet layout). Every
image is rescaled so its shorter side is --size and its central square kept, as uint8 in a
memory-mapped .npy cache, with the training set's per-pixel mean image and RGB PCA (for the
colour noise). Re-running on an unchanged folder reuses the cache at once; a changed folder is
prepared again. Unreadable files are skipped, listed here and counted in the cache's meta.json.
"""
import argparse
import pathlib
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

from minialex.data.prepare import DEFAULT_SIZE, default_cache_dir, prepare  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=pathlib.Path, help="folder with train/ and val/")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="side of the stored images (default %(default)s, the paper's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: one per CPU; 0: no pool)")
    parser.add_argument("--cache", type=pathlib.Path, default=None,
                        help=f"cache folder (default $MINIALEX_CACHE or {default_cache_dir()})")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # skipped files are summarised below instead
        try:
            ds = prepare(args.path, size=args.size, cache_dir=args.cache, workers=args.workers)
        except ValueError as exc:
            parser.exit(2, f"prepare_dataset: {exc}\n")

    print(f"{'reused' if ds.reused else 'prepared'}: {ds.path}")
    print(f"classes: {len(ds.classes)} ({', '.join(ds.classes[:5])}"
          f"{', ...' if len(ds.classes) > 5 else ''})")
    for split in ds.splits:
        skipped = ds.skipped[split]
        print(f"{split}: {len(ds.labels[split])} images of {ds.size}x{ds.size}"
              + (f", {len(skipped)} unreadable file(s) skipped" if skipped else ""))
        for rel, reason in skipped[:10]:
            print(f"  skipped {rel}: {reason}")
    print("mean RGB: " + ", ".join(f"{v:.1f}" for v in ds.meta["mean_rgb"]))
    print("RGB PCA eigenvalues (pixels/255): " + ", ".join(f"{v:.4g}" for v in ds.eigvals))
    if not ds.reused:
        print(f"took {ds.meta['seconds']:.1f} s")


if __name__ == "__main__":
    main()
