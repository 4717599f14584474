"""examples/train_alexnet.py on an image folder the test writes with Pillow: a CPU-sized run of the
paper's recipe that must learn, the summary it writes, --prepare-only, and the errors."""
import importlib.util
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from minialex import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_alexnet.py")
spec = importlib.util.spec_from_file_location("train_alexnet_images", SCRIPT)
train_alexnet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_alexnet)

# Each class: a dominant colour (scaled per image) and its own stripe direction, under noise.
CLASSES = {"apple": (190, 40, 40), "leaf": (50, 160, 60), "sky": (60, 90, 200)}
CORRUPT = "train/apple/broken.jpg"


def synthetic_photos(root, n_train=30, n_val=12, seed=0):
    """ImageFolder of 80x100 and 100x80 JPEGs and PNGs, plus one file that is not an image."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, (name, colour) in enumerate(CLASSES.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = (80, 100) if i % 2 else (100, 80)       # landscape and portrait
                yy, xx = np.mgrid[:h, :w]
                stripes = (np.sin(yy / 3), np.sin(xx / 3), np.sin((xx + yy) / 4))[k]
                x = (np.array(colour) * rng.uniform(0.6, 1.2) + 40 * stripes[..., None]
                     + rng.normal(0, 30, (h, w, 3)))
                image = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
                image.save(folder / (f"{i}.png" if i % 3 == 0 else f"{i}.jpg"))
    (root / CORRUPT).write_bytes(b"\xff\xd8 truncated before any JPEG segment")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return synthetic_photos(tmp_path_factory.mktemp("photos"))


def run_args(photos, tmp_path, *extra):
    # `mini` takes 28x28 crops: from 32x32 prepared images that is 5x5 random offsets
    return ["--dataset", str(photos), "--model", "mini", "--image-size", "32", "--cache",
            str(tmp_path / "cache"), "--workers", "0", "--device", "cpu", "--batch-size", "16",
            "--print-freq", "0", "--out", str(tmp_path / "run"), *extra]


def test_the_paper_recipe_learns_a_small_image_folder(photos, tmp_path, capsys):
    start = time.perf_counter()
    assert train_alexnet.main(run_args(photos, tmp_path, "--epochs", "3", "--ten-crop")) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # the paper's recipe by default, around the model's own input
    assert ("SGD lr 0.01 momentum 0.9 weight decay 0.0005, schedule plateau, augmentation: "
            "random 28x28 crops, horizontal flips, PCA colour noise (std 0.1), mean image "
            "subtracted") in out
    assert "model mini (" in out and "input 3x28x28" in out
    assert "train 90, val 36, test (val/) 36" in out
    assert f"3 classes (apple, leaf, sky); 1 unreadable file(s) skipped ({CORRUPT})" in out
    assert "10-crop top-1" in out
    # learned: chance is 1/3
    assert summary["test_top1"] >= 0.6 and summary["test_top1_10crop"] >= 0.6
    assert 0 <= summary["test_loss_10crop"] and summary["test_top5_10crop"] == 1.0
    assert summary["test_images"] == 36 and summary["test_split"] == "val"
    # the class mapping and the skipped file travel with the run
    assert summary["classes"] == list(CLASSES) and summary["args"]["classes"] == list(CLASSES)
    assert [rel for rel, _ in summary["skipped_files"]["train"]] == [CORRUPT]
    assert summary["skipped_files"]["val"] == []
    best = checkpoint.load(tmp_path / "run" / "best.npz")
    assert best["config"]["classes"] == list(CLASSES)
    assert best["config"]["dataset"] == str(photos) and best["config"]["image_size"] == 32
    assert best["model"]["classifier.6.bias"].shape == (3,)      # fc8: one output per class
    # --evaluate finds the same data and weights, single and ten crops
    assert train_alexnet.main(["--evaluate", str(tmp_path / "run" / "best.npz"), "--cache",
                               str(tmp_path / "cache"), "--ten-crop", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_top1"] == summary["test_top1"]
    assert result["test_top1_10crop"] == summary["test_top1_10crop"]
    assert result["classes"] == list(CLASSES)
    # ... and refuses a folder whose classes are not the checkpoint's
    other = tmp_path / "other"
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (other / split / name).mkdir(parents=True)
            Image.new("RGB", (40, 30), (9, 9, 9)).save(other / split / name / "0.png")
    assert train_alexnet.main(["--evaluate", str(tmp_path / "run" / "best.npz"), "--dataset",
                               str(other), "--cache", str(tmp_path / "cache")]) == 1
    assert "classes ['cat', 'dog'] differ from the checkpoint's ['apple', 'leaf', 'sky']" in \
        capsys.readouterr().err
    # --resume finds the folder, its cache and the settings in the checkpoint
    assert train_alexnet.main(["--resume", str(tmp_path / "run" / "last.npz"), "--epochs", "4",
                               "--cache", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at epoch 4, step 0" in out and "reused 32x32 cache" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 4
    print(f"\nimage-folder run: {seconds:.1f} s, test top-1 {summary['test_top1']:.3f}, "
          f"10-crop {summary['test_top1_10crop']:.3f}")     # shown with pytest -s


def test_prepare_only_creates_the_cache_and_exits(photos, tmp_path, capsys):
    argv = ["--dataset", str(photos), "--prepare-only", "--image-size", "40", "--cache",
            str(tmp_path / "cache"), "--workers", "0"]
    assert train_alexnet.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data: {photos}: train 90, val 36 | prepared 40x40 cache")
    (cache,) = (tmp_path / "cache").iterdir()
    assert (cache / "COMPLETE").is_file() and np.load(cache / "train_images.npy",
                                                      mmap_mode="r").shape == (90, 40, 40, 3)
    assert not (tmp_path / "run").exists()
    assert train_alexnet.main(argv) == 0
    assert "| reused 40x40 cache" in capsys.readouterr().out


def test_a_missing_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_alexnet.main(["--dataset", str(tmp_path / "nowhere")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --dataset: expected 'fashion-mnist' or an image folder with train/ and " \
           "val/" in err and "(no such directory)" in err and "Traceback" not in err


def test_a_folder_without_train_is_one_line(photos, tmp_path, capsys):
    argv = run_args(photos / "val", tmp_path)
    assert train_alexnet.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"dataset: {str(photos / 'val')!r} has no train/ folder" in err


def test_crops_larger_than_the_prepared_images_are_refused(photos, tmp_path, capsys):
    argv = run_args(photos, tmp_path, "--model", "small")          # 65x65 crops of 32x32
    assert train_alexnet.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--model small takes 65x65 crops, larger than the 32x32 prepared images; use " \
           "--image-size 65 or more" in err
