"""Fine-tuning against training from scratch, on the same folders with the same budget.

    python benchmarks/bench_finetune.py [--weights CHECKPOINT] [--work DIR] [--results]

The weights are minialex's own: the CPU preset's ``mini`` model trained briefly on Fashion-MNIST
(grey, one input channel; ``--weights`` reuses a checkpoint instead of training one, about two
minutes on two cores). Each pair of runs uses ``examples/train_alexnet.py`` as a user does,
``--model mini``, seed 0, and differs only in ``--pretrained`` (and the preset it brings):

- ``fmnist-rgb``: an RGB image folder of Fashion-MNIST *test* images (``fmnist_folder.py``,
  150 + 50 per class: 1,500 training images the weights never saw), 4 epochs: the grey weights'
  conv1 is adapted to RGB (``minialex.finetune``) and the run starts where the grey net was;
- ``photos``: real colour photographs (``photo_folder.py``, Debian's ``mate-backgrounds``,
  12 classes x 120 + 30 crops), 4 and 12 epochs, and with ``--freeze features``: whether
  grey clothing features help on colour scenes.

Accuracy is the best epoch's validation top-1 (the folders have no test/, so the run's test
split is val/ and the two agree). ``--results`` writes the table to ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

import fmnist_folder  # noqa: E402
import photo_folder  # noqa: E402
from bench_learning import read_run, run_example  # noqa: E402
from common import cpu_name, save_section, versions  # noqa: E402

WEIGHTS_RUN = ("--device", "cpu", "--limit-train", "20000", "--epochs", "2", "--print-freq", "0")
COMMON = ("--device", "cpu", "--model", "mini", "--print-freq", "0", "--seed", "0")


def fashion_mnist_weights(work: pathlib.Path) -> tuple:
    """(checkpoint, line describing it): the mini model trained briefly on Fashion-MNIST."""
    out = work / "fmnist-weights"
    wall, rc, log = run_example(*WEIGHTS_RUN, "--out", out)
    summary, _ = read_run(out)
    if rc != 0 or summary is None:
        raise SystemExit(f"bench_finetune.py: training the weights failed:\n{log[-2000:]}")
    return out / "best.npz", (f"`train_alexnet.py {' '.join(WEIGHTS_RUN)}`: test top-1 "
                              f"{summary['test_top1']:.2%} after {wall / 60:.1f} min")


def pair(work, name, folder, weights, epochs, *extra) -> list:
    """A run from scratch (the folder's preset) and one from ``weights``, same budget."""
    rows = []
    for start in ("scratch", "fine-tuned"):
        flags = [*COMMON, "--dataset", folder, "--epochs", str(epochs), *extra]
        if start == "fine-tuned":
            flags += ["--pretrained", weights]
        elif "--freeze" in flags:
            continue
        out = work / f"{name}-{start}-{epochs}{'-'.join([''] + list(extra))}"
        wall, rc, log = run_example(*flags, "--out", out)
        summary, metrics = read_run(out)
        best = summary.get("best_val_top1") if summary else None
        rows.append({"folder": name, "start": start, "epochs": epochs,
                     "command": "train_alexnet.py " + " ".join(
                         map(str, [*flags[len(COMMON):], "--model", "mini"])).replace(
                         str(folder), name.upper()).replace(str(weights), "FMNIST.npz"),
                     "best_val_top1": best, "exit": rc, "wall_s": wall,
                     "curve": ", ".join(f"{m['val_top1']:.0%}" for m in metrics
                                        if m.get("val_top1") is not None)})
        print(rows[-1], flush=True)
    return rows


def markdown(rows, weights_line, command) -> str:
    lines = [f"## Fine-tuning against training from scratch, CPU "
             f"({datetime.date.today().isoformat()})", "",
             f"`{command}` on {cpu_name()}; {versions()}. The machine was shared with other "
             f"jobs, so the wall times are not comparable with each other or other sections. "
             f"Weights: {weights_line}. FMNIST-RGB: an RGB folder of 1,500 + 500 Fashion-MNIST "
             f"test images (`fmnist_folder.py --train 150 --val 50`); PHOTOS: "
             f"`photo_folder.py` (12 classes x 120 + 30 crops of real colour photographs).", "",
             "| folder | start | epochs | command | best val top-1 | val top-1 per epoch | "
             "exit | wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = "-" if r["best_val_top1"] is None else f"{r['best_val_top1']:.2%}"
        lines.append(f"| {r['folder']} | {r['start']} | {r['epochs']} | `{r['command']}` | "
                     f"{best} | {r['curve']} | {r['exit']} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="a Fashion-MNIST checkpoint (default: train one)")
    p.add_argument("--photos", help="photo folder (default: written by photo_folder.py)")
    p.add_argument("--work", help="where runs go (default: a temporary folder)")
    p.add_argument("--results", action="store_true", help="write to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.weights:
        weights, weights_line = pathlib.Path(args.weights), f"`{args.weights}` (given)"
    else:
        weights, weights_line = fashion_mnist_weights(work)
    fmnist = fmnist_folder.write_folder(work / "fmnist-rgb", train_per_class=150,
                                        val_per_class=50)
    photos = pathlib.Path(args.photos) if args.photos else photo_folder.write_folder(
        work / "photos")
    rows = pair(work, "fmnist-rgb", fmnist, weights, 4)
    rows += pair(work, "photos", photos, weights, 4)
    rows += pair(work, "photos", photos, weights, 12)
    rows += pair(work, "photos", photos, weights, 12, "--freeze", "features")
    table = markdown(rows, weights_line, " ".join(["bench_finetune.py", *(argv or sys.argv[1:])]))
    print(table)
    if args.results:
        save_section("bench_finetune.py", "cpu", table)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
