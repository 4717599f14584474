"""Mistakes a user makes, each refused by examples/train_alexnet.py with one line on stderr
that names what is wrong, before any work: two runs on one --out, a --resume flag that
contradicts the checkpoint, a directory given as a checkpoint, an image folder whose val/
does not match train/."""
import ast
import errno
import io
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minialex import checkpoint, recipe, rundir
from minialex.config import CPU_PRESET

from support import ROOT, run_example


def one_line_error(run) -> str:
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    return run.stderr


def test_a_second_run_on_the_same_out_refuses_naming_the_folder_and_the_first(tmp_path):
    with rundir.lock(tmp_path):                  # the first run, still going
        error = one_line_error(run_example("--device", "cpu", "--out", tmp_path))
    assert error == (f"train_alexnet.py: error: {tmp_path} is in use by another run (pid "
                     f"{os.getpid()} on {socket.gethostname()}); wait for it to end, or choose "
                     f"another --out\n")
    assert sorted(os.listdir(tmp_path)) == [rundir.LOCK_FILE]        # nothing else written


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path):
    take_and_die = ("import os, signal, sys; from minialex import rundir; "
                    "rundir.lock(sys.argv[1]).__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    died = subprocess.Popen([sys.executable, "-c", take_and_die, str(tmp_path)], cwd=ROOT)
    assert died.wait(timeout=60) == -9
    assert (tmp_path / rundir.LOCK_FILE).read_text().startswith(f"pid {died.pid} on ")
    with rundir.lock(tmp_path):                  # the lock went with the process
        pass


def test_a_folder_the_run_may_not_write_to_is_named(tmp_path, monkeypatch):
    def refused(path, *args, **kwargs):     # root may write anywhere: simulate the refusal
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(checkpoint.WriteError, match=f"^cannot write {tmp_path / '.lock'}: "
                                                    f"Permission denied$"):
        with rundir.lock(tmp_path):
            pass


def test_a_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    monkeypatch.setattr(os, "makedirs", refused)
    with pytest.raises(checkpoint.WriteError, match=f"^cannot write {tmp_path / 'new'}: "
                                                    f"Permission denied$"):
        with rundir.lock(tmp_path / "new"):
            pass


class Stop(Exception):
    """Raised where the run would load its data: what came before is what the test checks."""


@pytest.mark.parametrize("has_fcntl", [True, False])
def test_a_killed_saves_files_are_removed_only_from_a_locked_folder(tmp_path, monkeypatch,
                                                                    has_fcntl):
    partial = tmp_path / f".last.npz{checkpoint.PARTIAL}x.tmp"
    partial.write_bytes(b"")
    if not has_fcntl:                        # as on Windows: no lock, so maybe another writer
        monkeypatch.setattr(rundir, "fcntl", None)

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(recipe, "load_data", stop)
    with rundir.lock(tmp_path) as locked:
        assert locked == has_fcntl
    with pytest.raises(Stop):
        recipe.fit(CPU_PRESET, out=str(tmp_path), stream=io.StringIO())
    assert partial.exists() != has_fcntl


def test_resume_with_a_flag_that_contradicts_the_checkpoint_is_refused_by_name(tmp_path):
    saved = CPU_PRESET.replace(batch_size=32).to_dict()
    checkpoint.save(tmp_path / "last.npz", {"config": saved, "architecture": "mini"})
    error = one_line_error(run_example("--device", "cpu", "--resume", tmp_path / "last.npz",
                                       "--model", "small", "--batch-size", "32", "--epochs", "9"))
    assert error == ("train_alexnet.py: error: resume: --model small (the checkpoint's: mini) "
                     "contradicts the checkpoint, and a resumed run keeps the settings it "
                     "started with; leave it out, or start a new run with another --out\n")


@pytest.mark.parametrize("flag", ["--resume", "--evaluate"])
def test_a_directory_given_as_a_checkpoint_is_named_as_one(tmp_path, flag):
    checkpoint.save(tmp_path / "last.npz", {"epoch": 1})
    checkpoint.save(tmp_path / "best.npz", {"epoch": 1})
    error = one_line_error(run_example("--device", "cpu", flag, tmp_path))
    assert error == (f"train_alexnet.py: error: checkpoint: {tmp_path} is a directory, not a "
                     f"checkpoint file; pass one of its checkpoints (best.npz, last.npz), e.g. "
                     f"{tmp_path / 'last.npz'}\n")


def image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12, 3), 128, np.uint8)).save(path)


@pytest.mark.parametrize("val,expected", [
    (["val/cat/a.png", "val/unicorn/a.png"],
     "class folder(s) ['unicorn'] in '{root}/val' are not classes of '{root}/train', so they "
     "have no label (train/ has cat, dog)"),
    (["val/a.png", "val/b.png"],
     "'{root}/val' has no class sub-folders (expected one sub-folder per class, as in train/); "
     "its 2 image file(s) must go into the sub-folder of their class"),
])
def test_an_image_folder_whose_val_does_not_match_train_is_refused_naming_it(tmp_path, val,
                                                                            expected):
    root = tmp_path / "photos"
    for rel in ["train/cat/a.png", "train/dog/a.png", *val]:
        image(root / rel)
    error = one_line_error(run_example("--device", "cpu", "--dataset", root, "--model", "small",
                                       "--cache", tmp_path / "cache", "--out", tmp_path / "run"))
    assert error == f"train_alexnet.py: error: dataset: {expected.format(root=root)}\n"


def test_library_messages_name_settings_never_command_line_flags():
    # the examples map `setting` to their flags; a library user never reads a flag
    flag = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for path in sorted((ROOT / "minialex").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
                  for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and id(node) not in docstrings
                  and flag.search(node.value)]
    assert found == []
