r"""Convolution on the CPU: im2col and the GEMMs a block of images at a time, in threads.

Computes what ``conv2d_forward`` and ``conv2d_backward`` in ``minialex/layers/conv.py`` compute
(their plain whole-batch versions are the reference these are tested against), with the same
notation: x (N, C, H, W), w (OC, C/G, KH, KW), K = C/G * KH * KW columns per group.

Why blocks: the products, computed for a few images at a time, keep each thread's temporaries
to one block's (at most ``threads.BLOCK_BYTES`` of columns, reused from call to call); each
thread runs im2col, GEMMs, bias and col2im for its own block with no wait in between; each
image's (OC, OH*OW) product goes straight into y (no transpose pass); and no col for the whole
batch (hundreds of MB at AlexNet's sizes, each page of it a fresh page fault) is allocated or
kept: backward rebuilds a block's columns from x, which the previous layer keeps anyway.
Each image's y and gx come from products of their own, so they do not depend on how images are
grouped; gw and gb sum over images, so backward groups them in a fixed way (``piece_bounds``).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..checks import output_size
from ..windows import unpadded, window
from .scratch import scratch
from .threads import block_bounds, cpu_parallel_gemms, piece_bounds


def conv2d_forward(x, w, b, SH, SW, PH, PW, G, keep=True):
    """``(y, kept)``: y = conv2d(x, w, b) block by block, and ``kept`` what backward needs for
    gw: x itself (contiguous; backward rebuilds a block's columns from it) when ``keep``, else
    None. y equals the reference's up to BLAS's rounding, with bits independent of the thread
    count and of the batch around each image."""
    x, w = np.ascontiguousarray(x), np.ascontiguousarray(w)
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
    return y, (x if keep else None)


def conv2d_backward(gy, x, w, x_shape, SH, SW, PH, PW, G, needs=(True, True, True)):
    """``(gx, gw, gb)`` of conv2d, block by block: gx when ``needs[0]``, gw (from ``x``, as
    kept by :func:`conv2d_forward`) when ``needs[1]``, gb when ``needs[2]`` (absent: no bias);
    a result not wanted is None. Equals the reference's up to BLAS's rounding.

    gw and gb are sums over the images, so their bits depend on how the images are grouped:
    here the batch is cut into :func:`piece_bounds` pieces (fixed by N alone), each piece into
    blocks of at most BLOCK_BYTES of columns (fixed by its size and the shapes alone), a piece's
    blocks add up in order into the piece's partial sum, and the partial sums add up in order.
    Neither the core count nor which thread took which piece changes a bit of the result."""
    gy = np.ascontiguousarray(gy)
    needs_x, needs_w, needs_b = needs[0], needs[1], len(needs) > 2 and needs[2]
    N, C = x_shape[:2]
    OC, Cg, KH, KW = w.shape
    OCg, K = OC // G, Cg * KH * KW
    OH, OW = gy.shape[2:]
    w_mat = np.ascontiguousarray(w).reshape(OC, K) if needs_x else None
    x = x if needs_w else None
    pieces = piece_bounds(N)
    gx = np.empty(x_shape, dtype=gy.dtype) if needs_x else None
    # the partial sums live in this thread's scratch: as a fresh array, each of their pages
    # would fault in at every step
    gw_t_pieces = scratch("gw_t_pieces", (len(pieces) - 1, K, OC), gy.dtype) if needs_w else None
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
        if x is not None:  # gw^T = col gY^T: BLAS runs this layout faster than gY col^T
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
    gw = None if gw is None else gw.reshape(w.shape)
    return gx, gw, None if gb_pieces is None else gb_pieces.sum(axis=0)


def _receptive_fields(x_pad, KH, KW, SH, SW, PH, PW):
    """A read-only view of x_pad (N, C, H + 2 PH, W + 2 PW) indexed [c, kh, kw, n, i, j] ->
    x_pad[n, c, i*SH + kh, j*SW + kw]: col's layout before flattening, so that one copy (the
    reshape) writes col in order."""
    N, C, Hp, Wp = x_pad.shape
    OH, OW = output_size(Hp - 2 * PH, KH, SH, PH), output_size(Wp - 2 * PW, KW, SW, PW)
    sN, sC, sH, sW = x_pad.strides
    return as_strided(x_pad, shape=(C, KH, KW, N, OH, OW),
                      strides=(sC, sH, sW, sN, sH * SH, sW * SW), writeable=False)


def _im2col_block(x, KH, KW, SH, SW, PH, PW):
    """col (C*KH*KW, N, OH*OW) of x (N, C, H, W), in one thread (one block's share), in this
    thread's scratch: valid until its next call in the same thread."""
    N, C, H, W = x.shape
    x_pad = x
    if PH or PW:
        x_pad = scratch("x_pad", (N, C, H + 2 * PH, W + 2 * PW), x.dtype)
        for border in (x_pad[:, :, :PH], x_pad[:, :, H + PH:], x_pad[..., :PW],
                       x_pad[..., W + PW:]):
            border.fill(0)  # only the zero border; the copy below writes the rest
        x_pad[:, :, PH:PH + H, PW:PW + W] = x
    fields = _receptive_fields(x_pad, KH, KW, SH, SW, PH, PW)
    col = scratch("col", fields.shape, x.dtype)
    col[...] = fields
    return col.reshape(C * KH * KW, N, -1)


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
