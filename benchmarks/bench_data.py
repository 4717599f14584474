"""Data pipeline speed: preparing an image folder, and augmenting training batches.

    python benchmarks/bench_data.py [--images 240] [--workers N] [--batch 128] [--iters 8]
                                    [--results]

1. Preparation (minialex.data.prepare): a synthetic folder of JPEG photos at ImageNet's typical
   500x375 is written to a temp dir, then decoded, rescaled to 256, centre-cropped and reduced
   to the mean image and RGB PCA, with 1 worker and with --workers; images/s.
2. Training loader (minialex.data.augment): uint8 (128, 256, 256, 3) batches to float32
   (128, 3, 224, 224) with random crop, flip, PCA colour noise and mean subtraction; images/s on
   the CPU, also with the batch gathered from the prepared memory map, and the 10-crop
   evaluation input. On a usable GPU (CuPy) the same on the device, with and without the copy
   of the uint8 batch from the host.

--results appends a section to benchmarks/RESULTS.md (or replaces this script's own earlier
section for the same device), leaving every other section as it is.
"""
import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

import PIL  # noqa: E402
from PIL import Image  # noqa: E402

from minialex import backend  # noqa: E402
from minialex.data.augment import CROP_SIZE, IMAGE_SIZE, Augmenter  # noqa: E402
from minialex.data.prepare import default_workers, prepare  # noqa: E402

from common import RESULTS, cpu_name, save_section, versions  # noqa: E402


def write_photos(root: pathlib.Path, n: int, seed: int = 0) -> int:
    """n smooth-plus-noise 500x375 JPEGs (landscape and portrait) in train/ and val/."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500] / 500.0
    for i in range(n):
        split = "val" if i % 8 == 7 else "train"
        folder = root / split / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        phase = rng.uniform(0, 6, 3)
        img = (120 + 60 * np.sin(6 * x[..., None] * (1 + phase) + phase)
               + 40 * np.cos(7 * y[..., None] + phase) + rng.normal(0, 12, (375, 500, 3)))
        img = np.clip(img, 0, 255).astype(np.uint8)
        if i % 3 == 0:
            img = img.transpose(1, 0, 2)   # portrait
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
    return n


def rate(fn, n_images: int, iters: int, sync=lambda: None) -> float:
    fn()          # warm-up: allocations, CuPy kernel compilation
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return n_images * iters / (time.perf_counter() - start)




def bench(args) -> tuple:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "photos"
        n = write_photos(root, args.images)
        settings = [1] + ([args.workers] if args.workers > 1 else [])
        ds = None
        for workers in settings:
            cache = pathlib.Path(tmp) / f"cache{workers}"
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = prepare(root, cache_dir=cache, workers=workers, progress=False)
            seconds = time.perf_counter() - start
            rows.append((f"prepare: decode 500x375 JPEG, shorter side {IMAGE_SIZE}, centre crop, "
                         "stats",
                         f"{workers} worker{'s' * (workers > 1)}", n / seconds))

        B = args.batch
        rng = np.random.default_rng(0)
        batch = rng.integers(0, 256, (B, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        augmenter = Augmenter.from_prepared(ds, generator=np.random.default_rng(1))
        rows.append((f"train augmentation: crop {CROP_SIZE}, flip, PCA colour, mean image -> "
                     "float32 NCHW",
                     f"CPU, batch {B}", rate(lambda: augmenter.train(batch), B, args.iters)))
        train = ds.split("train")
        def load_and_augment():
            images, _ = train.get_batch(rng.integers(0, len(train), B))
            return augmenter.train(images)
        rows.append(("loader: random batch gathered from the memory-mapped cache + augmentation",
                     f"CPU, batch {B}", rate(load_and_augment, B, args.iters)))
        rows.append(("evaluation: 10 crops (corners, centre, mirrors), mean image",
                     f"CPU, batch {B}", rate(lambda: augmenter.ten_crop(batch), B,
                                             max(1, args.iters // 2))))
        gpu = None
        if backend.gpu_available():
            cupy = backend.require_cupy()
            gpu = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
            gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
            sync = cupy.cuda.get_current_stream().synchronize
            on_device = cupy.asarray(batch)
            rows.append(("train augmentation (uint8 batch already on the GPU)", f"GPU, batch {B}",
                         rate(lambda: augmenter.train(on_device), B, args.iters * 4, sync)))
            rows.append(("train augmentation incl. host-to-GPU copy of the uint8 batch",
                         f"GPU, batch {B}",
                         rate(lambda: augmenter.train(cupy.asarray(batch)), B, args.iters * 4,
                              sync)))
            rows.append(("evaluation: 10 crops", f"GPU, batch {B}",
                         rate(lambda: augmenter.ten_crop(on_device), B, args.iters, sync)))
    return rows, gpu




def markdown(rows, gpu, args) -> str:
    device = f"{cpu_name()}, {os.cpu_count()} CPUs" + (f"; GPU {gpu}" if gpu else "; no GPU")
    if hasattr(os, "getloadavg"):   # other work on the machine skews the figures; say how much
        device += f"; load average {os.getloadavg()[0]:.1f} at the end"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Data pipeline ({'GPU ' + gpu if gpu else 'CPU'})", "",
             f"`python benchmarks/bench_data.py --images {args.images} --workers {args.workers} "
             f"--batch {args.batch} --iters {args.iters}`, {date}.",
             f"Device: {device}. "
             f"{versions(f'Pillow {PIL.__version__}', gpu=bool(gpu), torch=False)}.", "",
             "| stage | setting | images/s |", "|---|---|---:|"]
    lines += [f"| {stage} | {setting} | {value:,.0f} |" for stage, setting, value in rows]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=240, help="synthetic photos to prepare")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="decoding processes for the parallel run (default: one per CPU)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--results", action="store_true",
                        help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    rows, gpu = bench(args)
    section = markdown(rows, gpu, args)
    print(section)
    if args.results:
        save_section("bench_data", gpu or "cpu", section)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
