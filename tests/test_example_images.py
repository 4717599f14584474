"""Training on an image folder the test writes with Pillow: a CPU-sized run of the image-folder
recipe that must learn, the summary it writes, --prepare-only, and the errors."""
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from minialex import checkpoint, recipe
from minialex.config import IMAGES_PRESET
from minialex.data.augment import PCA_STD
from minialex.optim import MOMENTUM, WEIGHT_DECAY

from support import CORRUPT, ROOT, run_example, synthetic_photos
from support import PHOTO_CLASSES as CLASSES


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return synthetic_photos(tmp_path_factory.mktemp("photos"))


def run_args(photos, tmp_path, *extra):
    # `mini` takes 28x28 crops: from 32x32 prepared images that is 5x5 random offsets
    return ["--dataset", str(photos), "--model", "mini", "--image-size", "32", "--cache",
            str(tmp_path / "cache"), "--workers", "0", "--device", "cpu", "--batch-size", "16",
            "--print-freq", "0", "--out", str(tmp_path / "run"), *extra]


def test_the_image_folder_recipe_learns_a_small_image_folder(photos, tmp_path):
    start = time.perf_counter()
    # 18 steps in all: a warm-up of 6 instead of the preset's, which is sized for real folders
    config = IMAGES_PRESET.replace(dataset=str(photos), model="mini", image_size=32,
                                   batch_size=16, print_freq=0, epochs=3, ten_crop=True,
                                   warmup=6)
    log = io.StringIO()
    summary = recipe.fit(config, out=str(tmp_path / "run"), cache=str(tmp_path / "cache"),
                         workers=0, stream=log)
    seconds = time.perf_counter() - start
    out = log.getvalue()
    assert summary == json.loads((tmp_path / "run" / "summary.json").read_text())
    # the paper's recipe (and the named departures), around the model's own input
    assert (f"SGD lr 0.01 momentum {MOMENTUM:g} weight decay {WEIGHT_DECAY:g}, warm-up 3 steps "
            "(`warmup` 6 capped: at most a fifth of the 18 planned steps), init kaiming, schedule "
            "plateau (patience 1, improvement > 1 standard error of the error on 36 images), "
            "augmentation: random 28x28 crops, horizontal flips, "
            f"PCA colour noise (std {PCA_STD:g}), mean image subtracted, divided by the pixel std"
            ) in out
    assert "model mini (" in out and "input 3x28x28" in out
    assert "train 90, val 36, test (val/) 36" in out
    assert f"3 classes (apple, leaf, sky); 1 unreadable file(s) skipped ({CORRUPT})" in out
    # learned: chance is 1/3
    assert summary["test_top1"] >= 0.6 and summary["test_top1_10crop"] >= 0.6
    assert 0 <= summary["test_loss_10crop"] and summary["test_top5_10crop"] == 1.0
    assert summary["test_images"] == 36 and summary["test_split"] == "val"
    # the class mapping and the skipped file travel with the run
    assert summary["classes"] == list(CLASSES)
    assert [rel for rel, _ in summary["skipped_files"]["train"]] == [CORRUPT]
    assert summary["skipped_files"]["val"] == []
    best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert best["classes"] == list(CLASSES)
    assert best["config"]["dataset"] == str(photos) and best["config"]["image_size"] == 32
    assert best["model"]["classifier.6.bias"].shape == (3,)      # fc8: one output per class
    # --evaluate finds the same data and weights, single and ten crops
    run = run_example("--evaluate", tmp_path / "run" / "best.npz", "--cache", tmp_path / "cache",
                      "--ten-crop", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["test_top1"] == summary["test_top1"]
    assert result["test_top1_10crop"] == summary["test_top1_10crop"]
    assert result["classes"] == list(CLASSES)
    # ... and refuses a folder whose classes are not the checkpoint's
    other = tmp_path / "other"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (other / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 30), (9, 9, 9)).save(other / split / name / "0.png")
    run = run_example("--evaluate", tmp_path / "run" / "best.npz", "--dataset", other,
                      "--cache", tmp_path / "cache")
    assert run.returncode == 1
    assert "classes ['cat', 'dog'] differ from the checkpoint's ['apple', 'leaf', 'sky']" in \
        run.stderr
    # --resume finds the folder, its cache and the settings in the checkpoint
    run = run_example("--resume", tmp_path / "run" / "last.npz", "--epochs", "4", "--cache",
                      tmp_path / "cache", "--device", "cpu")
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "note:" not in out and "model mini" in out     # the checkpoint's settings, silently
    assert "resuming" in out and "at epoch 4, step 0" in out and "reused 32x32 cache" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 4
    print(f"\nimage-folder run: {seconds:.1f} s, test top-1 {summary['test_top1']:.3f}, "
          f"10-crop {summary['test_top1_10crop']:.3f}")     # shown with pytest -s


def test_prepare_only_creates_the_cache_and_exits(photos, tmp_path):
    argv = ["--dataset", str(photos), "--prepare-only", "--image-size", "40", "--cache",
            str(tmp_path / "cache"), "--workers", "0"]
    run = run_example(*argv)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert out.startswith(f"data: {photos}: train 90, val 36 | prepared 40x40 cache")
    (cache,) = (tmp_path / "cache").iterdir()
    assert (cache / "COMPLETE").is_file() and np.load(cache / "train_images.npy",
                                                      mmap_mode="r").shape == (90, 40, 40, 3)
    assert not (tmp_path / "run").exists()
    assert "| reused 40x40 cache" in run_example(*argv).stdout
    # examples/prepare_dataset.py is the same preparation: it finds the same cache
    prepare = subprocess.run([sys.executable, str(ROOT / "examples" / "prepare_dataset.py"),
                              str(photos), "--size", "40", "--cache", str(tmp_path / "cache")],
                             capture_output=True, text=True, timeout=120)
    assert prepare.returncode == 0, prepare.stderr
    assert prepare.stdout.startswith("reused 40x40 cache") and "train: 90 images" in prepare.stdout
    assert f"skipped {CORRUPT}" in prepare.stdout


def test_a_missing_folder_is_a_usage_error(tmp_path):
    run = run_example("--dataset", tmp_path / "nowhere")
    assert run.returncode == 2
    err = run.stderr
    assert "argument --dataset: expected 'fashion-mnist' or an image folder with train/ and " \
           "val/" in err and "(no such directory)" in err and "Traceback" not in err


def test_a_folder_without_train_is_one_line(photos, tmp_path):
    run = run_example(*run_args(photos / "val", tmp_path))
    assert run.returncode == 1
    err = run.stderr
    assert err.count("\n") == 1
    assert f"dataset: {str(photos / 'val')!r} has no train/ folder" in err


def test_crops_larger_than_the_prepared_images_are_refused(photos, tmp_path):
    run = run_example(*run_args(photos, tmp_path, "--model", "small"))   # 65x65 crops of 32x32
    assert run.returncode == 1
    err = run.stderr
    assert err.count("\n") == 1
    assert "--model small takes 65x65 crops, larger than the 32x32 prepared images; use " \
           "--image-size 65 or more" in err
