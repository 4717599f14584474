r"""2-D convolution (with groups) as im2col followed by one matrix product per group.

Notation: ``x`` input (N, C, H, W); ``W`` weight (OC, C/G, KH, KW); ``b`` bias (OC,); ``y``
output (N, OC, OH, OW); strides SH, SW; zero padding PH, PW; G groups, each of Cg = C/G input
and OCg = OC/G output channels; ``x_pad`` is ``x`` with PH zero rows and PW zero columns added on
each side; ``g`` is the group of output channel ``o`` (g = o // OCg).

Forward (the "cross-correlation" every framework calls convolution):

.. math::

    y[n, o, i, j] = b[o] + \sum_{c=0}^{C_g-1} \sum_{k_h=0}^{KH-1} \sum_{k_w=0}^{KW-1}
        W[o, c, k_h, k_w] \; x_{pad}[n, g C_g + c, i\,SH + k_h, j\,SW + k_w]

im2col copies every receptive field into one column, so the triple sum becomes a matrix product:
``col`` (C*KH*KW, N*OH*OW) with
``col[(c*KH + kh)*KW + kw, (n*OH + i)*OW + j] = x_pad[n, c, i*SH + kh, j*SW + kw]``, and per group

.. math::  Y_g = W_g \, \mathrm{col}_g, \qquad
    W_g = W[g OC_g : (g+1) OC_g].\mathrm{reshape}(OC_g,\ C_g KH KW),\quad
    \mathrm{col}_g = \mathrm{col}[g C_g KH KW : (g+1) C_g KH KW]

and ``y = Y.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3) + b``.

Gradient. With ``gY`` = dL/dY laid out like ``Y`` (OC, N*OH*OW), the product rule for a matrix
product gives, per group,

.. math::  gW_g = gY_g \, \mathrm{col}_g^T, \qquad g\mathrm{col}_g = W_g^T \, gY_g, \qquad
    gb[o] = \sum_{n, i, j} gy[n, o, i, j].

``col = im2col(x)`` is linear in ``x``, so ``gx = im2col^T(gcol)``: the adjoint, ``col2im``,
adds every column entry back onto the ``x`` element it was copied from (entries that were
copied from the padding are dropped). Overlapping windows (kernel > stride) therefore sum.

Shape:
    x (N, C, H, W), W (OC, C/G, KH, KW), b (OC,) -> y (N, OC, OH, OW) with
    OH = floor((H + 2 PH - KH) / SH) + 1 and OW = floor((W + 2 PW - KW) / SW) + 1.

Paper: sections 3.2 and 3.5. The "5x5x48" kernels of conv2 (and conv4, conv5) see only half of
the previous layer's channels because each GPU held half of the kernels: that is ``groups=2``.

GPU: kernels/im2col.cu (im2col, col2im, bias_add_nchw); the GEMMs are cuBLAS through
``backend.matmul`` -> ``minialex.cuda.gemm`` (TF32 only after ``minialex.cuda.set_tf32(True)``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backend
from ..backend import get_array_module
from ..module import Module, Parameter
from ..tensor import Function, Tensor


# -- sizes, argument parsing and strided windows (shared with pool.py) -----------------------
def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length along one axis: ``(size + 2*padding - kernel) // stride + 1``.

    >>> conv_output_size(227, 11, 4, 0), conv_output_size(27, 5, 1, 2)
    (55, 27)
    """
    return (size + 2 * padding - kernel) // stride + 1


def as_pair(value, name: str, op: str) -> tuple[int, int]:
    """``(v, v)`` from an int ``v``, or the pair itself; TypeError naming ``name`` otherwise."""
    items = (value, value) if _is_int(value) else value
    if not (isinstance(items, (tuple, list)) and len(items) == 2 and all(map(_is_int, items))):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return int(items[0]), int(items[1])


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def padded(x, PH: int, PW: int, value=0):
    """``x`` (N, C, H, W) with PH rows and PW columns of ``value`` on each side (``x`` if none)."""
    if PH == 0 and PW == 0:
        return x
    N, C, H, W = x.shape
    xp = get_array_module(x)
    out = xp.full((N, C, H + 2 * PH, W + 2 * PW), value, dtype=x.dtype)
    out[:, :, PH:PH + H, PW:PW + W] = x
    return out


def window(a, kh: int, kw: int, SH: int, SW: int, OH: int, OW: int):
    """The view ``a[..., kh + i*SH, kw + j*SW]`` for i < OH, j < OW: the element at offset
    (kh, kw) of every window, as an (…, OH, OW) strided view (no copy)."""
    return a[..., kh:kh + SH * (OH - 1) + 1:SH, kw:kw + SW * (OW - 1) + 1:SW]


def unpadded(a, PH: int, PW: int):
    """The inner (H, W) part of a padded (…, H + 2 PH, W + 2 PW) array, as a view."""
    return a[..., PH:a.shape[-2] - PH, PW:a.shape[-1] - PW]


# -- im2col / col2im: CPU implementations and the one dispatch point -------------------------
def im2col(x, KH, KW, SH, SW, PH, PW):
    """Columns of receptive fields: x (N, C, H, W) -> col (C*KH*KW, N*OH*OW), contiguous.

    ``col[(c*KH + kh)*KW + kw, (n*OH + i)*OW + j] = x[n, c, i*SH + kh - PH, j*SW + kw - PW]``,
    0 where that index falls in the padding.

    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> im2col(x, 2, 2, 1, 1, 0, 0)
    array([[0., 1., 3., 4.],
           [1., 2., 4., 5.],
           [3., 4., 6., 7.],
           [4., 5., 7., 8.]])
    """
    if backend.is_gpu_array(x):
        from .. import cuda  # imported at first GPU use, so CPU-only installs never load it
        return cuda.im2col(x, KH, KW, SH, SW, PH, PW)
    return _im2col_cpu(x, KH, KW, SH, SW, PH, PW)


def _im2col_cpu(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W, KW, SW, PW)
    x_pad = padded(x, PH, PW)
    sN, sC, sH, sW = x_pad.strides
    # A read-only view indexed [c, kh, kw, n, i, j] -> x_pad[n, c, i*SH + kh, j*SW + kw]: the
    # col layout before flattening, so a single copy (the reshape) writes col in order.
    fields = as_strided(x_pad, shape=(C, KH, KW, N, OH, OW),
                        strides=(sC, sH, sW, sN, sH * SH, sW * SW), writeable=False)
    col = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)

    def copy_channels(c0, c1):
        col[c0:c1] = fields[c0:c1]
    backend.cpu_parallel(copy_channels, C, col.size)
    return col.reshape(C * KH * KW, N * OH * OW)


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    """The adjoint of :func:`im2col`: col (C*KH*KW, N*OH*OW) -> gx of ``x_shape`` (N, C, H, W).

    Each element of ``gx`` is the sum of every ``col`` entry that im2col copied from it.
    """
    if backend.is_gpu_array(col):
        from .. import cuda
        return cuda.col2im(col, x_shape, KH, KW, SH, SW, PH, PW)
    return _col2im_cpu(col, x_shape, KH, KW, SH, SW, PH, PW)


def _col2im_cpu(col, x_shape, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x_shape
    OH, OW = conv_output_size(H, KH, SH, PH), conv_output_size(W, KW, SW, PW)
    fields = col.reshape(C, KH, KW, N, OH, OW)
    # Accumulate channel-major (C, N, ...) so each add reads one contiguous block of col; the
    # final copy turns it back to (N, C, H, W) and drops the padding in the same pass.
    gx_pad = np.zeros((C, N, H + 2 * PH, W + 2 * PW), dtype=col.dtype)
    gx = np.empty(x_shape, dtype=col.dtype)

    def add_channels(c0, c1):  # channels are independent: each thread sums its own
        for kh in range(KH):
            for kw in range(KW):
                window(gx_pad[c0:c1], kh, kw, SH, SW, OH, OW)[...] += fields[c0:c1, kh, kw]
        gx[:, c0:c1] = unpadded(gx_pad[c0:c1], PH, PW).transpose(1, 0, 2, 3)
    backend.cpu_parallel(add_channels, C, col.size)
    return gx


def bias_add_nchw(out, b, N, OH, OW):
    """y (N, OC, OH, OW), contiguous: the GEMM result out (OC, N*OH*OW) plus b (or None)."""
    if backend.is_gpu_array(out):
        from .. import cuda
        return cuda.bias_add_nchw(out, b, N, OH, OW)
    return _bias_add_nchw_cpu(out, b, N, OH, OW)


def _bias_add_nchw_cpu(out, b, N, OH, OW):
    OC = out.shape[0]
    y_t = out.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3)
    y = np.empty((N, OC, OH, OW), dtype=out.dtype)
    if b is None:
        y[...] = y_t
    else:
        np.add(y_t, b.reshape(1, OC, 1, 1), out=y)  # the transpose and the bias in one pass
    return y


# -- the differentiable op ------------------------------------------------------------------
class Conv2dFunction(Function):
    """``y = conv2d(x, W, b)``: im2col, one GEMM per group, bias. No double backward.

    Keeps ``col`` (only when ``W`` needs a gradient) and ``W`` (only when ``x`` does).
    """

    def __init__(self, stride=(1, 1), padding=(0, 0), groups=1):
        self.SH, self.SW = stride
        self.PH, self.PW = padding
        self.groups = groups

    def forward(self, x, W, b=None):
        xp = get_array_module(x)
        x = xp.ascontiguousarray(x)
        N, C, H, _ = x.shape
        OC, Cg, KH, KW = W.shape
        G, OCg, K = self.groups, OC // self.groups, Cg * KH * KW
        OH = conv_output_size(H, KH, self.SH, self.PH)
        OW = conv_output_size(x.shape[3], KW, self.SW, self.PW)
        col = im2col(x, KH, KW, self.SH, self.SW, self.PH, self.PW)  # (G*K, N*OH*OW)
        W_mat = W.reshape(OC, K)
        out = xp.empty((OC, N * OH * OW), dtype=x.dtype)
        for g in range(G):
            backend.matmul(W_mat[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K],
                           out=out[g * OCg:(g + 1) * OCg])
        needs_x, needs_W = self.needs_input_grad[:2]
        self.saved = (col if needs_W else None, W_mat if needs_x else None)
        self.shapes = x.shape, W.shape
        return bias_add_nchw(out, None if b is None else xp.ascontiguousarray(b), N, OH, OW)

    def backward(self, gy):
        xp = get_array_module(gy)
        col, W_mat = self.saved
        x_shape, W_shape = self.shapes
        OC, Cg, KH, KW = W_shape
        G, OCg, K = self.groups, OC // self.groups, Cg * KH * KW
        gY = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(OC, -1)  # (OC, N*OH*OW)
        gx = gW = gb = None
        if self.needs_input_grad[1]:
            gW = xp.empty((OC, K), dtype=gy.dtype)
            for g in range(G):
                backend.matmul(gY[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K].T,
                               out=gW[g * OCg:(g + 1) * OCg])
            gW = gW.reshape(W_shape)
        if self.needs_input_grad[0]:
            gcol = xp.empty((G * K, gY.shape[1]), dtype=gy.dtype)
            for g in range(G):
                backend.matmul(W_mat[g * OCg:(g + 1) * OCg].T, gY[g * OCg:(g + 1) * OCg],
                               out=gcol[g * K:(g + 1) * K])
            gx = col2im(gcol, x_shape, KH, KW, self.SH, self.SW, self.PH, self.PW)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gY.sum(axis=1)
        return gx, gW, gb


# -- functional -----------------------------------------------------------------------------
def check_input(op: str, name: str, x, layout: str = "(N, C, H, W)"):
    """Shape and dtype of a Tensor/array argument, after checking its rank and float dtype."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{op}: {name} must be a Tensor or an array, got {type(x).__name__}")
    if len(x.shape) != len([axis for axis in layout.strip("()").split(",") if axis.strip()]):
        raise ValueError(f"{op}: {name} must be {layout}, got shape {tuple(x.shape)}")
    if np.dtype(x.dtype).kind != "f":
        raise TypeError(f"{op}: {name} must be floating point, got dtype {x.dtype}")
    return tuple(x.shape), np.dtype(x.dtype)


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1) -> Tensor:
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (OC, C/groups, KH, KW), plus ``bias``.

    ``stride`` and ``padding`` are an int or an (H, W) pair, as in PyTorch.

    >>> from minialex import Tensor
    >>> x = Tensor(np.ones((1, 1, 4, 4), dtype=np.float32))
    >>> w = Tensor(np.ones((2, 1, 3, 3), dtype=np.float32))
    >>> y = conv2d(x, w, padding=1)
    >>> y.shape
    (1, 2, 4, 4)
    >>> y.numpy()[0, 0]
    array([[4., 6., 6., 4.],
           [6., 9., 9., 6.],
           [6., 9., 9., 6.],
           [4., 6., 6., 4.]], dtype=float32)
    """
    (N, C, H, W), x_dtype = check_input("conv2d", "input", x)
    (OC, Cg, KH, KW), w_dtype = check_input("conv2d", "weight", weight,
                                             "(OC, C/groups, KH, KW)")
    (SH, SW), (PH, PW) = as_pair(stride, "stride", "conv2d"), as_pair(padding, "padding", "conv2d")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    if min(SH, SW) < 1:
        raise ValueError(f"conv2d: stride must be >= 1, got {(SH, SW)}")
    if min(PH, PW) < 0:
        raise ValueError(f"conv2d: padding must be >= 0, got {(PH, PW)}")
    if w_dtype != x_dtype:
        raise TypeError(f"conv2d: input is {x_dtype} but weight is {w_dtype}; convert one "
                        f"with .to(dtype=...)")
    if C % groups:
        raise ValueError(f"conv2d: input has {C} channels, not divisible by groups={groups}")
    if OC % groups:
        raise ValueError(f"conv2d: weight has {OC} out_channels, not divisible by "
                         f"groups={groups}")
    if Cg * groups != C:
        raise ValueError(f"conv2d: weight {(OC, Cg, KH, KW)} expects in_channels/groups = {Cg} "
                         f"(in_channels = {Cg * groups}), but input {(N, C, H, W)} has {C} "
                         f"channels and groups={groups}")
    if bias is not None:
        b_shape, b_dtype = check_input("conv2d", "bias", bias, "(OC,)")
        if b_shape != (OC,):
            raise ValueError(f"conv2d: bias must have shape ({OC},) for weight "
                             f"{(OC, Cg, KH, KW)}, got {b_shape}")
        if b_dtype != x_dtype:
            raise TypeError(f"conv2d: input is {x_dtype} but bias is {b_dtype}")
    if KH > H + 2 * PH or KW > W + 2 * PW:
        raise ValueError(f"conv2d: kernel {(KH, KW)} is larger than the padded input "
                         f"{(H + 2 * PH, W + 2 * PW)} (input {(H, W)}, padding {(PH, PW)})")
    fn = Conv2dFunction((SH, SW), (PH, PW), groups)
    return fn(x, weight) if bias is None else fn(x, weight, bias)


# -- module ---------------------------------------------------------------------------------
class Conv2d(Module):
    r"""2-D convolution layer owning ``weight`` (out_channels, in_channels/groups, KH, KW) and
    ``bias`` (out_channels,).

    Attributes:
        weight, bias: float32, drawn from :math:`U(-1/\sqrt{k}, 1/\sqrt{k})` with
            :math:`k = \text{in\_channels}/\text{groups} \cdot KH \cdot KW` (PyTorch's default).

    >>> conv1 = Conv2d(3, 96, 11, stride=4)
    >>> conv1
    Conv2d(3, 96, kernel_size=(11, 11), stride=(4, 4))
    >>> conv1(Tensor(np.zeros((1, 3, 227, 227), dtype=np.float32))).shape
    (1, 96, 55, 55)
    >>> conv1.num_parameters()
    34944
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"Conv2d: {name} must be a positive int, got {value!r}")
        if in_channels % groups:
            raise ValueError(f"Conv2d: in_channels={in_channels} is not divisible by "
                             f"groups={groups}")
        if out_channels % groups:
            raise ValueError(f"Conv2d: out_channels={out_channels} is not divisible by "
                             f"groups={groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = as_pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = as_pair(stride, "stride", "Conv2d")
        self.padding = as_pair(padding, "padding", "Conv2d")
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: need kernel_size >= 1, stride >= 1, padding >= 0, got "
                             f"{self.kernel_size}, {self.stride}, {self.padding}")
        KH, KW = self.kernel_size
        bound = 1.0 / math.sqrt(in_channels // groups * KH * KW)
        rng = backend.rng_for(np)
        shape = (out_channels, in_channels // groups, KH, KW)
        self.weight = Parameter(rng.uniform(-bound, bound, shape).astype(np.float32))
        self.bias = (Parameter(rng.uniform(-bound, bound, out_channels).astype(np.float32))
                     if bias else None)

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text
