"""Data parallel scaling on the CPU: one process with 2 threads against 2 processes with 1 thread
each, the share of a step spent exchanging gradients, and all-reduce time against message size;
then, on paper, what 2, 4 and 8 GPUs would give the ``paper`` net.

    python benchmarks/bench_scaling.py [--models small,fmnist] [--batch N] [--steps N]
                                       [--warmup N] [--sizes N,N,...] [--results] [--json PATH]
    python benchmarks/bench_scaling.py --paper [--results]

Each measurement runs in fresh processes that this script starts, pinned to cores with
``os.sched_setaffinity`` before minialex counts its cores: ``one`` is one process on cores 0-1
(minialex's CPU passes run 2 threads), ``two`` is ``mpiexec -n 2 python -m mpi4py`` with rank r
on core r (1 thread each), every process taking half of each global batch
(``minialex.distributed``). A *step* is forward, loss, backward, the gradient mean (two
processes) and the SGD update on random float32 batches already in memory; each figure is the
median over ``--steps`` after ``--warmup``. The exchange share is the median time of
``mean_gradients`` over the median step. The all-reduce sweep times ``Allreduce(IN_PLACE)`` of
float32 buffers of ``--sizes`` elements between the two processes.

The paper section needs no run: the ``paper`` net's gradient size (its parameters, counted),
NCCL's ring all-reduce cost, and assumed GPU figures, each named with its source.

--results writes both sections into benchmarks/RESULTS.md (replacing this script's earlier
ones); --json writes the measured rows as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import minialex  # noqa: E402
from minialex import functional as F  # noqa: E402
from minialex import nn  # noqa: E402
from minialex.checks import output_size, pair  # noqa: E402
from minialex.distributed import create_communicator  # noqa: E402
from minialex.models import alexnet  # noqa: E402
from minialex.optim import SGD  # noqa: E402
from minialex.tensor import Tensor  # noqa: E402

from common import RESULTS, cpu_name, save_section, versions  # noqa: E402

DEFAULT_BATCH = {"small": 32, "fmnist": 16}
DEFAULT_SIZES = "1000,10000,100000,1000000,10000000,61000000"


# -- the worker: runs inside each pinned process ------------------------------------------------
def worker(args):
    """Time the training steps (and the all-reduce sweep with two processes); rank 0 prints one
    JSON line."""
    cores = [int(c) for c in args.cores.split(",")]
    comm = create_communicator("mpi" if args.mode == "two" else None)
    # pinned before minialex's first CPU pass counts the cores it may use (cpu_threads)
    os.sched_setaffinity(0, {cores[comm.rank]} if args.mode == "two" else set(cores))

    row = {"mode": args.mode, "processes": comm.size, "models": []}
    for variant in args.models.split(","):
        minialex.manual_seed(0)
        model = alexnet(variant, dropout=0.0)
        comm.broadcast_model(model)
        optimizer = SGD(model.parameters(), lr=0.01)
        batch = (args.batch or DEFAULT_BATCH[variant]) // comm.size
        rng = np.random.default_rng(comm.rank)
        x = rng.standard_normal((batch,) + model.input_shape).astype(np.float32)
        y = rng.integers(0, model.num_classes, batch)
        steps, exchanges = [], []
        for i in range(args.warmup + args.steps):
            comm.barrier()
            start = time.perf_counter()
            loss = F.cross_entropy(model(Tensor(x)), y)
            optimizer.zero_grad()
            loss.backward()
            exchange = time.perf_counter()
            comm.mean_gradients(model)
            exchanged = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            if i >= args.warmup:
                steps.append(end - start)
                exchanges.append(exchanged - exchange)
        step, exchange = statistics.median(steps), statistics.median(exchanges)
        row["models"].append({"model": variant, "global_batch": batch * comm.size,
                              "step_seconds": step, "exchange_seconds": exchange,
                              "images_per_second": batch * comm.size / step,
                              "parameters": model.num_parameters()})
    if comm.size > 1:
        row["allreduce"] = []
        for n in (int(s) for s in args.sizes.split(",")):
            buffer = np.ones(n, np.float32)
            times = []
            for i in range(args.warmup + args.steps):
                comm.barrier()
                start = time.perf_counter()
                comm._allreduce_buffer(buffer)
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times[args.warmup:])
            row["allreduce"].append({"elements": n, "bytes": 4 * n, "seconds": seconds,
                                     "gb_per_second": 4 * n / seconds / 1e9})
    if comm.rank == 0:
        print("ROW " + json.dumps(row), flush=True)


def run_worker(mode, args):
    """Start the pinned process(es) for ``mode`` and return rank 0's row."""
    common_args = ["--worker", "--mode", mode, "--models", args.models, "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--sizes", args.sizes]
    if args.batch:
        common_args += ["--batch", str(args.batch)]
    script = [sys.executable, "-m", "mpi4py", str(pathlib.Path(__file__).resolve())]
    if mode == "one":
        command = script + common_args + ["--cores", "0,1"]
    else:
        beside = pathlib.Path(sys.executable).with_name("mpiexec")
        mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
        if mpiexec is None:
            sys.exit("bench_scaling.py: error: mpiexec not found; pip install -e '.[mpi]'")
        command = [mpiexec, "-n", "2"] + script + common_args + ["--cores", "0,1"]
    done = subprocess.run(["timeout", "-k", "10", str(args.limit)] + command,
                          capture_output=True, text=True)
    rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if done.returncode or not rows:
        sys.exit(f"bench_scaling.py: the {mode} run failed (exit {done.returncode}):\n"
                 f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(rows[0])


# -- on paper: the paper net on 2, 4 and 8 GPUs --------------------------------------------------
# Assumptions, each with its source; none of them is measured in this project.
NVLINK_BUS_GBPS = 360     # NCCL all-reduce bus bandwidth on H100 SXM with NVLink 4: NVIDIA's H100
# datasheet gives 900 GB/s per GPU, both directions together (450 GB/s each way); nccl-tests
# (PERFORMANCE.md: busbw = algbw * 2(n-1)/n) reach about 80% of the one-way figure: assumed 360
PCIE_BUS_GBPS = 50        # PCIe Gen5 x16: 64 GB/s each way (PCI-SIG); assumed 50 reached
H100_STEP_SECONDS = None  # no single-H100 step time of `paper` has been measured here
H100_FP32_TFLOPS = 67     # H100 SXM FP32 (non-tensor-core) peak, NVIDIA's datasheet
ASSUMED_UTILISATION = 0.3  # an assumption: minialex's im2col + cuBLAS GEMMs at 30% of FP32 peak
PAPER_BATCH = 128         # the paper's batch (Sec. 5)


def paper_flops_per_image(model) -> float:
    """Multiply-adds x 2 of one forward pass, from the layer shapes (convolutions and fully
    connected layers; ReLU, LRN and pooling are left out, a few percent)."""
    C, H, W = model.input_shape
    flops = 0.0
    for layer in model.features:
        if isinstance(layer, nn.Conv2d):
            (KH, KW), (SH, SW), (PH, PW) = layer.kernel_size, layer.stride, layer.padding
            H, W = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
            C_in, C = C, layer.out_channels
            flops += 2 * C * (C_in // layer.groups) * KH * KW * H * W
        elif isinstance(layer, nn.MaxPool2d):
            (KH, KW), (SH, SW), (PH, PW) = (pair("pool", n, v) for n, v in (
                ("kernel_size", layer.kernel_size), ("stride", layer.stride),
                ("padding", layer.padding)))
            H, W = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    for layer in model.classifier:
        if isinstance(layer, nn.Linear):
            flops += 2 * layer.in_features * layer.out_features
    return flops


def ring_allreduce_seconds(nbytes, n, bus_gbps) -> float:
    """NCCL's ring all-reduce: each GPU sends and receives 2(n-1)/n of the buffer."""
    return 2 * (n - 1) / n * nbytes / (bus_gbps * 1e9)


def paper_section() -> str:
    model = alexnet("paper")
    params = model.num_parameters()
    fc = sum(m.weight.size + m.bias.size for m in model.classifier if isinstance(m, nn.Linear))
    nbytes = 4 * params
    flops = 3 * paper_flops_per_image(model) * PAPER_BATCH   # backward ~ twice the forward
    step = H100_STEP_SECONDS or flops / (H100_FP32_TFLOPS * 1e12 * ASSUMED_UTILISATION)
    backward_conv = step * 2 / 3      # backward ~2/3 of a step, almost all of it in the convs
    lines = [
        "### On paper: the `paper` net on 2, 4 and 8 GPUs (data parallel, NCCL)",
        "",
        f"Gradient: {params:,} float32 parameters = {nbytes / 1e6:.1f} MB per step, "
        f"{fc / params:.0%} of it in fc6-fc8. NCCL's ring all-reduce moves 2(n-1)/n of it "
        f"through each GPU's link: t_ar = 2(n-1)/n x bytes / bus bandwidth.",
        "",
        f"Assumed bus bandwidths: NVLink 4 (H100 SXM) {NVLINK_BUS_GBPS} GB/s (NVIDIA H100 "
        f"datasheet: 900 GB/s per GPU both ways, 450 each way; nccl-tests' busbw reaches about "
        f"80% of that); PCIe Gen5 x16 {PCIE_BUS_GBPS} GB/s (64 GB/s each way by the PCI-SIG "
        f"spec, less in practice).",
        "",
        ("Single-H100 step time: **not measured in this project** (no H100 run of `paper` "
         "yet). Assumed here: " if H100_STEP_SECONDS is None else "Single-H100 step: ")
        + f"{step * 1e3:.1f} ms for a batch of {PAPER_BATCH} = {flops / 1e12:.2f} TFLOP "
        f"(forward {paper_flops_per_image(model) / 1e9:.2f} GFLOP an image, x3 for training) at "
        f"{ASSUMED_UTILISATION:.0%} of the FP32 peak of {H100_FP32_TFLOPS} TFLOP/s. Replace "
        f"H100_STEP_SECONDS in bench_scaling.py with a measured figure.",
        "",
        "Efficiency = compute / (compute + all-reduce), the exchange after the backward pass. "
        "Weak scaling: every GPU keeps a batch of 128 (global 128 n); strong: the global batch "
        "stays 128 (128/n per GPU). *Overlapped*: the all-reduce starts as each layer's "
        "gradient is ready; fc8-fc6 (almost all the bytes) finish first in the backward pass, "
        "so their exchange hides behind the convolutions' backward (~2/3 of a step), and only "
        "what exceeds it stays on the step.",
        "",
        "| GPUs | link | t_ar (ms) | weak | weak, overlapped | strong | strong, overlapped |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in (2, 4, 8):
        for link, bus in (("NVLink", NVLINK_BUS_GBPS), ("PCIe 5", PCIE_BUS_GBPS)):
            t_ar = ring_allreduce_seconds(nbytes, n, bus)
            cells = []
            for compute in (step, step / n):
                hidden = min(t_ar * fc / params, backward_conv * compute / step)
                cells += [compute / (compute + t_ar), compute / (compute + t_ar - hidden)]
            lines.append(f"| {n} | {link} | {t_ar * 1e3:.2f} | " + " | ".join(
                f"{e:.2f}" for e in (cells[0], cells[1], cells[2], cells[3])) + " |")
    lines += ["", "Overlap needs the exchange in buckets of layers, started from the backward "
              "pass; `minialex.distributed` packs all gradients into one buffer after it "
              "(ChainerMN's pure_nccl), so today's figures are the columns without overlap.", ""]
    return "\n".join(lines) + "\n"


def measured_section(one, two, command) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "### Data parallel on the CPU: 1 process x 2 threads against 2 processes x 1 thread",
        "",
        f"{cpu_name()}, {os.cpu_count()} CPUs; {versions(torch=False)}; MPICH through mpi4py; "
        f"{now}; `{command}`",
        "",
        "| model | global batch | 1 x 2 threads (img/s) | 2 x 1 thread (img/s) | "
        "2 / 1 | exchange share of a step (2 processes) |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(one["models"], two["models"]):
        lines.append(f"| {a['model']} | {a['global_batch']} | {a['images_per_second']:.1f} | "
                     f"{b['images_per_second']:.1f} | "
                     f"{b['images_per_second'] / a['images_per_second']:.2f} | "
                     f"{b['exchange_seconds'] / b['step_seconds']:.1%} "
                     f"({b['exchange_seconds'] * 1e3:.0f} ms of {b['step_seconds'] * 1e3:.0f}) "
                     f"|")
    lines += ["", "All-reduce (sum, float32, in place) between the 2 processes:", "",
              "| elements | MB | ms | GB/s |", "|---|---|---|---|"]
    for r in two["allreduce"]:
        lines.append(f"| {r['elements']:,} | {r['bytes'] / 1e6:.3g} | {r['seconds'] * 1e3:.3g} "
                     f"| {r['gb_per_second']:.3g} |")
    return "\n".join(lines) + "\n\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="small,fmnist")
    parser.add_argument("--batch", type=int, help="global batch for every model (default: "
                        "small 32, fmnist 16)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="all-reduce sizes in elements")
    parser.add_argument("--limit", type=int, default=1800, help="seconds before a run counts "
                        "as hung")
    parser.add_argument("--results", action="store_true",
                        help="write the sections into benchmarks/RESULTS.md")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--paper", action="store_true",
                        help="only the section on paper (no run, no timing)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("one", "two"), help=argparse.SUPPRESS)
    parser.add_argument("--cores", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.paper:
        section = paper_section()
        print(section)
        if args.results:
            save_section("bench_scaling", "paper", section)
            print(f"written to {RESULTS}")
        return None
    if args.batch is not None and (args.batch < 2 or args.batch % 2):
        parser.error(f"--batch must be an even number >= 2 (two processes share it), got "
                     f"{args.batch}")
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 cores")
    command = "python benchmarks/bench_scaling.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    one, two = run_worker("one", args), run_worker("two", args)
    section = measured_section(one, two, command.strip())
    print(section)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"one": one, "two": two}, f, indent=2)
    if args.results:
        save_section("bench_scaling", "cpu", section)
        save_section("bench_scaling", "paper", paper_section())
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
