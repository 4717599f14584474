"""examples/train_alexnet.py --data-parallel as a user starts it: ``mpiexec -n 2 python -m mpi4py
examples/train_alexnet.py --data-parallel ...``, killed, interrupted, failing and resumed.

A launcher plants one fault in one rank before its N-th optimiser step (counted from the start
of that process): SIGKILL, Ctrl-C (SIGINT), or an exception. Each run is two epochs of six
steps of 8 images (4 per process) with dropout, flips and shuffling, so the resumed run must
restore every process's random streams to end as the uninterrupted one.
"""
import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from minialex import checkpoint

from mpi_jobs import ROOT, SKIP_INSIDE_MPI, run_job
from support import SCRIPT, learnable_fashion_mnist

pytestmark = SKIP_INSIDE_MPI

DEADLINE = 10       # seconds from a failure to the end of the job
FLAGS = ["--device", "cpu", "--val-size", "16", "--batch-size", "8", "--limit-train", "48",
         "--limit-test", "32", "--print-freq", "0", "--warmup", "0", "--lr", "0.01",
         "--dropout", "0.2", "--flip", "--epochs", "2"]

# argv: FAULT STAMP SCRIPT ARGS...; FAULT is "none" or WHAT:STEP@RANK, WHAT one of kill, sigint,
# bad-input; STAMP is written (the time) just before the fault
LAUNCHER = """
import os, signal, sys, time, runpy
from minialex import optim

fault, stamp, script = sys.argv[1:4]
sys.argv = sys.argv[3:]
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0)))
what, _, where = fault.partition(":")
step, _, target = where.partition("@")
if fault != "none" and rank == int(target):
    original, calls = optim.SGD.step, []

    def step_with_fault(self):
        calls.append(1)
        if len(calls) == int(step):
            with open(stamp, "w") as f:
                f.write(repr(time.time()))
            if what == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif what == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
            else:
                raise ValueError(f"planted bad input on rank {rank}")
        return original(self)

    optim.SGD.step = step_with_fault
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return learnable_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=80)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    path = tmp_path_factory.mktemp("launcher") / "launch.py"
    path.write_text(LAUNCHER)
    return path


def train(processes, launcher, data_dir, *argv, fault="none", stamp="/dev/null"):
    return run_job(processes, sys.executable, "-m", "mpi4py", launcher, fault, stamp, SCRIPT,
                   "--data-parallel", "--data-dir", data_dir, *argv)


def seconds_since(stamp):
    return time.time() - float(stamp.read_text())


def epochs_logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def position(path):
    trainer = checkpoint.load(path)["trainer"]
    return trainer["epoch"], trainer["step"]


@pytest.fixture(scope="module")
def straight(launcher, data_dir, tmp_path_factory):
    """The uninterrupted 2-process run."""
    out = tmp_path_factory.mktemp("straight")
    job = train(2, launcher, data_dir, *FLAGS, "--out", out)
    assert job.returncode == 0, job.stdout + job.stderr
    assert job.stdout.count("test (best (epoch 2) weights, 32 images)") == 1   # rank 0 alone
    return json.loads((out / "summary.json").read_text()), epochs_logged(out)


def test_killed_and_interrupted_at_two_processes_the_run_resumes_as_the_uninterrupted_one(
        launcher, data_dir, straight, tmp_path):
    out, stamp = tmp_path / "run", tmp_path / "fault_at"
    last = out / "last.npz"
    # kill -9 of rank 1 during epoch 2 (after 1 of its steps): the job ends, last.npz holds
    # epoch 1
    job = train(2, launcher, data_dir, *FLAGS, "--out", out, fault="kill:8@1", stamp=stamp)
    assert job.returncode != 0 and seconds_since(stamp) < DEADLINE, job.stdout + job.stderr
    assert position(last) == (1, 0) and [m["epoch"] for m in epochs_logged(out)] == [1]

    # resumed, then Ctrl-C on rank 1 alone before its third step: both processes stop after
    # that step, rank 0 saves it and every process exits 130
    job = train(2, launcher, data_dir, "--resume", last, fault="sigint:3@1", stamp=stamp)
    assert job.returncode == 130, job.stdout + job.stderr
    assert "interrupted at epoch 2, step 3; saved " in job.stdout
    assert job.stdout.count("resume with: ") == 1
    assert position(last) == (1, 3)
    shutil.copytree(out, tmp_path / "one")

    job = train(2, launcher, data_dir, "--resume", last)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "at epoch 2, step 3" in job.stdout
    summary, metrics = straight
    resumed = json.loads((out / "summary.json").read_text())
    assert (resumed["test_top1"], resumed["test_loss"]) == (summary["test_top1"],
                                                            summary["test_loss"])
    logged = epochs_logged(out)
    assert [m["epoch"] for m in logged] == [1, 2]
    for key in ("train_loss", "train_top1", "val_loss", "val_top1"):
        assert [m[key] for m in logged] == [m[key] for m in metrics], key
    final = checkpoint.load(last)["model"]
    straight_final = checkpoint.load(pathlib.Path(summary["out"]) / "last.npz")["model"]
    for name, w in straight_final.items():
        assert (final[name] == w).all(), name

    # the 2-process checkpoint resumes in one process, plain python; its epoch's sums so far
    # are both processes' (24 images), so epoch 2 counts its 48 images once
    job = run_one_process(data_dir, "--resume", tmp_path / "one" / "last.npz")
    assert job.returncode == 0, job.stdout + job.stderr
    assert "at epoch 2, step 3" in job.stdout and "completed after 2 epochs" in job.stdout
    assert [m["train_images"] for m in epochs_logged(tmp_path / "one")] == [48, 48]


def run_one_process(data_dir, *argv):
    return subprocess.run([sys.executable, str(SCRIPT), "--data-dir", data_dir, *map(str, argv)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_bad_input_on_one_rank_ends_the_job_with_one_line_naming_it(launcher, data_dir,
                                                                    tmp_path):
    out, stamp = tmp_path / "run", tmp_path / "fault_at"
    job = train(2, launcher, data_dir, *FLAGS, "--out", out, fault="bad-input:8@1", stamp=stamp)
    assert job.returncode != 0 and seconds_since(stamp) < DEADLINE, job.stdout + job.stderr
    lines = [line for line in job.stderr.splitlines() if "planted" in line]
    assert lines == ["minialex: rank 1 of 2 aborts the run: ValueError: planted bad input on "
                     "rank 1"], \
        job.stderr
    assert position(out / "last.npz") == (1, 0)      # the last checkpoint is still good


def test_a_global_batch_that_does_not_divide_by_the_processes_is_refused(launcher, data_dir,
                                                                         tmp_path):
    job = train(2, launcher, data_dir, *FLAGS, "--batch-size", "7", "--out", tmp_path)
    assert job.returncode != 0
    assert ("--batch-size 7 (the global batch) does not divide by the 2 processes training "
            "together") in job.stderr
