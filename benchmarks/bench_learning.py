"""Do the default recipes learn? Accuracy targets on the CPU, minialex beside PyTorch.

    python benchmarks/bench_learning.py [--targets cpu,images,gpu-preset,photos] [--folder DIR]
                                        [--photos DIR] [--steps N] [--batch-size N]
                                        [--no-torch] [--results]

Targets (each names its command, wall time and accuracy in the table):

- ``cpu``: the README's first command, ``examples/train_alexnet.py --device cpu`` (the CPU
  preset), run as a user runs it; target test top-1 >= 0.90 on the full Fashion-MNIST test set
  within 10 minutes of wall time.
- ``images``: an image folder written from Fashion-MNIST *test* images as RGB PNGs (200 train
  and 50 validation images per class, ``fmnist_folder.py``), trained with the image-folder
  defaults and ``--model small`` only; target validation top-1 >= 0.70 within 10 minutes
  (read from ``metrics.jsonl``: the first epoch whose validation top-1 reaches it, and when).
  The preset's 90 epochs would take an hour here: the benchmark stops each run with a Ctrl-C
  at 10 minutes. ``--find-lr`` runs on the same folder first, and its suggestion is trained too.
- ``gpu-preset``: the GPU preset's recipe (``fmnist`` at 224x224, its batch size, learning rate,
  warm-up and schedule) on the CPU over ``--steps`` steps on Fashion-MNIST's training images,
  minialex and PyTorch in lockstep: the same initial weights, the same augmented batches, the
  paper's SGD written out in both, each with its own dropout masks. Target: the training loss
  falls and the held-out top-1 (1,000 validation images) beats 0.80.
- ``photos``: the ``paper`` model (two towers, 224x224) with the image-folder recipe on real
  colour photographs (``photo_folder.py``: twelve photographs from Debian's ``mate-backgrounds``,
  one class each, validation crops from a part of each photograph training never sees), in
  lockstep with PyTorch as above, with ``--batch-size`` cut for the CPU (and the learning rate
  scaled with it, as the example does). Target: steady progress: the loss falls every quarter
  of the run, no spike (a step above 3x the median of the 20 before it), nothing non-finite.

Figures are measured, never assumed; ``--results`` writes the table to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

from minialex import Tensor, recipe  # noqa: E402
from minialex import functional as F  # noqa: E402
from minialex.config import GPU_PRESET, IMAGES_PRESET, scaled_to_batch  # noqa: E402
from minialex.train import evaluate  # noqa: E402

import photo_folder  # noqa: E402
from bench_train import torch_twin  # noqa: E402
from common import cpu_name, import_torch, save_section, versions  # noqa: E402
from fmnist_folder import write_folder  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_alexnet.py"
TEN_MINUTES = 600.0


def run_example(*argv, limit=None) -> tuple:
    """(wall seconds, return code, stdout + stderr) of the example in a fresh process; after
    ``limit`` seconds it gets a Ctrl-C (it saves a checkpoint and exits 130)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), *map(str, argv)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate()
    return time.perf_counter() - start, proc.returncode, log


def read_run(out: pathlib.Path) -> tuple:
    """(summary or None, the metrics lines): a run that failed early may have written neither."""
    summary = out / "summary.json"
    metrics = out / "metrics.jsonl"
    return (json.loads(summary.read_text()) if summary.exists() else None,
            [json.loads(line) for line in metrics.read_text().splitlines()]
            if metrics.exists() else [])


def target_cpu(work: pathlib.Path) -> list:
    out = work / "cpu"
    wall, rc, log = run_example("--device", "cpu", "--out", out, "--print-freq", "0")
    summary, _ = read_run(out)
    top1 = summary.get("test_top1", 0.0) if summary else 0.0
    return [{"target": "`bash run.sh train` (CPU preset: mini, 28x28)",
             "command": "examples/train_alexnet.py --device cpu", "framework": "minialex",
             "wall_s": wall, "accuracy": f"test top-1 {top1:.4f} (10,000 images)",
             "met": rc == 0 and top1 >= 0.90 and wall <= TEN_MINUTES, "exit": rc,
             "detail": f"{summary['epochs']} epochs, {summary['images_per_second']:.0f} img/s"
                       if summary else log.strip().splitlines()[-1][:200]}]


def first_reaching(metrics, key, value):
    return next((m for m in metrics if m.get(key, 0) >= value), None)


def target_images(work: pathlib.Path, folder) -> list:
    folder = pathlib.Path(folder) if folder else write_folder(work / "fmnist-folder")
    common = ["--dataset", folder, "--model", "small", "--device", "cpu", "--cache",
              work / "cache", "--print-freq", "0"]
    rows = []
    wall, rc, log = run_example(*common, "--find-lr", "--out", work / "find-lr")
    (work / "find-lr.log").write_text(log)
    suggested = [line for line in log.splitlines() if line.startswith("train with: --lr")]
    suggestion = float(suggested[0].split()[-1]) if suggested else None
    rows.append({"target": "image folder: `--find-lr`", "command": "--find-lr",
                 "framework": "minialex", "wall_s": wall, "exit": rc, "met": rc == 0,
                 "accuracy": f"suggested lr {suggestion}", "detail": ""})
    for name, extra in (("defaults", []),
                        ("found lr", ["--lr", suggestion] if suggestion else None)):
        if extra is None:
            continue
        out = work / f"images-{name.replace(' ', '-')}"
        started = time.time()
        wall, rc, log = run_example(*common, *extra, "--out", out, limit=TEN_MINUTES)
        summary, metrics = read_run(out)
        summary = summary if rc != 130 else None
        hit = first_reaching(metrics, "val_top1", 0.70)
        when = (datetime.datetime.fromisoformat(hit["time"]).timestamp() - started
                if hit else None)
        best = max((m["val_top1"] for m in metrics), default=0.0)
        rows.append({
            "target": f"image folder, `small`, {name}",
            "command": "--dataset DIR --model small" + (f" --lr {suggestion}" if extra else ""),
            "framework": "minialex", "wall_s": wall, "exit": rc,
            "met": hit is not None and when <= TEN_MINUTES,
            "accuracy": f"best val top-1 {best:.3f}; >= 0.70 at epoch "
                        f"{hit['epoch'] if hit else '-'}"
                        + (f" after {when / 60:.1f} min" if hit else ""),
            "detail": (f"{summary['stopped']} after {summary['epochs']} epochs" if summary else
                       f"stopped by the benchmark (Ctrl-C) at 10 min, after {len(metrics)} "
                       f"epochs")})
    return rows


def paper_sgd_step(torch, params, velocity, lr, momentum, weight_decay):
    """The paper's update (minialex.optim.SGD) in PyTorch: v <- m v - wd lr w - lr g; w += v."""
    with torch.no_grad():
        for p, v in zip(params, velocity):
            if p.grad is not None:
                v.mul_(momentum).sub_(lr * (weight_decay * p + p.grad))
                p.add_(v)


def lockstep(config, steps: int, held_out: int, torch=None, eval_every: int = 25,
             data_dir=None, quiet=False):
    """Train ``config``'s model for ``steps`` steps, and its PyTorch twin on the same batches;
    evaluate both on ``held_out`` validation images every ``eval_every`` steps."""
    data = recipe.load_data(config.replace(limit_test=held_out), data_dir=data_dir)
    run = recipe.build(config, data, "cpu")
    model, optimizer, warmup = run.model, run.optimizer, run.warmup
    twin = torch_twin(model, torch) if torch is not None else None
    params = list(twin.parameters()) if twin is not None else []
    velocity = [torch.zeros_like(p) for p in params]
    held = [(x, y) for x, y in run.val_loader.epoch()]
    log, seconds = [], {"minialex": 0.0, "pytorch": 0.0}
    step = 0
    while step < steps:
        for x, y in run.train_loader.epoch():
            model.train()
            warmup.step()
            start = time.perf_counter()
            loss = F.cross_entropy(model(Tensor(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds["minialex"] += time.perf_counter() - start
            row = {"step": step + 1, "lr": optimizer.lr, "minialex_loss": float(loss.item())}
            if twin is not None:
                twin.train()
                start = time.perf_counter()
                t_loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)),
                                                           torch.from_numpy(y))
                for p in params:
                    p.grad = None
                t_loss.backward()
                paper_sgd_step(torch, params, velocity, optimizer.lr, config.momentum,
                               config.weight_decay)
                seconds["pytorch"] += time.perf_counter() - start
                row["pytorch_loss"] = t_loss.item()
            step += 1
            if step % eval_every == 0 or step == steps:
                row["minialex_val_top1"] = evaluate(model, run.val_loader)["top1"]
                if twin is not None:
                    row["pytorch_val_top1"] = torch_top1(torch, twin, held)
                if not quiet:
                    print(json.dumps(row), flush=True)
            log.append(row)
            if step == steps:
                break
    return log, seconds


def torch_top1(torch, twin, batches) -> float:
    twin.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((twin(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
            total += len(y)
    return correct / max(total, 1)


def falls(losses, parts=4) -> bool:
    """The mean loss of each quarter of the run is below the previous quarter's."""
    chunks = np.array_split(np.asarray(losses), parts)
    means = [c.mean() for c in chunks]
    return all(b < a for a, b in zip(means, means[1:]))


def target_gpu_preset(steps: int, torch) -> list:
    config = GPU_PRESET.replace(val_size=1000, print_freq=0)
    start = time.perf_counter()
    log, seconds = lockstep(config, steps, held_out=1000, torch=torch)
    wall = time.perf_counter() - start
    rows = []
    for name in ("minialex", "pytorch") if torch is not None else ("minialex",):
        losses = [r[f"{name}_loss"] for r in log]
        top1 = [r[f"{name}_val_top1"] for r in log if f"{name}_val_top1" in r]
        images = steps * config.batch_size
        rows.append({
            "target": f"GPU preset's recipe on the CPU ({steps} steps)",
            "command": f"bench_learning.py --targets gpu-preset --steps {steps}",
            "framework": name, "wall_s": wall, "exit": 0,
            "met": falls(losses) and top1[-1] > 0.80,
            "accuracy": f"held-out top-1 {top1[-1]:.3f} (1,000 val images); loss "
                        f"{np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}",
            "detail": f"{images / max(seconds[name], 1e-9):.1f} img/s; max loss "
                      f"{max(losses):.2f}; loss falls every quarter: {falls(losses)}"})
    return rows


def target_photos(work: pathlib.Path, folder, steps: int, batch_size: int, torch) -> list:
    """The ``paper`` model with the image-folder recipe on real colour photographs, in lockstep
    with PyTorch. Only the batch size is cut (a CPU budget), and the learning rate with it as
    ``--batch-size`` alone does; warm-up, init and input scaling are the preset's."""
    folder = pathlib.Path(folder) if folder else photo_folder.write_folder(work / "photos")
    config = scaled_to_batch(IMAGES_PRESET, batch_size).replace(dataset=str(folder), print_freq=0)
    start = time.perf_counter()
    log, seconds = lockstep(config, steps, held_out=100_000, torch=torch,
                            eval_every=max(steps // 4, 1))
    wall = time.perf_counter() - start
    chance = np.log(len([d for d in (folder / "train").iterdir() if d.is_dir()]))
    rows = []
    for name in ("minialex", "pytorch") if torch is not None else ("minialex",):
        losses = np.array([r[f"{name}_loss"] for r in log])
        top1 = [r[f"{name}_val_top1"] for r in log if f"{name}_val_top1" in r]
        # A spike: a step's loss above 3x the median of the 20 steps before it.
        spikes = sum(losses[i] > 3 * np.median(losses[max(i - 20, 0):i])
                     for i in range(5, len(losses)))
        steady = falls(losses) and spikes == 0 and np.isfinite(losses).all()
        rows.append({
            "target": f"`paper` model, image-folder recipe, real photos ({steps} steps, "
                      f"batch {batch_size}, lr {config.lr:g})",
            "command": f"bench_learning.py --targets photos --steps {steps} "
                       f"--batch-size {batch_size}",
            "framework": name, "wall_s": wall, "exit": 0, "met": steady,
            "accuracy": f"held-out top-1 {' -> '.join(f'{t:.3f}' for t in top1)} (chance "
                        f"{1 / np.exp(chance):.3f}); loss {losses[:10].mean():.3f} -> "
                        f"{losses[-10:].mean():.3f} (chance {chance:.3f})",
            "detail": f"{steps * batch_size / max(seconds[name], 1e-9):.1f} img/s; max loss "
                      f"{losses.max():.2f}; spikes {spikes}; loss falls every quarter: "
                      f"{falls(losses)}"})
    return rows


def markdown(rows, torch, command) -> str:
    lines = [f"## Learning targets, CPU ({datetime.date.today().isoformat()})", "",
             f"`{command}` on {cpu_name()}; {versions(torch=torch)}. The `cpu` and `images` "
             f"targets time minialex's own command, as a user runs it (PyTorch has no such "
             f"command to run beside it); `gpu-preset` trains both frameworks in lockstep.", "",
             "| target | framework | command | wall time | accuracy | exit | target met | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['framework']} | `{r['command']}` | "
                     f"{r['wall_s'] / 60:.1f} min | {r['accuracy']} | {r['exit']} | "
                     f"{'yes' if r['met'] else '**no**'} | {r['detail']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="cpu,images,gpu-preset")
    p.add_argument("--folder", help="image folder for --targets images (default: written from "
                                    "Fashion-MNIST test images)")
    p.add_argument("--photos", help="image folder for --targets photos (default: written by "
                                    "photo_folder.py from Debian's mate-backgrounds)")
    p.add_argument("--steps", type=int, default=150,
                   help="steps of the gpu-preset and photos targets")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of --targets photos")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--results", action="store_true", help="write to benchmarks/RESULTS.md")
    p.add_argument("--work", help="where runs go (default: a temporary folder)")
    args = p.parse_args(argv)
    torch = None if args.no_torch else import_torch(False)
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="bench-learning-"))
    rows = []
    for target in args.targets.split(","):
        if target == "cpu":
            rows += target_cpu(work)
        elif target == "images":
            rows += target_images(work, args.folder)
        elif target == "gpu-preset":
            rows += target_gpu_preset(args.steps, torch)
        elif target == "photos":
            rows += target_photos(work, args.photos, args.steps, args.batch_size, torch)
        else:
            p.error(f"argument --targets: unknown target {target!r}")
        print(markdown(rows, torch, " ".join(["bench_learning.py", *(argv or sys.argv[1:])])),
              flush=True)
    table = markdown(rows, torch, " ".join(["bench_learning.py", *(argv or sys.argv[1:])]))
    if args.results:
        save_section("bench_learning.py", "cpu " + args.targets, table)
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
