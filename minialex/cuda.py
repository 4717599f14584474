r"""The GPU side of minialex: the hand-written kernels in ``kernels/*.cu`` and cuBLAS GEMM.

Each op here computes what the plain NumPy version of the same name in ``minialex/layers/``
computes (the reference it is tested against) and has the same signature and layout as its fast
CPU sibling in :mod:`minialex.cpu`, so a layer picks one in a single line:
``cuda.max_pool_forward if is_gpu_array(x) else cpu.max_pool_forward``. The ops take and return
contiguous CuPy arrays of float32 or float64 (max-pool's arg-max is int32).

Kernels. Each ``kernels/X.cu`` exports ``<op>_f32`` and ``<op>_f64`` under plain ``extern "C"``
names. A file is compiled by NVRTC through ``cupy.RawModule`` the first time one of its kernels
is used; CuPy then keeps the binary per device (and in its on-disk kernel cache), so one
``RawModule`` per file and one ``RawKernel`` per name, memoised here, serve the whole process.
Every kernel is a grid-stride loop over its output elements (``n`` work items), launched as one
dimension of ``BLOCK`` threads per block and ``min(ceil(n / BLOCK), BLOCKS_PER_SM * SMs)``
blocks: enough blocks to fill every multiprocessor several times over, after which each thread
loops. Kernel arguments follow the kernel's C signature exactly: CuPy passes a Python int as a
64-bit integer and a Python float as a double whatever the kernel declares, so sizes are wrapped
in ``numpy.int32`` (``long long`` counts in ``numpy.int64``) and float parameters in the array's
own dtype.

GEMM. :func:`gemm` calls cuBLAS directly through ``cupy.cuda.cublas.gemmEx`` on 2-D operands, so
the compute type is ours to choose: plain FP32 by default, TF32 tensor cores only after
``set_tf32(True)``. (``cupy.matmul`` on 3-D batches copies transposed operands and always passes
FP32, and ``CUPY_TF32`` is a process-wide environment switch.) :func:`gemm` runs the GEMMs of
``conv2d`` and ``linear``, so ``set_tf32`` governs every weight layer; the small products that
stay plain ``xp.matmul`` (``Tensor @ Tensor`` and adaptive average pooling's averaging
matrices) follow CuPy's own setting instead.

Importing this module never imports CuPy (the layer files import it at the top on every
machine): each function fetches CuPy from :func:`minialex.backend.require_cupy`, which raises one
clear error when CuPy, the driver or a GPU is missing.

>>> from minialex import cuda
>>> cuda.tf32_enabled()
False
>>> cuda.kernel_name("lrn_forward", np.float32)
'lrn_forward_f32'
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from . import backend
from .checks import output_size

BLOCK = 256          # threads per block: 8 warps; 8 such blocks fill an A100/H100 SM (2048)
BLOCKS_PER_SM = 32   # grid cap per SM, 4x what fits at once; past it the threads loop instead

# Which file in kernels/ defines each op (as <op>_f32 and <op>_f64).
KERNEL_FILES = {
    "im2col": "im2col.cu",
    "col2im": "im2col.cu",
    "bias_add_nchw": "im2col.cu",
    "max_pool_forward": "pool.cu",
    "max_pool_backward": "pool.cu",
    "lrn_forward": "lrn.cu",
    "lrn_backward": "lrn.cu",
    "relu_backward": "relu.cu",
    "dropout_forward": "dropout.cu",
}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

_tf32 = False       # set_tf32: may float32 GEMMs use TF32 tensor cores?
_modules = {}       # kernel file name -> cupy.RawModule
_kernels = {}       # kernel name (with its dtype suffix) -> cupy.RawKernel
_max_blocks_of = {}  # device id -> grid cap


# -- finding and loading the kernels --------------------------------------------------------
def kernel_dir() -> Path:
    """The folder holding the ``.cu`` files: ``minialex/_kernels`` in an installed wheel (setup.cfg
    ships ``kernels/`` there), else the source checkout's top-level ``kernels/``.

    The package's own copy is looked at first, so that an installed minialex never picks up some
    other ``kernels`` folder that happens to sit next to it in site-packages.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "_kernels", here.parent / "kernels"):
        if all((candidate / name).is_file() for name in set(KERNEL_FILES.values())):
            return candidate
    files = ", ".join(sorted(set(KERNEL_FILES.values())))
    raise FileNotFoundError(f"minialex.cuda: the CUDA kernel sources ({files}) are neither in "
                            f"{here / '_kernels'} nor in {here.parent / 'kernels'}; reinstall "
                            f"minialex")


@functools.lru_cache(maxsize=None)
def kernel_source(file_name: str) -> str:
    """The text of ``kernels/<file_name>``, read once."""
    return (kernel_dir() / file_name).read_text()


def kernel_name(op: str, dtype) -> str:
    """The exported name of ``op``'s kernel for ``dtype``: ``<op>_f32`` or ``<op>_f64``."""
    suffix = _SUFFIX.get(np.dtype(dtype))
    if suffix is None:
        raise TypeError(f"minialex.cuda.{op}: the kernels take float32 or float64 arrays, "
                        f"got {np.dtype(dtype)}")
    return f"{op}_{suffix}"


def _get_kernel(name: str):
    """The ``cupy.RawKernel`` called ``name``, its file compiled on first use (memoised)."""
    kernel = _kernels.get(name)
    if kernel is None:
        cupy = backend.require_cupy()
        file_name = KERNEL_FILES[name.rsplit("_", 1)[0]]
        module = _modules.get(file_name)
        if module is None:
            # NVRTC compiles the file as it is: the kernels include no header at all.
            module = _modules[file_name] = cupy.RawModule(code=kernel_source(file_name))
        kernel = _kernels[name] = module.get_function(name)
    return kernel


def _max_blocks() -> int:
    """Grid cap on the current device: BLOCKS_PER_SM blocks per multiprocessor."""
    cupy = backend.require_cupy()
    device = cupy.cuda.Device()
    if device.id not in _max_blocks_of:
        _max_blocks_of[device.id] = BLOCKS_PER_SM * device.attributes["MultiProcessorCount"]
    return _max_blocks_of[device.id]


def _launch(op: str, dtype, n: int, args: tuple) -> None:
    """Run ``op``'s kernel for ``dtype`` over ``n`` work items (its grid-stride loop's length)."""
    if n == 0:
        return
    grid = min((n + BLOCK - 1) // BLOCK, _max_blocks())
    _get_kernel(kernel_name(op, dtype))((grid,), (BLOCK,), args)


def _ints(*values) -> tuple:
    """Sizes as ``numpy.int32``, the kernels' ``int``."""
    return tuple(np.int32(v) for v in values)


def _same_dtype(op: str, reference, **arrays) -> None:
    for name, array in arrays.items():
        if array is not None and array.dtype != reference.dtype:
            raise TypeError(f"minialex.cuda.{op}: {name} is {array.dtype} but the input is "
                            f"{reference.dtype}")


# -- convolution: im2col, one GEMM per group, bias-add (kernels/im2col.cu) -------------------
def conv2d_forward(x, w, b, SH, SW, PH, PW, G, keep=True):
    """``(y, kept)``: y = conv2d(x, w, b) for the whole batch at once (im2col, one cuBLAS GEMM
    per group, bias), computed as the formula in ``minialex/layers/conv.py`` is written; ``kept``
    is ``col``, from which backward computes gw, when ``keep``, else None."""
    cupy = backend.require_cupy()
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OCg, K = OC // G, Cg * KH * KW
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = im2col(x, KH, KW, SH, SW, PH, PW)
    w_mat = cupy.ascontiguousarray(w).reshape(OC, K)
    Y = cupy.empty((OC, N * OH * OW), dtype=x.dtype)
    for g in range(G):
        gemm(w_mat[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K], out=Y[g * OCg:(g + 1) * OCg])
    return bias_add_nchw(Y, b, N, OH, OW), (col if keep else None)


def conv2d_backward(gy, col, w, x_shape, SH, SW, PH, PW, G, needs=(True, True, True)):
    """``(gx, gw, gb)`` of conv2d from gy and the ``col`` kept by :func:`conv2d_forward`: gx
    when ``needs[0]`` (col2im of w^T gY), gw when ``needs[1]`` (gY col^T), gb when ``needs[2]``
    (absent: no bias); a result not wanted is None."""
    cupy = backend.require_cupy()
    OC, Cg, KH, KW = w.shape
    OCg, K = OC // G, Cg * KH * KW
    gY = cupy.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(OC, -1)  # (OC, N*OH*OW)
    gx = gw = gb = None
    if needs[1]:
        gw = cupy.empty((OC, K), dtype=gy.dtype)
        for g in range(G):
            gemm(gY[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K].T, out=gw[g * OCg:(g + 1) * OCg])
        gw = gw.reshape(w.shape)
    if needs[0]:
        w_mat = cupy.ascontiguousarray(w).reshape(OC, K)
        gcol = cupy.empty((G * K, gY.shape[1]), dtype=gy.dtype)
        for g in range(G):
            gemm(w_mat[g * OCg:(g + 1) * OCg].T, gY[g * OCg:(g + 1) * OCg],
                 out=gcol[g * K:(g + 1) * K])
        gx = col2im(gcol, x_shape, KH, KW, SH, SW, PH, PW)
    if len(needs) > 2 and needs[2]:
        gb = gY.sum(axis=1)
    return gx, gw, gb


def im2col(x, KH, KW, SH, SW, PH, PW):
    """x (N, C, H, W) -> col (C*KH*KW, N*OH*OW); see ``minialex.layers.conv.im2col``."""
    cupy = backend.require_cupy()
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = cupy.empty((C * KH * KW, N * OH * OW), dtype=x.dtype)
    _launch("im2col", x.dtype, col.size,
            (x, *_ints(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW), col))
    return col


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    """The adjoint of :func:`im2col`: col (C*KH*KW, N*OH*OW) -> gx ``x_shape`` (N, C, H, W),
    each element gathering its own contributions in a fixed order (deterministic)."""
    cupy = backend.require_cupy()
    col = cupy.ascontiguousarray(col)
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    if col.shape != (C * KH * KW, N * OH * OW):
        raise ValueError(f"minialex.cuda.col2im: col must be {(C * KH * KW, N * OH * OW)} for "
                         f"x_shape {tuple(x_shape)} and kernel {(KH, KW)}, got {col.shape}")
    gx = cupy.empty((N, C, H, W), dtype=col.dtype)
    _launch("col2im", col.dtype, gx.size,
            (col, *_ints(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW), gx))
    return gx


def bias_add_nchw(Y, b, N, OH, OW):
    """y (N, OC, OH, OW) = Y (OC, N*OH*OW) transposed, plus b (OC,) unless b is None: conv's
    GEMM result to NCHW in one pass."""
    cupy = backend.require_cupy()
    Y = cupy.ascontiguousarray(Y)
    OC = Y.shape[0]
    if Y.shape != (OC, N * OH * OW):
        raise ValueError(f"minialex.cuda.bias_add_nchw: Y must be (OC, N*OH*OW) = "
                         f"({OC}, {N * OH * OW}), got {Y.shape}")
    if b is not None:
        b = cupy.ascontiguousarray(b)
        _same_dtype("bias_add_nchw", Y, b=b)
        if b.shape != (OC,):
            raise ValueError(f"minialex.cuda.bias_add_nchw: b must be ({OC},), got {b.shape}")
    y = cupy.empty((N, OC, OH, OW), dtype=Y.dtype)
    _launch("bias_add_nchw", Y.dtype, y.size, (Y, b, *_ints(OC, N, OH, OW), y))
    return y


# -- max pooling (kernels/pool.cu) ------------------------------------------------------------
def max_pool_forward(x, KH, KW, SH, SW, PH, PW, with_argmax=True):
    """(y, argmax) for x (N, C, H, W): padding counts as -inf; argmax (int32) = kh*KW + kw of
    the first maximum in row-major order, or None unless ``with_argmax`` (the kernel writes it
    anyway; it is not kept)."""
    cupy = backend.require_cupy()
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = cupy.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = cupy.empty((N, C, OH, OW), dtype=np.int32)
    _launch("max_pool_forward", x.dtype, y.size,
            (x, *_ints(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW), y, argmax))
    return y, (argmax if with_argmax else None)


def max_pool_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx ``x_shape`` (N, C, H, W): each element gathers gy of the windows whose arg-max it is."""
    cupy = backend.require_cupy()
    gy, argmax = cupy.ascontiguousarray(gy), cupy.ascontiguousarray(argmax)
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    if gy.shape != (N, C, OH, OW) or argmax.shape != gy.shape or argmax.dtype != np.int32:
        raise ValueError(f"minialex.cuda.max_pool_backward: gy and argmax (int32) must be "
                         f"{(N, C, OH, OW)}, got {gy.shape} and {argmax.shape} {argmax.dtype}")
    gx = cupy.empty((N, C, H, W), dtype=gy.dtype)
    _launch("max_pool_backward", gy.dtype, gx.size,
            (gy, argmax, *_ints(N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW), gx))
    return gx


# -- local response normalisation (kernels/lrn.cu) ---------------------------------------------
def lrn_forward(x, size, alpha, beta, k):
    """(y, scale) for x (N, C, H, W), ``alpha`` as used in the formula; see ``layers/lrn.py``."""
    cupy = backend.require_cupy()
    x = cupy.ascontiguousarray(x)
    N, C, H, W = x.shape
    y, scale = cupy.empty_like(x), cupy.empty_like(x)
    t = x.dtype.type
    _launch("lrn_forward", x.dtype, N * H * W,
            (x, *_ints(N, C, H, W, size), t(alpha), t(beta), t(k), y, scale))
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta):
    """gx from the saved x, y, scale and the incoming gy (all (N, C, H, W)), in closed form."""
    cupy = backend.require_cupy()
    x, y, scale, gy = (cupy.ascontiguousarray(a) for a in (x, y, scale, gy))
    _same_dtype("lrn_backward", x, y=y, scale=scale, gy=gy)
    N, C, H, W = x.shape
    gx = cupy.empty_like(x)
    t = x.dtype.type
    _launch("lrn_backward", x.dtype, N * H * W,
            (x, y, scale, gy, *_ints(N, C, H, W, size), t(alpha), t(beta), gx))
    return gx


# -- element-wise: ReLU, dropout (kernels/relu.cu, kernels/dropout.cu) ------------------------
def relu_forward(x):
    """y = max(0, x): one CuPy element-wise op, which needs no kernel of ours."""
    return backend.require_cupy().maximum(x, 0)


def relu_backward(y, gy):
    """gx = gy where y > 0, else 0."""
    cupy = backend.require_cupy()
    y, gy = cupy.ascontiguousarray(y), cupy.ascontiguousarray(gy)
    _same_dtype("relu_backward", gy, y=y)
    gx = cupy.empty_like(gy)
    _launch("relu_backward", gy.dtype, gy.size, (y, gy, np.int64(gy.size), gx))
    return gx


def dropout_forward(x, u, p, scale):
    """(y, mask): mask = (u >= p) in x's dtype, y = x * mask * scale; u uniform in [0, 1)."""
    cupy = backend.require_cupy()
    x, u = cupy.ascontiguousarray(x), cupy.ascontiguousarray(u)
    _same_dtype("dropout_forward", x, u=u)
    y, mask = cupy.empty_like(x), cupy.empty_like(x)
    t = x.dtype.type
    _launch("dropout_forward", x.dtype, x.size,
            (x, u, np.int64(x.size), t(p), t(scale), y, mask))
    return y, mask


# -- GEMM through cuBLAS ----------------------------------------------------------------------
def set_tf32(enabled: bool) -> None:
    """Allow (True) or forbid (False, the default) TF32 tensor cores in float32 :func:`gemm`,
    which runs the GEMMs of ``conv2d`` and ``linear`` (not ``Tensor @ Tensor``, see above).

    TF32 keeps 10 mantissa bits of each product's inputs (float32 keeps 23), so results differ
    from FP32 by ~1e-3 relative; it is much faster on Ampere and later GPUs.
    """
    global _tf32
    if not isinstance(enabled, bool):
        raise TypeError(f"set_tf32: enabled must be True or False, got {enabled!r}")
    _tf32 = enabled


def tf32_enabled() -> bool:
    """Whether float32 :func:`gemm` may use TF32 (see :func:`set_tf32`)."""
    return _tf32


def cublas_gemm_plan(a_shape, b_shape, transa=False, transb=False) -> dict:
    """Arguments of the column-major cuBLAS call computing C = op(a) @ op(b) for row-major a, b, C.

    A C-contiguous (r, c) array read column-major is the (c, r) matrix of its transpose. So C's
    buffer, read by cuBLAS, is C^T = op(b)^T op(a)^T: b is cuBLAS's first operand and a its
    second, each transposed by cuBLAS exactly when the caller asked for it, with leading
    dimensions equal to the arrays' row lengths.

    >>> plan = cublas_gemm_plan((2, 3), (3, 5))  # (2, 3) @ (3, 5): C^T (5, 2) = b^T a^T
    >>> plan["m"], plan["n"], plan["k"], plan["lda"], plan["ldb"], plan["ldc"]
    (5, 2, 3, 5, 3, 5)
    >>> plan = cublas_gemm_plan((3, 2), (5, 3), transa=True, transb=True)
    >>> plan["first_transposed"], plan["second_transposed"], plan["m"], plan["n"], plan["k"]
    (True, True, 5, 2, 3)
    """
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ValueError(f"gemm: a and b must be 2-D, got shapes {tuple(a_shape)} and "
                         f"{tuple(b_shape)}")
    M, K = (a_shape[1], a_shape[0]) if transa else a_shape
    K_b, N = (b_shape[1], b_shape[0]) if transb else b_shape
    if K != K_b:
        raise ValueError(f"gemm: op(a) is {(M, K)} but op(b) is {(K_b, N)} (a {tuple(a_shape)}, "
                         f"transa={transa}, b {tuple(b_shape)}, transb={transb})")
    return dict(first_transposed=bool(transb), second_transposed=bool(transa), m=N, n=M, k=K,
                lda=b_shape[1], ldb=a_shape[1], ldc=N)


_ALPHA_BETA = {  # host scalars 1 and 0 in the compute type's precision (cuBLAS reads them)
    np.dtype(np.float32): (np.ones((), np.float32), np.zeros((), np.float32)),
    np.dtype(np.float64): (np.ones((), np.float64), np.zeros((), np.float64)),
}


def gemm(a, b, transa=False, transb=False, out=None):
    """op(a) @ op(b) for 2-D float32/float64 CuPy arrays through cuBLAS (``op`` transposes when
    the flag is set), into ``out`` (C-contiguous, (M, N)) when given.

    An F-contiguous operand (e.g. ``w.T``) is used in place with its flag flipped; any other
    non-C-contiguous operand is copied first. float32 uses TF32 only after ``set_tf32(True)``.
    """
    cupy = backend.require_cupy()
    cublas = cupy.cuda.cublas
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm: a and b must be 2-D, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype or a.dtype not in _ALPHA_BETA:
        raise TypeError(f"gemm: a and b must both be float32 or both float64, got {a.dtype} and "
                        f"{b.dtype}")
    a, transa = _gemm_operand(cupy, a, transa)
    b, transb = _gemm_operand(cupy, b, transb)
    plan = cublas_gemm_plan(a.shape, b.shape, transa, transb)
    M, N, K = plan["n"], plan["m"], plan["k"]
    if out is None:
        out = cupy.empty((M, N), dtype=a.dtype)
    elif out.shape != (M, N) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(f"gemm: out must be a C-contiguous {a.dtype} array of shape {(M, N)}, "
                         f"got {out.dtype} {out.shape}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        out.fill(0)
        return out
    if a.dtype == np.float64:
        data_type, compute_type = cupy.cuda.runtime.CUDA_R_64F, cublas.CUBLAS_COMPUTE_64F
    else:
        data_type = cupy.cuda.runtime.CUDA_R_32F
        compute_type = cublas.CUBLAS_COMPUTE_32F_FAST_TF32 if _tf32 else cublas.CUBLAS_COMPUTE_32F
    one, zero = _ALPHA_BETA[a.dtype]
    op = {False: cublas.CUBLAS_OP_N, True: cublas.CUBLAS_OP_T}
    cublas.gemmEx(
        cupy.cuda.get_cublas_handle(),
        op[plan["first_transposed"]], op[plan["second_transposed"]],
        plan["m"], plan["n"], plan["k"],
        one.ctypes.data,
        b.data.ptr, data_type, plan["lda"],
        a.data.ptr, data_type, plan["ldb"],
        zero.ctypes.data,
        out.data.ptr, data_type, plan["ldc"],
        compute_type, cublas.CUBLAS_GEMM_DEFAULT)
    return out


def _gemm_operand(cupy, matrix, transposed):
    """(C-contiguous matrix, flag) with op(matrix) unchanged: an F-contiguous matrix is the
    C-contiguous buffer of its transpose, so it is used as ``matrix.T`` with the flag flipped."""
    if matrix.flags.c_contiguous:
        return matrix, transposed
    if matrix.flags.f_contiguous:
        return matrix.T, not transposed
    return cupy.ascontiguousarray(matrix), transposed
