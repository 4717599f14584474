"""examples/train_alexnet.py --device gpu as a user runs it: a few steps, --resume, --evaluate.

Where no GPU is usable the script runs under the CuPy stand-in (``python tests/cupy_standin.py
BUILD_DIR examples/train_alexnet.py ...``), so the whole GPU path runs in CI: the loader's copies,
the device transforms, every kernel of kernels/*.cu, cuBLAS GEMM, SGD, the checkpoint's round
trip through the host, and evaluation. On a machine with a GPU it runs on real CuPy.
"""
import json
import re
import subprocess
import sys

import pytest

from minialex import backend

import conftest
from support import ROOT, SCRIPT, learnable_fashion_mnist

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


def run_on_gpu(host_kernels, *argv):
    """The example on real CuPy where a GPU is usable, else under the stand-in."""
    if not on_standin():
        command = [sys.executable, str(SCRIPT), *map(str, argv)]
    else:
        command = [sys.executable, str(STANDIN), str(host_kernels.build_dir), str(SCRIPT),
                   *map(str, argv)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def launches(run) -> int:
    found = re.search(r"cupy stand-in: (\d+) kernel launches", run.stderr)
    return int(found.group(1)) if found else 0


def test_the_example_trains_resumes_and_evaluates_on_the_gpu(gpu, host_kernels, data_dir,
                                                             tmp_path):
    last = tmp_path / "run" / "last.npz"
    run = run_on_gpu(host_kernels, *TINY, "--data-dir", data_dir, "--epochs", "1", "--out",
                     tmp_path / "run")
    assert re.search(r"\| device gpu:0 ", run.stdout), run.stdout
    assert re.search(r"epoch 1/1 \[12/12\] loss \d", run.stdout)
    assert re.search(r"test \(best \(epoch 1\) weights, 64 images\): top-1 .* completed after 1 "
                     r"epoch", run.stdout)
    trained = launches(run)

    run = run_on_gpu(host_kernels, "--device", "gpu", "--data-dir", data_dir, "--resume", last,
                     "--epochs", "2")
    assert "at epoch 2, step 0" in run.stdout and "epoch 2/2" in run.stdout
    resumed = launches(run)

    run = run_on_gpu(host_kernels, "--device", "gpu", "--data-dir", data_dir, "--evaluate", last)
    result = json.loads(run.stdout)
    assert result["test_images"] == 64 and result["device"].startswith("gpu:0")
    if on_standin():
        assert "CuPy stand-in" in result["device"]
        assert min(trained, resumed, launches(run)) > 0
        conftest.STANDIN_RUNS.append(f"the tiny --device gpu run (12 steps, --resume for 12 "
                                     f"more, --evaluate) ran on the CuPy stand-in: {trained} + "
                                     f"{resumed} + {launches(run)} kernel launches")
