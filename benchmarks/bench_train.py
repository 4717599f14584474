"""Training and inference speed of AlexNet variants: minialex against PyTorch, in one run.

    python benchmarks/bench_train.py [--device auto|cpu|gpu] [--models paper,owt]
                                     [--batch N] [--steps N] [--warmup N] [--no-torch]
                                     [--results] [--json PATH]

A *training step* is what the trainer does per batch, less the data loading: forward,
softmax cross-entropy, backward and the SGD update (momentum 0.9, weight decay 5e-4). An
*inference pass* is a forward in eval mode without gradients. Inputs are random float32 batches
already on the device. Each figure is the median over ``--steps`` timed repetitions after
``--warmup`` untimed ones (GPU work is synchronised before each clock reading).

The PyTorch model is built from the minialex model, layer for layer (LRN's ``alpha`` converted to
PyTorch's ``alpha/n`` convention), with the same weights; the largest difference between their
eval-mode logits is reported as a check that the two compute the same function. TF32 is off on
both (minialex never enables it; PyTorch's ``allow_tf32`` flags are cleared), so both are fp32.

Defaults: on a GPU, ``paper`` (227x227) and ``owt`` (224x224) at batch 128; on the CPU,
``small`` (65x65, batch 32) and ``fmnist`` (224x224, batch 16). Peak GPU memory is CuPy's memory
pool size after the model's runs (the pool keeps what it once held, so this is the peak it
reserved) and PyTorch's ``max_memory_reserved``.

--results writes a section into benchmarks/RESULTS.md (replacing this script's earlier section
for the same device, leaving every other section as it is); --json writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

import minialex  # noqa: E402
from minialex import Tensor, backend, nn  # noqa: E402
from minialex import functional as F  # noqa: E402
from minialex.models import alexnet  # noqa: E402
from minialex.optim import MOMENTUM, SGD, WEIGHT_DECAY  # noqa: E402

from common import (  # noqa: E402
    RESULTS,
    cpu_name,
    import_torch,
    median_seconds,
    save_section,
    use_gpu,
    versions,
)

DEFAULTS = {"gpu": [("paper", 128), ("owt", 128)], "cpu": [("small", 32), ("fmnist", 16)]}
# PyTorch 2.13 CPU on this 2-core machine, measured for issue 5 (img/s: train, inference)
CPU_REFERENCE = {"small": (55.6, 140.0), "fmnist": (15.6, 50.0)}
# a small rate: random inputs and labels at the paper's 0.01 drive some variants to inf within a
# few steps, and arithmetic on inf/NaN is not what a benchmark should time
LR = 1e-4




# -- minialex ---------------------------------------------------------------------------------
def bench_minialex(model, x, y, args, sync):
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def train_step():
        loss = F.cross_entropy(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def inference():
        with minialex.no_grad():
            model(Tensor(x))

    model.train()
    train = median_seconds(train_step, args.steps, args.warmup, sync)
    model.eval()
    infer = median_seconds(inference, args.steps, args.warmup, sync)
    return train, infer


# -- PyTorch ----------------------------------------------------------------------------------
def torch_twin(model, torch):
    """The same network in PyTorch, with minialex's weights."""
    tnn = torch.nn

    def convert(m):
        if isinstance(m, nn.Conv2d):
            t = tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                           groups=m.groups, bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            t = tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, nn.ReLU):
            return tnn.ReLU()
        elif isinstance(m, nn.MaxPool2d):
            return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            return tnn.AdaptiveAvgPool2d(m.output_size)
        elif isinstance(m, nn.LocalResponseNorm):
            alpha = m.alpha * m.size if m.convention == "paper" else m.alpha
            return tnn.LocalResponseNorm(m.size, alpha, m.beta, m.k)
        elif isinstance(m, nn.Dropout):
            return tnn.Dropout(m.p)
        else:
            raise TypeError(f"bench_train: no PyTorch twin for {type(m).__name__}")
        with torch.no_grad():
            t.weight.copy_(torch.from_numpy(backend.to_numpy(m.weight.data)))
            if m.bias is not None:
                t.bias.copy_(torch.from_numpy(backend.to_numpy(m.bias.data)))
        return t

    layers = [convert(m) for m in model.features.children()]
    if model.avgpool is not None:
        layers.append(convert(model.avgpool))
    layers.append(tnn.Flatten())
    layers += [convert(m) for m in model.classifier.children()]
    return tnn.Sequential(*layers)


def bench_torch(twin, x, y, args, torch, sync):
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)

    def train_step():
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference():
        with torch.no_grad():
            twin(x)

    twin.train()
    train = median_seconds(train_step, args.steps, args.warmup, sync)
    twin.eval()
    infer = median_seconds(inference, args.steps, args.warmup, sync)
    return train, infer




# -- the run ----------------------------------------------------------------------------------
def bench(args):
    gpu = args.gpu
    device = backend.parse_device("gpu") if gpu else "cpu"
    plan = ([(name, args.batch or dict(DEFAULTS["gpu" if gpu else "cpu"]).get(name, 32))
             for name in args.models.split(",")] if args.models
            else [(name, args.batch or batch) for name, batch in DEFAULTS["gpu" if gpu else "cpu"]])
    torch = None if args.no_torch else import_torch(gpu)
    if gpu:
        cupy = backend.require_cupy()
        pool = cupy.get_default_memory_pool()
        sync = cupy.cuda.get_current_stream().synchronize
    else:
        pool, sync = None, (lambda: None)
    torch_sync = (torch.cuda.synchronize if gpu else (lambda: None)) if torch else None
    rows = []
    for name, batch in plan:
        minialex.manual_seed(0)
        model = alexnet(name)
        C, S = model.in_channels, model.input_size
        rng = np.random.default_rng(0)
        x_host = rng.standard_normal((batch, C, S, S), dtype=np.float32)
        y_host = rng.integers(0, model.num_classes, batch)
        twin = torch_twin(model, torch) if torch else None
        model.to(device)
        x, y = backend.to_device(x_host, device), backend.to_device(y_host, device)
        row = {"model": name, "input": f"{C}x{S}x{S}", "batch": batch,
               "parameters": model.num_parameters()}
        if twin is not None:
            tdev = torch.device("cuda" if gpu else "cpu")
            twin.to(tdev)
            tx, ty = torch.from_numpy(x_host).to(tdev), torch.from_numpy(y_host).to(tdev)
            # before training changes either: do both compute the same function?
            model.eval()
            twin.eval()
            with minialex.no_grad(), torch.no_grad():
                mine = backend.to_numpy(model(Tensor(x[:4])).data)
                theirs = twin(tx[:4]).cpu().numpy()
            row["max_abs_logit_diff"] = float(np.abs(mine - theirs).max())
            row["max_abs_logit"] = float(np.abs(theirs).max())
        if pool is not None:
            pool.free_all_blocks()
        print(f"{name}: minialex, batch {batch}, {S}x{S} ...", flush=True)
        m_train, m_infer = bench_minialex(model, x, y, args, sync)
        row.update({"minialex_train": batch / m_train, "minialex_inference": batch / m_infer,
                    "minialex_peak_bytes": pool.total_bytes() if pool is not None else None})
        if twin is not None:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            print(f"{name}: PyTorch {torch.__version__} ...", flush=True)
            t_train, t_infer = bench_torch(twin, tx, ty, args, torch, torch_sync)
            row.update({"torch_train": batch / t_train, "torch_inference": batch / t_infer,
                        "train_ratio": t_train / m_train, "inference_ratio": t_infer / m_infer,
                        "torch_peak_bytes": torch.cuda.max_memory_reserved() if gpu else None})
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, twin
    gpu_name = None
    if gpu:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return rows, gpu_name, torch




def markdown(rows, gpu_name, torch, args, command) -> str:
    device = f"{cpu_name()}, {os.cpu_count()} CPUs" + (f"; GPU {gpu_name}" if gpu_name
                                                       else "; no GPU")
    if hasattr(os, "getloadavg"):   # other work on the machine skews the figures; say how much
        device += f"; load average {os.getloadavg()[0]:.1f} at the end"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mib = lambda b: "" if b is None else f"{b / 2 ** 20:,.0f} MiB"   # noqa: E731
    lines = [f"## Training steps and inference ({'GPU ' + gpu_name if gpu_name else 'CPU'})", "",
             f"`{command}`, {date}.", f"Device: {device}. "
             f"{versions(gpu=bool(gpu_name), torch=torch)}.",
             f"Median of {args.steps} timed steps after {args.warmup} warm-up; random fp32 "
             f"input on the device; SGD lr {LR:g}, momentum {MOMENTUM}, weight decay "
             f"{WEIGHT_DECAY}; TF32 off. Ratio = minialex img/s / PyTorch img/s (above 1: "
             f"minialex is faster).", ""]
    header = "| model | input | batch | pass | minialex img/s | PyTorch img/s | ratio |"
    rule = "|---|---|---:|---|---:|---:|---:|"
    if gpu_name:
        header += " peak GPU memory minialex / PyTorch |"
        rule += "---|"
    lines += [header, rule]
    for r in rows:
        for mode in ("train", "inference"):
            torch_rate = r.get(f"torch_{mode}")
            cells = [r["model"], r["input"], str(r["batch"]), mode,
                     f"{r[f'minialex_{mode}']:,.1f}",
                     "-" if torch_rate is None else f"{torch_rate:,.1f}",
                     "-" if torch_rate is None else f"{r[f'{mode}_ratio']:.2f}"]
            if gpu_name:
                cells.append(f"{mib(r['minialex_peak_bytes'])} / {mib(r.get('torch_peak_bytes'))}"
                             if mode == "train" else "")
            lines.append("| " + " | ".join(cells) + " |")
    checks = [f"{r['model']} {r['max_abs_logit_diff']:.1e} (largest |logit| "
              f"{r['max_abs_logit']:.1e})" for r in rows if "max_abs_logit_diff" in r]
    if checks:
        lines += ["", "Same function check, before timing: max |logit difference| minialex vs "
                      "PyTorch with the same weights (eval mode, 4 images): "
                      + ", ".join(checks) + "."]
    if not gpu_name:
        ref = "; ".join(f"{k} {t} train / {i} inference img/s" for k, (t, i)
                        in CPU_REFERENCE.items())
        lines += ["", f"Reference measured earlier on this 2-core machine with PyTorch 2.13 "
                      f"CPU: {ref}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--models", help="comma-separated variants (default: paper,owt on a "
                                         "GPU; small,fmnist on the CPU)")
    parser.add_argument("--batch", type=int, help="batch size for every model (default: per "
                                                  "model, see the module docstring)")
    parser.add_argument("--steps", type=int, help="timed repetitions (default: 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed repetitions first (default: 3 GPU, "
                                                   "1 CPU)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--results", action="store_true",
                        help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    gpu = args.gpu = use_gpu(parser, args.device, "bench_train.py")
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv)
    rows, gpu_name, torch = bench(args)
    section = markdown(rows, gpu_name, torch, args, command.strip())
    print(section)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu_name or "cpu",
                       "versions": versions(gpu=bool(gpu_name), torch=torch),
                       "steps": args.steps, "warmup": args.warmup, "rows": rows}, f, indent=2)
    if args.results:
        save_section("bench_train", gpu_name or "cpu", section)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
