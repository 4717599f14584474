"""A run survives ``kill -9`` at any moment and a disk that fills up: examples/train_alexnet.py
in a child process that a launcher kills, or limits in the size of file it may write
(``RLIMIT_FSIZE``), at a named point; each resumed run ends with the test accuracy and loss of
an uninterrupted run of the same seed, every epoch once in metrics.jsonl, and no temporary
file left behind."""
import errno
import io
import json
import os
import re
import subprocess
import sys

import pytest

from minialex import checkpoint, extensions, recipe
from minialex.config import CPU_PRESET

from support import ROOT, SCRIPT, learnable_fashion_mnist, make_trainer

# Two epochs of six steps, with dropout, flips and shuffling drawn from the checkpointed
# generators; learns well above chance in those twelve steps, and epoch 2 beats epoch 1 on
# validation, so that epoch 2 writes best.npz as well as last.npz.
SETTINGS = dict(val_size=16, batch_size=8, limit_train=48, limit_test=32, print_freq=0,
                warmup=0, lr=0.01, dropout=0.2, flip=True, epochs=2)
FLAGS = ["--val-size", "16", "--batch-size", "8", "--limit-train", "48", "--limit-test", "32",
         "--print-freq", "0", "--warmup", "0", "--lr", "0.01", "--dropout", "0.2", "--flip",
         "--epochs", "2"]

# Runs the example after arranging one fault, named by argv[1]:
#   kill-before-step:N            SIGKILL before the N-th optimiser step of this process
#   ctrl-c-before-step:N          Ctrl-C (SIGINT, Python's own handler) likewise
#   kill-before-rename:NAME       SIGKILL once a save to NAME has written and fsynced its
#                                 temporary file, before the rename
#   limit-after-rename:NAME:BYTES after the first save to NAME, files may grow to BYTES only
#   limit-after-rename:NAME:FILE  ... to the size FILE (in NAME's folder) has then
#   limit:BYTES                   files may grow to BYTES only, from the start
LAUNCHER = """
import os, resource, runpy, signal, sys
from minialex import optim

fault, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
what, _, arg = fault.partition(":")


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if what in ("kill-before-step", "ctrl-c-before-step"):
    step, calls = optim.SGD.step, []
    signal.signal(signal.SIGINT, signal.default_int_handler)    # also when run with it ignored

    def step_or_die(self):
        calls.append(1)
        if len(calls) == int(arg):
            die() if what == "kill-before-step" else os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    optim.SGD.step = step_or_die
elif what == "limit":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), resource.getrlimit(
        resource.RLIMIT_FSIZE)[1]))
else:
    name, _, limit = arg.partition(":")
    replace = os.replace

    def replace_with_fault(src, dst):
        if os.path.basename(dst) != name:
            return replace(src, dst)
        if what == "kill-before-rename":
            die()
        replace(src, dst)
        os.replace = replace
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # EFBIG, not a signal
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        size = int(limit) if limit.isdigit() else os.path.getsize(
            os.path.join(os.path.dirname(dst), limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    os.replace = replace_with_fault
runpy.run_path(script, run_name="__main__")
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return learnable_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=80)


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """The uninterrupted run: its summary and metrics."""
    out = tmp_path_factory.mktemp("straight")
    summary = recipe.fit(CPU_PRESET.replace(**SETTINGS), out=str(out), data_dir=data_dir,
                         stream=io.StringIO())
    metrics = epochs_logged(out)
    assert summary["test_top1"] > 0.5 and [m["best"] for m in metrics] == [True, True]
    return summary, metrics


def run(data_dir, *argv, fault=None):
    prefix = [sys.executable, "-c", LAUNCHER, fault] if fault else [sys.executable]
    return subprocess.run([*prefix, str(SCRIPT), "--device", "cpu", "--data-dir", data_dir,
                           *map(str, argv)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def epochs_logged(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def partial_files(out):
    return [name for name in os.listdir(out) if name.endswith(".tmp")]


def saved_epoch(path):
    return checkpoint.load(path)["trainer"]["epoch"]


def assert_same_as(straight, out):
    summary, metrics = straight
    resumed = json.loads((out / "summary.json").read_text())
    assert (resumed["test_top1"], resumed["test_loss"]) == (summary["test_top1"],
                                                            summary["test_loss"])
    logged = epochs_logged(out)
    assert [m["epoch"] for m in logged] == [1, 2]                  # each epoch once
    for key in ("train_loss", "val_loss", "val_top1"):
        assert [m[key] for m in logged] == [m[key] for m in metrics], key
    assert partial_files(out) == []


def test_killed_mid_epoch_and_mid_save_the_resumed_run_ends_as_an_uninterrupted_one(
        data_dir, straight, tmp_path):
    out = tmp_path / "run"
    last = out / "last.npz"
    # kill -9 during epoch 2 (after one of its steps): last.npz holds epoch 1
    killed = run(data_dir, *FLAGS, "--out", out, fault="kill-before-step:8")
    assert killed.returncode == -9, killed.stderr
    assert saved_epoch(last) == 1 and [m["epoch"] for m in epochs_logged(out)] == [1]

    # resumed (the killed run's lock is gone with it), then killed while saving epoch 2:
    # metrics.jsonl and best.npz have it, last.npz's temporary file is written, not renamed
    killed = run(data_dir, "--resume", last, fault="kill-before-rename:last.npz")
    assert killed.returncode == -9, killed.stderr
    assert saved_epoch(last) == 1 and saved_epoch(out / "best.npz") == 2
    assert [m["epoch"] for m in epochs_logged(out)] == [1, 2]
    assert len(partial_files(out)) == 1

    # resumed again: epoch 2 is done over, its line logged once, the temporary file removed
    done = run(data_dir, "--resume", last)
    assert done.returncode == 0, done.stderr
    assert "note: removed " in done.stdout and "at epoch 2, step 0" in done.stdout
    assert_same_as(straight, out)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes_from_it(data_dir, straight,
                                                                    tmp_path):
    out = tmp_path / "run"
    last = out / "last.npz"
    # epoch 1 saved; then no file may grow past metrics.jsonl's size: epoch 2's line fails
    full = run(data_dir, *FLAGS, "--out", out, fault="limit-after-rename:last.npz:metrics.jsonl")
    assert full.returncode == 1, full.stdout + full.stderr
    assert full.stderr == (f"train_alexnet.py: error: cannot write {out}/metrics.jsonl: File "
                           f"too large; {last} keeps the last good state, from the end of epoch "
                           f"1; resume with --resume {last}\n")
    assert saved_epoch(last) == 1 and [m["epoch"] for m in epochs_logged(out)] == [1]

    # resumed where files may not grow past 100 kB: epoch 2's line is written, its checkpoint not
    full = run(data_dir, "--resume", last, fault="limit:100000")
    assert full.returncode == 1, full.stdout + full.stderr
    assert full.stderr == (f"train_alexnet.py: error: cannot write {out}/best.npz: File too "
                           f"large; {last} is left as it was; resume with --resume {last}\n")
    assert saved_epoch(last) == 1 and partial_files(out) == []

    # resumed as the line says; epoch 2 is saved, then summary.json cannot be written
    resume = re.search(r"resume with --resume (\S+)", full.stderr).group(1)
    full = run(data_dir, "--resume", resume, fault="limit-after-rename:last.npz:200")
    assert full.returncode == 1, full.stdout + full.stderr
    assert full.stderr == (f"train_alexnet.py: error: cannot write {out}/summary.json: File too "
                           f"large; the trained state is in {last}; resume with --resume {last} "
                           f"to test it and write the summary again\n")
    assert saved_epoch(last) == 2 and partial_files(out) == []

    # and resumed once more: nothing left to train, tested and summarised
    resume = re.search(r"resume with --resume (\S+)", full.stderr).group(1)
    done = run(data_dir, "--resume", resume)
    assert done.returncode == 0, done.stderr
    assert_same_as(straight, out)


def test_ctrl_c_in_the_learning_rate_finder_exits_130_suggesting_nothing(data_dir, tmp_path):
    out = tmp_path / "lr"
    done = run(data_dir, "--find-lr", "--out", out, "--limit-train", "48", "--val-size", "16",
               "--batch-size", "8",
               fault="ctrl-c-before-step:3")
    assert done.returncode == 130, done.stdout + done.stderr
    assert done.stderr.strip() == "train_alexnet.py: interrupted"
    assert "train with" not in done.stdout and "Ctrl-C" not in done.stdout
    assert not out.exists() or "lr_find.png" not in os.listdir(out)


def test_a_failed_metrics_write_stops_before_the_checkpoint_saying_what_is_kept(tmp_path,
                                                                             monkeypatch):
    trainer = make_trainer(tmp_path, epochs=2)
    appended = []

    def disk_full_on_append(path, mode="r", *args, **kwargs):
        if "a" in mode:
            appended.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *args, **kwargs)

    trainer.epochs = 1                           # epoch 1 as usual, then the disk is full
    trainer.fit()
    trainer.epochs = 2
    monkeypatch.setattr(extensions, "open", disk_full_on_append, raising=False)
    with pytest.raises(checkpoint.WriteError) as info:
        trainer.fit()
    last = tmp_path / "last.npz"
    assert str(info.value) == (f"cannot write {tmp_path / 'metrics.jsonl'}: No space left on "
                               f"device; {last} keeps the last good state, from the end of "
                               f"epoch 1; resume with `resume` {last}")
    assert appended and saved_epoch(last) == 1

    # a line past the checkpoint (a killed run's) is cut at the start, and that write fails too
    monkeypatch.undo()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3}) + "\n")

    def disk_full(path, write):
        raise checkpoint.WriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full)
    with pytest.raises(checkpoint.WriteError) as info:
        trainer.fit()
    assert str(info.value).endswith(f"metrics.jsonl: No space left on device; {last} keeps the "
                                    f"last good state, from the end of epoch 1; resume with "
                                    f"`resume` {last}")
