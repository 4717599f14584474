"""Every kernels/*.cu compiles as CuPy compiles it at run time: by NVIDIA's NVRTC, with the
options CuPy's ``RawModule`` passes, into the binary for a real GPU.

NVRTC compiles CUDA C++ on a machine with no GPU and no driver; its library comes from NVIDIA's
pip wheel ``nvidia-cuda-nvrtc-cu12`` (the CUDA 12 release, as the ``gpu`` extra's
``cupy-cuda12x``), which ``bash run.sh test`` installs. The options are CuPy's for a
``RawModule(code=...)`` given none of its own: ``--std=c++17`` (its default standard),
``-ftz=true`` (it always adds) and ``-arch=sm_XX`` of the device (so NVRTC emits the device's
binary, not PTX). ``sm_80`` and ``sm_90`` stand for the A100 and the H100/H200. The source is
the text minialex hands CuPy (:func:`minialex.cuda.kernel_source`).

The PTX of the same compile (``-arch=compute_90``) is then read back for what the kernels
promise: each exported name unmangled (``extern "C"``), and no shared memory, barriers or
atomics, which is also what lets the host build (tests/kernels/host_build.py) run them unchanged.
"""
import ctypes
import importlib.util
import os
import re
from pathlib import Path

import pytest

from minialex import cuda

import host_build

SOURCES = sorted(host_build.KERNEL_DIR.glob("*.cu"))
CUPY_OPTIONS = ("--std=c++17", "-ftz=true")
GPU_ARCHES = ("sm_80", "sm_90")


def _find_nvrtc():
    """The NVRTC library of the pip wheel, or None where the wheel is not installed."""
    spec = importlib.util.find_spec("nvidia.cuda_nvrtc")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for library in sorted(Path(folder, "lib").glob("libnvrtc.so.*")):
            return ctypes.CDLL(str(library))
    return None


NVRTC = _find_nvrtc()
if NVRTC is None and os.environ.get("CI"):
    pytest.fail("NVRTC (pip install nvidia-cuda-nvrtc-cu12) is missing; bash run.sh test "
                "installs it, and under CI the kernels' compile test must run",
                pytrace=False)
pytestmark = pytest.mark.skipif(
    NVRTC is None, reason="NVRTC is not installed (pip install nvidia-cuda-nvrtc-cu12)")


def nvrtc_compile(source: str, name: str, options) -> tuple:
    """(result code, compile log, output bytes): the cubin for ``-arch=sm_XX``, else the PTX."""
    program = ctypes.c_void_p()
    status = NVRTC.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                      0, None, None)
    assert status == 0, f"nvrtcCreateProgram returned {status}"
    try:
        encoded = [option.encode() for option in options]
        result = NVRTC.nvrtcCompileProgram(program, len(encoded),
                                           (ctypes.c_char_p * len(encoded))(*encoded))
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(program, log)
        output = b""
        if result == 0:
            binary = any(option.startswith("-arch=sm_") for option in options)
            get_size, get = ((NVRTC.nvrtcGetCUBINSize, NVRTC.nvrtcGetCUBIN) if binary
                             else (NVRTC.nvrtcGetPTXSize, NVRTC.nvrtcGetPTX))
            get_size(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            get(program, buffer)
            output = buffer.raw
        return result, log.value.decode(errors="replace").strip(), output
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(program))


def _compile_clean(source_path, options):
    result, log, output = nvrtc_compile(cuda.kernel_source(source_path.name), source_path.name,
                                        options)
    assert result == 0 and not log, (f"NVRTC {' '.join(options)} on {source_path.name}: result "
                                     f"{result}\n{log}")
    return output


@pytest.mark.parametrize("arch", GPU_ARCHES)
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_compiles_with_cupys_options_into_the_gpus_binary_without_a_warning(source, arch):
    cubin = _compile_clean(source, (*CUPY_OPTIONS, f"-arch={arch}"))
    assert cubin[:4] == b"\x7fELF"       # a device binary, as CuPy then loads it


@pytest.fixture(scope="module", params=SOURCES, ids=lambda path: path.name)
def ptx(request):
    """(source file, PTX text) of a warning-free NVRTC compile."""
    return request.param, _compile_clean(request.param,
                                         (*CUPY_OPTIONS, "-arch=compute_90")).decode().rstrip("\0")


def test_kernel_files_exist():
    assert {path.name for path in SOURCES} >= {"im2col.cu", "pool.cu", "lrn.cu", "relu.cu",
                                               "dropout.cu"}


def test_exports_every_kernel_unmangled(ptx):
    source, text = ptx
    exported = set(re.findall(r"\.visible\s+\.entry\s+(\w+)\s*\(", text))
    assert exported == set(host_build.kernel_signatures(source.read_text()))


def test_uses_no_shared_memory_barriers_or_atomics(ptx):
    source, text = ptx
    for construct, pattern in (("shared memory", r"\.shared\b"), ("a barrier", r"\bbar(rier)?\."),
                               ("an atomic", r"\b(atom|red)\.")):
        assert not re.search(pattern, text), f"{source.name} uses {construct}"


def test_a_broken_kernel_fails_to_compile():
    """The check itself can fail: NVRTC rejects a kernel with an error and says where."""
    result, log, _ = nvrtc_compile('extern "C" __global__ void k(float* y) { y[0] = z; }',
                                   "broken.cu", (*CUPY_OPTIONS, "-arch=sm_90"))
    assert result != 0 and "z" in log
