"""Devices, array modules and random streams: the one place where CPU and GPU are told apart.

minialex computes on raw arrays of an *array module* ``xp``: NumPy on the CPU, CuPy on an
NVIDIA GPU. Layer code asks ``xp = get_array_module(x)`` and writes ``xp.exp(x)`` once for both;
where a hand-written kernel exists, the layer picks it with ``is_gpu_array(x)``.
This module is the only one that imports CuPy, and it does so lazily, so importing minialex and
everything on the CPU works without CuPy installed. It imports nothing from minialex: every other
module may depend on it, and it on none of them.

Device names: ``"cpu"``, ``"gpu"`` (the current CUDA device, normally 0) and ``"gpu:N"``.
"""
from __future__ import annotations

import contextlib

import numpy as np

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why it could not be used, as a message for the user
_rngs = {}            # device name -> random generator of that device
_seed = None          # last value given to manual_seed, used for generators created later


def _import_cupy():
    """Import CuPy once; remember why it failed so every caller gets the same clear message."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except ImportError as exc:
        _cupy_error = ("CuPy is not installed (%s); install it with "
                       "`pip install cupy-cuda12x` (CUDA 12 driver) or `pip install cupy-cuda13x` "
                       "(CUDA 13 driver), or `pip install -e '.[gpu]'`" % exc)
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when no driver is loaded
        _cupy_error = ("CuPy is installed but no NVIDIA driver could be used (%s); install the "
                       "NVIDIA driver, or run on the CPU with device='cpu'" % exc)
        return None
    if count == 0:
        _cupy_error = ("CuPy and the NVIDIA driver are present but no GPU is visible; check "
                       "CUDA_VISIBLE_DEVICES and `nvidia-smi`, or run on the CPU with device='cpu'")
        return None
    _cupy = cupy
    return cupy


def gpu_available() -> bool:
    """True when CuPy, a driver and at least one GPU are all present."""
    return _import_cupy() is not None


def require_cupy():
    """Return the cupy module, or raise one RuntimeError that says which piece is missing."""
    cupy = _import_cupy()
    if cupy is None:
        raise RuntimeError("a GPU was asked for but cannot be used: " + _cupy_error)
    return cupy


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever owns the given arrays (NumPy for plain Python values)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def is_gpu_array(a) -> bool:
    return _cupy is not None and isinstance(a, _cupy.ndarray)


def parse_device(device) -> str:
    """Normalise a device name: ``'cpu'``, ``'gpu'``, ``'gpu:N'`` (``'cuda'`` is accepted too)."""
    if not isinstance(device, str):
        raise TypeError(f"device: expected a string like 'cpu', 'gpu' or 'gpu:0', got {device!r}")
    name = device.strip().lower().replace("cuda", "gpu")
    if name == "cpu":
        return "cpu"
    if name == "gpu":
        return f"gpu:{require_cupy().cuda.runtime.getDevice()}"
    if name.startswith("gpu:") and name[4:].isdigit():
        index = int(name[4:])
        count = require_cupy().cuda.runtime.getDeviceCount()
        if index >= count:
            raise ValueError(f"device: {device!r} asked for, but only {count} GPU(s) are visible")
        return f"gpu:{index}"
    raise ValueError(f"device: expected 'cpu', 'gpu' or 'gpu:N', got {device!r}")


def device_of(array) -> str:
    """The device name an array lives on."""
    if is_gpu_array(array):
        return f"gpu:{array.device.id}"
    return "cpu"


def device_scope(array):
    """A context in which new GPU arrays are allocated on ``array``'s GPU (nothing for a host
    array). CuPy allocates every new array, an op's result included, on the *current* device,
    not on its operands' (``cupy.ndarray.copy``: "makes a copy of a given array in the current
    device"), so work on ``gpu:1`` runs inside ``cupy.cuda.Device(1)``."""
    if is_gpu_array(array):
        return _cupy.cuda.Device(array.device.id)
    return contextlib.nullcontext()


def to_device(array, device: str, dtype=None):
    """Copy ``array`` to ``device`` (a parsed name), cast to ``dtype`` when given there; returns
    it unchanged when already there in that dtype."""
    device = parse_device(device)
    if device == "cpu":
        array = array.get() if is_gpu_array(array) else np.asarray(array)
        return array if dtype is None else array.astype(dtype, copy=False)
    cupy = require_cupy()
    with cupy.cuda.Device(int(device[4:])):
        return cupy.asarray(array, dtype=dtype)


def check_same_device(op_name: str, arrays) -> None:
    """Refuse operands on different devices by name (CuPy's own error names no op)."""
    devices = {device_of(a) for a in arrays}
    if len(devices) > 1:
        raise RuntimeError(f"{op_name}: inputs live on different devices {sorted(devices)}; "
                           f"move them with .to(device) first")


def to_numpy(array) -> np.ndarray:
    """A NumPy copy (or the array itself when it is already on the CPU)."""
    return array.get() if is_gpu_array(array) else np.asarray(array)


def manual_seed(seed: int) -> None:
    """Seed the random streams of every device; the same seed gives the same draws on each device.

    Each device has its own generator (NumPy's PCG64 on the CPU, CuPy's XORWOW on a GPU), so the
    CPU and GPU streams differ from each other but are each reproducible.
    """
    global _seed
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    _seed = int(seed)
    _rngs.clear()


def rng_for(xp_or_array, device: str | None = None):
    """The random generator of the device an array (or array module) lives on."""
    if device is None:
        if xp_or_array is np or isinstance(xp_or_array, np.ndarray):
            device = "cpu"
        elif _cupy is not None and xp_or_array is _cupy:
            device = f"gpu:{_cupy.cuda.runtime.getDevice()}"
        else:
            device = device_of(xp_or_array)
    if device not in _rngs:
        if device == "cpu":
            _rngs[device] = np.random.default_rng(_seed)
        else:
            cupy = require_cupy()
            with cupy.cuda.Device(int(device[4:])):
                _rngs[device] = cupy.random.default_rng(_seed)
    return _rngs[device]


def get_rng_state() -> dict:
    """Seed and generator states of every device, as plain data (for checkpoints)."""
    states = {}
    for device, rng in _rngs.items():
        states[device] = rng.bit_generator.state if device == "cpu" else None
    return {"seed": _seed, "cpu": states.get("cpu")}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (the CPU stream exactly; GPUs are reseeded)."""
    global _seed
    _seed = state.get("seed")
    _rngs.clear()
    if state.get("cpu") is not None:
        rng = np.random.default_rng()
        rng.bit_generator.state = state["cpu"]
        _rngs["cpu"] = rng
