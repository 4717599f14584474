"""A run from its configuration, end to end on small Fashion-MNIST-shaped files: fit, resume,
evaluate a checkpoint, and the refusals; then examples/train_alexnet.py as a user runs it."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from minialex import backend, checkpoint, recipe
from minialex.config import CPU_PRESET, RunConfig
from minialex.data import fashion_mnist
from minialex.models import alexnet
from minialex.watch import TrainingStalled

from support import ROOT, SCRIPT, dying_alexnet, learnable_fashion_mnist, run_example

SUMMARY_KEYS = ("test_top1", "test_top5", "epochs", "images_per_second", "device",
                "wall_time_s", "model", "args", "stopped", "steps", "classes")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return learnable_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=80)


def quick(**changes) -> RunConfig:
    """The CPU preset cut to seconds: 240 training images, a short warm-up."""
    return CPU_PRESET.replace(**{"val_size": 60, "batch_size": 32, "limit_test": 64,
                                 "print_freq": 0, "warmup": 4, "epochs": 1, **changes})


def test_the_summary_records_the_rate_an_update_reached_not_the_one_asked_for(data_dir,
                                                                                  tmp_path):
    # 6 epochs of 8 steps: a warm-up of 9; StepLR divides the target after epoch 1, while the
    # ramp still runs, so no update ever used the 0.02 asked for: the 8th used 0.02 * 8 / 9
    summary = recipe.fit(quick(epochs=6, step_size=1, warmup=100), out=str(tmp_path / "run"),
                         data_dir=data_dir, stream=io.StringIO())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert summary["warmup_steps"] == 9 and summary["args"]["lr"] == 0.02
    assert summary["max_lr"] == pytest.approx(0.02 * 8 / 9) == records[0]["lr"]
    assert summary["final_lr"] == pytest.approx(0.02 * 1e-5) == records[-1]["lr"]


def test_the_plateau_schedule_waits_for_its_patience_and_a_standard_error(data_dir):
    data = recipe.load_data(quick(), data_dir=data_dir)
    run = recipe.build(quick(schedule="plateau", epochs=12), data)
    assert (run.scheduler.patience, run.scheduler.samples) == (1, 60)
    assert run.warmup.steps == 4 and run.warmup.requested == 4     # 96 steps planned
    given = recipe.build(quick(schedule="plateau", epochs=60, patience=0, threshold=0.01), data)
    assert (given.scheduler.patience, given.scheduler.samples) == (0, None)
    assert given.scheduler.threshold == 0.01
    assert recipe.build(quick(schedule="plateau", epochs=60), data).scheduler.patience == 3


def test_fit_writes_summary_metrics_and_checkpoints_and_resumes(data_dir, tmp_path):
    log = io.StringIO()
    summary = recipe.fit(quick(epochs=2), out=str(tmp_path / "run"), data_dir=data_dir,
                         stream=log)
    out = log.getvalue()
    assert "model mini" in out and "train 240, val 60, test 64" in out
    # 8 steps an epoch, 16 planned: the warm-up of 4 is cut to 3, and the line says so
    assert ("warm-up 3 steps (`warmup` 4 capped: at most a fifth of the 16 planned steps), init "
            "kaiming, schedule step (every 4 epochs)") in out
    for key in SUMMARY_KEYS:
        assert key in summary
    # the rate the run reached: the warm-up ended, nothing divided it in 2 epochs of 4
    assert summary["warmup_steps"] == 3
    assert summary["max_lr"] == summary["final_lr"] == pytest.approx(0.02)
    assert summary["stopped"] == "completed" and summary["epochs"] == 2
    assert summary["test_top1"] > 0.5                   # chance is 0.1
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert summary["args"]["batch_size"] == 32 and summary["classes"][0] == "T-shirt/top"
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    last = checkpoint.load(tmp_path / "run" / "last.npz")
    assert last["classes"] == summary["classes"] and set(last["normalization"]) == {"mean", "std"}

    # resuming with more epochs carries on from the saved epoch, in the same directory; a flag
    # that repeats the checkpoint's setting is fine
    log = io.StringIO()
    summary = recipe.fit(quick(), resume=str(tmp_path / "run" / "last.npz"),
                         overrides={"epochs": 3, "batch_size": 32}, data_dir=data_dir,
                         stream=log)
    out = log.getvalue()
    assert "resuming" in out and "at epoch 3, step 0" in out
    assert summary["epochs"] == 3
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3

    # a checkpoint is evaluated with the model and normalisation it was trained with
    result = recipe.evaluate_checkpoint(tmp_path / "run" / "best.npz", data_dir=data_dir,
                                        out=str(tmp_path / "eval"))
    assert result["test_images"] == 80 and result["test_top1"] > 0.5
    assert json.loads((tmp_path / "eval" / "evaluate.json").read_text()) == result

    # another architecture or batch size than the checkpoint's is refused by name, before any
    # work: nothing in the run's folder changes
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ValueError) as info:
        recipe.fit(quick(), resume=str(tmp_path / "run" / "last.npz"),
                   overrides={"model": "small", "batch_size": 64, "epochs": 4},
                   data_dir=data_dir, stream=io.StringIO())
    assert str(info.value).startswith("resume: `model` small (the checkpoint's: mini), "
                                      "`batch_size` 64 (the checkpoint's: 32) contradict the "
                                      "checkpoint")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before


def test_a_run_that_ends_at_chance_fails_with_its_reason_in_the_summary(data_dir, tmp_path,
                                                                       monkeypatch):
    def dead_alexnet(*args, **kwargs):       # fc8 all zeros: every image scores all classes 0
        model = alexnet(*args, **kwargs)
        fc8 = model.classifier[6]
        fc8.weight.data[...] = 0
        fc8.bias.data[...] = 0
        return model

    monkeypatch.setattr(recipe, "alexnet", dead_alexnet)
    # too small a step to learn; any update still breaks fc8's ties (by the classes' shares of
    # the batches seen), so which class wins, and its share of the test images, is left open
    config = quick(lr=1e-12, stall_steps=0)
    ended = r"the run ended at chance: test top-1 \d+\.\d\d% over 64 images of 10 classes"
    with pytest.raises(TrainingStalled, match=ended):
        recipe.fit(config, out=str(tmp_path), data_dir=data_dir, stream=io.StringIO())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"].startswith("stalled at chance: the run ended at chance")
    page = (tmp_path / "report.html").read_text()     # the report says what the run did
    assert "the run ended at chance" in page and "confusion" in page.lower()


def test_a_run_stopped_in_training_or_interrupted_still_gets_its_report(data_dir, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(recipe, "alexnet", dying_alexnet)
    log = io.StringIO()
    with pytest.raises(TrainingStalled, match="training stalled at chance"):
        recipe.fit(quick(warmup=2, stall_steps=3), out=str(tmp_path / "stalled"),
                   data_dir=data_dir, stream=log)
    page = (tmp_path / "stalled" / "report.html").read_text()
    assert "training stalled at chance" in page
    assert f"report: {tmp_path / 'stalled' / 'report.html'}" in log.getvalue()

    def interrupted_alexnet(*args, **kwargs):    # Ctrl-C during the 3rd training step
        model, calls = alexnet(*args, **kwargs), []
        forward = model.forward

        def forward_then_ctrl_c(x):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return forward(x)

        model.forward = forward_then_ctrl_c
        return model

    monkeypatch.setattr(recipe, "alexnet", interrupted_alexnet)
    summary = recipe.fit(quick(epochs=2), out=str(tmp_path / "stopped"), data_dir=data_dir,
                         stream=io.StringIO())
    assert summary["stopped"] == "interrupted"
    assert (tmp_path / "stopped" / "report.html").stat().st_size > 0


def test_find_lr_suggests_a_rate_and_trains_nothing(data_dir):
    result = recipe.find_lr(quick(), data_dir=data_dir, steps=20, start_lr=1e-4, end_lr=10)
    assert len(result["lrs"]) <= 20 and result["lrs"][0] == pytest.approx(1e-4)
    assert 1e-5 < result["suggested_lr"] < 1


# -- the example, as a user runs it ------------------------------------------------------------
def cli(data_dir, out, *extra):
    return ["--device", "cpu", "--data-dir", data_dir, "--val-size", "60", "--batch-size", "32",
            "--limit-test", "64", "--print-freq", "0", "--warmup", "4", "--out", out, *extra]


def test_the_example_trains_resumes_and_evaluates(data_dir, tmp_path):
    run = run_example(*cli(data_dir, tmp_path / "run", "--epochs", "1"))
    assert run.returncode == 0, run.stderr
    assert re.search(r"test \(best \(epoch 1\) weights, 64 images\): top-1 .* \| completed after "
                     r"1 epoch \| wall time", run.stdout)
    last = tmp_path / "run" / "last.npz"
    run = run_example("--device", "cpu", "--data-dir", data_dir, "--resume", last, "--epochs", "2")
    assert run.returncode == 0, run.stderr
    assert "at epoch 2, step 0" in run.stdout
    run = run_example("--device", "cpu", "--data-dir", data_dir, "--evaluate", last)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["test_images"] == 80


def test_the_example_finds_a_learning_rate(data_dir, tmp_path):
    run = run_example(*cli(data_dir, tmp_path, "--find-lr"))
    assert run.returncode == 0, run.stderr
    assert "suggested lr:" in run.stdout and "train with: --lr" in run.stdout
    assert not (tmp_path / "last.npz").exists()


def test_a_diverging_run_exits_1_naming_what_to_try(data_dir, tmp_path):
    run = run_example(*cli(data_dir, tmp_path, "--lr", "1e6", "--warmup", "0"))
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "training diverged" in run.stderr
    assert "try a lower --lr" in run.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["stopped"].startswith("diverged")


def test_damaged_or_missing_checkpoint_is_one_line(data_dir, tmp_path):
    bad = tmp_path / "last.npz"
    bad.write_bytes(b"PK\x03\x04" + bytes(50))
    run = run_example(*cli(data_dir, tmp_path, "--resume", bad))
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert f"{bad}: not a readable minialex checkpoint" in run.stderr
    run = run_example(*cli(data_dir, tmp_path, "--evaluate", tmp_path / "no"))
    assert run.returncode == 1 and "checkpoint not found" in run.stderr


def test_missing_data_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEFAULT_DIRS", ())
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        recipe.fit(quick(), out=str(tmp_path), data_dir=str(tmp_path), stream=io.StringIO())


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_gpu_without_a_gpu_is_a_one_line_error_with_status_2():
    run = run_example("--device", "gpu")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "a GPU was asked for but cannot be used" in run.stderr


@pytest.mark.skipif(backend.gpu_available(), reason="a GPU is usable here")
def test_towers_without_a_gpu_is_a_one_line_error_with_status_2():
    run = run_example("--model", "paper", "--towers", "gpu:0,gpu:1")
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "a GPU was asked for but cannot be used" in run.stderr


def test_towers_need_two_devices():
    with pytest.raises(ValueError, match=r"`towers`: expected two devices, e.g. gpu:0,gpu:1, got "
                                         r"'gpu:0'"):
        recipe.resolve_towers("gpu:0")
    run = run_example("--model", "paper", "--towers", "gpu:0,gpu:1,gpu:2")
    assert run.returncode == 2 and "--towers: expected two devices" in run.stderr


@pytest.mark.parametrize("argv,message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got 0"),
    (["--lr", "-0.1"], "argument --lr: expected a finite number > 0"),
    (["--momentum", "1"], "argument --momentum: expected a number in [0, 1)"),
    (["--warmup", "-1"], "argument --warmup: expected an integer >= 0"),
    (["--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--dataset", "imagenet"], "argument --dataset: expected 'fashion-mnist' or an image folder"),
    (["--evaluate", "x.npz", "--find-lr"], "argument --evaluate: not allowed with --find-lr"),
])
def test_bad_flags_are_argparse_errors_naming_them(argv, message):
    run = run_example(*argv)
    assert run.returncode == 2
    assert message in run.stderr


def test_ctrl_c_saves_a_checkpoint_and_exits_130_without_a_traceback(data_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), *cli(data_dir, str(out), "--batch-size", "8",
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
    assert "resume with:" in stdout and "--resume" in stdout and str(out) in stdout
    saved = checkpoint.load(out / "last.npz")
    assert saved["trainer"]["epoch"] == 0 and saved["trainer"]["step"] >= 2
