"""Ablations: the studies differ in one switch, the step metrics, the paired summary, and the
tiny budget of every study run end to end from the command line."""
import dataclasses
import errno
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from minialex import ablations, recipe
from minialex.ablations import BUDGETS, STUDIES, Study, smoothed, steps_to_target
from minialex.config import RunConfig, SettingError
from minialex.layers.dropout import dropout
from minialex.tensor import Tensor

from support import ROOT, learnable_fashion_mnist

ABLATE = ROOT / "examples" / "ablate.py"
_spec = importlib.util.spec_from_file_location("ablate", ABLATE)
ablate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablate)


# -- the step metric ---------------------------------------------------------------------------
def test_smoothed_is_the_mean_of_each_window():
    errors = np.random.default_rng(0).uniform(size=12)
    expected = [errors[i:i + 4].mean() for i in range(len(errors) - 3)]
    np.testing.assert_allclose(smoothed(errors, 4), expected)
    assert smoothed(errors[:3], 4).size == 0


@pytest.mark.parametrize("errors, target, window, expected", [
    ([0.9, 0.6, 0.5, 0.2, 0.1], 0.3, 1, 4),       # the step itself
    ([0.9, 0.6, 0.5, 0.2, 0.1], 0.3, 2, 5),       # (0.2 + 0.1) / 2 at step 5; step 4 is 0.35
    ([0.9, 0.1, 0.9, 0.1, 0.1], 0.3, 1, 2),       # a lucky batch counts without smoothing...
    ([0.9, 0.1, 0.9, 0.1, 0.1], 0.3, 3, None),    # ...and not with it: no 3-step mean <= 0.3
    ([0.5, 0.25], 0.25, 1, 2),                    # at the target counts
    ([0.2], 0.3, 2, None),                        # fewer steps than the window
])
def test_steps_to_target_is_the_first_step_whose_window_mean_reaches_it(errors, target, window,
                                                                         expected):
    assert steps_to_target(errors, target, window) == expected


def test_steps_to_target_rejects_a_bad_window():
    with pytest.raises(ValueError, match="window must be a positive int"):
        steps_to_target([0.5], 0.3, 0)


# -- the studies -------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("name", list(STUDIES))
def test_the_arms_differ_in_the_studys_switch_only(name, budget):
    study, budget = STUDIES[name], BUDGETS[budget]
    for seed in budget.seeds[:2]:
        a, b = (study.config(budget, arm, seed).to_dict() for arm in (0, 1))
        changed = {k for k in a if a[k] != b[k]}
        assert changed == set(study.arms[0][1]), (name, changed)
        assert a["seed"] == b["seed"] == seed
        for key, value in study.base:               # the study's own shared settings
            assert a[key] == b[key] == value


def test_relu_tanh_runs_unregularised_as_figure_1_and_the_others_at_the_budget():
    budget = BUDGETS["cpu"]
    assert STUDIES["relu-tanh"].config(budget, 1, 0).dropout == 0.0
    assert STUDIES["relu-tanh"].config(budget, 1, 0).weight_decay == 0.0
    assert STUDIES["lrn"].config(budget, 1, 0).dropout == budget.config.dropout > 0


def test_paper_choice_arms_are_the_budget_run_itself_so_they_are_trained_once():
    budget = BUDGETS["cpu"]
    shared = {STUDIES[n].config(budget, 0, 0) for n in ("lrn", "pooling", "dropout")}
    assert shared == {budget.config.replace(seed=0)}
    assert STUDIES["augmentation"].config(budget, 1, 0) == budget.config.replace(seed=0)


def test_a_study_must_keep_the_data_and_set_the_same_keys_in_both_arms():
    with pytest.raises(ValueError, match="must share the data"):
        Study("x", "x", (("a", {"limit_train": 10}), ("b", {"limit_train": 20})), "error", "")
    with pytest.raises(ValueError, match="two arms setting the same keys"):
        Study("x", "x", (("a", {"flip": True}), ("b", {"dropout": 0.0})), "error", "")


@pytest.mark.parametrize("setting, value", [("activation", "sigmoid"), ("pool", "avg"),
                                            ("lrn", 1)])
def test_run_config_checks_the_ablation_switches(setting, value):
    with pytest.raises(SettingError, match=f"^{setting}: expected"):
        RunConfig(**{setting: value}).check()


def test_run_studies_names_an_unknown_study_or_budget_before_any_work():
    with pytest.raises(ValueError, match="unknown study relu; choose from relu-tanh"):
        ablations.run_studies(["relu"], "tiny")
    with pytest.raises(ValueError, match="budget must be one of tiny, cpu, gpu"):
        ablations.run_studies(["lrn"], "huge")


def test_the_command_line_rejects_an_unknown_study():
    with pytest.raises(SystemExit) as exc:
        ablate.main(["--study", "relu", "--budget", "tiny"])
    assert exc.value.code == 2


def test_the_command_line_exits_130_on_ctrl_c(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ablations, "run_studies", interrupted)
    assert ablate.main(["--study", "dropout", "--out", str(tmp_path)]) == 130
    assert "interrupted" in capsys.readouterr().err


# -- the arms' start ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data_dir = learnable_fashion_mnist(tmp_path_factory.mktemp("data"), n_train=120, n_test=10)
    return recipe.load_data(BUDGETS["tiny"].config, data_dir=data_dir)


@pytest.mark.parametrize("name", list(STUDIES))
def test_the_arms_start_from_the_same_weights_and_dropout_stream(name, tiny_data):
    study, budget = STUDIES[name], BUDGETS["tiny"]
    reference = study.config(budget, 0, 3)
    start, masks = [], []
    for arm in (0, 1):
        run = ablations.build_arm(study.config(budget, arm, 3), reference, tiny_data)
        start.append(run.model.parameters())
        masks.append(dropout(Tensor(np.ones(256, dtype=np.float32)), 0.5).numpy())
    assert len(start[0]) == len(start[1])
    differ = [i for i, (a, b) in enumerate(zip(*start)) if a.shape != b.shape]
    assert differ == ([10] if name == "pooling" else [])    # fc6's weight follows the pools
    for i, (a, b) in enumerate(zip(*start)):
        if i not in differ:
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=str(i))
    np.testing.assert_array_equal(masks[0], masks[1])


# -- the summary -------------------------------------------------------------------------------
def record(seed, held_out, train_eval, errors):
    return {"seed": seed, "held_out_error": held_out, "train_error_eval": train_eval,
            "train_error": errors, "train_loss": [1.0] * len(errors), "steps": len(errors),
            "held_out": [{"epoch": 1, "step": len(errors), "error": held_out, "loss": 1.0}],
            "parameters": 10, "seconds": 1.0, "stopped": None}


def test_summary_pairs_the_arms_by_seed_and_says_which_way_each_seed_points():
    budget = dataclasses.replace(BUDGETS["tiny"], seeds=(0, 1, 2), targets=(0.5,), target=0.5,
                                 window=1)
    fast, slow = [0.9, 0.4, 0.3, 0.2], [0.9, 0.8, 0.6, 0.4]       # 0.5 at step 2 and step 4
    runs = [(record(0, 0.20, 0.10, fast), record(0, 0.25, 0.05, slow)),
            (record(1, 0.20, 0.10, fast), record(1, 0.22, 0.05, slow)),
            (record(2, 0.20, 0.10, fast), record(2, 0.19, 0.05, [0.9] * 4))]
    summary = ablations.summarize(STUDIES["relu-tanh"], budget, runs)
    np.testing.assert_allclose(summary["effect"]["held_out_error"], [0.05, 0.02, -0.01])
    np.testing.assert_allclose(summary["effect"]["gap"], [0.10, 0.07, 0.04])
    assert summary["effect"]["steps_ratio"]["0.5"] == [2.0, 2.0, None]
    assert summary["arms"][1]["steps_to"]["0.5"] == [4, 4, None]
    text = ablations.headline(summary)
    assert "tanh took 2.00 ± 0.00x the steps of ReLU" in text
    assert "more on 2 of 2 seeds that both reached it" in text
    assert "tanh did not reach it within 4 steps on 1 of 3 seeds" in text
    table = ablations.format_table(summary)
    assert "| ReLU | 2 ± 0 |" in table
    assert "| tanh | 4 ± 0 (1 of 3: > 4) |" in table
    assert "| 2 | 20.0% | 19.0% | -1.0 points | 2 | > 4 |" in table
    held_out = ablations.headline({**summary, "metric": "error"})
    assert "held-out error +2.0 ± 3.0 points against ReLU" in held_out
    assert "higher on 2, lower on 1 of 3 seeds" in held_out


# -- Ctrl-C and cut-short writes ---------------------------------------------------------------
@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C (KeyboardInterrupt), also where the tests run with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_an_arm_at_once_instead_of_recording_it_cut_short(tiny_data, monkeypatch,
                                                                       python_ctrl_c):
    after_step, steps = ablations.ArmRecord.after_step, []

    def after_step_then_ctrl_c(self, trainer):       # after step 1 of the tiny budget's 2
        after_step(self, trainer)
        steps.append(trainer.global_step)
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ablations.ArmRecord, "after_step", after_step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        ablations.train_arm(BUDGETS["tiny"].config, tiny_data, train_eval=8)
    assert steps == [1]


@pytest.mark.parametrize("name", ["dropout.md", "ablations.md", "dropout.png"])
def test_a_write_cut_short_leaves_the_file_before(tmp_path, monkeypatch, name):
    # the arms' records are made up: only the writing is under test
    monkeypatch.setattr(ablations.recipe, "load_data", lambda *args, **kwargs: None)
    monkeypatch.setattr(ablations, "train_arm", lambda config, *args, **kwargs: record(
        config.seed, 0.2, 0.1, [0.9, 0.4]))
    # each fails after the file was opened: a character UTF-8 cannot encode, a full disk
    if name == "dropout.md":
        monkeypatch.setattr(ablations, "format_table", lambda summary: "| cut \ud800 short |")
    elif name == "ablations.md":
        monkeypatch.setattr(ablations, "_load_average", lambda: "\ud800")
    else:
        pytest.importorskip("matplotlib")

        def savefig_then_fail(self, target, **options):
            target.write(b"\x89PNG half a picture")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ablations.Figure, "savefig", savefig_then_fail)
    (tmp_path / name).write_bytes(b"the file before")
    with pytest.raises((UnicodeEncodeError, OSError)):
        ablations.run_studies(["dropout"], BUDGETS["tiny"], out=tmp_path, stream=io.StringIO())
    assert (tmp_path / name).read_bytes() == b"the file before"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


# -- end to end --------------------------------------------------------------------------------
def test_tiny_budget_of_every_study_runs_from_the_command_line(tmp_path):
    data_dir = learnable_fashion_mnist(tmp_path / "data", n_train=120, n_test=10)
    out = tmp_path / "ablations"
    done = subprocess.run([sys.executable, str(ABLATE), "--study", "all", "--budget", "tiny",
                           "--device", "cpu", "--data-dir", data_dir, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    tiny = BUDGETS["tiny"]
    steps = -(-tiny.config.limit_train // tiny.config.batch_size) * tiny.config.epochs
    for name, study in STUDIES.items():
        assert f"### {name}: " in (out / f"{name}.md").read_text()
        saved = json.loads((out / f"{name}.json").read_text())
        assert len(saved["runs"]) == len(tiny.seeds)
        for pair in saved["runs"]:
            for arm, run in enumerate(pair):
                assert run["settings"] == study.config(tiny, arm, run["seed"]).to_dict()
                assert len(run["train_error"]) == len(run["train_loss"]) == steps
                assert all(0 <= e <= 1 for e in run["train_error"])
                assert 0 <= run["held_out_error"] <= 1
        if ablations.Figure is not None:
            assert (out / f"{name}.png").stat().st_size > 0
    relu, tanh = json.loads((out / "relu-tanh.json").read_text())["runs"][0]
    assert relu["train_loss"][0] != tanh["train_loss"][0]      # the switch reached the model
    pooling = json.loads((out / "pooling.json").read_text())["runs"][0]
    assert pooling[0]["parameters"] < pooling[1]["parameters"]  # fc6 follows the 2x2 pools' map
    report = (out / "ablations.md").read_text()
    assert "7 runs" in report          # the paper's-choice arms shared by four studies: once
    assert "load average" in report
