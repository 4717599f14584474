"""Every kernels/*.cu compiles for the GPU: ``nvcc -ptx`` with warnings as errors.

At run time CuPy compiles the same files with NVRTC (see minialex/cuda.py), which needs no
driver and no GPU but is not always installed; nvcc is on this project's machines and CI. The
files are compiled as C++14, the standard CuPy's RawModule asks NVRTC for, and the PTX is then
read back for what the kernels promise: each exported name unmangled (``extern "C"``), and no
shared memory, barriers or atomics, which is also what lets the host build run them unchanged.
"""
import re
import shutil
import subprocess

import pytest

import host_build

NVCC = shutil.which("nvcc")
SOURCES = sorted(host_build.KERNEL_DIR.glob("*.cu"))
ARCH = "sm_80"  # Ampere; its PTX is JIT-compiled for any later GPU (H100 is sm_90)

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA toolkit) is not on PATH")


@pytest.fixture(scope="module", params=SOURCES, ids=lambda path: path.name)
def ptx(request, tmp_path_factory):
    """(source file, PTX text) after a warning-free nvcc compile."""
    source = request.param
    target = tmp_path_factory.mktemp("ptx") / f"{source.stem}.ptx"
    command = [NVCC, "-ptx", f"-arch={ARCH}", "-std=c++14", "-Werror", "all-warnings",
               str(source), "-o", str(target)]
    done = subprocess.run(command, capture_output=True, text=True)
    diagnostics = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not diagnostics, (
        f"{' '.join(command)} exited {done.returncode}:\n{diagnostics}")
    return source, target.read_text()


def test_kernel_files_exist():
    assert {path.name for path in SOURCES} >= {"im2col.cu", "pool.cu", "lrn.cu", "relu.cu",
                                               "dropout.cu"}


def test_compiles_and_exports_every_kernel_unmangled(ptx):
    source, text = ptx
    exported = set(re.findall(r"\.visible\s+\.entry\s+(\w+)\s*\(", text))
    assert exported == set(host_build.kernel_signatures(source.read_text()))


def test_uses_no_shared_memory_barriers_or_atomics(ptx):
    source, text = ptx
    for construct, pattern in (("shared memory", r"\.shared\b"), ("a barrier", r"\bbar(rier)?\."),
                               ("an atomic", r"\b(atom|red)\.")):
        assert not re.search(pattern, text), f"{source.name} uses {construct}"
