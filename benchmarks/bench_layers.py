"""Forward and backward time of each AlexNet layer: minialex against PyTorch, in one run.

    python benchmarks/bench_layers.py [--device auto|cpu|gpu] [--batch N] [--layers conv1,lrn1]
                                      [--repeats N] [--warmup N] [--tf32] [--no-torch]
                                      [--json PATH] [--results]

The layers are the paper's (Krizhevsky et al. 2012, Fig. 2; 227x227 input): conv1..conv5 with
their groups (2 for conv2, conv4, conv5), the LRN after conv1 and conv2 (n=5, alpha=1e-4 in
the paper's convention, i.e. 5e-4 in PyTorch's, beta=0.75, k=2), the three overlapping 3x3/2
max-pools and fc6, each at the input size it has in the net (default batch 128). A row times
one layer alone on random float32 data already on the device: the forward, and the forward plus
the backward of a fixed random output gradient, computing every gradient the layer has in
training (input, weight and bias; conv1 skips its input's, which is the image).

Each figure is the median over ``--repeats`` timed repetitions after ``--warmup`` untimed ones;
GPU work is synchronised before each clock reading (CuPy's device, ``torch.cuda.synchronize``).
PyTorch runs the same ops in the same process when it is importable. TF32 is off on both sides
unless ``--tf32`` (minialex's ``cuda.set_tf32``; PyTorch's ``allow_tf32`` flags for cuBLAS and
cuDNN). Ratio = PyTorch time / minialex time for forward+backward: above 1, minialex is faster.
The last column checks that both compute the same function: the largest difference between the
two forward outputs, relative to the largest output.

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
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

from minialex import Tensor, backend, cuda  # noqa: E402
from minialex import functional as F  # noqa: E402
from minialex.layers.lrn import PAPER_ALPHA, PAPER_BETA, PAPER_K, PAPER_SIZE  # noqa: E402
from minialex.models import POOL  # noqa: E402

from common import (  # noqa: E402
    cpu_name,
    import_torch,
    median_seconds,
    save_section,
    use_gpu,
    versions,
)


@dataclass
class Layer:
    """One AlexNet layer: its op, its input (C, H, W) or (features,), and the op's settings."""
    name: str
    op: str                     # conv, lrn, pool or linear
    input: tuple
    settings: dict = field(default_factory=dict)
    input_grad: bool = True     # does training need the gradient of this layer's input?

    def describe(self) -> str:
        s = self.settings
        if self.op == "conv":
            groups = f", groups {s['groups']}" if s["groups"] > 1 else ""
            return (f"conv {s['out']}x{s['k']}x{s['k']}/{s['stride']}, pad {s['pad']}{groups}")
        if self.op == "lrn":
            return f"LRN n={PAPER_SIZE}"
        if self.op == "pool":
            return f"max-pool {POOL['kernel_size']}/{POOL['stride']}"
        return f"linear {self.input[0]}->{s['out']}"


LAYERS = [
    Layer("conv1", "conv", (3, 227, 227), dict(out=96, k=11, stride=4, pad=0, groups=1),
          input_grad=False),
    Layer("lrn1", "lrn", (96, 55, 55)),
    Layer("pool1", "pool", (96, 55, 55)),
    Layer("conv2", "conv", (96, 27, 27), dict(out=256, k=5, stride=1, pad=2, groups=2)),
    Layer("lrn2", "lrn", (256, 27, 27)),
    Layer("pool2", "pool", (256, 27, 27)),
    Layer("conv3", "conv", (256, 13, 13), dict(out=384, k=3, stride=1, pad=1, groups=1)),
    Layer("conv4", "conv", (384, 13, 13), dict(out=384, k=3, stride=1, pad=1, groups=2)),
    Layer("conv5", "conv", (384, 13, 13), dict(out=256, k=3, stride=1, pad=1, groups=2)),
    Layer("pool5", "pool", (256, 13, 13)),
    Layer("fc6", "linear", (9216,), dict(out=4096)),
]


def host_arrays(layer: Layer, batch: int, seed: int = 0) -> dict:
    """Random float32 input, parameters (PyTorch's default init range) for one layer."""
    rng = np.random.default_rng(seed)
    arrays = {"x": rng.standard_normal((batch, *layer.input), dtype=np.float32)}
    s = layer.settings
    if layer.op == "conv":
        fan_in = layer.input[0] // s["groups"] * s["k"] * s["k"]
        shape = (s["out"], layer.input[0] // s["groups"], s["k"], s["k"])
    elif layer.op == "linear":
        fan_in, shape = layer.input[0], (s["out"], layer.input[0])
    else:
        return arrays
    bound = 1 / np.sqrt(fan_in)
    arrays["W"] = rng.uniform(-bound, bound, shape).astype(np.float32)
    arrays["b"] = rng.uniform(-bound, bound, s["out"]).astype(np.float32)
    return arrays




# -- the two implementations of each layer ------------------------------------------------------
def minialex_layer(layer: Layer, arrays: dict, device: str):
    """(forward, tensors) for minialex: forward() returns the output Tensor."""
    x = Tensor(backend.to_device(arrays["x"], device), requires_grad=layer.input_grad)
    params = {k: Tensor(backend.to_device(v, device), requires_grad=True)
              for k, v in arrays.items() if k != "x"}
    s = layer.settings
    if layer.op == "conv":
        def forward():
            return F.conv2d(x, params["W"], params["b"], s["stride"], s["pad"], s["groups"])
    elif layer.op == "lrn":
        def forward():
            return F.local_response_norm(x, PAPER_SIZE, PAPER_ALPHA, PAPER_BETA, PAPER_K)
    elif layer.op == "pool":
        def forward():
            return F.max_pool2d(x, **POOL)
    else:
        def forward():
            return F.linear(x, params["W"], params["b"])
    return forward, [x, *params.values()]


def torch_layer(layer: Layer, arrays: dict, torch, device):
    """(forward, tensors) for PyTorch, the same op on the same data."""
    tf = torch.nn.functional
    x = torch.from_numpy(arrays["x"]).to(device).requires_grad_(layer.input_grad)
    params = {k: torch.from_numpy(v).to(device).requires_grad_(True)
              for k, v in arrays.items() if k != "x"}
    s = layer.settings
    if layer.op == "conv":
        def forward():
            return tf.conv2d(x, params["W"], params["b"], s["stride"], s["pad"], 1, s["groups"])
    elif layer.op == "lrn":
        # PyTorch divides alpha by the window size: alpha_torch = n * alpha_paper.
        def forward():
            return tf.local_response_norm(x, PAPER_SIZE, PAPER_SIZE * PAPER_ALPHA, PAPER_BETA,
                                            PAPER_K)
    elif layer.op == "pool":
        def forward():
            return tf.max_pool2d(x, **POOL)
    else:
        def forward():
            return tf.linear(x, params["W"], params["b"])
    return forward, [x, *params.values()]


def time_layer(forward, tensors, gy, backward, repeats, warmup, sync):
    """(forward seconds, forward+backward seconds, the forward's output)."""
    def fwd():
        forward()

    def fwd_bwd():
        for t in tensors:
            t.grad = None
        backward(forward(), gy)

    fwd_time = median_seconds(fwd, repeats, warmup, sync)
    step_time = median_seconds(fwd_bwd, repeats, warmup, sync)
    return fwd_time, step_time, forward()




# -- the run --------------------------------------------------------------------------------------
def bench(args):
    gpu = args.gpu
    device = backend.parse_device("gpu") if gpu else "cpu"
    cuda.set_tf32(args.tf32)
    torch = None if args.no_torch else import_torch(gpu, args.tf32)
    if gpu:
        cupy = backend.require_cupy()
        sync = cupy.cuda.Device().synchronize
    else:
        sync = lambda: None  # noqa: E731
    torch_sync = (torch.cuda.synchronize if gpu else (lambda: None)) if torch else None
    torch_device = "cuda" if gpu else "cpu"
    wanted = args.layers.split(",") if args.layers else [layer.name for layer in LAYERS]
    unknown = sorted(set(wanted) - {layer.name for layer in LAYERS})
    if unknown:
        raise SystemExit(f"bench_layers.py: unknown layers {unknown}; choose from "
                         f"{', '.join(layer.name for layer in LAYERS)}")
    rows = []
    for layer in (layer for layer in LAYERS if layer.name in wanted):
        arrays = host_arrays(layer, args.batch)
        forward, tensors = minialex_layer(layer, arrays, device)
        gy_host = np.random.default_rng(1).standard_normal(forward().shape, dtype=np.float32)
        gy = backend.to_device(gy_host, device)
        print(f"{layer.name}: minialex ...", flush=True)
        m_fwd, m_step, m_y = time_layer(forward, tensors, gy, lambda y, g: y.backward(g),
                                        args.repeats, args.warmup, sync)
        row = {"layer": layer.name, "op": layer.describe(),
               "input": [args.batch, *layer.input], "minialex_forward_ms": m_fwd * 1e3,
               "minialex_forward_backward_ms": m_step * 1e3}
        if torch is not None:
            t_forward, t_tensors = torch_layer(layer, arrays, torch, torch_device)
            t_gy = torch.from_numpy(gy_host).to(torch_device)
            print(f"{layer.name}: PyTorch ...", flush=True)
            t_fwd, t_step, t_y = time_layer(t_forward, t_tensors, t_gy,
                                            lambda y, g: y.backward(g), args.repeats,
                                            args.warmup, torch_sync)
            mine, theirs = backend.to_numpy(m_y.data), t_y.detach().cpu().numpy()
            row.update({"torch_forward_ms": t_fwd * 1e3, "torch_forward_backward_ms": t_step * 1e3,
                        "ratio": t_step / m_step,
                        "max_rel_output_diff": float(np.abs(mine - theirs).max()
                                                     / max(np.abs(theirs).max(), 1e-30))})
        rows.append(row)
        print(json.dumps(row), flush=True)
    gpu_name = None
    if gpu:
        runtime = backend.require_cupy().cuda.runtime
        name = runtime.getDeviceProperties(runtime.getDevice())["name"]
        gpu_name = name.decode() if isinstance(name, bytes) else name
    return rows, gpu_name, torch






def markdown(rows, gpu_name, torch, args, command) -> str:
    device = f"{cpu_name()}, {os.cpu_count()} CPUs" + (f"; GPU {gpu_name}" if gpu_name
                                                       else "; no GPU")
    if hasattr(os, "getloadavg"):   # other work on the machine skews the figures; say how much
        device += f"; load average {os.getloadavg()[0]:.1f} at the end"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tf32 = "on (both sides)" if args.tf32 else "off (both sides)"
    where = f"GPU {gpu_name}" if gpu_name else "CPU"
    lines = [f"## AlexNet layers, forward and backward ({where})",
             "", f"`{command}`, {date}.", f"Device: {device}. "
             f"{versions(gpu=bool(gpu_name), torch=torch)}.",
             f"Batch {args.batch}, float32, TF32 {tf32}. Median of {args.repeats} timed "
             f"repetitions after {args.warmup} warm-up. Ratio = PyTorch / minialex time for "
             f"forward+backward (above 1: minialex is faster); max |dy| is the largest difference "
             f"between the two forward outputs, relative to the largest output.", "",
             "| layer | op | input | minialex fwd ms | minialex fwd+bwd ms | PyTorch fwd ms "
             "| PyTorch fwd+bwd ms | ratio | max \\|dy\\| |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        has_torch = "ratio" in r
        cells = [r["layer"], r["op"], "x".join(map(str, r["input"])),
                 f"{r['minialex_forward_ms']:,.2f}", f"{r['minialex_forward_backward_ms']:,.2f}",
                 f"{r['torch_forward_ms']:,.2f}" if has_torch else "-",
                 f"{r['torch_forward_backward_ms']:,.2f}" if has_torch else "-",
                 f"{r['ratio']:.2f}" if has_torch else "-",
                 f"{r['max_rel_output_diff']:.1e}" if has_torch else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--layers", help="comma-separated layer names (default: all of "
                                         + ", ".join(layer.name for layer in LAYERS) + ")")
    parser.add_argument("--repeats", type=int, help="timed repetitions (default: 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed repetitions first (default: 3 GPU, "
                                                   "1 CPU)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 in float32 GEMMs and "
                                                            "convolutions, on both sides")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    parser.add_argument("--results", action="store_true",
                        help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    gpu = args.gpu = use_gpu(parser, args.device, "bench_layers.py")
    args.repeats = args.repeats or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    command = "python benchmarks/bench_layers.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv)
    rows, gpu_name, torch = bench(args)
    section = markdown(rows, gpu_name, torch, args, command.strip())
    print(section)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu_name or "cpu",
                       "versions": versions(gpu=bool(gpu_name), torch=torch),
                       "batch": args.batch, "tf32": args.tf32, "repeats": args.repeats,
                       "warmup": args.warmup, "rows": rows}, f, indent=2)
    if args.results:
        save_section("bench_layers", gpu_name or "cpu", section)


if __name__ == "__main__":
    main()
