"""The learning benchmark's lockstep run on a tiny budget: the loss falls, and PyTorch running
the same recipe on the same batches from the same weights agrees with minialex."""
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from minialex.config import CPU_PRESET

from conftest import TOL
from support import learnable_fashion_mnist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_learning  # noqa: E402  (a script folder, not a package)
import photo_folder  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return learnable_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=400, n_test=40)


def tiny(**changes):
    # no dropout: both frameworks then compute the same function, step for step
    return CPU_PRESET.replace(val_size=60, batch_size=32, warmup=4, dropout=0.0, **changes)


def test_lockstep_learns_on_a_tiny_budget(data_dir):
    log, seconds = bench_learning.lockstep(tiny(), steps=20, held_out=60, eval_every=10,
                                           data_dir=data_dir, quiet=True)
    losses = [row["minialex_loss"] for row in log]
    assert bench_learning.falls(losses) and log[-1]["minialex_val_top1"] > 0.5
    assert [row["lr"] for row in log[:4]] == pytest.approx([0.005, 0.01, 0.015, 0.02])
    assert seconds["minialex"] > 0


def test_pytorch_runs_the_same_recipe_to_the_same_losses(data_dir):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional comparison")
    log, _ = bench_learning.lockstep(tiny(), steps=12, held_out=60, eval_every=12, torch=torch,
                                     data_dir=data_dir, quiet=True)
    ours = np.array([row["minialex_loss"] for row in log])
    theirs = np.array([row["pytorch_loss"] for row in log])
    np.testing.assert_allclose(ours, theirs, **TOL["float32_training"])
    assert log[-1]["minialex_val_top1"] == log[-1]["pytorch_val_top1"]


def test_falls_means_every_quarter_lower_than_the_last():
    assert bench_learning.falls([4, 3, 2, 1, 1, 0.5, 0.4, 0.3])
    assert not bench_learning.falls([4, 3, 2, 1, 1, 2, 0.4, 0.3])


def test_photo_folder_keeps_validation_crops_out_of_the_training_part(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # red = the column, so a crop's red values say which part of its photograph it came from
    column = np.linspace(0, 255, 600)[None, :, None]
    for name, blue in (("sea", 40), ("sky", 200)):
        pixels = np.broadcast_to(column, (400, 600, 3)).copy()
        pixels[..., 2] = blue
        Image.fromarray(pixels.astype(np.uint8)).save(photos / f"{name}.png")
    out = photo_folder.write_folder(tmp_path / "folder", photos, train_per_class=8,
                                    val_per_class=4)
    red = {split: [np.asarray(Image.open(f))[..., 0] for f in sorted(out.glob(f"{split}/*/*"))]
           for split in ("train", "val")}
    assert sorted(p.name for p in (out / "val").iterdir()) == ["sea", "sky"]
    assert len(red["train"]) == 16 and len(red["val"]) == 8
    assert max(r.max() for r in red["train"]) < 0.66 * 255
    assert min(r.min() for r in red["val"]) > 0.69 * 255


def test_photo_folder_names_a_directory_without_photographs(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"in {tmp_path}, need at least 2"):
        photo_folder.find_photos(tmp_path)
