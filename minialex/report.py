r"""A run's report: one static ``report.html`` beside its PNG pictures, opened from disk.

What it shows, from the run folder's ``metrics.jsonl`` and ``summary.json`` and, when given, the
model's predictions on the test set:

- the loss and top-1/top-5 curves, training against validation, with a dashed line wherever the
  learning rate changed between epochs (``loss.png``, ``accuracy.png``);
- the training speed and how much of it was spent waiting for data (``speed.png``);
- the confusion matrix with the class names (a table, and ``confusion.png``);
- the most confidently misclassified test images with their true and predicted classes
  (``misclassified.png``), and conv1's filters (``filters.png``, the paper's Fig. 3);
- the per-epoch table, the run's settings and the versions that made it.

The curves need matplotlib (``pip install -e '.[plot]'``), imported here if present as
:mod:`minialex.lr_finder` does; without it the report keeps every table and says how to get the
pictures. The image grids are assembled with NumPy and Pillow (:mod:`minialex.visualize`) and
need nothing more.

The curves' data are in the page as JSON, ``<script type="application/json" id="curves">``
(one list per ``metrics.jsonl`` field, one entry per epoch), and a script writes each
picture's natural size into ``<pre id="image-check">`` once the page has loaded: a headless
browser can check that the page shows what the run logged.
"""
from __future__ import annotations

import dataclasses
import html
import json
import os
import platform

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import __version__, checkpoint
from .extensions import METRICS_FILE, read_metrics
from .train import evaluate
from .visualize import conv1_filters, save_png, tile, to_display, upscale

try:                    # optional (pip install matplotlib): only the curves' pictures need it
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError:
    matplotlib = Figure = MaxNLocator = None

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"   # written by minialex.recipe at the end of a run
CURVE_KEYS = ("epoch", "lr", "train_loss", "val_loss", "train_top1", "val_top1", "train_top5",
              "val_top5", "train_images_per_second", "train_data_seconds",
              "train_compute_seconds")
MISTAKES = 24           # misclassified images shown
HOW_TO_PLOT = ("the curves' pictures need matplotlib: <code>pip install -e '.[plot]'</code> "
               "(or <code>pip install matplotlib</code>), then "
               "<code>python examples/report.py RUN_DIR</code>")


# -- what the report reads ---------------------------------------------------------------------
def load_metrics(out_dir) -> list:
    """The records of ``out_dir/metrics.jsonl``, in order (a line cut short by a kill is
    left out, as the trainer does: :func:`minialex.extensions.read_metrics`)."""
    return read_metrics(os.path.join(out_dir, METRICS_FILE))


def curves(records) -> dict:
    """One list per field of :data:`CURVE_KEYS` (None where an epoch lacks it), and
    ``lr_changes``: ``[epoch, old lr, new lr]`` for each epoch whose *scheduled* rate differs
    from the one before: the warm-up's ramp towards it is no change (records before
    ``schedule_lr`` was logged compare their ``lr``)."""
    series = {key: [r.get(key) for r in records] for key in CURVE_KEYS}
    lrs = [r.get("schedule_lr", r.get("lr")) for r in records]
    series["lr_changes"] = [[series["epoch"][i], lrs[i - 1], lrs[i]]
                            for i in range(1, len(lrs)) if lrs[i] != lrs[i - 1]]
    return series


@dataclasses.dataclass
class Predictions:
    """Softmax outputs ``probs`` ``(N, K)`` and true ``labels`` ``(N,)`` of a test set, with the
    class names."""
    probs: np.ndarray
    labels: np.ndarray
    classes: list

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    def confusion(self) -> np.ndarray:
        """``(K, K)`` counts: row = true class, column = predicted class."""
        k = len(self.classes)
        return np.bincount(self.labels * k + self.predicted, minlength=k * k).reshape(k, k)

    def confident_mistakes(self, n: int = MISTAKES) -> np.ndarray:
        """Indices of up to ``n`` misclassified images, most confident prediction first."""
        wrong = np.nonzero(self.predicted != self.labels)[0]
        confidence = self.probs[wrong, self.predicted[wrong]]
        return wrong[np.argsort(-confidence, kind="stable")[:n]]


def collect_predictions(model, loader, classes) -> Predictions:
    """The softmax of ``model`` over every batch of ``loader``: the probabilities that
    :func:`minialex.train.evaluate` keeps."""
    metrics = evaluate(model, loader, keep_probabilities=True)
    return Predictions(metrics["probabilities"], metrics["labels"], list(classes))


# -- pictures ----------------------------------------------------------------------------------
def plot_curves(series, out_dir) -> list:
    """``loss.png``, ``accuracy.png`` and ``speed.png`` with matplotlib; [] without it."""
    if Figure is None or not series["epoch"]:
        return []
    epochs = series["epoch"]

    def mark_lr(ax):
        for epoch, _, new in series["lr_changes"]:
            ax.axvline(epoch - 0.5, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"lr {new:g}", (epoch - 0.5, 1), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=7, color="grey")

    def lines(ax, keys, labels):
        for key, label in zip(keys, labels):
            values = series[key]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o",
                        markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        mark_lr(ax)

    made = []
    fig = Figure(figsize=(5, 3.2))
    ax = fig.add_subplot()
    lines(ax, ("train_loss", "val_loss"), ("train", "validation"))
    ax.set(ylabel="cross-entropy loss", title="loss")
    made.append(_save(fig, out_dir, "loss.png"))

    fig = Figure(figsize=(9, 3.2))
    for i, k in enumerate((1, 5)):
        ax = fig.add_subplot(1, 2, i + 1)
        lines(ax, (f"train_top{k}", f"val_top{k}"), ("train", "validation"))
        ax.set(ylabel=f"top-{k} accuracy", title=f"top-{k} accuracy")
    made.append(_save(fig, out_dir, "accuracy.png"))

    fig = Figure(figsize=(9, 3.2))
    ax = fig.add_subplot(1, 2, 1)
    lines(ax, ("train_images_per_second",), ("training",))
    ax.set(ylabel="images / s", title="training speed")
    ax = fig.add_subplot(1, 2, 2)
    data, compute = series["train_data_seconds"], series["train_compute_seconds"]
    share = [None if d is None or c is None else d / max(d + c, 1e-12)
             for d, c in zip(data, compute)]
    ax.plot(epochs, [np.nan if v is None else v for v in share], marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="share of the epoch's time", title="waiting for data",
           ylim=(0, max([v for v in share if v is not None] + [0.05]) * 1.2))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    mark_lr(ax)
    made.append(_save(fig, out_dir, "speed.png"))
    return made


def plot_confusion(predictions: Predictions, out_dir) -> str | None:
    """``confusion.png``: the confusion matrix as a heat map with its counts; None without
    matplotlib."""
    if Figure is None:
        return None
    matrix, classes = predictions.confusion(), predictions.classes
    k = len(classes)
    side = min(max(4.0, 0.45 * k + 2), 14)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    if k <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > matrix.max() / 2 else "black")
    return _save(fig, out_dir, "confusion.png", tight=True)   # room for the class names


def mistakes_picture(predictions: Predictions, images, indices, *, cols: int = 8) -> np.ndarray:
    """The test images at ``indices`` (from a dataset's ``get_batch``), each above two lines:
    its true class and the predicted one with its probability."""
    pictures = to_display(images)
    scale = max(1, round(96 / pictures.shape[1]))
    cell_w = max(pictures.shape[2] * scale, 120)
    font = ImageFont.load_default()
    cells = []
    for picture, i in zip(pictures, indices):
        picture = Image.fromarray(upscale(picture, scale)).convert("RGB")
        cell = Image.new("RGB", (cell_w, picture.height + 28), "white")
        cell.paste(picture, ((cell_w - picture.width) // 2, 0))
        draw = ImageDraw.Draw(cell)
        guess = predictions.predicted[i]
        true = predictions.classes[predictions.labels[i]]
        draw.text((2, picture.height + 1), _fit(f"true {true}", cell_w - 4, font),
                  fill="black", font=font)
        draw.text((2, picture.height + 14), _fit(f"pred {predictions.classes[guess]} "
                                                 f"{predictions.probs[i, guess]:.0%}",
                                                 cell_w - 4, font), fill=(180, 0, 0), font=font)
        cells.append(np.asarray(cell))
    return tile(np.stack(cells), min(cols, len(cells)), pad=4)


def _fit(text, width, font) -> str:
    """``text``, cut short with "~" until it fits ``width`` pixels in ``font``."""
    while font.getlength(text) > width and len(text) > 2:
        text = text[:-2] + "~"
    return text


def _save(fig, out_dir, name, tight=False) -> str:
    # fixed margins for the curves: tight_layout would draw each figure twice
    if tight:
        fig.tight_layout()
    else:
        fig.subplots_adjust(left=0.75 / fig.get_figwidth(), right=0.97, bottom=0.16, top=0.9,
                            wspace=0.3)
    checkpoint.atomic_write(os.path.join(out_dir, name),
                            lambda f: fig.savefig(f, format="png", dpi=90))
    return name


# -- the page ----------------------------------------------------------------------------------
def write_report(out_dir, *, predictions: Predictions | None = None, test_images=None,
                 model=None) -> str:
    """Write ``out_dir/report.html`` and its pictures; returns the page's path.

    ``predictions`` (:func:`collect_predictions` on the test set) adds the confusion matrix
    and, with ``test_images`` (the test dataset, in the same order), the misclassified images;
    ``model`` adds conv1's filters. Without them the page shows what the run folder holds."""
    records = load_metrics(out_dir)
    summary_path = os.path.join(out_dir, SUMMARY_FILE)
    summary = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    series = curves(records)
    sections = [_overview(out_dir, summary, records)]

    pictures = plot_curves(series, out_dir)
    body = "".join(_img(name, alt) for name, alt in zip(pictures, (
        "loss against epoch", "top-1 and top-5 accuracy against epoch",
        "training images per second and the share of time waiting for data")))
    if Figure is None:
        body += f"<p class='note'>No pictures here: {HOW_TO_PLOT}.</p>"
    sections.append(_section("Learning curves", body + (
        "<p>Dashed lines: the learning rate changed (" + ", ".join(
            f"before epoch {e}: {old:g} &rarr; {new:g}" for e, old, new in series["lr_changes"])
        + ").</p>" if series["lr_changes"] else "")))
    sections.append(_section("Per epoch", _epoch_table(records) if records
                             else "<p>No epoch finished (metrics.jsonl is empty).</p>"))

    if predictions is not None:
        confusion = plot_confusion(predictions, out_dir)
        accuracy = float((predictions.predicted == predictions.labels).mean())
        body = (f"<p>{len(predictions.labels):,} test images, top-1 {accuracy:.2%} "
                f"(rows: true class, columns: predicted).</p>"
                + (_img(confusion, "confusion matrix") if confusion else
                   f"<p class='note'>No heat map: {HOW_TO_PLOT}.</p>")
                + _confusion_table(predictions))
        sections.append(_section("Confusion matrix", body))
        mistakes = predictions.confident_mistakes()
        if test_images is not None and len(mistakes):
            images, _ = test_images.get_batch(mistakes)
            save_png(mistakes_picture(predictions, images, mistakes),
                     os.path.join(out_dir, "misclassified.png"))
            items = "".join(
                f"<li>test image {i}: true <b>{html.escape(predictions.classes[t])}</b>, "
                f"predicted <b>{html.escape(predictions.classes[p])}</b> "
                f"({predictions.probs[i, p]:.1%})</li>"
                for i, t, p in zip(mistakes, predictions.labels[mistakes],
                                   predictions.predicted[mistakes]))
            sections.append(_section("Most confidently misclassified", _img(
                "misclassified.png", "misclassified test images") + f"<ol>{items}</ol>"))
    if model is not None:
        save_png(conv1_filters(model), os.path.join(out_dir, "filters.png"))
        sections.append(_section("conv1 filters (the paper's Fig. 3)", _img(
            "filters.png", "conv1 filters") + "<p>One block per tower; grey (or neutral) is a "
            "zero weight, each kernel scaled by its largest magnitude.</p>"))
    sections.append(_section("Settings and versions", _settings(summary)))

    page = _PAGE.format(
        title=html.escape(f"minialex run {os.path.basename(os.path.abspath(out_dir))}"),
        body="\n".join(sections),
        curves=_json_in_script(series), metrics=_json_in_script(records))
    path = os.path.join(out_dir, REPORT_FILE)
    checkpoint.atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


def write_after_fit(out_dir, run, stream=None, *, tested: bool = True,
                    predictions=None) -> str | None:
    """The report at the end of :func:`minialex.recipe.fit`, however the run ended, from its
    ``run`` (model, test loader and data). ``tested``: the model holds the tested weights, so
    the test predictions and filters are shown (``predictions`` from that test, or collected
    here); False (a run stopped early or interrupted): curves and tables only. A failure is one
    warning line on ``stream``, never a failed run (nor one that hides why a run stopped)."""
    try:
        if tested:
            if predictions is None:
                predictions = collect_predictions(run.model, run.test_loader, run.data.classes)
            path = write_report(out_dir, predictions=predictions, test_images=run.data.test,
                                model=run.model)
        else:
            path = write_report(out_dir)
    except Exception as exc:  # noqa: BLE001 - the report is extra to the run's own outcome
        print(f"warning: report not written: {type(exc).__name__}: {exc}", file=stream)
        return None
    print(f"report: {path}" + ("" if Figure else " (tables only: pip install matplotlib for "
                                                 "the curves)"), file=stream)
    return path


def _overview(out_dir, summary, records) -> str:
    facts = [("folder", os.path.abspath(out_dir)), ("stopped", summary.get("stopped")),
             ("epochs", f"{summary.get('epochs', len(records))} of "
                        f"{summary.get('epochs_planned', '?')}"),
             ("test top-1", _pct(summary.get("test_top1"))),
             ("test top-5", _pct(summary.get("test_top5"))),
             ("test top-1 (10 crops)", _pct(summary.get("test_top1_10crop"))),
             ("tested weights", summary.get("test_weights")),
             ("best validation top-1", _pct(summary.get("best_val_top1"))),
             ("model", summary.get("model")), ("parameters", summary.get("parameters")),
             ("device", summary.get("device")),
             ("training speed", summary.get("images_per_second") and
              f"{summary['images_per_second']:.1f} images/s"),
             ("wall time", summary.get("wall_time_s") and f"{summary['wall_time_s'] / 60:.1f} min"),
             ("finished", summary.get("finished"))]
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts
                   if v not in (None, ""))
    name = html.escape(os.path.basename(os.path.abspath(out_dir)))
    return f"<h1>{name}</h1><table>{rows}</table>"


def _pct(value):
    return None if value is None else f"{value:.2%}"


def _epoch_table(records) -> str:
    columns = [("epoch", "epoch", "{}"), ("lr", "lr", "{:g}"), ("train loss", "train_loss",
               "{:.4f}"), ("val loss", "val_loss", "{:.4f}"), ("train top-1", "train_top1",
               "{:.2%}"), ("val top-1", "val_top1", "{:.2%}"), ("val top-5", "val_top5",
               "{:.2%}"), ("images/s", "train_images_per_second", "{:.1f}"),
               ("data s", "train_data_seconds", "{:.1f}"), ("compute s",
               "train_compute_seconds", "{:.1f}"), ("best", "best", "{}")]
    head = "".join(f"<th>{name}</th>" for name, _, _ in columns)
    rows = "".join("<tr>" + "".join(
        f"<td>{'' if r.get(key) is None else fmt.format(r[key])}</td>"
        for _, key, fmt in columns) + "</tr>" for r in records)
    return f"<table class='grid'><tr>{head}</tr>{rows}</table>"


def _confusion_table(predictions, full_up_to: int = 30) -> str:
    """The whole matrix up to ``full_up_to`` classes; beyond, its largest off-diagonal cells
    (a thousand classes would make a million cells)."""
    matrix, names = predictions.confusion(), [html.escape(c) for c in predictions.classes]
    if len(names) > full_up_to:
        off = matrix - np.diag(np.diag(matrix))
        cells = np.argsort(-off, axis=None, kind="stable")[:full_up_to]
        rows = "".join(f"<tr><th>{names[i]}</th><th>{names[j]}</th><td>{off[i, j]}</td></tr>"
                       for i, j in zip(*np.unravel_index(cells, off.shape)) if off[i, j])
        return (f"<p>The {full_up_to} most frequent confusions of {len(names)} classes:</p>"
                f"<table class='grid' id='confusion'><tr><th>true</th><th>predicted</th>"
                f"<th>images</th></tr>{rows}</table>")
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"
    rows = "".join(f"<tr><th>{names[i]}</th>" + "".join(
        f"<td{' class=diag' if i == j else ''}>{c}</td>" for j, c in enumerate(row)) + "</tr>"
        for i, row in enumerate(matrix))
    return f"<table class='grid' id='confusion'>{head}{rows}</table>"


def _settings(summary) -> str:
    versions = dict(summary.get("versions") or {"minialex": __version__, "numpy": np.__version__,
                                                 "python": platform.python_version()})
    versions["matplotlib"] = matplotlib.__version__ if matplotlib else "not installed"
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in sorted((summary.get("args") or {}).items()))
    ver = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                  for k, v in versions.items())
    return (f"<table class='grid'>{rows}</table>" if rows else "<p>No summary.json yet.</p>") + \
        f"<h3>Versions</h3><table class='grid'>{ver}</table>"


def _section(title, body) -> str:
    return f"<section><h2>{title}</h2>{body}</section>"


def _img(name, alt) -> str:
    return f"<img src='{html.escape(name)}' alt='{html.escape(alt)}'>"


def _json_in_script(value) -> str:
    """JSON that cannot end its <script> element early."""
    return json.dumps(value).replace("</", "<\\/")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }}
th, td {{ padding: 2px 8px; text-align: left; }}
table.grid td, table.grid th {{ border: 1px solid #ccc; text-align: right; }}
td.diag {{ background: #dde8f6; font-weight: bold; }}
img {{ max-width: 100%; margin: 0.3em 0.6em 0.3em 0; vertical-align: top; }}
.note {{ background: #fff4d6; padding: 0.4em; }}
</style></head>
<body>
{body}
<pre id="image-check" hidden></pre>
<script type="application/json" id="curves">{curves}</script>
<script type="application/json" id="metrics">{metrics}</script>
<script>
// each picture's natural size, once all have loaded (0 x 0: it did not load)
window.addEventListener("load", function () {{
  var sizes = Array.prototype.map.call(document.images, function (img) {{
    return {{src: img.getAttribute("src"), width: img.naturalWidth, height: img.naturalHeight}};
  }});
  document.getElementById("image-check").textContent = JSON.stringify(sizes);
}});
</script>
</body></html>
"""

__all__ = ["Predictions", "collect_predictions", "curves", "load_metrics", "write_after_fit",
           "write_report"]
