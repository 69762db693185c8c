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
with one strided slice per kernel offset (i, j) — a KH×KW loop, never a loop over images or
pixels — and the whole layer is ONE (batched) matmul, the bias folded in as an extra row of ones:

    Y[n] = [K | b] · [cols[n]; 1]     K = k.reshape(F, C·KK),  cols (N, C·KK + 1, P),  Y (N, F, P)

Y is NCHW and contiguous as it comes out of the matmul: no transposed copy of the output, and
the layers after it (activation, pooling) see a plain C-ordered array.

Backward (chain rule, dy = ∂E/∂y)
--------
    [∂E/∂K | ∂E/∂b]ᵀ  = Σ_n [cols[n]; 1] · dY[n]ᵀ   (bias gradient = Σ_{n,oh,ow} dy, for free)
    ∂E/∂x             = ∂E/∂xp without its padding, where

    ∂E/∂xp[n, c, h, w] = Σ_{f,i,j} k[f, c, i, j] · dy[n, f, oh, ow]  over h = oh·SH + i·DH,
                                                                          w = ow·SW + j·DW

i.e. col2im(Kᵀ · dY): every window value goes back to the pixel it came from, a pixel shared by
several windows receiving the sum. That sum is computed on "flat" images: dy is spread onto the
padded grid (dyg[n, f, oh·SH, ow·SW] = dy, zero elsewhere), one matmul gives
G = Kᵀ · dyg (C·KK, N·Hp·Wp), and since the pixel hit by grid point q through offset (i, j) is
q + i·DH·Wp + j·DW in the flattened (n, h, w) index, col2im is KK shifted additions of whole
contiguous rows — no per-row work, which is what makes it fast for small images. (The grid has
Hp·Wp points per image instead of P; col2im on (oh, ow) slices does fewer flops but KK·N·C·OH
short row copies. See BENCHMARKS.md for the measurement.)

This is where the classic tutorial goes wrong: its filter gradient is computed per image and
then averaged and resized, instead of the sum over images and positions above.
"""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..errors import InputError, ShapeError
from ._checks import check_float_array, check_same_backend, pair


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


def pad2d(x, pads):
    """Zero-pad the last two axes of ``x`` by ((PT, PB), (PL, PR)) on x's device and dtype."""
    (pt, pb), (pl, pr) = pads
    if pt == pb == pl == pr == 0:
        return x
    xp = array_namespace(x)
    n, c, h, w = x.shape
    out = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=x.dtype, device=device_of(x))
    out[:, :, pt : pt + h, pl : pl + w] = x
    return out


def im2col(xpad, kernel_hw, strides, dilation, out_hw, *, ones_row=False):
    """(N, C, Hp, Wp) -> cols (N, C·KK [+ 1], P): one strided slice per kernel offset (i, j).

    Row (c, i, j) is c·KK + i·KW + j, so offset (i, j) fills rows i·KW + j, + KK, + 2·KK, ...: one
    basic slice with step KK. ``ones_row`` appends the row of ones that carries the bias.
    """
    xp = array_namespace(xpad)
    n, c = xpad.shape[:2]
    (kh, kw), (dh, dw), (oh, ow) = kernel_hw, dilation, out_hw
    kk = kh * kw
    rows = c * kk
    cols = xp.empty((n, rows + int(ones_row), oh, ow), dtype=xpad.dtype, device=device_of(xpad))
    for i in range(kh):
        for j in range(kw):
            cols[:, i * kw + j : rows : kk, ...] = xpad[_window(i * dh, j * dw, strides, out_hw)]
    if ones_row:
        cols[:, rows, ...] = 1
    return xp.reshape(cols, (n, rows + int(ones_row), oh * ow))


def col2im_flat(dy, kmat, padded_shape, kernel_hw, strides, dilation):
    """∂E/∂xp (N, C, Hp, Wp) = col2im(Kᵀ·dY), summed on the flattened padded grid (see the top)."""
    xp = array_namespace(dy, kmat)
    dev = device_of(dy)
    n, f, oh, ow = dy.shape
    _, c, hp, wp = padded_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
    kk = kh * kw
    # dy spread onto the padded grid, channel-major so that G has one row per (c, i, j)
    grid = xp.zeros((f, n, hp, wp), dtype=dy.dtype, device=dev)
    grid[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw] = xp.permute_dims(dy, (1, 0, 2, 3))
    m = n * hp * wp
    g = xp.matmul(xp.matrix_transpose(kmat), xp.reshape(grid, (f, m)))  # (C·KK, N·Hp·Wp)
    # One spare image at the end absorbs the largest shift, (KH-1)·DH·Wp + (KW-1)·DW < Hp·Wp.
    acc = xp.zeros((c, (n + 1) * hp * wp), dtype=dy.dtype, device=dev)
    for i in range(kh):
        for j in range(kw):
            shift = i * dh * wp + j * dw
            acc[:, shift : shift + m] += g[i * kw + j :: kk, :]
    acc = xp.reshape(acc, (c, n + 1, hp, wp))[:, :n, ...]
    return xp.permute_dims(acc, (1, 0, 2, 3))


def _window(i0, j0, strides, out_hw):
    (sh, sw), (oh, ow) = strides, out_hw
    return (slice(None), slice(None), slice(i0, i0 + sh * (oh - 1) + 1, sh), slice(j0, j0 + sw * (ow - 1) + 1, sw))


def conv2d_forward(x, kernel, bias=None, *, strides=1, padding="valid", dilation=1):
    """Convolve a batch of images: y = conv(x, kernel) + bias.

    Parameters
    ----------
    x : array (N, C, H, W), floating
    kernel : array (F, C, KH, KW), same namespace, device and dtype as ``x``
    bias : array (F,) or None
    strides, dilation : int or pair of positive ints
    padding : "valid", "same", int or pair of non-negative ints

    Returns
    -------
    y : array (N, F, OH, OW)
    cache : tuple needed by :func:`conv2d_backward`

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
    cols = im2col(xpad, (kh, kw), strides, dilation, (oh, ow), ones_row=has_bias)
    kmat = xp.reshape(kernel, (f, c * kh * kw))
    if has_bias:
        kmat = xp.concat([kmat, xp.reshape(bias, (f, 1))], axis=1)
    y = xp.reshape(xp.matmul(kmat, cols), (n, f, oh, ow))  # the one (batched) matmul, NCHW
    cache = (cols, kernel, has_bias, tuple(xpad.shape), pads, strides, dilation, (oh, ow))
    return y, cache


def conv2d_backward(dy, cache, *, need_dx=True):
    """Gradients of :func:`conv2d_forward`.

    Returns
    -------
    dx : array (N, C, H, W), or None when ``need_dx`` is False (a first layer needs no dx)
    dkernel : array (F, C, KH, KW)
    dbias : array (F,), or None when the forward had no bias
    """
    cols, kernel, has_bias, padded_shape, pads, strides, dilation, (oh, ow) = cache
    xp = array_namespace(dy, kernel)
    f, c, kh, kw = kernel.shape
    n = padded_shape[0]
    if tuple(dy.shape) != (n, f, oh, ow):
        raise ShapeError(f"conv2d backward: dy must have shape {(n, f, oh, ow)}. Received {tuple(dy.shape)}.")
    dy3 = xp.reshape(dy, (n, f, oh * ow))
    # (C·KK [+1], F): per-image products summed over the batch; this orientation (cols · dyᵀ)
    # keeps the long P axis as the contraction of each product.
    grads = xp.sum(xp.matmul(cols, xp.matrix_transpose(dy3)), axis=0)
    rows = c * kh * kw
    dkernel = xp.reshape(xp.matrix_transpose(grads[:rows, :]), (f, c, kh, kw))
    dbias = grads[rows, :] if has_bias else None
    if not need_dx:
        return None, dkernel, dbias
    kmat = xp.reshape(kernel, (f, rows))
    dxpad = col2im_flat(dy, kmat, padded_shape, (kh, kw), strides, dilation)
    (pt, pb), (pl, pr) = pads
    dx = dxpad[:, :, pt : padded_shape[2] - pb, pl : padded_shape[3] - pr]
    return dx, dkernel, dbias
