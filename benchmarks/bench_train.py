"""Training and inference speed of AlexNet variants: minialex against PyTorch, in one run.

    python benchmarks/bench_train.py [--device auto|cpu|gpu] [--models paper,owt]
                                     [--batch N] [--steps N] [--warmup N] [--no-torch]
                                     [--no-dezero] [--no-memory] [--busy K,K]
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

On the CPU three more measurements follow each model's timings. DeZero (PyPI ``dezero``, optional
like PyTorch) runs the same net with the same weights where it has every layer (no groups, LRN
or adaptive pooling: ``small`` and ``fmnist``), reported as minialex's speed over DeZero's. Peak
memory: each framework's training step runs in a fresh process (``--peak-rss-child``) that
reports its peak resident set above its size after the imports. A busy machine (``--busy``):
the training steps are timed again beside 1, then 2 competing processes that this script starts
and stops, and each framework's slowdown is its busy step time over its quiet one.

--results writes a section into benchmarks/RESULTS.md (replacing this script's earlier section
for the same device, leaving every other section as it is); --json writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))   # run from a checkout

import minialex  # noqa: E402
from minialex import Tensor, backend, nn  # noqa: E402
from minialex import functional as F  # noqa: E402
from minialex.cpu import cpu_threads  # noqa: E402
from minialex.models import alexnet  # noqa: E402
from minialex.optim import MOMENTUM, SGD, WEIGHT_DECAY  # noqa: E402

try:                # Unix only: peak memory falls back to ru_maxrss where /proc is missing
    import resource  # noqa: E402
except ImportError:  # Windows: no peak-memory columns (markdown says so)
    resource = None

try:                # optional, like PyTorch: DeZero (PyPI ``dezero``) is a second comparison
    try:
        import dezero  # noqa: E402
    except AttributeError:  # DeZero 0.0.13 (2020, its latest) names np.int, gone in NumPy 1.24
        np.int = int  # lent for DeZero's import only: every other module sees NumPy as it is
        try:
            import dezero  # noqa: E402
        finally:
            del np.int
    import dezero.functions as DF  # noqa: E402
except ImportError:
    dezero = DF = None

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
# PyTorch 2.13 CPU on this 2-core machine, measured when the CPU benchmark was first run
# (img/s: train, inference)
CPU_REFERENCE = {"small": (55.6, 140.0), "fmnist": (15.6, 50.0)}
# minialex / PyTorch (train, inference) on this machine at earlier stages of the CPU work, from
# the sections this script wrote into RESULTS.md then, kept here for comparison when it is
# rewritten: (when, what ran, {model: (train, inference)})
CPU_BEFORE = [
    ("2026-11-23, load average 1.7, Haswell kernels (OPENBLAS_CORETYPE=Haswell)",
     "before the CPU speed-ups", {"small": (0.50, 0.54), "fmnist": (0.66, 0.59)}),
    ("2026-11-30 17:27 UTC, load average ~1.1, SkylakeX kernels (OPENBLAS_CORETYPE=SkylakeX)",
     "conv a block of images per thread, scratch buffers, single-threaded BLAS in minialex's "
     "threads", {"small": (0.66, 0.85), "fmnist": (0.83, 0.89)}),
    ("2026-11-30 18:08 UTC, load average 1.1, Haswell kernels (OPENBLAS_CORETYPE=Haswell)",
     "the same code after a review's fixes", {"small": (0.56, 0.63), "fmnist": (0.62, 0.62)}),
]
# a small rate: random inputs and labels at the paper's 0.01 drive some variants to inf within a
# few steps, and arithmetic on inf/NaN is not what a benchmark should time
LR = 1e-4




# -- minialex ---------------------------------------------------------------------------------
def bench_minialex(model, x, y, args, sync, inference=True):
    """Seconds per training step and per inference pass (None unless ``inference``)."""
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def train_step():
        loss = F.cross_entropy(model(Tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer():
        with minialex.no_grad():
            model(Tensor(x))

    model.train()
    train = median_seconds(train_step, args.steps, args.warmup, sync)
    if not inference:
        return train, None
    model.eval()
    return train, median_seconds(infer, args.steps, args.warmup, sync)


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


def bench_torch(twin, x, y, args, torch, sync, inference=True):
    """Seconds per training step and per inference pass (None unless ``inference``)."""
    optimizer = torch.optim.SGD(twin.parameters(), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)

    def train_step():
        loss = torch.nn.functional.cross_entropy(twin(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            twin(x)

    twin.train()
    train = median_seconds(train_step, args.steps, args.warmup, sync)
    if not inference:
        return train, None
    twin.eval()
    return train, median_seconds(infer, args.steps, args.warmup, sync)


# -- DeZero -----------------------------------------------------------------------------------
class _DezeroParams:
    """What DeZero's optimizers ask of a model: ``params()``."""

    def __init__(self, params):
        self.list = params

    def params(self):
        return iter(self.list)


def dezero_twin(model):
    """The same network as a list of DeZero functions with minialex's weights, and its
    parameters; ``(None, reason)`` where DeZero has no counterpart for a layer (it has no grouped
    convolution, LRN or adaptive pooling, so of the variants only ``small``, ``fmnist`` and
    ``one-tower``-like nets without LRN convert)."""
    ops, params = [], []

    def param(array):
        params.append(dezero.Parameter(np.array(backend.to_numpy(array), copy=True)))
        return params[-1]

    layers = list(model.features.children())
    layers += [model.avgpool] if model.avgpool is not None else []
    layers += [None] + list(model.classifier.children())   # None: the flattening
    for m in layers:
        if m is None:
            ops.append(lambda x: DF.reshape(x, (x.shape[0], -1)))
        elif isinstance(m, nn.Conv2d) and m.groups == 1 and m.bias is not None:
            W, b = param(m.weight.data), param(m.bias.data)
            ops.append(lambda x, W=W, b=b, s=m.stride, p=m.padding: DF.conv2d(x, W, b, s, p))
        elif isinstance(m, nn.Linear) and m.bias is not None:   # DeZero's linear is x @ W
            W, b = param(backend.to_numpy(m.weight.data).T), param(m.bias.data)
            ops.append(lambda x, W=W, b=b: DF.linear(x, W, b))
        elif isinstance(m, nn.ReLU):
            ops.append(DF.relu)
        elif isinstance(m, nn.MaxPool2d):
            ops.append(lambda x, k=m.kernel_size, s=m.stride, p=m.padding:
                       DF.pooling(x, k, s, p))
        elif isinstance(m, nn.Dropout) and m.mode == "inverted":
            ops.append(lambda x, p=m.p: DF.dropout(x, p))
        else:
            return None, f"DeZero has no {m!r}"

    def forward(x):
        for op in ops:
            x = op(x)
        return x
    return (forward, _DezeroParams(params)), None


class DezeroCrossEntropy32(DF.SoftmaxCrossEntropy if DF else object):
    """DeZero's softmax cross-entropy, its backward kept in the logits' dtype. DeZero's own
    scales ``gy`` by a Python float and subtracts a one-hot of the labels' int dtype; under
    NumPy 2's promotion rules (NEP 50) either turns its whole backward into float64."""

    def backward(self, gy):
        x, t = self.inputs
        onehot = np.eye(x.shape[1], dtype=x.dtype)[t.data]
        return (DF.softmax(x) - onehot) * (gy * x.dtype.type(1.0 / x.shape[0])), None


def bench_dezero(twin, x, y, args, inference=True):
    """Seconds per training step and per inference pass (None unless ``inference``) of DeZero's
    float32 step (its loss through :class:`DezeroCrossEntropy32`)."""
    forward, model = twin
    optimizer = dezero.optimizers.MomentumSGD(lr=LR, momentum=MOMENTUM).setup(model)
    optimizer.add_hook(dezero.optimizers.WeightDecay(WEIGHT_DECAY))

    def train_step():
        loss = DezeroCrossEntropy32()(forward(dezero.Variable(x)), y)
        for p in model.params():
            p.cleargrad()
        loss.backward()
        optimizer.update()

    def infer():
        with dezero.test_mode(), dezero.no_grad():
            forward(dezero.Variable(x))

    train = median_seconds(train_step, args.steps, args.warmup, lambda: None)
    if not inference:
        return train, None
    return train, median_seconds(infer, args.steps, args.warmup, lambda: None)


# -- peak memory: one training step in a fresh process per framework ---------------------------
def seeded_problem(name, batch):
    """The model ``name`` at seed 0 and one batch of random fp32 images and labels: the same in
    the timing run and in each peak-memory child."""
    minialex.manual_seed(0)
    model = alexnet(name)
    C, S = model.in_channels, model.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, S, S), dtype=np.float32)
    return model, x, rng.integers(0, model.num_classes, batch)


def rss_bytes(field: str) -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process from /proc, None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_child(framework, name, batch):
    """In a fresh process: ``(peak, base)`` resident memory in bytes, ``base`` after the imports
    (the same for every framework: this script imports all three) and ``peak`` the most held
    from then on, through a warm-up and one timed training step of ``framework``. Linux lets a
    process reset its peak (``clear_refs`` 5), so the imports' own transient peak is not counted;
    elsewhere ``peak`` is ru_maxrss, the process's lifetime peak."""
    base = rss_bytes("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        base = None
    model, x, y = seeded_problem(name, batch)
    args = argparse.Namespace(steps=1, warmup=1)
    if framework == "minialex":
        bench_minialex(model, x, y, args, lambda: None, inference=False)
    elif framework == "torch":
        torch = import_torch(False)
        twin = torch_twin(model, torch)
        del model   # only the twin's weights from here on, as in a PyTorch-only program
        bench_torch(twin, torch.from_numpy(x), torch.from_numpy(y), args, torch, lambda: None,
                    inference=False)
    else:
        twin, _ = dezero_twin(model)
        del model
        bench_dezero(twin, x, y, args, inference=False)
    if base is None:   # no /proc: the lifetime peak (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak * (1 if sys.platform == "darwin" else 1024), 0
    return rss_bytes("VmHWM"), base


def peak_rss(framework, name, batch):
    """``(peak, base)`` from :func:`peak_rss_child` run in a fresh Python process."""
    done = subprocess.run([sys.executable, __file__, "--peak-rss-child", framework,
                           "--models", name, "--batch", str(batch)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)  # the child's traceback, which capture_output took
        raise RuntimeError(f"bench_train: the peak-memory run of {framework} on {name} failed "
                           f"with exit status {done.returncode} (its stderr is above)")
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


# -- a busy machine: other processes competing for the cores -----------------------------------
# Each competitor is another job's CPU work: a NumPy GEMM loop on BLAS's default threads (one per
# core), the kind of process that shares a workstation or a CI runner with a training run. It
# stops by itself when its parent goes (a benchmark killed with SIGKILL cannot stop it).
COMPETITOR = ("import os, sys\n"
              "import numpy as np\n"
              "parent = int(sys.argv[1])  # not getppid() here: the parent may be gone already\n"
              "a = np.ones((1024, 1024), dtype=np.float32)\n"
              "while os.getppid() == parent:\n"
              "    a @ a\n")


class Competitors:
    """``with Competitors(k):`` runs ``k`` competing processes and stops them on exit."""

    def __init__(self, count):
        self.count, self.procs = count, []

    def __enter__(self):
        try:  # a Ctrl-C here (the sleep is where it lands) would skip __exit__
            for _ in range(self.count):
                self.procs.append(subprocess.Popen([sys.executable, "-c", COMPETITOR,
                                                   str(os.getpid())]))
            time.sleep(1.0)   # past their start-up, so they compete from the first timed step
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait()


def busy_slowdowns(model, x, y, twin, tx, ty, torch, args, m_quiet, t_quiet):
    """For each count in ``args.busy``: training img/s of minialex and PyTorch beside that many
    competitors, and each one's slowdown (busy step time / the quiet step time measured
    before)."""
    out = {}
    for count in args.busy:
        with Competitors(count):
            print(f"busy machine, {count} competing process{'es' * (count > 1)} ...", flush=True)
            m_busy, _ = bench_minialex(model, x, y, args, lambda: None, inference=False)
            entry = {"minialex_train": len(x) / m_busy, "minialex_slowdown": m_busy / m_quiet}
            if twin is not None:
                t_busy, _ = bench_torch(twin, tx, ty, args, torch, lambda: None, inference=False)
                entry.update({"torch_train": len(x) / t_busy, "torch_slowdown": t_busy / t_quiet})
        out[str(count)] = entry
    return out


# -- the run ----------------------------------------------------------------------------------
def bench(args):
    gpu = args.gpu
    device = backend.parse_device("gpu") if gpu else "cpu"
    plan = ([(name, args.batch or dict(DEFAULTS["gpu" if gpu else "cpu"]).get(name, 32))
             for name in args.models.split(",")] if args.models
            else [(name, args.batch or batch) for name, batch in DEFAULTS["gpu" if gpu else "cpu"]])
    torch = None if args.no_torch else import_torch(gpu)
    if torch is not None and not gpu:
        torch.set_num_threads(cpu_threads())  # the cores minialex uses, no more and no fewer
    if gpu:
        cupy = backend.require_cupy()
        pool = cupy.get_default_memory_pool()
        sync = cupy.cuda.get_current_stream().synchronize
    else:
        pool, sync = None, (lambda: None)
    torch_sync = (torch.cuda.synchronize if gpu else (lambda: None)) if torch else None
    rows = []
    for name, batch in plan:
        model, x_host, y_host = seeded_problem(name, batch)
        C, S = model.in_channels, model.input_size
        twin = torch_twin(model, torch) if torch else None
        dz, dz_reason = (dezero_twin(model) if dezero is not None and args.dezero and not gpu
                         else (None, None))
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
        if dz is not None:
            with dezero.test_mode(), dezero.no_grad():
                theirs = dz[0](dezero.Variable(x_host[:4])).data
            with minialex.no_grad():
                mine = backend.to_numpy(model.eval()(Tensor(x[:4])).data)
            row["dezero_max_abs_logit_diff"] = float(np.abs(mine - theirs).max())
        elif dz_reason:
            row["dezero_skipped"] = dz_reason
        if pool is not None:
            pool.free_all_blocks()
        # The frameworks take turns, round by round: a machine that slows for a while (another
        # process, the clock) then slows both, not whichever happened to be timed then.
        if twin is not None and gpu:
            torch.cuda.reset_peak_memory_stats()
        print(f"{name}: minialex" + (f" and PyTorch {torch.__version__}" if twin else "")
              + f", batch {batch}, {S}x{S}, {args.rounds} round(s) ...", flush=True)
        timers = [functools.partial(bench_minialex, model, x, y, args, sync)]
        if twin is not None:
            timers.append(functools.partial(bench_torch, twin, tx, ty, args, torch, torch_sync))
        mine, *others = take_turns(args.rounds, *timers)
        theirs = others[0] if others else []
        m_train, m_infer = (statistics.median(times) for times in zip(*mine))
        row.update({"minialex_train": batch / m_train, "minialex_inference": batch / m_infer,
                    "minialex_peak_bytes": pool.total_bytes() if pool is not None else None})
        if twin is not None:
            t_train, t_infer = (statistics.median(times) for times in zip(*theirs))
            row.update({"torch_train": batch / t_train, "torch_inference": batch / t_infer,
                        "train_ratio": t_train / m_train, "inference_ratio": t_infer / m_infer,
                        "train_ratio_rounds": [t[0] / m[0] for m, t in zip(mine, theirs)],
                        "inference_ratio_rounds": [t[1] / m[1] for m, t in zip(mine, theirs)],
                        "torch_peak_bytes": torch.cuda.max_memory_reserved() if gpu else None})
        if dz is not None:
            print(f"{name}: DeZero {dezero.__version__} ...", flush=True)
            # one timed pass after one warm-up: DeZero's steps take many times minialex's
            d_train, d_infer = bench_dezero(dz, x_host, y_host,
                                            argparse.Namespace(steps=1, warmup=1))
            row.update({"dezero_train": batch / d_train, "dezero_inference": batch / d_infer,
                        "train_vs_dezero": d_train / m_train,
                        "inference_vs_dezero": d_infer / m_infer})
        if args.memory and not gpu and resource is not None:
            for framework, present in (("minialex", True), ("torch", twin is not None),
                                       ("dezero", dz is not None)):
                if present:
                    print(f"{name}: peak memory of a {framework} training step ...", flush=True)
                    row[f"{framework}_peak_rss"], row[f"{framework}_base_rss"] = peak_rss(
                        framework, name, batch)
        if args.busy and not gpu:
            row["busy"] = busy_slowdowns(model, x, y, twin, tx if twin is not None else None,
                                         ty if twin is not None else None, torch, args,
                                         m_train, t_train if twin is not None else None)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, twin, dz
    gpu_name = None
    if gpu:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
        gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return rows, gpu_name, torch




def take_turns(rounds, *timers):
    """Call each timer once per round, in turn, the order reversed every other round (so that
    neither always runs first); each timer's results, round by round."""
    results = [[] for _ in timers]
    for turn in range(rounds):
        order = list(zip(timers, results))
        for timer, out in (order if turn % 2 == 0 else reversed(order)):
            out.append(timer())
    return results


def ratio_cell(row, mode) -> str:
    """The ratio, and the range of the rounds' ratios when there were several rounds."""
    rounds = row.get(f"{mode}_ratio_rounds") or []
    text = f"{row[f'{mode}_ratio']:.2f}"
    return text + (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else "")


def markdown(rows, gpu_name, torch, args, command, load_start=None) -> str:
    device = f"{cpu_name()}, {os.cpu_count()} CPUs" + (f"; GPU {gpu_name}" if gpu_name
                                                       else "; no GPU")
    if hasattr(os, "getloadavg"):   # other work on the machine skews the figures; say how much
        start = "" if load_start is None else f"{load_start:.1f} at the start, "
        device += f"; load average {start}{os.getloadavg()[0]:.1f} at the end"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mib = lambda b: "" if b is None else f"{b / 2 ** 20:,.0f} MiB"   # noqa: E731
    extra = [f"DeZero {dezero.__version__}"] if any("dezero_train" in r for r in rows) else []
    lines = [f"## Training steps and inference ({'GPU ' + gpu_name if gpu_name else 'CPU'})", "",
             f"`{command}`, {date}.", f"Device: {device}. "
             f"{versions(*extra, gpu=bool(gpu_name), torch=torch)}.",
             f"CPU threads: minialex {cpu_threads()}" + (
                 f", PyTorch {torch.get_num_threads()}" if torch is not None else "") + ".",
             f"Median of {args.steps} timed steps after {args.warmup} warm-up, in each of "
             f"{args.rounds} round{'s' * (args.rounds != 1)}"
             + (" in which minialex and PyTorch take turns (each first every other round)"
                if torch is not None else "")
             + f"; a framework's figure is the median of its rounds' medians. Random fp32 "
             f"input on the device; SGD lr {LR:g}, momentum {MOMENTUM}, weight decay "
             f"{WEIGHT_DECAY}; TF32 off. Ratio = minialex img/s / PyTorch img/s (above 1: "
             f"minialex is faster), and in brackets the lowest and highest of the rounds' "
             f"ratios; vs DeZero likewise, DeZero's float32 step on the same net and weights "
             f"(one timed pass after one warm-up: its steps are slow).", ""]
    with_dezero = bool(extra)
    header = "| model | input | batch | pass | minialex img/s | PyTorch img/s | ratio |"
    rule = "|---|---|---:|---|---:|---:|---:|"
    if with_dezero:
        header += " DeZero img/s | vs DeZero |"
        rule += "---:|---:|"
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
                     "-" if torch_rate is None else ratio_cell(r, mode)]
            if with_dezero:
                dz_rate = r.get(f"dezero_{mode}")
                cells += (["-", "-"] if dz_rate is None else
                          [f"{dz_rate:,.1f}", f"{r[f'{mode}_vs_dezero']:.1f}"])
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
    dz_checks = [f"{r['model']} {r['dezero_max_abs_logit_diff']:.1e}" for r in rows
                 if "dezero_max_abs_logit_diff" in r]
    if dz_checks:
        lines += ["", "The same against DeZero: " + ", ".join(dz_checks) + "."]
    skipped = [f"{r['model']} ({r['dezero_skipped']})" for r in rows if "dezero_skipped" in r]
    if skipped:
        lines += ["", "DeZero skipped for " + ", ".join(skipped) + "."]
    if resource is None and args.memory and not gpu_name:
        lines += ["", "No peak-memory figures: Python's resource module (Unix only) is missing."]
    lines += memory_lines(rows) + busy_lines(rows)
    if not gpu_name:
        ref = "; ".join(f"{k} {t} train / {i} inference img/s" for k, (t, i)
                        in CPU_REFERENCE.items())
        lines += ["", f"Reference measured earlier on this 2-core machine with PyTorch 2.13 "
                      f"CPU: {ref}.", "", "Earlier ratios (`--steps 5`):", ""]
        for when, what, ratios in CPU_BEFORE:
            figures = "; ".join(f"{k} {t:.2f} train / {i:.2f} inference"
                                for k, (t, i) in ratios.items())
            lines.append(f"- {when}, {what}: {figures}.")
    return "\n".join(lines) + "\n"


def memory_lines(rows) -> list:
    """The peak-memory table: each framework's training step in a fresh process."""
    rows = [r for r in rows if "minialex_peak_rss" in r]
    if not rows:
        return []
    mib = lambda b: f"{b / 2 ** 20:,.0f}"   # noqa: E731
    lines = ["", "Peak memory of a training step: the peak resident set (VmHWM, reset after the "
                 "imports) of a fresh process that runs one warm-up and one timed step of one "
                 "framework, and that peak less the process's size after its imports (the same "
                 "for all: this script imports every framework), in MiB; ratio = minialex / "
                 "PyTorch, above the imports.", "",
             "| model | batch | minialex peak (above imports) | PyTorch peak (above imports) "
             "| ratio | DeZero peak (above imports) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["model"], str(r["batch"])]
        for fw in ("minialex", "torch"):
            peak = r.get(f"{fw}_peak_rss")
            cells.append("-" if peak is None else
                         f"{mib(peak)} ({mib(peak - r[f'{fw}_base_rss'])})")
        above = {fw: r[f"{fw}_peak_rss"] - r[f"{fw}_base_rss"] for fw in ("minialex", "torch")
                 if f"{fw}_peak_rss" in r}
        cells.append(f"{above['minialex'] / above['torch']:.2f}" if "torch" in above else "-")
        peak = r.get("dezero_peak_rss")
        cells.append("-" if peak is None else f"{mib(peak)} ({mib(peak - r['dezero_base_rss'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def busy_lines(rows) -> list:
    """The busy-machine table: training beside competing processes, and each one's slowdown."""
    rows = [r for r in rows if r.get("busy")]
    if not rows:
        return []
    lines = ["", "A busy machine: training beside k competing processes, each a NumPy GEMM loop "
                 "on every core (another job's work), started and stopped by this script. "
                 "Slowdown = busy step time / the quiet step time above (lower is better). With "
                 "k competitors a fair share of the cores is 1/(1 + k), so a framework that kept "
                 "every core busy on the quiet machine slows by about 1 + k at best; one that "
                 "did not, less.", "",
             "| model | competitors | minialex img/s | slowdown | PyTorch img/s | slowdown |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for count, e in r["busy"].items():
            torch_cells = (["-", "-"] if "torch_train" not in e else
                           [f"{e['torch_train']:,.1f}", f"{e['torch_slowdown']:.2f}x"])
            lines.append("| " + " | ".join([r["model"], count, f"{e['minialex_train']:,.1f}",
                                            f"{e['minialex_slowdown']:.2f}x", *torch_cells])
                         + " |")
    return lines


def count_list(text: str) -> list:
    """``"1,2"`` -> [1, 2]; ``""``, ``"0"`` or ``"none"`` -> [] (no busy-machine runs)."""
    if text.strip().lower() in ("", "0", "none"):
        return []
    try:
        counts = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}")
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"counts must be >= 1, got {text!r}")
    return counts


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
    parser.add_argument("--rounds", type=int, help="rounds in which minialex and PyTorch take "
                        "turns (default: 3 CPU, 1 GPU)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--no-dezero", dest="dezero", action="store_false",
                        help="skip DeZero (CPU only; skipped anyway when not installed)")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip the peak-memory runs (CPU: one fresh process per framework)")
    parser.add_argument("--busy", type=count_list, default=[1, 2], metavar="K,K",
                        help="CPU: also time training beside K competing processes, for each K "
                             "(default 1,2; 0 or none to skip)")
    parser.add_argument("--results", action="store_true",
                        help="write the section into benchmarks/RESULTS.md")
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON here")
    parser.add_argument("--peak-rss-child", choices=("minialex", "torch", "dezero"),
                        help=argparse.SUPPRESS)   # the fresh process that peak_rss starts
    args = parser.parse_args(argv)
    if args.peak_rss_child:
        name = args.models or "small"
        batch = args.batch or dict(DEFAULTS["cpu"]).get(name, 32)
        print(json.dumps(peak_rss_child(args.peak_rss_child, name, batch)))
        return
    # SIGTERM (a CI timeout, kill) as SystemExit, so that the with-blocks' exits run and stop
    # the competitors, as Ctrl-C's KeyboardInterrupt does
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    gpu = args.gpu = use_gpu(parser, args.device, "bench_train.py")
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    if args.rounds is None:
        args.rounds = 1 if gpu else 3
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows, gpu_name, torch = bench(args)
    section = markdown(rows, gpu_name, torch, args, command.strip(), load_start)
    print(section)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": gpu_name or "cpu",
                       "versions": versions(gpu=bool(gpu_name), torch=torch),
                       "dezero": getattr(dezero, "__version__", None),
                       "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                       "rows": rows}, f, indent=2)
    if args.results:
        save_section("bench_train", gpu_name or "cpu", section)
        print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
