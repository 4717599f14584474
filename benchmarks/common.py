"""What every benchmark shares: the machine's description, timing, the optional PyTorch import,
the --device choice, and benchmarks/RESULTS.md, where each benchmark owns one marked section per
device and rewrites only it."""
import os
import pathlib
import platform
import re
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info

import minialex
from minialex import backend

try:                # optional: only the comparisons with PyTorch need it (import_torch)
    import torch
except ImportError:
    torch = None

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> str:
    """NumPy's BLAS library, its version and the kernels it runs (threadpoolctl), and any
    OPENBLAS_CORETYPE setting: every CPU GEMM of minialex (and of DeZero) runs at that kernel's
    speed, so a figure means little without it. OpenBLAS picks its kernels for the CPU it
    finds, unless OPENBLAS_CORETYPE names others (some machines set it, e.g. AVX2 kernels on
    an AVX-512 CPU, which makes a training step about a third slower)."""
    found = [info for info in threadpool_info() if info.get("user_api") == "blas"
             and "numpy" in info.get("filepath", "")] or [
             info for info in threadpool_info() if info.get("user_api") == "blas"]
    if not found:
        return "NumPy's BLAS unknown"
    info = found[0]
    text = f"NumPy's BLAS {info.get('internal_api', '?')} {info.get('version', '?')}"
    if info.get("architecture"):
        pinned = os.environ.get("OPENBLAS_CORETYPE")
        why = (f"OPENBLAS_CORETYPE={pinned}" if pinned
               else "OPENBLAS_CORETYPE not set: chosen for this CPU")
        text += f" ({info['architecture']} kernels; {why})"
    return text


def versions(*extra: str, gpu=False, torch=None) -> str:
    """minialex, Python, NumPy and its BLAS, then ``extra``, CuPy on a GPU, and PyTorch when it
    was used."""
    parts = [f"minialex {minialex.__version__}", f"Python {platform.python_version()}",
             f"NumPy {np.__version__}", numpy_blas(), *extra]
    if gpu:
        parts.append(f"CuPy {backend.require_cupy().__version__}")
    if torch is not False:  # False: this benchmark never compares with PyTorch
        parts.append(f"PyTorch {torch.__version__}" if torch else "PyTorch not importable")
    return ", ".join(parts)


def median_seconds(fn, repeats: int, warmup: int, sync) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` untimed ones; ``sync``
    waits for the device, so GPU work is counted where it happens."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_torch(gpu: bool, tf32: bool = False):
    """PyTorch with TF32 set as asked, or None when it is absent (or has no CUDA for a GPU run)."""
    if torch is None or gpu and not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return torch


def use_gpu(parser, device: str, script: str) -> bool:
    """True to benchmark on the GPU: ``--device gpu`` (refused in one line when none is usable)
    or ``auto`` with a usable GPU."""
    if device == "gpu":
        try:
            backend.require_cupy()
        except RuntimeError as exc:
            parser.exit(2, f"{script}: error: {exc}\n")
        return True
    return device == "auto" and backend.gpu_available()


def save_section(script: str, device: str, section: str) -> None:
    """Replace ``script``'s earlier section for ``device``, else append; other sections stay."""
    key = f"{script} {device}"
    block = f"<!-- {key} -->\n{section}<!-- /{key} -->\n"
    text = RESULTS.read_text() if RESULTS.exists() else "# minialex benchmark results\n"
    pattern = re.compile(rf"<!-- {re.escape(key)} -->\n.*?<!-- /{re.escape(key)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)
