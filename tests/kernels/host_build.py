"""Build kernels/*.cu with the host C++ compiler and call the kernels through ctypes.

``g++ -O2 -shared -fPIC -x c++ -include kernels/host_shim.h kernels/X.cu`` turns each kernel file,
unchanged, into a shared library whose ``extern "C"`` kernels are plain functions; one call runs
the whole grid-stride loop (kernels/host_shim.h says how). The argument types are read from the
kernels' own signatures, and :meth:`HostKernels.__call__` accepts exactly the Python values that
CuPy would turn into those C types: ``numpy.int32`` for ``int``, ``numpy.int64`` for ``long long``,
``numpy.float32``/``numpy.float64`` for ``float``/``double``, an array of the pointed-to dtype (or
``None``, a null pointer) for a pointer. A plain Python int or float is refused, because CuPy
would pass it as a 64-bit value whatever the kernel expects.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
KERNEL_DIR = REPO / "kernels"
SHIM = KERNEL_DIR / "host_shim.h"
FLAGS = ["-O2", "-shared", "-fPIC", "-std=c++11", "-Wall", "-Wextra", "-x", "c++"]

# C parameter type -> (ctypes type, NumPy type a value must have, True when written to)
C_TYPES = {
    "int": (ctypes.c_int, np.int32, False),
    "long long": (ctypes.c_longlong, np.int64, False),
    "float": (ctypes.c_float, np.float32, False),
    "double": (ctypes.c_double, np.float64, False),
    "const float*": (ctypes.c_void_p, np.float32, False),
    "const double*": (ctypes.c_void_p, np.float64, False),
    "const int*": (ctypes.c_void_p, np.int32, False),
    "float*": (ctypes.c_void_p, np.float32, True),
    "double*": (ctypes.c_void_p, np.float64, True),
    "int*": (ctypes.c_void_p, np.int32, True),
}
_KERNEL = re.compile(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)")
_PARAMETER = re.compile(r"^(const\s+)?(long long|int|float|double)\s*(\*?)\s*(\w+)$")


def find_compiler() -> str | None:
    """The C++ compiler to use: $CXX, else g++, c++ or clang++ from PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def kernel_signatures(source: str) -> dict[str, list[tuple[str, str]]]:
    """``{kernel name: [(C type, parameter name), ...]}`` for every ``__global__`` function."""
    kernels = {}
    for name, parameters in _KERNEL.findall(source):
        typed = []
        for parameter in parameters.split(","):
            match = _PARAMETER.match(" ".join(parameter.split()))
            if match is None:
                raise ValueError(f"{name}: cannot read parameter {parameter.strip()!r}")
            const, base, star, pname = match.groups()
            typed.append(((const or "") + base + star, pname))
        kernels[name] = typed
    return kernels


class HostKernels:
    """Every kernel of kernels/*.cu, built for the host; ``kernels("im2col_f32", x, ...)``."""

    def __init__(self, build_dir: Path, compiler: str):
        self.build_dir = build_dir
        self.warnings = {}        # file name -> compiler diagnostics (empty when clean)
        self.signatures = {}      # kernel name -> [(C type, parameter name), ...]
        self._functions = {}      # kernel name -> (ctypes function, its library)
        for source in sorted(KERNEL_DIR.glob("*.cu")):
            library = build_dir / f"lib{source.stem}.so"
            newest_input = max(source.stat().st_mtime, SHIM.stat().st_mtime)
            if library.is_file() and library.stat().st_mtime >= newest_input:
                self.warnings[source.name] = ""   # built earlier in this folder (a subprocess)
            else:
                command = [compiler, *FLAGS, "-include", str(SHIM), str(source), "-o",
                           str(library)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"host build of {source.name} failed:\n{done.stderr}")
                self.warnings[source.name] = done.stderr.strip()
            dll = ctypes.CDLL(str(library))
            dll.minialex_host_thread.argtypes = [ctypes.c_uint] * 4
            for name, parameters in kernel_signatures(source.read_text()).items():
                function = getattr(dll, name)
                function.argtypes = [C_TYPES[ctype][0] for ctype, _ in parameters]
                function.restype = None
                self.signatures[name] = parameters
                self._functions[name] = (function, dll)

    def __call__(self, name: str, *args, launch: tuple[int, int] = (1, 1)) -> None:
        """Run kernel ``name`` on ``args``, as a 1-D launch of ``launch = (blocks, threads)``:
        every (block, thread) runs in turn, each one call of its share of the grid-stride loop."""
        function, dll = self._functions[name]
        values = self.convert(name, args)
        blocks, threads = launch
        for block in range(blocks):
            for thread in range(threads):
                dll.minialex_host_thread(blocks, threads, block, thread)
                function(*values)
        dll.minialex_host_thread(1, 1, 0, 0)

    def convert(self, name: str, args) -> list:
        """ctypes values for ``args``; TypeError unless each matches its C parameter exactly."""
        parameters = self.signatures[name]
        if len(args) != len(parameters):
            raise TypeError(f"{name} takes {len(parameters)} arguments "
                            f"({', '.join(p for _, p in parameters)}), got {len(args)}")
        values = []
        for value, (ctype, pname) in zip(args, parameters):
            _, np_type, written = C_TYPES[ctype]
            if ctype.endswith("*"):
                if value is None and not written:
                    values.append(None)
                    continue
                if not (isinstance(value, np.ndarray) and value.dtype == np_type
                        and value.flags.c_contiguous):
                    raise TypeError(f"{name}: {pname} ({ctype}) needs a C-contiguous "
                                    f"{np.dtype(np_type)} array, got {_describe(value)}")
                if written and not value.flags.writeable:
                    raise TypeError(f"{name}: {pname} is written to but the array is read-only")
                values.append(value.ctypes.data)
            else:
                if type(value) is not np_type:
                    raise TypeError(f"{name}: {pname} ({ctype}) needs numpy.{np_type.__name__}, "
                                    f"got {_describe(value)}")
                values.append(value.item())
        return values


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        order = "C-contiguous" if value.flags.c_contiguous else "non-contiguous"
        return f"a {order} {value.dtype} array"
    return f"{type(value).__name__} {value!r}"


_built: dict[str, HostKernels] = {}


def load(tmp_path_factory) -> HostKernels:
    """The host build, made once per test session (shared by every test module that asks)."""
    compiler = find_compiler()
    if compiler is None:
        import pytest
        missing = ("no C++ compiler (g++, c++ or clang++, or $CXX) to build kernels/*.cu for "
                   "the host")
        if os.environ.get("CI"):  # there every gpu test would skip and CI would still pass
            pytest.fail(f"{missing}: run.sh installs Debian's g++")
        pytest.skip(missing)
    if compiler not in _built:
        _built[compiler] = HostKernels(tmp_path_factory.mktemp("host_kernels"), compiler)
    return _built[compiler]
