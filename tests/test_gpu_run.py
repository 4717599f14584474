"""examples/train_alexnet.py --device gpu as a user runs it: a few steps, --resume, --evaluate.

Where no GPU is usable the script runs under the CuPy stand-in (``python tests/cupy_standin.py
BUILD_DIR examples/train_alexnet.py ...``), so the whole GPU path runs in CI: the loader's copies,
the device transforms, every kernel of kernels/*.cu, cuBLAS GEMM, SGD, the checkpoint's round
trip through the host, and evaluation. On a machine with a GPU it runs on real CuPy.
"""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import minialex
from minialex import backend, checkpoint, nn
from minialex.data import ArrayDataset, Loader, crops
from minialex.data import augment as aug
from minialex.data import transforms as T
from minialex.optim import SGD
from minialex.train import (
    Running,
    Trainer,
    evaluate,
    evaluate_ten_crop,
    topk_counts,
    train_one_epoch,
)

import conftest
from support import ROOT, SCRIPT, learnable_fashion_mnist, make_trainer, tiny_data

STANDIN = ROOT / "tests" / "cupy_standin.py"
# About the smallest run that beats chance: the mini AlexNet at 28x28, 12 steps of 16 images.
TINY = ["--device", "gpu", "--model", "mini", "--val-size", "60", "--limit-train", "192",
        "--batch-size", "16", "--limit-test", "64", "--print-freq", "6", "--warmup", "4",
        "--lr", "0.02", "--schedule", "none", "--no-flip"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return learnable_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=260, n_test=64)


def on_standin() -> bool:
    """Whether the ``gpu`` fixture installed the CuPy stand-in (no usable GPU here)."""
    return getattr(backend.require_cupy(), "is_standin", False)


def run_on_gpu(request, *argv):
    """The example on real CuPy where a GPU is usable, else under the stand-in (with kernels/*.cu
    built for the host, which a real GPU does not need)."""
    if not on_standin():
        command = [sys.executable, str(SCRIPT), *map(str, argv)]
    else:
        host_kernels = request.getfixturevalue("host_kernels")
        command = [sys.executable, str(STANDIN), str(host_kernels.build_dir), str(SCRIPT),
                   *map(str, argv)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def launches(run) -> int:
    found = re.search(r"cupy stand-in: (\d+) kernel launches", run.stderr)
    return int(found.group(1)) if found else 0


def test_the_example_trains_resumes_and_evaluates_on_the_gpu(gpu, request, data_dir, tmp_path):
    last = tmp_path / "run" / "last.npz"
    run = run_on_gpu(request, *TINY, "--data-dir", data_dir, "--epochs", "1", "--out",
                     tmp_path / "run")
    assert re.search(r"\| device gpu:0 ", run.stdout), run.stdout
    assert re.search(r"epoch 1/1 \[12/12\] loss \d", run.stdout)
    assert re.search(r"test \(best \(epoch 1\) weights, 64 images\): top-1 .* completed after 1 "
                     r"epoch", run.stdout)
    trained = launches(run)

    run = run_on_gpu(request, "--device", "gpu", "--data-dir", data_dir, "--resume", last,
                     "--epochs", "2")
    assert "at epoch 2, step 0" in run.stdout and "epoch 2/2" in run.stdout
    resumed = launches(run)

    run = run_on_gpu(request, "--device", "gpu", "--data-dir", data_dir, "--evaluate", last)
    result = json.loads(run.stdout)
    assert result["test_images"] == 64 and result["device"].startswith("gpu:0")
    if on_standin():
        assert "CuPy stand-in" in result["device"]
        assert min(trained, resumed, launches(run)) > 0
        conftest.STANDIN_RUNS.append(f"the tiny --device gpu run (12 steps, --resume for 12 "
                                     f"more, --evaluate) ran on the CuPy stand-in: {trained} + "
                                     f"{resumed} + {launches(run)} kernel launches")


# -- host<->device traffic of a training step ---------------------------------------------------
MAX_D2H_PER_STEP = 1   # the loss, for the watch; the accuracy counts wait on the device
# the batch's images and labels, and its crop and flip draws (made on the host, so that a seed
# gives the same augmentation on every device), in one copy; constants stay on the device
MAX_H2D_PER_STEP = 3


def counted_steps(standin, steps=4):
    """(device-to-host, host-to-device) copies of each step of a small net on the GPU path:
    the loader's normalise and resize transforms, LRN, adaptive pooling, dropout, SGD."""
    minialex.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(3),
                          nn.MaxPool2d(2, 2), nn.AdaptiveAvgPool2d((3, 3)), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(36, 10)).to("gpu")
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    transform = T.Compose([T.ToFloat(), T.RandomHorizontalFlip(), T.Normalize(0.5, 0.25),
                           T.Resize(12)])
    loader = Loader(tiny_data(8 * steps), 8, shuffle=True, generator=np.random.default_rng(1),
                    transform=transform, device="gpu", prefetch=0, num_classes=10)
    counts = []

    def after_step(running):
        counts.append((standin.TRANSFERS.d2h, standin.TRANSFERS.h2d))
        standin.TRANSFERS.reset()

    standin.TRANSFERS.reset()
    running = train_one_epoch(model, loader, optimizer, after_step=after_step)
    return counts, running


def test_a_training_step_waits_for_the_device_once_and_copies_only_its_batch(standin):
    counts, running = counted_steps(standin)
    assert len(counts) == 4
    # the first step also copies what is then kept on the device (resize matrices, the
    # normalisation constants, the pooling matrices): allowed once, never again
    for step, (d2h, h2d) in enumerate(counts[1:], start=2):
        assert d2h <= MAX_D2H_PER_STEP, f"step {step}: {d2h} device-to-host transfers"
        assert h2d <= MAX_H2D_PER_STEP, f"step {step}: {h2d} host-to-device copies"
    running.settle()                                      # the counts, read at last
    assert standin.TRANSFERS.d2h == 1 and running.images == 32


@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluation_reads_its_sums_from_the_device_once_whatever_the_batch_count(standin,
                                                                                ten_crop):
    minialex.manual_seed(0)
    side = 6 if ten_crop else 8   # ten 6x6 crops of 8x8 images, or the images themselves
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
                          nn.Flatten(), nn.Linear(4 * (side // 2) ** 2, 10))
    data = tiny_data(40)   # five batches of 8
    if ten_crop:  # the ten crops take images (N, H, W, C)
        data = ArrayDataset(np.ascontiguousarray(data.images.transpose(0, 2, 3, 1)), data.labels)
    transform = functools.partial(aug.ten_crop, crop=6) if ten_crop else T.ToFloat()
    run = evaluate_ten_crop if ten_crop else evaluate
    expected = run(model, Loader(data, 8, transform=transform, num_classes=10))  # on the host
    model.to("gpu")
    loader = Loader(data, 8, transform=transform, device="gpu", prefetch=0, num_classes=10)
    standin.TRANSFERS.reset()
    result = run(model, loader)
    assert standin.TRANSFERS.d2h <= 2   # the loss sum and the top-k counts, at the end
    assert result["images"] == expected["images"] == 40
    assert result["top1"] == expected["top1"] and result["top5"] == expected["top5"]
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    if not ten_crop:  # each image's softmax kept too: read back with the sums, not per batch
        standin.TRANSFERS.reset()
        kept = evaluate(model, loader, keep_probabilities=True)
        assert standin.TRANSFERS.d2h <= 4
        on_host = evaluate(model.to("cpu"), Loader(data, 8, transform=transform),
                           keep_probabilities=True)
        np.testing.assert_array_equal(kept["labels"], data.labels)
        np.testing.assert_allclose(kept["probabilities"], on_host["probabilities"], rtol=1e-5,
                                   atol=1e-7)
        assert kept["probabilities"].shape == (40, 10)
        assert (kept["probabilities"].argmax(axis=1) == kept["labels"]).mean() == kept["top1"]


def test_top_k_counts_summed_on_the_device_equal_the_host_counts(standin):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 10)).astype(np.float32), rng.integers(0, 10, 8))
               for _ in range(3)]
    running = Running()
    for logits, labels in batches:
        running.add(8, 0.0, topk_counts(backend.to_device(logits, "gpu"),
                                        backend.to_device(labels, "gpu")))
    expected = np.sum([topk_counts(logits, labels) for logits, labels in batches], axis=0)
    assert 0 < expected[0] < expected[1] < 24
    standin.TRANSFERS.reset()
    assert (running.settle().correct1, running.correct5) == tuple(expected)
    assert standin.TRANSFERS.d2h == 1


def test_labels_out_of_range_are_refused_on_the_host_before_the_copy(standin):
    data = ArrayDataset(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 10, 2]))
    loader = Loader(data, 4, device="gpu", num_classes=10, prefetch=0)
    standin.TRANSFERS.reset()
    with pytest.raises(ValueError, match=r"Loader: label 10 is out of range \[0, 10\)"):
        next(iter(loader))
    assert standin.TRANSFERS.h2d == 0


def test_the_checkpoint_state_is_read_from_the_device_once_for_both_files(standin, tmp_path,
                                                                        monkeypatch):
    minialex.manual_seed(0)
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.model.to("gpu")
    for loader in (trainer.train_loader, trainer.val_loader):
        loader.device = "gpu"
    reads = []
    save = checkpoint.save

    def counting_save(path, tree):
        before = standin.TRANSFERS.d2h
        save(path, tree)
        reads.append((os.path.basename(path), standin.TRANSFERS.d2h - before))

    built = []
    state = Trainer.state

    def counting_state(self):
        built.append(self.epoch)
        return state(self)

    monkeypatch.setattr(checkpoint, "save", counting_save)
    monkeypatch.setattr(Trainer, "state", counting_state)
    trainer.fit()
    assert reads == [("best.npz", 0), ("last.npz", 0)]    # the state was on the host already
    assert built == [1]                                    # one state for both files


def test_crops_and_mirrors_read_nothing_back_from_the_device(standin):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    mean = rng.random((12, 12, 3)).astype(np.float32)
    draws = aug.draw_augmentation(np.random.default_rng(1), 6, size=12, crop=8, pca_std=None)
    assert 0 < draws.flip.sum() < 6
    on_gpu = backend.to_device(images, "gpu")
    standin.TRANSFERS.reset()
    out = aug.apply_augmentation(on_gpu, draws, crop=8, mean=mean)
    flags = backend.to_device(draws.flip, "gpu")   # flags already on the device: no nonzero
    by_selection = crops.crop_flip(on_gpu, draws.top, draws.left, flags, (8, 8),
                                   channels_last=True)
    assert standin.TRANSFERS.d2h == 0
    np.testing.assert_allclose(out.get(), aug.apply_augmentation(images, draws, crop=8,
                                                                 mean=mean), rtol=1e-6)
    np.testing.assert_array_equal(by_selection.get(), crops.crop_flip(
        images, draws.top, draws.left, draws.flip, (8, 8), channels_last=True))
