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

The plain NumPy version below (:func:`conv2d_forward`, :func:`conv2d_backward`) computes
these formulas as written, for the whole batch; it is the reference both fast paths are tested
against. The GPU computes them as written too (:func:`minialex.cuda.conv2d_forward`: im2col of
the batch, one cuBLAS GEMM per group, bias; backward keeps ``col``). The CPU
(:func:`minialex.cpu.conv2d_forward`) runs the same products a block of images at a time, in
threads; it keeps ``x`` and rebuilds each block's ``col`` from it, and sums ``gw`` and ``gb``
over a fixed cut of the batch, so their bits do not depend on the core count.

GPU: kernels/im2col.cu (im2col, col2im, bias_add_nchw); the GEMMs are cuBLAS through
``minialex.cuda.gemm`` (TF32 only after ``minialex.cuda.set_tf32(True)``).
"""
from __future__ import annotations

import math

import numpy as np

from .. import backend, cpu, cuda
from ..backend import is_gpu_array
from ..checks import check_float, check_window_fits, output_size, pair, positive_int
from ..module import Module, Parameter
from ..tensor import Function, Tensor
from ..windows import padded, unpadded, window


# -- the plain version: the formulas above, whole batch, NumPy ------------------------------
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
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    x_pad = padded(x, PH, PW)
    fields = [window(x_pad, kh, kw, SH, SW, OH, OW) for kh in range(KH) for kw in range(KW)]
    # (KH*KW, N, C, OH, OW) -> (C, KH*KW, N, OH, OW): col's row and column order
    return np.stack(fields).transpose(2, 0, 1, 3, 4).reshape(C * KH * KW, N * OH * OW)


def col2im(col, x_shape, KH, KW, SH, SW, PH, PW):
    """The adjoint of :func:`im2col`: col (C*KH*KW, N*OH*OW) -> gx of ``x_shape`` (N, C, H, W).

    Each element of ``gx`` is the sum of every ``col`` entry that im2col copied from it.
    """
    N, C, H, W = x_shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    fields = col.reshape(C, KH, KW, N, OH, OW)
    gx_pad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=col.dtype)
    for kh in range(KH):
        for kw in range(KW):
            window(gx_pad, kh, kw, SH, SW, OH, OW)[...] += fields[:, kh, kw].transpose(1, 0, 2, 3)
    return np.ascontiguousarray(unpadded(gx_pad, PH, PW))


def conv2d_forward(x, w, b, SH, SW, PH, PW, G):
    """y (N, OC, OH, OW): ``Y_g = w_g col_g`` for each group, transposed to NCHW, plus b."""
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    col = im2col(x, KH, KW, SH, SW, PH, PW).reshape(G, Cg * KH * KW, -1)
    Y = np.matmul(w.reshape(G, OC // G, -1), col).reshape(OC, N, OH, OW)
    y = Y.transpose(1, 0, 2, 3) + (0 if b is None else b[:, None, None])
    return np.ascontiguousarray(y)


def conv2d_backward(gy, x, w, SH, SW, PH, PW, G):
    """(gx, gw, gb): ``gw_g = gY_g col_g^T``, ``gx = col2im(w_g^T gY_g)``, gb = sum of gy."""
    OC, Cg, KH, KW = w.shape
    col = im2col(x, KH, KW, SH, SW, PH, PW).reshape(G, Cg * KH * KW, -1)
    gY = gy.transpose(1, 0, 2, 3).reshape(G, OC // G, -1)
    gw = np.matmul(gY, col.transpose(0, 2, 1)).reshape(w.shape)
    gcol = np.matmul(w.reshape(G, OC // G, -1).transpose(0, 2, 1), gY)
    gx = col2im(gcol.reshape(G * Cg * KH * KW, -1), x.shape, KH, KW, SH, SW, PH, PW)
    return gx, gw, gy.sum(axis=(0, 2, 3))


# -- the Function: the fast CPU path (minialex.cpu) or the GPU's (minialex.cuda) -------------
class Conv2dFunction(Function):
    """``y = conv2d(x, w, b)``. No double backward.

    Keeps ``w`` and, only when ``w`` needs a gradient, what gw is computed from: ``col`` on the
    GPU, ``x`` on the CPU (whose backward rebuilds one block of columns at a time from it).
    """

    def __init__(self, stride=(1, 1), padding=(0, 0), groups=1):
        self.geometry = (*stride, *padding, groups)  # SH, SW, PH, PW, G

    def forward(self, x, w, b=None):
        fast = cuda if is_gpu_array(x) else cpu
        y, kept = fast.conv2d_forward(x, w, b, *self.geometry, keep=self.needs_input_grad[1])
        self.saved = kept, w, x.shape
        return y

    def backward(self, gy):
        fast = cuda if is_gpu_array(gy) else cpu
        kept, w, x_shape = self.saved
        return fast.conv2d_backward(gy, kept, w, x_shape, *self.geometry,
                                    needs=self.needs_input_grad)


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

