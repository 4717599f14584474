r"""2-D convolution (with groups) as im2col followed by one matrix product per group.

Notation: ``x`` input (N, C, H, W); ``w`` weight (OC, C/G, KH, KW) (lower case, so that ``W``
is always the width); ``b`` bias (OC,); ``y`` output (N, OC, OH, OW); strides SH, SW; zero
padding PH, PW; G groups, each of Cg = C/G input and OCg = OC/G output channels; ``x_pad`` is
``x`` with PH zero rows and PW zero columns added on each side; ``g`` is the group of output
channel ``o`` (g = o // OCg).

Forward (the "cross-correlation" every framework calls convolution):

.. math::

    y[n, o, i, j] = b[o] + \sum_{c=0}^{C_g-1} \sum_{k_h=0}^{KH-1} \sum_{k_w=0}^{KW-1}
        w[o, c, k_h, k_w] \; x_{pad}[n, g C_g + c, i\,SH + k_h, j\,SW + k_w]

im2col copies every receptive field into one column, so the triple sum becomes a matrix product:
``col`` (C*KH*KW, N*OH*OW) with
``col[(c*KH + kh)*KW + kw, (n*OH + i)*OW + j] = x_pad[n, c, i*SH + kh, j*SW + kw]``, and per group

.. math::  Y_g = w_g \, \mathrm{col}_g, \qquad
    w_g = w[g OC_g : (g+1) OC_g].\mathrm{reshape}(OC_g,\ C_g KH KW),\quad
    \mathrm{col}_g = \mathrm{col}[g C_g KH KW : (g+1) C_g KH KW]

and ``y = Y.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3) + b``.

Gradient. With ``gY`` = dL/dY laid out like ``Y`` (OC, N*OH*OW), the product rule for a matrix
product gives, per group,

.. math::  gw_g = gY_g \, \mathrm{col}_g^T, \qquad g\mathrm{col}_g = w_g^T \, gY_g, \qquad
    gb[o] = \sum_{n, i, j} gy[n, o, i, j].

``col = im2col(x)`` is linear in ``x``, so ``gx = im2col^T(gcol)``: the adjoint, ``col2im``,
adds every column entry back onto the ``x`` element it was copied from (entries that were
copied from the padding are dropped). Overlapping windows (kernel > stride) therefore sum.

Shape:
    x (N, C, H, W), w (OC, C/G, KH, KW), b (OC,) -> y (N, OC, OH, OW) with
    OH = floor((H + 2 PH - KH) / SH) + 1 and OW = floor((W + 2 PW - KW) / SW) + 1.

Paper: Krizhevsky et al. (2012), Sec. 3.2 and 3.5. The "5x5x48" kernels of conv2 (and conv4,
conv5) see only half of the previous layer's channels because each GPU held half of the
kernels: that is ``groups=2``.

Computed as written on the GPU: im2col of the whole batch, one GEMM per group, bias; backward
keeps ``col``. On the CPU the same products run a block of images at a time, in threads
(:func:`_conv2d_forward_cpu`): per image, ``Y_g`` for that image's columns only, written
straight into ``y``; backward keeps ``x`` and rebuilds each block's ``col`` from it, and sums
``gw`` and ``gb`` over a fixed cut of the batch, so their bits do not depend on the core count.

GPU: kernels/im2col.cu (im2col, col2im, bias_add_nchw); the GEMMs are cuBLAS through
``minialex.cuda.gemm`` (TF32 only after ``minialex.cuda.set_tf32(True)``).
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import backend, cuda
from ..backend import get_array_module, is_gpu_array
from ..module import Module, Parameter
from ..tensor import Function, Tensor
from ._common import (
    block_bounds,
    check_float,
    check_window_fits,
    cpu_parallel,
    cpu_parallel_gemms,
    output_size,
    pair,
    piece_bounds,
    positive_int,
    scratch,
    unpadded,
    window,
)


class Conv2dFunction(Function):
    """``y = conv2d(x, w, b)``: im2col, one GEMM per group, bias. No double backward.

    Keeps, for ``gw``, ``col`` on the GPU and ``x`` on the CPU (whose backward rebuilds one
    block of columns at a time from it), only when ``w`` needs a gradient; and ``w_mat`` only
    when ``x`` does.
    """

    def __init__(self, stride=(1, 1), padding=(0, 0), groups=1):
        (self.SH, self.SW), (self.PH, self.PW), self.groups = stride, padding, groups

    def forward(self, x, w, b=None):
        impl = self._forward_gpu if is_gpu_array(x) else self._forward_cpu
        return impl(x, w, b)

    def backward(self, gy):
        impl = self._backward_gpu if is_gpu_array(gy) else self._backward_cpu
        return impl(gy)

    def _forward_gpu(self, x, w, b):
        """The whole batch at once: im2col, one cuBLAS GEMM per group, bias (kernels/)."""
        cp = get_array_module(x)  # CuPy, reached through the backend
        N, C, H, W = x.shape
        OC, Cg, KH, KW = w.shape
        G, OCg, K = self.groups, OC // self.groups, Cg * KH * KW
        OH, OW = output_size(H, KH, self.SH, self.PH), output_size(W, KW, self.SW, self.PW)
        col = im2col(cp.ascontiguousarray(x), KH, KW, self.SH, self.SW, self.PH, self.PW)
        w_mat = w.reshape(OC, K)
        Y = cp.empty((OC, N * OH * OW), dtype=x.dtype)
        for g in range(G):
            cuda.gemm(w_mat[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K],
                      out=Y[g * OCg:(g + 1) * OCg])
        needs_x, needs_w = self.needs_input_grad[:2]
        self.saved = (col if needs_w else None, w_mat if needs_x else None)
        self.shapes = x.shape, w.shape
        return bias_add_nchw(Y, None if b is None else cp.ascontiguousarray(b), N, OH, OW)

    def _backward_gpu(self, gy):
        cp = get_array_module(gy)
        col, w_mat = self.saved
        x_shape, w_shape = self.shapes
        OC, Cg, KH, KW = w_shape
        G, OCg, K = self.groups, OC // self.groups, Cg * KH * KW
        gY = cp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(OC, -1)  # (OC, N*OH*OW)
        gx = gw = gb = None
        if self.needs_input_grad[1]:
            gw = cp.empty((OC, K), dtype=gy.dtype)
            for g in range(G):
                cuda.gemm(gY[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K].T,
                          out=gw[g * OCg:(g + 1) * OCg])
            gw = gw.reshape(w_shape)
        if self.needs_input_grad[0]:
            gcol = cp.empty((G * K, gY.shape[1]), dtype=gy.dtype)
            for g in range(G):
                cuda.gemm(w_mat[g * OCg:(g + 1) * OCg].T, gY[g * OCg:(g + 1) * OCg],
                          out=gcol[g * K:(g + 1) * K])
            gx = col2im(gcol, x_shape, KH, KW, self.SH, self.SW, self.PH, self.PW)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gY.sum(axis=1)
        return gx, gw, gb

    def _forward_cpu(self, x, w, b):
        """A block of images at a time (see _conv2d_forward_cpu); keeps x, not col."""
        x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
        needs_x, needs_w = self.needs_input_grad[:2]
        self.saved = (x if needs_w else None, w.reshape(w.shape[0], -1) if needs_x else None)
        self.shapes = x.shape, w.shape
        return _conv2d_forward_cpu(x, w, b, self.SH, self.SW, self.PH, self.PW, self.groups)

    def _backward_cpu(self, gy):
        x, w_mat = self.saved
        needs_b = len(self.needs_input_grad) > 2 and self.needs_input_grad[2]
        return _conv2d_backward_cpu(np.ascontiguousarray(gy), x, w_mat, *self.shapes,
                                    self.SH, self.SW, self.PH, self.PW, self.groups, needs_b)


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1) -> Tensor:
    """2-D convolution of ``x`` (N, C, H, W) with ``weight`` (OC, C/groups, KH, KW), plus ``bias``.

    ``stride`` and ``padding`` are an int or an (H, W) pair, as in PyTorch.

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
    N, C, H, W = check_float("conv2d", "input", x, "(N, C, H, W)")
    OC, Cg, KH, KW = check_float("conv2d", "weight", weight, "(OC, C/groups, KH, KW)", like=x)
    if bias is not None and check_float("conv2d", "bias", bias, "(OC,)", like=x) != (OC,):
        raise ValueError(f"conv2d: bias must have shape ({OC},) for weight "
                         f"{(OC, Cg, KH, KW)}, got {tuple(bias.shape)}")
    stride, padding = pair("conv2d", "stride", stride, 1), pair("conv2d", "padding", padding, 0)
    groups = positive_int("conv2d", "groups", groups)
    if C % groups:
        raise ValueError(f"conv2d: input has {C} channels, not divisible by groups={groups}")
    if OC % groups:
        raise ValueError(f"conv2d: weight has {OC} out_channels, not divisible by "
                         f"groups={groups}")
    if Cg * groups != C:
        raise ValueError(f"conv2d: weight {(OC, Cg, KH, KW)} expects in_channels/groups = {Cg} "
                         f"(in_channels = {Cg * groups}), but input {(N, C, H, W)} has {C} "
                         f"channels and groups={groups}")
    check_window_fits("conv2d", H, W, (KH, KW), padding)
    fn = Conv2dFunction(stride, padding, groups)
    return fn(x, weight) if bias is None else fn(x, weight, bias)


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
        self.in_channels = positive_int("Conv2d", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2d", "out_channels", out_channels)
        self.groups = positive_int("Conv2d", "groups", groups)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if value % groups:
                raise ValueError(f"Conv2d: {name}={value} is not divisible by groups={groups}")
        self.kernel_size = pair("Conv2d", "kernel_size", kernel_size, 1)
        self.stride = pair("Conv2d", "stride", stride, 1)
        self.padding = pair("Conv2d", "padding", padding, 0)
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


# -- im2col, col2im, bias-add: one dispatch line each, then the CPU siblings of kernels/im2col.cu
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
    impl = cuda.im2col if is_gpu_array(x) else _im2col_cpu
    return impl(x, KH, KW, SH, SW, PH, PW)


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    """The adjoint of :func:`im2col`: col (C*KH*KW, N*OH*OW) -> gx of ``x_shape`` (N, C, H, W).

    Each element of ``gx`` is the sum of every ``col`` entry that im2col copied from it.
    """
    impl = cuda.col2im if is_gpu_array(col) else _col2im_cpu
    return impl(col, x_shape, KH, KW, SH, SW, PH, PW)


def bias_add_nchw(Y, b, N, OH, OW):
    """y (N, OC, OH, OW), contiguous: the GEMM result Y (OC, N*OH*OW) plus b (or None)."""
    impl = cuda.bias_add_nchw if is_gpu_array(Y) else _bias_add_nchw_cpu
    return impl(Y, b, N, OH, OW)


def _im2col_cpu(x, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)

    def copy_images(n0, n1):  # images are independent: each thread copies its own
        _im2col_block(x[n0:n1], KH, KW, SH, SW, PH, PW, out=col[:, :, :, n0:n1])
    cpu_parallel(copy_images, N, col.size)
    return col.reshape(C * KH * KW, -1)


def _col2im_cpu(col, x_shape, KH, KW, SH, SW, PH, PW):
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    fields = col.reshape(C, KH, KW, N, OH, OW)
    gx = np.empty(x_shape, dtype=col.dtype)

    def add_channels(c0, c1):  # channels are independent: each thread sums its own
        _add_fields(fields[c0:c1], gx[:, c0:c1], SH, SW, PH, PW)
    cpu_parallel(add_channels, C, col.size)
    return gx


def _receptive_fields(x_pad, KH, KW, SH, SW, PH, PW):
    """A read-only view of x_pad (N, C, H + 2 PH, W + 2 PW) indexed [c, kh, kw, n, i, j] ->
    x_pad[n, c, i*SH + kh, j*SW + kw]: col's layout before flattening, so that one copy (the
    reshape) writes col in order."""
    N, C, Hp, Wp = x_pad.shape
    OH, OW = output_size(Hp - 2 * PH, KH, SH, PH), output_size(Wp - 2 * PW, KW, SW, PW)
    sN, sC, sH, sW = x_pad.strides
    return as_strided(x_pad, shape=(C, KH, KW, N, OH, OW),
                      strides=(sC, sH, sW, sN, sH * SH, sW * SW), writeable=False)


def _add_fields(fields, gx, SH, SW, PH, PW):
    """col2im of ``fields`` (C, KH, KW, N, OH, OW) into ``gx`` (N, C, H, W), in one thread.

    Accumulates channel-major (C, N, ...) so each add reads one contiguous block of ``fields``;
    the final copy turns the sum back to (N, C, H, W) and drops the padding in the same pass.
    """
    C, KH, KW, N, OH, OW = fields.shape
    H, W = gx.shape[2:]
    gx_pad = scratch("gx_pad", (C, N, H + 2 * PH, W + 2 * PW), fields.dtype)
    gx_pad.fill(0)
    for kh in range(KH):
        for kw in range(KW):
            window(gx_pad, kh, kw, SH, SW, OH, OW)[...] += fields[:, kh, kw]
    gx[...] = unpadded(gx_pad, PH, PW).transpose(1, 0, 2, 3)


# -- the convolution on the CPU, a block of images at a time ---------------------------------
# Why blocks: Conv2dFunction's products, computed for a few images at a time, keep each thread's
# temporaries to one block's (at most BLOCK_BYTES of columns, reused from call to call); each
# thread runs im2col, GEMMs, bias and col2im for its own block with no wait in between; each
# image's (OC, OH*OW) product goes straight into y (no transpose pass); and no col for the whole
# batch (hundreds of MB at AlexNet's sizes, each page of it a fresh page fault) is allocated or
# kept: backward rebuilds a block's columns from x, which the previous layer keeps anyway.
# Each image's y and gx come from products of their own, so they do not depend on how images
# are grouped; gw and gb sum over images, so backward groups them in a fixed way (piece_bounds).
def _conv2d_forward_cpu(x, w, b, SH, SW, PH, PW, G):
    """``y = conv2d(x, w, b)`` for contiguous NumPy arrays, block by block."""
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OCg, K = OC // G, Cg * KH * KW
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    w_mat = w.reshape(OC, K)
    y = np.empty((N, OC, OH, OW), dtype=x.dtype)
    bounds = block_bounds(N, G * K * OH * OW * x.itemsize, per_thread=True)

    def run_blocks(i0, i1):
        for n0, n1 in zip(bounds[i0:i1], bounds[i0 + 1:i1 + 1]):
            col = _im2col_block(x[n0:n1], KH, KW, SH, SW, PH, PW)  # (C*KH*KW, n, OH*OW)
            y_n = y[n0:n1].reshape(n1 - n0, OC, OH * OW)
            for g in range(G):  # (OCg, K) @ (n, K, OH*OW): one GEMM per image, into y
                np.matmul(w_mat[g * OCg:(g + 1) * OCg], col[g * K:(g + 1) * K].transpose(1, 0, 2),
                          out=y_n[:, g * OCg:(g + 1) * OCg])
            if b is not None:
                y_n += b[:, None]
    cpu_parallel_gemms(run_blocks, len(bounds) - 1, y.size * K)
    return y


def _conv2d_backward_cpu(gy, x, w_mat, x_shape, w_shape, SH, SW, PH, PW, G, needs_b):
    """``(gx, gw, gb)`` of conv2d for contiguous NumPy arrays, block by block. ``x`` is given
    only when gw is wanted, ``w_mat`` (OC, Cg*KH*KW) only when gx is, and gb is computed only
    when ``needs_b``; a result not wanted is None.

    gw and gb are sums over the images, so their bits depend on how the images are grouped:
    here the batch is cut into :func:`piece_bounds` pieces (fixed by N alone), each piece into
    blocks of at most BLOCK_BYTES of columns (fixed by its size and the shapes alone), a piece's
    blocks add up in order into the piece's partial sum, and the partial sums add up in order.
    Neither the core count nor which thread took which piece changes a bit of the result."""
    N, C = x_shape[:2]
    OC, Cg, KH, KW = w_shape
    OCg, K = OC // G, Cg * KH * KW
    OH, OW = gy.shape[2:]
    pieces = piece_bounds(N)
    gx = None if w_mat is None else np.empty(x_shape, dtype=gy.dtype)
    # the partial sums live in this thread's scratch: at fmnist's conv4 they are 42 MB, and as
    # a fresh array each of their pages faults in at every step
    gw_t_pieces = None if x is None else scratch("gw_t_pieces", (len(pieces) - 1, K, OC),
                                                 gy.dtype)
    gb_pieces = np.empty((len(pieces) - 1, OC), dtype=gy.dtype) if needs_b else None

    def run_block(i, n0, n1, first):
        """Block n0:n1 of piece i: its gx, and its gw and gb into (first) or onto the piece's."""
        gY = scratch("gY", (OC, n1 - n0, OH * OW), gy.dtype)
        gY[...] = gy[n0:n1].reshape(n1 - n0, OC, OH * OW).transpose(1, 0, 2)
        gY = gY.reshape(OC, -1)  # (OC, n*OH*OW): col's column order
        if needs_b:
            if first:
                gY.sum(axis=1, out=gb_pieces[i])
            else:
                gb_pieces[i] += gY.sum(axis=1)
        if x is not None:  # gw^T = col gY^T: this order of the product runs 10-20% faster
            col = _im2col_block(x[n0:n1], KH, KW, SH, SW, PH, PW).reshape(G * K, -1)
            gw_t = gw_t_pieces[i] if first else scratch("gw_t", (K, OC), gy.dtype)
            for g in range(G):
                np.matmul(col[g * K:(g + 1) * K], gY[g * OCg:(g + 1) * OCg].T,
                          out=gw_t[:, g * OCg:(g + 1) * OCg])
            if not first:
                gw_t_pieces[i] += gw_t
        if w_mat is not None:
            gcol = scratch("gcol", (G * K, gY.shape[1]), gy.dtype)
            for g in range(G):
                np.matmul(w_mat[g * OCg:(g + 1) * OCg].T, gY[g * OCg:(g + 1) * OCg],
                          out=gcol[g * K:(g + 1) * K])
            _add_fields(gcol.reshape(C, KH, KW, n1 - n0, OH, OW), gx[n0:n1], SH, SW, PH, PW)

    def run_pieces(i0, i1):
        for i in range(i0, i1):
            blocks = block_bounds(pieces[i + 1] - pieces[i], G * K * OH * OW * gy.itemsize)
            for j in range(len(blocks) - 1):
                run_block(i, pieces[i] + blocks[j], pieces[i] + blocks[j + 1], first=j == 0)
    cpu_parallel_gemms(run_pieces, len(pieces) - 1, gy.size * K)
    gw = None if gw_t_pieces is None else np.ascontiguousarray(gw_t_pieces.sum(axis=0).T)
    gw = None if gw is None else gw.reshape(w_shape)
    return gx, gw, None if gb_pieces is None else gb_pieces.sum(axis=0)


def _im2col_block(x, KH, KW, SH, SW, PH, PW, out=None):
    """col (C*KH*KW, N, OH*OW) of x (N, C, H, W), in one thread (one block's share): into
    ``out`` (C, KH, KW, N, OH, OW) when given, else into this thread's scratch, valid until its
    next call in the same thread."""
    N, C, H, W = x.shape
    x_pad = x
    if PH or PW:
        x_pad = scratch("x_pad", (N, C, H + 2 * PH, W + 2 * PW), x.dtype)
        for border in (x_pad[:, :, :PH], x_pad[:, :, H + PH:], x_pad[..., :PW],
                       x_pad[..., W + PW:]):
            border.fill(0)  # only the zero border; the copy below writes the rest
        x_pad[:, :, PH:PH + H, PW:PW + W] = x
    fields = _receptive_fields(x_pad, KH, KW, SH, SW, PH, PW)
    if out is not None:
        out[...] = fields
        return out
    col = scratch("col", fields.shape, x.dtype)
    col[...] = fields
    return col.reshape(C * KH * KW, N, -1)


def _bias_add_nchw_cpu(Y, b, N, OH, OW):
    OC = Y.shape[0]
    y_t = Y.reshape(OC, N, OH, OW).transpose(1, 0, 2, 3)
    y = np.empty((N, OC, OH, OW), dtype=Y.dtype)
    if b is None:
        y[...] = y_t
    else:
        np.add(y_t, b.reshape(1, OC, 1, 1), out=y)  # the transpose and the bias in one pass
    return y
