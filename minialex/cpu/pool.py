r"""Max pooling on the CPU: the NumPy siblings of kernels/pool.cu, a block of images per thread.

They compute what ``max_pool_forward`` and ``max_pool_backward`` in ``minialex/layers/pool.py``
compute (the reference they are tested against), bit for bit: a max and an arg-max pick one
element each, and backward adds each image's shares in the outputs' order. Images are
independent, so the result never depends on the thread count.
"""
from __future__ import annotations

import numpy as np

from ..checks import output_size
from ..windows import padded, unpadded
from .scratch import scratch
from .threads import cpu_parallel


def max_pool_forward(x, KH, KW, SH, SW, PH, PW, with_argmax=True):
    """(y, argmax) for x (N, C, H, W): loop over the KH*KW window offsets, not over pixels;
    argmax (int32, kh*KW + kw of the first maximum) is None unless ``with_argmax``.

    Why phases: the element at offset (kh, kw) of every window is ``x_pad[kh::SH, kw::SW]``, a
    view with gaps that NumPy walks slowly. Splitting ``x_pad`` once into its SH*SW stride phases
    (rows a, a+SH, ...; columns b, b+SW, ...) makes each offset a plain contiguous-row slice of
    one phase: ``phase[kh % SH, kw % SW][kh // SH : kh // SH + OH, kw // SW : kw // SW + OW]``.
    Each thread does all of it for its own images, so a block's phases are still in cache when
    its offsets are read.
    """
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = np.empty((N, C, OH, OW), dtype=np.int32) if with_argmax else None

    def scan_images(n0, n1):  # images are independent: one block per thread at a time
        x_pad = padded(x[n0:n1], PH, PW, value=-np.inf)
        phases = {}
        for a in range(min(SH, KH)):
            for b in range(min(SW, KW)):
                part = x_pad[:, :, a::SH, b::SW]
                phases[a, b] = scratch(f"phase{a},{b}", part.shape, x.dtype)
                phases[a, b][...] = part

        def offset(kh, kw):
            return phases[kh % SH, kw % SW][:, :, kh // SH:kh // SH + OH, kw // SW:kw // SW + OW]

        y_n = y[n0:n1]
        y_n[...] = offset(0, 0)
        if with_argmax:
            argmax_n = argmax[n0:n1]
            argmax_n.fill(0)
            better = scratch("better", y_n.shape, bool)
            offset_k = scratch("offset_k", y_n.shape, np.int32)
        for kh in range(KH):
            for kw in range(KW):
                if kh == 0 and kw == 0:
                    continue
                candidate = offset(kh, kw)
                if with_argmax:  # strictly greater: at a tie the earlier stays
                    np.greater(candidate, y_n, out=better)
                    # argmax <- k where better: k exceeds every offset stored so far, so a max
                    # does it without branches (a masked copy mispredicts on random data)
                    np.multiply(better, np.int32(kh * KW + kw), out=offset_k)
                    np.maximum(argmax_n, offset_k, out=argmax_n)
                # NaN propagates to y, as in PyTorch; the arg-max then keeps naming a number
                # (NaN is never greater), unlike the plain version's np.argmax, which names
                # the NaN: the loss is NaN then, and training stops before any update
                np.maximum(y_n, candidate, out=y_n)
    cpu_parallel(scan_images, N, y.size * KH * KW)
    return y, argmax


def max_pool_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx: each output's gradient added onto the input element its arg-max names, a scatter-add
    (``np.add.at``) over flat indices into the padded gx, a block of images per thread.

    Why a scatter: every output sends its gradient to one element, so one indexed pass over the
    outputs does it, where adding each window offset's share in turn takes KH*KW passes of three
    ufuncs over the outputs. The adds go in the outputs' order, so overlapping windows sum their
    shares the same way on every run.
    """
    N, C, H, W = x_shape
    OH, OW = gy.shape[2:]
    Hp, Wp = H + 2 * PH, W + 2 * PW
    # flat index in a padded plane of window (i, j)'s first element, and of offset k within it
    window_start = (np.arange(OH, dtype=np.intp) * (SH * Wp))[:, None] + np.arange(OW) * SW
    within = (np.arange(KH * KW, dtype=np.intp) // KW) * Wp + np.arange(KH * KW) % KW
    gx = np.empty(x_shape, dtype=gy.dtype)

    def route_images(n0, n1):  # each thread sums its own images, then writes them to gx
        n = n1 - n0
        index = scratch("index", (n, C, OH, OW), np.intp)
        np.take(within, argmax[n0:n1], out=index)
        index += window_start
        index += (np.arange(n * C, dtype=np.intp) * (Hp * Wp)).reshape(n, C, 1, 1)  # planes
        gx_pad = gx[n0:n1] if PH == PW == 0 else scratch("gx_pad", (n, C, Hp, Wp), gy.dtype)
        gx_pad.fill(0)
        np.add.at(gx_pad.reshape(-1), index.reshape(-1), gy[n0:n1].reshape(-1))
        if PH or PW:
            gx[n0:n1] = unpadded(gx_pad, PH, PW)
    cpu_parallel(route_images, N, gy.size * KH * KW)
    return gx
