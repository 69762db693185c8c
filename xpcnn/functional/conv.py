"""2-D convolution (cross-correlation, as every deep-learning library computes it), NCHW.

Notation
--------
N        images in the batch
C, F     input channels, filters (output channels)
H, W     input height and width;  Hp, Wp  the same after zero padding
KH, KW   kernel height and width;  KK = KH·KW
SH, SW   strides
DH, DW   dilations
PT, PB   padding top / bottom;  PL, PR  padding left / right
OH, OW   output height and width: OH = (H + PT + PB - DH*(KH-1) - 1) // SH + 1;  P = OH·OW

Forward
-------
    y[n, f, oh, ow] = b[f] + Σ_{c,i,j} k[f, c, i, j] · xp[n, c, oh·SH + i·DH, ow·SW + j·DW]

where xp is x zero-padded. im2col gathers the window values into ``cols[n, (c,i,j), (oh,ow)]``
with basic strided slices only — KW column slices, then one row slice per kernel offset (i, j):
loops over the KH×KW window, never over images or pixels — and the whole layer is ONE batched
matmul, the bias folded in as an extra row of ones:

    Y[n] = [K | b] · [cols[n]; 1]     K = k.reshape(F, C·KK),  cols (N, C·KK + 1, P),  Y (N, F, P)

Y is NCHW and contiguous as it comes out of the matmul: no transposed copy of the output, and
the layers after it (activation, pooling) see a plain C-ordered array.

With stride 1 in height (LeNet, most CNNs) im2col is not written out at all. Its rows for
kernel row i are a basic slice of the KW column shifts laid side by side,
V[n, (c, j), h·OW + ow] = xp[n, c, h, j·DW + ow·SW] (N, C·KW, Hp·OW): the P columns from
i·DH·OW on (:func:`shifted_columns`). So

    Y[n] = b + Σ_i K_i · V[n][:, i·DH·OW : i·DH·OW + P]      K_i = k[:, :, i, :] as (F, C·KW)
    ∂E/∂K_i = Σ_n dY[n] · (the same view)ᵀ                   ∂E/∂b = Σ_{n,p} dY

KH matmuls on views of V, which is KH times smaller than cols and is all the cache keeps (the
gain is measured in BENCHMARKS.md). Larger height strides use im2col as below.

Large batches are done in chunks of whole images: im2col (``chunk_bytes``, default 12 MiB of
cols per chunk), so each chunk's cols is read by its matmul while it is still in (L3) cache
instead of streaming the whole cols to DRAM and back; and ∂x for every conv
(``dx_chunk_bytes``, 3 MiB of col2im's G_i). Up to batch 128 LeNet stays one chunk, so smaller
batches make no extra array calls (kernel launches on a GPU); chunks are of equal size (but for
a shorter last one).

Backward (chain rule, dy = ∂E/∂y)
--------
    [∂E/∂K | ∂E/∂b]ᵀ  = Σ_n [cols[n]; 1] · dY[n]ᵀ   (bias gradient = Σ_{n,oh,ow} dy, for free)
    ∂E/∂x             = ∂E/∂xp without its padding, where

    ∂E/∂xp[n, c, h, w] = Σ_{f,i,j} k[f, c, i, j] · dy[n, f, oh, ow]  over h = oh·SH + i·DH,
                                                                          w = ow·SW + j·DW

i.e. col2im(Kᵀ · dY): every window value goes back to the pixel it came from, a pixel shared by
several windows receiving the sum. :func:`col2im_flat` computes that sum on whole rows instead of
(oh, ow) slices: dy is spread onto a grid of the padded width, g[f, n, oh·SH, ow·SW] = dy (zero
elsewhere, HG = (OH-1)·SH + 1 rows of Wp), and G = Kᵀ · g (KK·C, N·HG·Wp) is formed one kernel
row at a time, G_i = K_iᵀ · g (KW·C rows): KH matmuls, so only 1/KH of G exists at once and it
is still in cache when it is read. The pixel that grid point q reaches through column offset j
is q + j·DW in the flattened (n, row, w) index, and it never leaves its row, so the KW column
shifts are additions of whole flattened rows; the row shift i·DH is then one addition of
(C, N, HG, Wp) blocks. Compared with KK additions of (OH, OW) slices this does Wp/OW more
multiply-adds but has far fewer, far longer inner loops: NumPy pays per row, not per element,
on these small images. One matmul for all of G is no faster and needs KH times the memory.

This is where the classic tutorial goes wrong: its filter gradient is computed per image and
then averaged and resized, instead of the sum over images and positions above.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..errors import InputError, ShapeError
from ._checks import check_float_array, check_same_backend, pair
from .im2col import chunk_images, col2im_flat, im2col, pad2d, row_views, shifted_columns, shifted_matmuls


def resolve_padding(padding, in_hw, kernel_hw, strides, dilation):
    """Padding as ((PT, PB), (PL, PR)) from "valid", "same", an int or a pair.

    "same" follows TensorFlow/Keras: OH = ceil(H / SH), any odd extra pixel goes bottom/right.
    """
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode == "same":
            pads = []
            for size, k, s, d in zip(in_hw, kernel_hw, strides, dilation):
                eff = d * (k - 1) + 1
                out = -(-size // s)
                total = max((out - 1) * s + eff - size, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise InputError(
            f"The `padding` argument must be 'valid', 'same', an int or a pair. Received padding={padding!r}"
        )
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph), (pw, pw)


def output_size(size, k, s, d, pad):
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


class ConvCache(NamedTuple):
    """What :func:`conv2d_backward` needs from the forward."""

    cols: tuple  # im2col chunks, (NB, C·KK [+ 1], P) each, of images 0..NB-1, NB..2NB-1, ...
    chunk: int  # NB, images per chunk
    kernel: Any  # (F, C, KH, KW)
    has_bias: bool
    padded_shape: tuple  # (N, C, Hp, Wp)
    pads: tuple  # ((PT, PB), (PL, PR))
    strides: tuple
    dilation: tuple
    out_hw: tuple  # (OH, OW)
    shifted: bool = False  # cols is (V,) of :func:`shifted_columns` (stride 1 in height), not im2col


# im2col is written, then read by the forward matmul: in chunks of at most this many bytes it is
# still in cache when it is read (L3 sized; one chunk for LeNet up to batch 128, see BENCHMARKS.md)
CHUNK_BYTES = 12 << 20
# col2im's intermediate G_i is written by a matmul, then summed KW times: a few L2s (one chunk for
# LeNet up to batch 128; 1-2 MiB measured the same at batch 512, and split batch 128)
DX_CHUNK_BYTES = 3 << 20


def conv2d_forward(x, kernel, bias=None, *, strides=1, padding="valid", dilation=1, chunk_bytes=CHUNK_BYTES):
    """Convolve a batch of images: y = conv(x, kernel) + bias.

    Parameters
    ----------
    x : array (N, C, H, W), floating
    kernel : array (F, C, KH, KW), same namespace, device and dtype as ``x``
    bias : array (F,) or None
    strides, dilation : int or pair of positive ints
    padding : "valid", "same", int or pair of non-negative ints
    chunk_bytes : int or None
        im2col is built and multiplied in chunks of whole images of at most this many bytes
        (None: the whole batch at once). The result does not depend on it.

    Returns
    -------
    y : array (N, F, OH, OW)
    cache : :class:`ConvCache`, needed by :func:`conv2d_backward`

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> x = xp.ones((1, 1, 4, 4)); k = xp.ones((2, 1, 3, 3))
    >>> y, _ = conv2d_forward(x, k, padding="same")
    >>> y.shape, float(y[0, 0, 1, 1]), float(y[0, 0, 0, 0])
    ((1, 2, 4, 4), 9.0, 4.0)
    """
    arrays = (x, kernel) if bias is None else (x, kernel, bias)
    xp = check_same_backend("conv2d", *arrays)
    check_float_array("conv2d", "x", x, ndim=4)
    check_float_array("conv2d", "kernel", kernel, ndim=4)
    n, c, h, w = x.shape
    f, kc, kh, kw = kernel.shape
    if kc != c:
        raise ShapeError(
            f"conv2d: kernel expects {kc} input channels but x has {c}. "
            f"Received x.shape={tuple(x.shape)}, kernel.shape={tuple(kernel.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (f,):
        raise ShapeError(f"conv2d: bias must have shape ({f},). Received bias.shape={tuple(bias.shape)}.")
    strides = pair(strides, "strides")
    dilation = pair(dilation, "dilation_rate")
    pads = resolve_padding(padding, (h, w), (kh, kw), strides, dilation)
    oh = output_size(h, kh, strides[0], dilation[0], pads[0])
    ow = output_size(w, kw, strides[1], dilation[1], pads[1])
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"conv2d: the kernel {kh}x{kw} (dilation {dilation}) is larger than the padded input "
            f"{h + sum(pads[0])}x{w + sum(pads[1])}. Received x.shape={tuple(x.shape)}, padding={padding!r}."
        )
    xpad = pad2d(x, pads)
    has_bias = bias is not None
    if strides[0] == 1:
        v = shifted_columns(xpad, kw, strides[1], dilation[1], ow)
        y = shifted_matmuls(xp, kernel, v, dilation[0], (oh, ow))  # (a new array: += is ours to do)
        if has_bias:
            y += xp.reshape(bias, (f, 1, 1))
        return y, ConvCache((v,), n, kernel, has_bias, tuple(xpad.shape), pads, strides, dilation, (oh, ow), True)
    kmat = xp.reshape(kernel, (f, c * kh * kw))
    if has_bias:
        kmat = xp.concat([kmat, xp.reshape(bias, (f, 1))], axis=1)
    rows, p = c * kh * kw + int(has_bias), oh * ow
    nb = chunk_images(n, rows * p * xp.finfo(x.dtype).bits // 8, chunk_bytes)
    cols = []
    if nb == n:  # one chunk: the matmul's result is y itself
        cols.append(im2col(xpad, (kh, kw), strides, dilation, (oh, ow), ones_row=has_bias))
        y = xp.matmul(kmat, cols[0])
    else:  # chunk by chunk, each cols[k] read by its matmul while it is still in cache
        y = xp.empty((n, f, p), dtype=x.dtype, device=device_of(x))
        for start in range(0, n, nb):
            stop = min(start + nb, n)  # (a stop past the end is not in the standard)
            cols.append(im2col(xpad[start:stop, ...], (kh, kw), strides, dilation, (oh, ow), ones_row=has_bias))
            y[start:stop, ...] = xp.matmul(kmat, cols[-1])
    y = xp.reshape(y, (n, f, oh, ow))  # NCHW
    return y, ConvCache(tuple(cols), nb, kernel, has_bias, tuple(xpad.shape), pads, strides, dilation, (oh, ow))


def conv2d_backward(dy, cache, *, need_dx=True, dx_chunk_bytes=DX_CHUNK_BYTES):
    """Gradients of :func:`conv2d_forward`.

    ``dx_chunk_bytes`` (None: the whole batch at once) bounds col2im's intermediate per chunk of
    images, as ``chunk_bytes`` bounds im2col in the forward; the result does not depend on it.

    Returns
    -------
    dx : array (N, C, H, W), or None when ``need_dx`` is False (a first layer needs no dx)
    dkernel : array (F, C, KH, KW)
    dbias : array (F,), or None when the forward had no bias
    """
    kernel, padded_shape, (oh, ow) = cache.kernel, cache.padded_shape, cache.out_hw
    xp = array_namespace(dy, kernel)
    f, c, kh, kw = kernel.shape
    n = padded_shape[0]
    if tuple(dy.shape) != (n, f, oh, ow):
        raise ShapeError(f"conv2d backward: dy must have shape {(n, f, oh, ow)}. Received {tuple(dy.shape)}.")
    dy3 = xp.reshape(dy, (n, f, oh * ow))
    # (C·KK [+1], F): per-image products summed over the batch; this orientation (cols · dyᵀ)
    # keeps the long P axis as the contraction of each product.
    rows = c * kh * kw
    if cache.shifted:  # ∂E/∂K_i = Σ_n dY[n] · V_i[n]ᵀ, one batched product per kernel row
        dyt = xp.matrix_transpose(dy3)
        g = xp.stack([xp.sum(xp.matmul(vi, dyt), axis=0)
                      for vi in row_views(cache.cols[0], kh, cache.dilation[0], (oh, ow))])
        dkernel = xp.permute_dims(xp.reshape(g, (kh, c, kw, f)), (3, 1, 0, 2))
        dbias = xp.sum(dy3, axis=(0, 2)) if cache.has_bias else None
    else:
        grads = None
        for k, cols in enumerate(cache.cols):
            start = k * cache.chunk
            g = xp.sum(xp.matmul(cols, xp.matrix_transpose(dy3[start : start + cols.shape[0], ...])), axis=0)
            grads = g if grads is None else grads + g
        dkernel = xp.reshape(xp.matrix_transpose(grads[:rows, :]), (f, c, kh, kw))
        dbias = grads[rows, :] if cache.has_bias else None
    if not need_dx:
        return None, dkernel, dbias
    kmat = xp.reshape(kernel, (f, rows))
    (pt, pb), (pl, pr) = cache.pads
    _, _, hp, wp = padded_shape
    # col2im's largest intermediate is G_i, KW·C·HG·Wp values per image (see col2im_flat)
    per_image = kw * c * ((oh - 1) * cache.strides[0] + 1) * wp * xp.finfo(dy.dtype).bits // 8
    nb = chunk_images(n, per_image, dx_chunk_bytes)
    if nb == n:  # one chunk: the (C, N, H, W)-ordered result, as an NCHW view
        return col2im_flat(dy, kmat, padded_shape, (kh, kw), cache.strides, cache.dilation)[
            :, :, pt : hp - pb, pl : wp - pr], dkernel, dbias
    dx = xp.empty((n, c, hp - pt - pb, wp - pl - pr), dtype=dy.dtype, device=device_of(dy))
    for start in range(0, n, nb):  # chunk by chunk: G_i is still in cache when it is summed
        stop = min(start + nb, n)
        dxpad = col2im_flat(dy[start:stop, ...], kmat, (stop - start, c, hp, wp), (kh, kw), cache.strides,
                            cache.dilation)
        dx[start:stop, ...] = dxpad[:, :, pt : hp - pb, pl : wp - pr]
    return dx, dkernel, dbias
