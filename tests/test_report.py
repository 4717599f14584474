"""report.html: rendered by headless Chromium, every picture must load and the curves' data must
be metrics.jsonl's; without matplotlib the tables stay; fit writes it and survives its failure."""
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import minialex
from minialex import recipe, report
from minialex.config import CPU_PRESET
from minialex.data import ArrayDataset
from minialex.models import alexnet

from support import ROOT, learnable_fashion_mnist

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress <&>"]   # a name HTML must escape


def fake_run(out, seed=0):
    """A run folder as a 4-epoch run leaves it (the rate divided after epoch 2), the test
    predictions of 40 images and the images themselves."""
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    records = [{"epoch": e, "lr": 0.02 if e <= 2 else 0.002, "steps": 10 * e,
                "train_loss": float(2 / e + rng.random()), "train_top1": float(rng.random()),
                "train_top5": float(rng.random()), "train_images_per_second": 500.0 + e,
                "train_data_seconds": float(rng.random()), "train_compute_seconds": 9.0,
                "val_loss": float(2.5 / e), "val_top1": 0.1 * e, "val_top5": 0.2 * e,
                "best": e % 2 == 0} for e in (1, 2, 3, 4)]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    summary = {"stopped": "completed", "epochs": 4, "epochs_planned": 4, "test_top1": 0.5,
               "args": {"model": "mini", "lr": 0.02}, "versions": {"minialex": "x"}}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f)
    labels = np.arange(40) % len(CLASSES)
    probs = rng.dirichlet(np.ones(len(CLASSES)), 40)
    predictions = report.Predictions(probs, labels, CLASSES)
    images = ArrayDataset(rng.integers(0, 256, (40, 1, 28, 28), dtype=np.uint8), labels)
    return records, predictions, images


def chromium():
    """The headless browser, or a skip outside CI (in CI its absence fails the test)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: run.sh installs it (Debian's chromium)")
        pytest.skip("chromium is not installed (run.sh installs it; required in CI)")
    return found


def rendered(browser, page):
    """The page's DOM after its load event, as headless Chromium leaves it."""
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", "--dump-dom", "file://" + os.path.abspath(page)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def element(dom, tag, ident):
    found = re.search(rf'<{tag}[^>]*id="{ident}"[^>]*>(.*?)</{tag}>', dom, re.S)
    assert found, f"no <{tag} id={ident}> in the rendered page"
    return found.group(1)


def test_report_in_chromium_loads_every_picture_and_plots_what_metrics_jsonl_holds(tmp_path):
    browser = chromium()
    records, predictions, images = fake_run(tmp_path)
    minialex.manual_seed(0)
    page = report.write_report(tmp_path, predictions=predictions, test_images=images,
                               model=alexnet("mini"))
    dom = rendered(browser, page)

    pictures = json.loads(html.unescape(element(dom, "pre", "image-check")))
    expected = {"misclassified.png", "filters.png"} | (
        {"loss.png", "accuracy.png", "speed.png", "confusion.png"} if report.Figure else set())
    assert {p["src"] for p in pictures} == expected
    for p in pictures:
        assert p["width"] > 0 and p["height"] > 0, f"{p['src']} did not load"
        assert os.path.getsize(tmp_path / p["src"]) > 0

    # the plotted series are metrics.jsonl's, field by field, and the lr change is marked
    curves = json.loads(element(dom, "script", "curves"))
    with open(tmp_path / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert json.loads(element(dom, "script", "metrics")) == logged
    for key in report.CURVE_KEYS:
        assert curves[key] == [r[key] for r in logged], key
    assert curves["lr_changes"] == [[3, 0.02, 0.002]]
    # the confusion matrix, with the class names, and its counts add up to the test images
    table = element(dom, "table", "confusion")
    assert "Dress &lt;&amp;&gt;" in table and "T-shirt/top" in table
    counts = [int(c) for c in re.findall(r"<td[^>]*>(\d+)</td>", table)]
    assert sum(counts) == 40 and len(counts) == len(CLASSES) ** 2
    assert "lr 0.02" in dom or "0.02 → 0.002" in dom or "0.02 &rarr; 0.002" in dom


@pytest.mark.skipif(report.Figure is None, reason="the curves need matplotlib")
def test_the_plotted_curves_are_metrics_jsonls_series_and_mark_the_lr_change(tmp_path,
                                                                             monkeypatch):
    made = []

    class Recorded(report.Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(report, "Figure", Recorded)
    records, _, _ = fake_run(tmp_path)
    report.plot_curves(report.curves(report.load_metrics(tmp_path)), tmp_path)
    axes = {ax.get_title(): ax for fig in made for ax in fig.axes}
    assert set(axes) == {"loss", "top-1 accuracy", "top-5 accuracy", "training speed",
                         "waiting for data"}
    logged = {key: [r[key] for r in records] for key in records[0]}
    epochs = logged["epoch"]
    for title, (train, val) in {"loss": ("train_loss", "val_loss"),
                                "top-1 accuracy": ("train_top1", "val_top1"),
                                "top-5 accuracy": ("train_top5", "val_top5"),
                                "training speed": ("train_images_per_second", None)}.items():
        drawn = {line.get_label(): line for line in axes[title].get_lines()
                 if not line.get_label().startswith("_")}
        assert set(drawn) == ({"train", "validation"} if val else {"training"}), title
        name = "train" if val else "training"
        assert list(drawn[name].get_xdata()) == epochs
        np.testing.assert_allclose(drawn[name].get_ydata(), logged[train], err_msg=title)
        if val:
            np.testing.assert_allclose(drawn["validation"].get_ydata(), logged[val],
                                       err_msg=title)
    share = [d / (d + c) for d, c in zip(logged["train_data_seconds"],
                                         logged["train_compute_seconds"])]
    np.testing.assert_allclose(axes["waiting for data"].get_lines()[0].get_ydata(), share)
    for title, ax in axes.items():      # the one lr change (after epoch 2), on every panel
        marks = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert [list(line.get_xdata()) for line in marks] == [[2.5, 2.5]], title
        assert [t.get_text() for t in ax.texts] == ["lr 0.002"], title


def test_without_matplotlib_the_report_keeps_its_tables_and_says_how_to_get_pictures(
        tmp_path, monkeypatch):
    monkeypatch.setattr(report, "Figure", None)
    monkeypatch.setattr(report, "matplotlib", None)
    records, predictions, images = fake_run(tmp_path)
    text = open(report.write_report(tmp_path, predictions=predictions,
                                    test_images=images)).read()
    assert "pip install -e '.[plot]'" in text and "matplotlib</th><td>not installed" in text
    assert not any((tmp_path / n).exists() for n in ("loss.png", "accuracy.png", "confusion.png"))
    assert (tmp_path / "misclassified.png").exists()          # Pillow alone draws the grid
    assert text.count("<tr>") > len(records) + len(CLASSES)   # epoch and confusion tables


def test_fit_writes_the_report_and_a_report_that_fails_only_warns(tmp_path, monkeypatch):
    data_dir = learnable_fashion_mnist(tmp_path / "fmnist", n_train=300, n_test=80)
    config = CPU_PRESET.replace(val_size=60, batch_size=32, limit_test=64, print_freq=0,
                                warmup=4, epochs=1)
    log = io.StringIO()
    passes = []  # the test set is scored once: the report reuses the test's probabilities
    monkeypatch.setattr(report, "collect_predictions", lambda *a: passes.append(a))
    summary = recipe.fit(config, out=str(tmp_path / "run"), data_dir=data_dir, stream=log)
    assert passes == []
    monkeypatch.undo()
    text = (tmp_path / "run" / "report.html").read_text()
    assert f"report: {tmp_path / 'run' / 'report.html'}" in log.getvalue()
    # the confusion matrix is of the tested weights: its diagonal is the summary's top-1
    table = re.search(r"<table class='grid' id='confusion'>(.*?)</table>", text, re.S).group(1)
    counts = np.array([int(c) for c in re.findall(r"<td[^>]*>(\d+)</td>", table)])
    matrix = counts.reshape(10, 10)
    assert matrix.sum() == summary["test_images"] == 64
    assert np.trace(matrix) / matrix.sum() == pytest.approx(summary["test_top1"])
    assert "T-shirt/top" in text and (tmp_path / "run" / "filters.png").exists()
    # the paper's Fig. 3 and Fig. 4 from the run's checkpoint, through the command
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "report.py"),
                           str(tmp_path / "run"), "--figures", "--data-dir", data_dir,
                           "--queries", "20", "--limit-train", "100"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for name in ("filters_change.png", "retrieval.png", "retrieval_pixels.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert "nearest of 100 training images, over 20 test images: trained" in done.stdout

    def broken(*args, **kwargs):
        raise RuntimeError("no room left")
    monkeypatch.setattr(report, "collect_predictions", broken)
    log = io.StringIO()
    run = types.SimpleNamespace(model=None, test_loader=None,
                                data=types.SimpleNamespace(classes=CLASSES))
    assert report.write_after_fit(str(tmp_path / "run"), run, log) is None
    assert log.getvalue() == "warning: report not written: RuntimeError: no room left\n"


def test_only_the_schedules_changes_are_marked_not_the_warm_up_ramp(tmp_path):
    data_dir = learnable_fashion_mnist(tmp_path / "fmnist", n_train=120, n_test=10)
    # 2 steps an epoch, 8 epochs: a warm-up of 3 steps (a fifth of 16, at most) ends in epoch 2
    config = CPU_PRESET.replace(val_size=40, limit_train=64, batch_size=32, limit_test=10,
                                print_freq=0, warmup=3, epochs=8, step_size=6, lr=0.02)
    recipe.fit(config, out=str(tmp_path / "run"), data_dir=data_dir, stream=io.StringIO())
    records = report.load_metrics(tmp_path / "run")
    lrs = [r["lr"] for r in records]
    assert lrs == pytest.approx([0.02 * 2 / 3] + [0.02] * 5 + [0.002] * 2)
    assert report.curves(records)["lr_changes"] == [[7, 0.02, pytest.approx(0.002)]]
    # a log from before schedule_lr: every change of lr counts
    old = [{k: v for k, v in r.items() if k != "schedule_lr"} for r in records]
    assert [c[0] for c in report.curves(old)["lr_changes"]] == [2, 7]


def test_many_classes_list_their_largest_confusions_instead_of_the_whole_matrix(tmp_path):
    labels = np.repeat(np.arange(40), 2)
    probs = np.full((80, 40), 0.01)
    probs[np.arange(80), (labels + 1) % 40] = 0.9        # every image taken for the next class
    probs[0, 0] = 0.95                                    # but the very first one right
    page = open(report.write_report(tmp_path, predictions=report.Predictions(
        probs, labels, [f"class {i}" for i in range(40)]))).read()
    table = re.search(r"<table class='grid' id='confusion'>(.*?)</table>", page, re.S).group(1)
    assert table.count("<tr>") == 1 + 30 and "<th>class 1</th><th>class 2</th><td>2</td>" in table
    assert "<th>class 0</th><th>class 1</th>" not in table     # 1 image: outranked by 2s


def test_the_command_reports_any_run_folder_and_names_a_missing_one(tmp_path):
    fake_run(tmp_path / "run")                # no checkpoint: the curves and tables alone
    script = [sys.executable, str(ROOT / "examples" / "report.py")]
    done = subprocess.run(script + [str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{tmp_path / 'run' / 'report.html'}\n"
    assert "val top-1" in (tmp_path / "run" / "report.html").read_text()
    missing = subprocess.run(script + [str(tmp_path / "nowhere")], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
    assert missing.returncode == 1
    assert missing.stderr == f"report.py: error: {tmp_path / 'nowhere'}: no such run folder\n"
