"""A CuPy stand-in: minialex's GPU code path run on the CPU, failing where real CuPy fails.

The ``gpu`` and ``device`` fixtures of conftest.py install :func:`module` as ``cupy`` when no real
GPU is usable, so every GPU test runs in CI; on a machine with a GPU the same tests run on real
CuPy. Arrays live in NumPy, but the rules that GPU code breaks are CuPy's, each checked against
CuPy's own source (cupy/cupy at 6b6d956, August 2026: ``cupy/_core/*.pyx``, ``cupy/cuda/*.pyx``)
or its documentation:

- A device array is its own class, :class:`ndarray` (not an ``numpy.ndarray`` subclass), and
  implicit conversion to NumPy raises ``TypeError``: ``_ndarray_base.__array__`` in
  ``cupy/_core/core.pyx`` raises "Implicit conversion to a NumPy array is not allowed. Please
  use `.get()` to construct a NumPy array explicitly." ``.get()`` and ``cupy.asnumpy`` copy.
- Operations refuse NumPy operands: ``_preprocess_arg`` in ``cupy/_core/_kernel.pyx`` wraps any
  argument that is not a CuPy array in ``_scalar.CScalar``, whose constructor
  (``cupy/_core/_scalar.pyx``) raises ``TypeError('Unsupported type ...')`` for anything but a
  Python or NumPy scalar, so ``cupy_array + numpy_array`` (and ``numpy_array + cupy_array``,
  which NumPy hands to ``ndarray.__array_ufunc__``) fail.
- New arrays are allocated on the *current* device, and an operand on another device is refused:
  ``_check_peer_access`` (``cupy/_core/_kernel.pyx``) raises "The device where the array resides
  (1) is different from the current device (0). Peer access is unavailable between these
  devices." (the stand-in's devices have no peer access). Views (reshape, transpose, slices,
  ``as_strided``) run no kernel and stay where their source is; ``copy()`` and
  ``cupy.asarray`` copy from any device to the current one (``_array_from_cupy_ndarray``,
  ``ndarray.copy``: "makes a copy of a given array in the current device").
- ``cuda.Device(n)`` as a context manager makes ``n`` current and restores the previous device
  on exit (``Device.__enter__``/``__exit__`` in ``cupy/cuda/device.pyx``); like CUDA's runtime
  the current device is per host thread.
- ``RawModule``/``RawKernel`` launches run the kernel file built for the host
  (``tests/kernels/host_build.py``), whose arguments must match the kernel's C signature after
  CuPy's conversion (``_pointer`` in ``cupy/cuda/function.pyx``): a CuPy array becomes its
  pointer, ``None`` a null pointer, a Python ``int`` an ``int64`` (``uint64`` from 2**63) and
  a Python ``float`` a ``double`` (``numpy_dtype_from_pyscalar``; anything else is an
  "Unsupported type"), so a kernel taking ``int`` or ``float`` needs
  ``numpy.int32``/``numpy.float32``; a NumPy array of more than one element is refused
  ("Only numpy.ndarrays of size one can be passed by value"). ``grid`` and ``block`` must be
  tuples (``Function.__call__(self, tuple grid, tuple block, ...)``) within CUDA's limits
  (CUDA C++ Programming Guide, "Compute Capabilities", table "Technical Specifications":
  1024 threads per block, block z <= 64, grid x <= 2**31 - 1, grid y and z <= 65535).
- ``cupy.empty`` returns memory as the allocator left it: here NaN (floats), -7 (signed
  integers), the maximum (unsigned) or True, so an output a kernel forgot to write shows.
- cuBLAS ``gemmEx`` reads column-major operands through their pointers, as cuBLAS does.
- ``cuda.nccl`` has CuPy's names and signatures (``cupy_backends/cuda/libs/nccl.pyx`` and
  ``nccl.pxd``): ``get_unique_id()`` returns a tuple of 128 ints, ``NcclCommunicator(ndev,
  commId, rank)`` binds the current device, and ``allReduce(sendbuf, recvbuf, count, datatype,
  op, stream)`` and ``bcast(buff, count, datatype, root, stream)`` take raw device pointers
  (``array.data.ptr``) and NCCL's enum values (``NCCL_FLOAT32 = 7``, ``NCCL_SUM = 0``, ...). The
  processes of the communicator are MPI's (mpi4py, imported when one is made): each pointer is
  mapped back to the stand-in buffer it lies in, which must be on the communicator's device.

:data:`ALLOCATIONS` counts the buffers made on each device; :data:`TRANSFERS` counts
host<->device copies: ``d2h`` for ``get``, ``asnumpy``, ``item``, ``float()``/``int()``/``bool()``,
printing, and the value-sized results that make CuPy read a count back (``nonzero``,
``argwhere``, ``flatnonzero``, ``compress``, ``unique``, boolean-mask indexing); ``h2d`` for
``asarray``/``array`` of host data, host values assigned into device arrays and host index
arrays.

Run as a script, it runs another script under the stand-in (``python tests/cupy_standin.py
BUILD_DIR script.py args...``; BUILD_DIR keeps the host-built kernels between runs).
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import runpy
import sys
import threading
import types
import weakref
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernels"))
import host_build  # noqa: E402

DEVICE_COUNT = 2          # two devices, so tests can show where each array is allocated
SM_COUNT = 2              # MultiProcessorCount of each device (small: the grid cap is reached)
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
NAME = b"CuPy stand-in (NumPy on the CPU)"


class Transfers:
    """Host<->device copies since the last :meth:`reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.d2h = self.h2d = 0

    def __repr__(self):
        return f"Transfers(d2h={self.d2h}, h2d={self.h2d})"


TRANSFERS = Transfers()
ALLOCATIONS = [0] * DEVICE_COUNT   # new buffers made on each device (views are not counted)
LAUNCHES = []                      # (kernel name, grid, block) of every launch, in order
_current = threading.local()   # .device: this thread's current device (CUDA's is per thread)
_roots = weakref.WeakValueDictionary()   # id -> every allocation's root buffer
_root_device = {}                        # id -> the device of that buffer
# the loader's prefetch thread allocates while the main thread looks buffers up (cuBLAS)
_roots_lock = threading.Lock()


class CUDARuntimeError(RuntimeError):
    """What ``cupy.cuda.runtime`` raises for a bad device number."""


def current_device() -> int:
    return getattr(_current, "device", 0)


def _set_device(device: int) -> None:
    if not 0 <= device < DEVICE_COUNT:
        raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {device}")
    _current.device = device


# -- arrays -------------------------------------------------------------------------------------
def _poisoned(shape, dtype):
    """What a fresh allocation holds: values no correct kernel leaves behind."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or dtype.kind == "c":
        fill = np.nan
    elif dtype.kind == "i":
        fill = -7
    elif dtype.kind == "u":
        fill = np.iinfo(dtype).max
    else:
        fill = True
    return np.full(shape, fill, dtype=dtype)


def _peer_error(array, device):
    return ValueError(f"The device where the array resides ({array._device}) is different "
                      f"from the current device ({device}). Peer access is unavailable between "
                      f"these devices.")


def _unwrap(value, found):
    """The NumPy value behind a kernel operand; CuPy arrays are noted in ``found``."""
    if isinstance(value, ndarray):
        found.append(value)
        return value._array
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, found) for v in value)
    return value


def _on_device(found, device):
    for a in found:
        if a._device != device:
            raise _peer_error(a, device)


def _wrap(result, found, device):
    """A NumPy result as CuPy returns it: a view stays on its source's device, anything new is
    allocated on the current device from operands that all live there; scalars become 0-d."""
    if isinstance(result, np.ndarray):
        for a in found:
            if np.may_share_memory(result, a._array):
                return ndarray._of(result, a._device)
        _on_device(found, device)
        return ndarray._of(result, device)
    if isinstance(result, np.generic):
        _on_device(found, device)
        return ndarray._of(np.asarray(result), device)
    if isinstance(result, (tuple, list)):
        return type(result)(_wrap(r, found, device) for r in result)
    if result is None:            # an in-place operation: it ran on the current device
        _on_device(found, device)
    return result


def _apply(func, args=(), kwargs=None, owner=None):
    """``func`` (a NumPy function or method) with CuPy's rules for operands and results."""
    found = [] if owner is None else [owner]
    args = _unwrap(tuple(args), found)
    kwargs = {k: _unwrap(v, found) for k, v in (kwargs or {}).items()}
    return _wrap(func(*args, **kwargs), found, current_device())


# Functions whose output size depends on the values, so CuPy reads a count back first and the
# host waits for the device: ``count_nonzero = int(scan_index[-1])  # synchronize!`` in
# ``_ndarray_nonzero`` (cupy/_core/_routines_indexing.pyx); a boolean mask index goes through it.
_READS_BACK = frozenset({"nonzero", "argwhere", "flatnonzero", "compress", "unique"})


def _under_rules(func, owner=None, name=None):
    """``func`` as a CuPy function (or, with ``owner``, a method of that device array)."""
    reads_back = (name or func.__name__) in _READS_BACK

    @functools.wraps(func)
    def call(*args, **kwargs):
        if reads_back:
            TRANSFERS.d2h += 1
        return _apply(func, args, kwargs, owner)
    return call


def _count_mask_read(index) -> None:
    """A boolean mask index is a ``nonzero``: one device-to-host read (see _READS_BACK)."""
    parts = index if isinstance(index, tuple) else (index,)
    for part in parts:
        if isinstance(part, (ndarray, np.ndarray)) and part.dtype == bool:
            TRANSFERS.d2h += 1


class MemoryPointer:
    """``ndarray.data``: the buffer's address and device (``cupy.cuda.MemoryPointer``)."""

    def __init__(self, ptr, device_id):
        self.ptr, self.device_id = ptr, device_id


class ndarray:
    """A device array: a NumPy array and the device it lives on. Not an ``numpy.ndarray``."""

    __array_priority__ = 100

    def __init__(self, shape, dtype=float, order="C"):
        # cupy.ndarray(shape) allocates without initialising, on the current device
        self._set(_poisoned(shape, dtype), current_device())

    @classmethod
    def _of(cls, array, device):
        self = cls.__new__(cls)
        self._set(array, device)
        return self

    def _set(self, array, device):
        self._array, self._device = array, device
        root = array
        while True:   # the buffer a view looks into (as_strided's base is a plain object)
            base = root.base
            while base is not None and not isinstance(base, np.ndarray):
                base = getattr(base, "base", None)
            if base is None:
                break
            root = base
        with _roots_lock:
            if id(root) not in _roots:
                _roots[id(root)], _root_device[id(root)] = root, device
                ALLOCATIONS[device] += 1

    # -- what needs no kernel ---------------------------------------------------------------
    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)
    itemsize = property(lambda self: self._array.itemsize)
    nbytes = property(lambda self: self._array.nbytes)
    strides = property(lambda self: self._array.strides)
    flags = property(lambda self: self._array.flags)
    T = property(lambda self: ndarray._of(self._array.T, self._device))
    device = property(lambda self: Device(self._device))
    data = property(lambda self: MemoryPointer(self._array.ctypes.data, self._device))

    def __len__(self):
        return len(self._array)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    # -- conversions ----------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        TRANSFERS.d2h += 1
        host = np.array(self._array, order=order, copy=True)
        if out is None:
            return host
        out[...] = host
        return out

    def item(self):
        TRANSFERS.d2h += 1
        return self._array.item()

    def tolist(self):
        TRANSFERS.d2h += 1
        return self._array.tolist()

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __bool__(self):
        return bool(self.get())

    def __repr__(self):
        return repr(self.get())

    def __str__(self):
        return str(self.get())

    # -- kernels ----------------------------------------------------------------------------
    def copy(self, order="C"):
        return ndarray._of(self._array.copy(order=order), current_device())

    def fill(self, value):
        _on_device([self], current_device())
        self._array.fill(value)

    def __getitem__(self, index):
        _count_mask_read(index)
        return _apply(self._array.__getitem__, (_device_index(index),), owner=self)

    def __setitem__(self, index, value):
        if isinstance(value, (np.ndarray, list)):
            TRANSFERS.h2d += 1          # CuPy copies a host value to the device first
            value = ndarray._of(np.array(value), current_device())
        _count_mask_read(index)
        _apply(self._array.__setitem__, (_device_index(index), value), owner=self)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        function = getattr(ufunc, method) if method != "__call__" else ufunc
        return _apply(function, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _apply(func._implementation if hasattr(func, "_implementation") else func,
                      args, kwargs)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        attribute = getattr(self._array, name)
        if not callable(attribute):
            return attribute
        return _under_rules(attribute, owner=self, name=name)


def _device_index(index):
    """An index as CuPy takes it: host arrays and lists are copied to the device first."""
    if isinstance(index, tuple):
        return tuple(_device_index(i) for i in index)
    if isinstance(index, (np.ndarray, list)):
        TRANSFERS.h2d += 1
        return ndarray._of(np.array(index), current_device())
    return index


def _operator(name, in_place=False):
    numpy_method = getattr(np.ndarray, f"__{name}__")

    def method(self, *other):
        if in_place:
            _on_device([self], current_device())
        return _apply(numpy_method, (self, *other))
    method.__name__ = f"__{name}__"
    return method


for _name in ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv",
              "rfloordiv", "mod", "pow", "rpow", "matmul", "rmatmul", "and", "rand", "or",
              "ror", "xor", "lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _operator(_name))
for _name in ("iadd", "isub", "imul", "itruediv", "ipow", "iand", "ior"):
    setattr(ndarray, f"__{_name}__", _operator(_name, in_place=True))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _operator(_name))
ndarray.__hash__ = None


def _device_of_pointer(ptr: int):
    """The device of the allocation holding address ``ptr`` (None: host memory)."""
    with _roots_lock:
        roots = list(_roots.items())
    for key, root in roots:
        start = root.ctypes.data
        if start <= ptr < start + max(root.nbytes, 1):
            with _roots_lock:
                return _root_device.get(key)
    return None


# -- creating and converting -----------------------------------------------------------------
def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    device = current_device()
    if isinstance(obj, ndarray):
        if obj._device != device:   # a peer copy, then the cast on this device
            return ndarray._of(np.array(obj._array, dtype=dtype, copy=True, order=order,
                                        ndmin=ndmin), device)
        out = np.array(obj._array, dtype=dtype, copy=copy or None, order=order, ndmin=ndmin)
        return obj if out is obj._array else ndarray._of(out, device)
    TRANSFERS.h2d += 1
    return ndarray._of(np.array(obj, dtype=dtype, copy=True, order=order, ndmin=ndmin), device)


def asarray(a, dtype=None, order=None):
    return array(a, dtype=dtype, copy=False, order=order or "K")


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or a.dtype == dtype):
        return a
    return array(a, dtype=dtype, copy=False, order="C", ndmin=1)


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    return a.get(order=order, out=out) if isinstance(a, ndarray) else np.asarray(a, order=order)


def empty(shape, dtype=float, order="C"):
    return ndarray._of(_poisoned(shape, dtype), current_device())


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return empty(prototype.shape if shape is None else shape,
                 prototype.dtype if dtype is None else dtype)


def get_array_module(*args):
    return _installed["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def _creation(numpy_function):
    """A creator that fills new memory on the current device (a ``*_like`` reads only the
    prototype's shape and dtype, so it may live anywhere)."""
    @functools.wraps(numpy_function)
    def create(*args, **kwargs):
        args = [np.empty(a.shape, a.dtype) if isinstance(a, ndarray) else a for a in args]
        return ndarray._of(numpy_function(*args, **kwargs), current_device())
    return create


class _Ufunc:
    """A NumPy ufunc under CuPy's rules, with its methods (``add.at``, ``maximum.reduce``)."""

    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _apply(self._ufunc, args, kwargs)

    def __getattr__(self, name):
        attribute = getattr(self._ufunc, name)
        return _under_rules(attribute) if callable(attribute) else attribute


# The NumPy names minialex and its tests take from ``cupy`` that CuPy exports too (each checked
# in cupy/__init__.py at the revision above); any other raises AttributeError as CuPy would.
_CUPY_NAMES = frozenset({
    "add", "argwhere", "bool_", "broadcast_shapes", "broadcast_to", "compress", "concatenate",
    "exp", "expand_dims", "flatnonzero", "float16", "float32", "float64", "int32", "int64",
    "intp", "log", "matmul", "maximum", "minimum", "nonzero", "pad", "sqrt", "stack",
    "swapaxes", "take_along_axis", "tanh", "uint8", "unique", "where"})


class _CupyModule(types.ModuleType):
    """``cupy``: what is defined here, else NumPy's function of the same name (CuPy has it)
    under CuPy's rules."""

    def __getattr__(self, name):
        if name not in _CUPY_NAMES:
            raise AttributeError(f"module 'cupy' has no attribute '{name}' (or the CuPy "
                                 f"stand-in does not list it: see _CUPY_NAMES)")
        target = getattr(np, name)
        if isinstance(target, np.ufunc):
            target = _Ufunc(target)
        elif callable(target) and not isinstance(target, type):
            target = _under_rules(target, name=name)
        setattr(self, name, target)
        return target


# -- random ---------------------------------------------------------------------------------------
class Generator:
    """``cupy.random.Generator``: its state lives on the device current at creation."""

    def __init__(self, seed=None):
        self._rng, self._device = np.random.default_rng(seed), current_device()

    def _draw(self, method, *args, **kwargs):
        device = current_device()
        if device != self._device:
            raise _peer_error(self, device)     # the state is an array on its device
        return ndarray._of(np.asarray(getattr(self._rng, method)(*args, **kwargs)), device)

    def random(self, size=None, dtype=np.float64, out=None):
        return self._draw("random", size, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return self._draw("standard_normal", size, dtype=dtype)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=np.float64):
        return self._draw("uniform", low, high, size).astype(dtype, copy=False)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return self._draw("integers", low, high, size, dtype=dtype, endpoint=endpoint)


# -- CUDA: devices, runtime, cuBLAS ----------------------------------------------------------------
class Device:
    """``cupy.cuda.Device(n)``; ``Device()`` is the current device."""

    def __init__(self, device=None):
        self.id = current_device() if device is None else int(device)
        if not 0 <= self.id < DEVICE_COUNT:
            raise CUDARuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal {self.id}")
        self._previous = []

    def __enter__(self):
        self._previous.append(current_device())
        _set_device(self.id)
        return self

    def __exit__(self, *exc):
        _set_device(self._previous.pop())

    def use(self):
        _set_device(self.id)
        return self

    def synchronize(self):
        pass

    @property
    def attributes(self):
        return {"MultiProcessorCount": SM_COUNT, "MaxThreadsPerBlock": MAX_THREADS_PER_BLOCK,
                "MaxGridDimX": MAX_GRID[0]}

    compute_capability = "90"

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _runtime():
    return types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError, CUDA_R_32F=0, CUDA_R_64F=1,
        getDeviceCount=lambda: DEVICE_COUNT, getDevice=current_device, setDevice=_set_device,
        deviceCanAccessPeer=lambda device, peer: 0,
        getDeviceProperties=lambda device: {"name": NAME, "multiProcessorCount": SM_COUNT,
                                            "totalGlobalMem": 16 * 2**30})


_CUBLAS = dict(CUBLAS_OP_N=0, CUBLAS_OP_T=1, CUBLAS_COMPUTE_32F=68,
               CUBLAS_COMPUTE_32F_FAST_TF32=77, CUBLAS_COMPUTE_64F=70, CUBLAS_GEMM_DEFAULT=-1)
_DATA_TYPES = {0: (np.float32, ctypes.c_float, (68, 77)), 1: (np.float64, ctypes.c_double, (70,))}


class _Handle:
    def __init__(self, device):
        self.device = device


def _column_major(ptr, ctype, rows, cols, ld, device):
    """The ``rows x cols`` column-major matrix at device address ``ptr`` (leading dim ``ld``)."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), dtype=np.dtype(ctype))
    owner = _device_of_pointer(ptr)
    if owner != device:
        where = "host memory" if owner is None else f"device {owner}"
        raise RuntimeError(f"CUBLAS_STATUS_EXECUTION_FAILED: an operand at {ptr:#x} is in "
                           f"{where}, not on the current device {device}")
    flat = np.ctypeslib.as_array((ctype * (ld * (cols - 1) + rows)).from_address(ptr))
    return np.lib.stride_tricks.as_strided(flat, (rows, cols),
                                           (flat.itemsize, flat.itemsize * ld))


def gemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype,
           ldc, computeType, algo):
    """C = alpha op(A) op(B) + beta C on column-major buffers, as ``cublasGemmEx``."""
    device = current_device()
    if handle.device != device:
        raise RuntimeError(f"CUBLAS_STATUS_EXECUTION_FAILED: a handle of device {handle.device} "
                           f"used on device {device}")
    if not Atype == Btype == Ctype or Atype not in _DATA_TYPES:
        raise RuntimeError(f"CUBLAS_STATUS_NOT_SUPPORTED: types {Atype}, {Btype}, {Ctype}")
    dtype, ctype, computes = _DATA_TYPES[Atype]
    if computeType not in computes:
        raise RuntimeError(f"CUBLAS_STATUS_NOT_SUPPORTED: compute type {computeType} for "
                           f"{np.dtype(dtype)}")
    a_rows, a_cols = (k, m) if transa else (m, k)
    b_rows, b_cols = (n, k) if transb else (k, n)
    if lda < max(1, a_rows) or ldb < max(1, b_rows) or ldc < max(1, m):
        raise RuntimeError(f"CUBLAS_STATUS_INVALID_VALUE: lda {lda}, ldb {ldb}, ldc {ldc} for "
                           f"m {m}, n {n}, k {k}")
    opA = _column_major(A, ctype, a_rows, a_cols, lda, device)
    opB = _column_major(B, ctype, b_rows, b_cols, ldb, device)
    out = _column_major(C, ctype, m, n, ldc, device)
    one, zero = (ctype.from_address(p).value for p in (alpha, beta))
    # contiguous copies first: NumPy's matmul takes a slow loop on strided operands
    product = (np.ascontiguousarray(opA.T if transa else opA)
               @ np.ascontiguousarray(opB.T if transb else opB))
    out[...] = one * product + (zero * out if zero else 0)


# -- NCCL -----------------------------------------------------------------------------------------
NCCL_UNIQUE_ID_BYTES = 128
_NCCL_TYPES = dict(NCCL_INT8=0, NCCL_CHAR=0, NCCL_UINT8=1, NCCL_INT32=2, NCCL_INT=2,
                   NCCL_UINT32=3, NCCL_INT64=4, NCCL_UINT64=5, NCCL_FLOAT16=6, NCCL_HALF=6,
                   NCCL_FLOAT32=7, NCCL_FLOAT=7, NCCL_FLOAT64=8, NCCL_DOUBLE=8)
_NCCL_DTYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64,
                6: np.float16, 7: np.float32, 8: np.float64}
_NCCL_OPS = dict(NCCL_SUM=0, NCCL_PROD=1, NCCL_MAX=2, NCCL_MIN=3)


class NcclError(RuntimeError):
    """``cupy.cuda.nccl.NcclError``: a failed NCCL call."""


def get_unique_id():
    """``nccl.get_unique_id()``: 128 signed chars as a tuple, as CuPy returns them."""
    return tuple(int(b) - 256 if b > 127 else int(b)
                 for b in np.random.default_rng().integers(0, 256, NCCL_UNIQUE_ID_BYTES))


class NcclCommunicator:
    """``nccl.NcclCommunicator(ndev, commId, rank)``: one process's member of a communicator of
    ``ndev`` processes, on the device current now; carried by MPI between the processes."""

    def __init__(self, ndev, commId, rank):
        from mpi4py import MPI  # only the NCCL stand-in needs MPI
        if not isinstance(commId, tuple) or len(commId) != NCCL_UNIQUE_ID_BYTES:
            raise TypeError(f"commId must be the tuple of {NCCL_UNIQUE_ID_BYTES} ints that "
                            f"get_unique_id returns, got {type(commId).__name__}")
        self._MPI, self._device = MPI, current_device()
        # the processes that pass the same unique id form one communicator, ordered by rank
        color = int(np.frombuffer(bytes(c & 0xFF for c in commId[:4]), np.uint32)[0] >> 1)
        self._comm = MPI.COMM_WORLD.Split(color, key=int(rank))
        if self._comm.Get_size() != ndev or self._comm.Get_rank() != rank:
            raise NcclError(f"NCCL_ERROR_INVALID_USAGE: {self._comm.Get_size()} processes "
                            f"joined with this unique id as ranks 0..{self._comm.Get_size() - 1}, "
                            f"this one as rank {rank} of ndev {ndev}")

    def device_id(self):
        return self._device

    def rank_id(self):
        return self._comm.Get_rank()

    def size(self):
        return self._comm.Get_size()

    def _buffer(self, ptr, count, datatype):
        """The host memory behind a device pointer, checked to lie on this communicator's
        device (NCCL reads it there)."""
        if datatype not in _NCCL_DTYPES:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: datatype {datatype}")
        dtype = np.dtype(_NCCL_DTYPES[datatype])
        owner = _device_of_pointer(ptr)
        end_owner = _device_of_pointer(ptr + max(int(count) * dtype.itemsize - 1, 0))
        if owner != self._device or end_owner != self._device:
            where = "host memory" if owner is None else f"device {owner}"
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: a buffer at {ptr:#x} of {count} "
                            f"elements is in {where}, not all on the communicator's device "
                            f"{self._device}")
        raw = (ctypes.c_char * (int(count) * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        MPI = self._MPI
        ops = {0: MPI.SUM, 1: MPI.PROD, 2: MPI.MAX, 3: MPI.MIN}
        if op not in ops:
            raise NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: op {op}")
        recv = self._buffer(recvbuf, count, datatype)
        send = MPI.IN_PLACE if sendbuf == recvbuf else self._buffer(sendbuf, count, datatype)
        self._comm.Allreduce(send, recv, op=ops[op])

    def bcast(self, buff, count, datatype, root, stream):
        self._comm.Bcast(self._buffer(buff, count, datatype), root=root)

    def destroy(self):
        self._comm.Free()


def _nccl():
    return types.SimpleNamespace(get_unique_id=get_unique_id, NcclCommunicator=NcclCommunicator,
                                 NcclError=NcclError, NCCL_UNIQUE_ID_BYTES=NCCL_UNIQUE_ID_BYTES,
                                 **_NCCL_TYPES, **_NCCL_OPS)


class Stream:
    """``cupy.cuda.Stream``: the stand-in has one, the null stream (``ptr`` 0)."""
    ptr = 0


# -- kernels ----------------------------------------------------------------------------------
_host_kernels = {}   # "kernels": the HostKernels every RawModule launches
_installed = {}      # "cupy": the module made last


def use_host_kernels(kernels, replay: bool = False) -> None:
    """The host build (``host_build.HostKernels``) that kernel launches run. ``replay`` runs
    every (block, thread) of a launch in turn, so a kernel's grid-stride loop is exercised as
    launched (slow: for small tests); otherwise one call covers every work item."""
    _host_kernels["kernels"], _host_kernels["replay"] = kernels, replay


class RawModule:
    """``cupy.RawModule(code=...)``: the source must be one of kernels/*.cu, built for the host."""

    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc", **kwargs):
        if code is None:
            code = Path(path).read_text()
        files = {p.read_text(): p.name for p in host_build.KERNEL_DIR.glob("*.cu")}
        if code not in files:
            raise NotImplementedError("the CuPy stand-in runs only the kernels/*.cu files as "
                                      "they are on disk")
        self.file_name = files[code]
        self.names = set(host_build.kernel_signatures(code))

    def get_function(self, name):
        if name not in self.names:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name} is not "
                               f"in {self.file_name}")
        return RawKernel(None, name, _module=self)


class RawKernel:
    """A kernel launched as CuPy launches it: arguments converted by CuPy's rules, then checked
    against the C signature by the host build."""

    def __init__(self, code, name, options=(), backend="nvrtc", *, _module=None):
        self.module = _module or RawModule(code=code)
        self.name = name

    def __call__(self, grid, block, args, shared_mem=0):
        if not isinstance(grid, tuple) or not isinstance(block, tuple):
            raise TypeError(f"{self.name}: grid and block must be tuples, got "
                            f"{type(grid).__name__} and {type(block).__name__}")
        _check_launch(self.name, grid, block)
        device = current_device()
        values = [_kernel_argument(self.name, a, device) for a in args]
        launch = (int(np.prod(grid)), int(np.prod(block))) if _host_kernels["replay"] else (1, 1)
        try:
            _host_kernels["kernels"](self.name, *values, launch=launch)
        except TypeError as exc:
            if any(type(a) in (int, float) for a in args):
                raise TypeError(f"{exc} (CuPy passes a Python int as a 64-bit integer and a "
                                f"Python float as a double)") from None
            raise
        LAUNCHES.append((self.name, grid, block))


def _check_launch(name, grid, block):
    for label, dims, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
        if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
            raise TypeError(f"{name}: {label} must be 1 to 3 ints, got {dims!r}")
        for d, limit in zip(dims, limits):
            if not 1 <= d <= limit:
                raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: {name} launched with {label} "
                                   f"{dims}; each dimension must lie in 1..{limits[:len(dims)]}")
    if int(np.prod(block)) > MAX_THREADS_PER_BLOCK:
        raise RuntimeError(f"CUDA_ERROR_INVALID_VALUE: {name} launched with {np.prod(block)} "
                           f"threads per block, more than {MAX_THREADS_PER_BLOCK}")


def _kernel_argument(name, value, device):
    """One argument as CuPy would pass it (``_pointer`` in cupy/cuda/function.pyx)."""
    if isinstance(value, ndarray):
        if value._device != device:
            raise RuntimeError(f"cudaErrorIllegalAddress: {name} launched on device {device} "
                               f"with an array on device {value._device}")
        return value._array
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise TypeError(f"You are trying to pass a numpy.ndarray of shape {value.shape} as a "
                            f"kernel parameter. Only numpy.ndarrays of size one can be passed by "
                            f"value.")
        return value.reshape(())[()]    # by value, in the array's own dtype
    if value is None or isinstance(value, np.generic):
        return value                # a null pointer; a NumPy scalar in its own dtype
    # a Python scalar (numpy_dtype_from_pyscalar in cupy/_core/_scalar.pyx)
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):      # a 64-bit integer, unsigned from 2**63
        return np.uint64(value) if value >= 2**63 else np.int64(value)
    if isinstance(value, float):
        return np.float64(value)    # a double
    if isinstance(value, complex):
        return np.complex128(value)
    raise TypeError(f"Unsupported type {type(value)}")    # CScalar's refusal


# -- the module -----------------------------------------------------------------------------------
def module():
    """A fresh ``cupy`` module object: device 0 current, the transfer counters at zero."""
    cupy = _CupyModule("cupy", "CuPy stand-in (tests/cupy_standin.py): NumPy under CuPy's rules")
    _current.device = 0
    TRANSFERS.reset()
    with _roots_lock:
        ALLOCATIONS[:] = [0] * DEVICE_COUNT
    LAUNCHES.clear()
    handles = {}
    cuda = types.SimpleNamespace(
        Device=Device, runtime=_runtime(), MemoryPointer=MemoryPointer,
        cublas=types.SimpleNamespace(gemmEx=gemmEx, **_CUBLAS), nccl=_nccl(),
        Stream=Stream, get_current_stream=Stream,
        get_cublas_handle=lambda: handles.setdefault(current_device(),
                                                     _Handle(current_device())))
    namespace = dict(
        ndarray=ndarray, array=array, asarray=asarray, ascontiguousarray=ascontiguousarray,
        asnumpy=asnumpy, empty=empty, empty_like=empty_like, get_array_module=get_array_module,
        RawModule=RawModule, RawKernel=RawKernel, cuda=cuda, TRANSFERS=TRANSFERS,
        ALLOCATIONS=ALLOCATIONS, LAUNCHES=LAUNCHES,
        random=types.SimpleNamespace(default_rng=Generator, Generator=Generator),
        lib=types.SimpleNamespace(stride_tricks=types.SimpleNamespace(
            as_strided=_under_rules(np.lib.stride_tricks.as_strided))),
        is_standin=True)
    for name in ("zeros", "ones", "full", "arange", "linspace", "eye", "zeros_like",
                 "ones_like", "full_like"):
        namespace[name] = _creation(getattr(np, name))
    vars(cupy).update(namespace)
    _installed["cupy"] = cupy
    return cupy


def install(build_dir) -> object:
    """Build the kernels in ``build_dir`` (kept between runs) and make ``import cupy`` this."""
    compiler = host_build.find_compiler()
    if compiler is None:
        raise RuntimeError("the CuPy stand-in needs a C++ compiler (g++, c++, clang++ or $CXX)")
    use_host_kernels(host_build.HostKernels(Path(build_dir), compiler))
    cupy = module()
    sys.modules["cupy"] = cupy
    return cupy


def report() -> str:
    """One line of what ran on the stand-in, for a script run under it."""
    return (f"cupy stand-in: {len(LAUNCHES)} kernel launches "
            f"({len({name for name, _, _ in LAUNCHES})} kernels), {TRANSFERS.d2h} "
            f"device-to-host and {TRANSFERS.h2d} "
            f"host-to-device copies, buffers per device {ALLOCATIONS}")


if __name__ == "__main__":
    build, script, *argv = sys.argv[1:]
    install(build)
    atexit.register(lambda: print(report(), file=sys.stderr))
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
