"""examples/train_alexnet.py end to end, on small Fashion-MNIST-shaped IDX files it is given."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from minialex import backend, checkpoint
from minialex.data import fashion_mnist

from test_data import fake_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_alexnet.py")
spec = importlib.util.spec_from_file_location("train_alexnet", SCRIPT)
train_alexnet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_alexnet)

SUMMARY_KEYS = ("test_top1", "test_top5", "epochs", "images_per_second", "device",
                "wall_time_s", "model", "args")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(fake_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=80))


def quick(data_dir, out, *extra):
    return ["--device", "cpu", "--data-dir", data_dir, "--val-size", "60", "--batch-size", "32",
            "--limit-test", "64", "--print-freq", "0", "--out", str(out), *extra]


def test_a_tiny_run_writes_summary_metrics_and_checkpoints(data_dir, tmp_path, capsys):
    assert train_alexnet.main(quick(data_dir, tmp_path / "run", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "model mini" in out and "train 240, val 60, test 64" in out and "test (" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in SUMMARY_KEYS:
        assert key in summary
    assert 0 <= summary["test_top1"] <= summary["test_top5"] <= 1
    assert summary["epochs"] == 1 and summary["model"] == "mini"
    assert summary["device"].startswith("cpu") and summary["images_per_second"] > 0
    assert summary["args"]["batch_size"] == 32 and summary["args"]["epochs"] == 1
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert (tmp_path / "run" / "last.npz").exists() and (tmp_path / "run" / "best.npz").exists()

    # --resume with more epochs carries on from the saved epoch, in the same directory
    last = str(tmp_path / "run" / "last.npz")
    assert train_alexnet.main(["--device", "cpu", "--data-dir", data_dir, "--resume", last,
                               "--epochs", "2", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at epoch 2, step 0" in out
    assert "--batch-size 64 ignored: resuming keeps the checkpoint's 32" in out
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2

    # --evaluate tests a checkpoint and says what it measured
    assert train_alexnet.main(["--device", "cpu", "--data-dir", data_dir, "--evaluate", last,
                               "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "evaluate.json").read_text())
    assert result["test_images"] == 80 and 0 <= result["test_top1"] <= 1

    # a checkpoint of another architecture is refused, naming the mismatched weights
    assert train_alexnet.main(quick(data_dir, tmp_path / "x", "--resume", last,
                                    "--model", "small")) == 1
    err = capsys.readouterr().err
    assert "checkpoint of architecture 'mini' cannot be loaded into a 'small' model" in err
    assert "features.0.weight: checkpoint (32, 1, 5, 5), model (48, 1, 11, 11)" in err


def test_damaged_or_missing_checkpoint_is_one_line(data_dir, tmp_path, capsys):
    bad = tmp_path / "last.npz"
    bad.write_bytes(b"PK\x03\x04" + bytes(50))
    assert train_alexnet.main(quick(data_dir, tmp_path, "--resume", str(bad))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: not a readable minialex checkpoint" in err
    assert train_alexnet.main(quick(data_dir, tmp_path, "--evaluate", str(tmp_path / "no"))) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIRS", ())
    assert train_alexnet.main(quick(str(tmp_path), tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_gpu_without_a_gpu_is_a_one_line_error_with_status_2(capsys):
    assert train_alexnet.main(["--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a GPU was asked for but cannot be used" in err


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--lr", "-0.1"], "argument --lr: expected a finite number > 0"),
    (["--momentum", "1"], "argument --momentum: expected a number in [0, 1)"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--dataset", "imagenet"], "argument --dataset: expected 'fashion-mnist' or an image folder"),
])
def test_bad_flags_are_argparse_errors_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        train_alexnet.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_exits_130_without_a_traceback(data_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, SCRIPT, *quick(data_dir, out, "--batch-size", "8",
                                              "--print-freq", "1", "--epochs", "1")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    lines = []
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if re.match(r"epoch 1/1 \[ *2/", line):               # training is under way
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + stdout + stderr
    assert "Traceback" not in stderr
    assert "resume with:" in stdout and "--resume" in stdout
    saved = checkpoint.load(out / "last.npz")
    assert saved["trainer"]["epoch"] == 0 and saved["trainer"]["step"] >= 2
