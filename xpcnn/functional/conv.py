"""2-D convolution (cross-correlation, as every deep-learning library computes it), NCHW.

Notation
--------
N        images in the batch
C, F     input channels, filters (output channels)
H, W     input height and width
KH, KW   kernel height and width
SH, SW   strides
DH, DW   dilations
PT, PB   padding top / bottom;  PL, PR  padding left / right
OH, OW   output height and width: OH = (H + PT + PB - DH*(KH-1) - 1) // SH + 1

Forward
-------
    y[n, f, oh, ow] = b[f] + Σ_{c,i,j} k[f, c, i, j] · xp[n, c, oh·SH + i·DH, ow·SW + j·DW]

where xp is x zero-padded. im2col gathers the window values into
``cols[n, (c,i,j), (oh,ow)]`` with one strided slice per kernel offset (i, j) — a KH×KW loop,
never a loop over images or pixels — and the whole layer is ONE matmul:

    Y = K · cols            K = k.reshape(F, C·KH·KW),  cols (C·KH·KW, N·OH·OW),  Y (F, N·OH·OW)

``cols`` is laid out with the contraction axis first, so the matmul needs no transposed copy, and
the batch is folded into one big matrix product (one BLAS/cuBLAS call, not N small ones). Y is
returned as an NCHW view (F, N, OH, OW) -> (N, F, OH, OW), without copying.

Backward (chain rule, dy = ∂E/∂y)
--------
    ∂E/∂b[f]          = Σ_{n,oh,ow} dy[n, f, oh, ow]
    ∂E/∂K             = dY · colsᵀ        (the sum over images and positions is inside the matmul)
    ∂E/∂cols          = Kᵀ · dY
    ∂E/∂x             = col2im(∂E/∂cols): every window value is added back to the pixel it came
                        from (a pixel shared by several windows receives the sum), then the
                        padding is cut off.

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


def im2col(xpad, kernel_hw, strides, dilation, out_hw):
    """(N, C, Hp, Wp) -> cols (C·KH·KW, N·OH·OW): one strided slice per kernel offset (i, j)."""
    xp = array_namespace(xpad)
    n, c = xpad.shape[:2]
    (kh, kw), (dh, dw), (oh, ow) = kernel_hw, dilation, out_hw
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=xpad.dtype, device=device_of(xpad))
    xt = xp.permute_dims(xpad, (1, 0, 2, 3))  # a view: channels first, so each slice lands whole
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j, ...] = xt[_window(i * dh, j * dw, strides, out_hw)]
    return xp.reshape(cols, (c * kh * kw, n * oh * ow))


def col2im(dcols, padded_shape, kernel_hw, strides, dilation, out_hw):
    """Adjoint of :func:`im2col`: (C·KH·KW, N·OH·OW) -> (N, C, Hp, Wp), overlaps summed."""
    xp = array_namespace(dcols)
    n, c, hp, wp = padded_shape
    (kh, kw), (oh, ow) = kernel_hw, out_hw
    d6 = xp.reshape(dcols, (c, kh, kw, n, oh, ow))
    dxt = xp.zeros((c, n, hp, wp), dtype=dcols.dtype, device=device_of(dcols))
    for i in range(kh):
        for j in range(kw):
            win = _window(i * dilation[0], j * dilation[1], strides, out_hw)
            dxt[win] = dxt[win] + d6[:, i, j, ...]
    return xp.permute_dims(dxt, (1, 0, 2, 3))


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
    cols = im2col(xpad, (kh, kw), strides, dilation, (oh, ow))
    kmat = xp.reshape(kernel, (f, c * kh * kw))
    y = xp.matmul(kmat, cols)  # (F, N·OH·OW): the one matmul
    if bias is not None:
        y = y + xp.reshape(bias, (f, 1))
    y = xp.permute_dims(xp.reshape(y, (f, n, oh, ow)), (1, 0, 2, 3))  # NCHW as a view, no copy
    cache = (cols, kernel, bias is not None, tuple(xpad.shape), pads, strides, dilation, (oh, ow))
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
    dy2 = xp.reshape(xp.permute_dims(dy, (1, 0, 2, 3)), (f, n * oh * ow))  # (F, N·OH·OW)
    dkernel = xp.reshape(xp.matmul(dy2, xp.matrix_transpose(cols)), (f, c, kh, kw))
    dbias = xp.sum(dy2, axis=1) if has_bias else None
    if not need_dx:
        return None, dkernel, dbias
    kmat = xp.reshape(kernel, (f, c * kh * kw))
    dcols = xp.matmul(xp.matrix_transpose(kmat), dy2)
    dxpad = col2im(dcols, padded_shape, (kh, kw), strides, dilation, (oh, ow))
    (pt, pb), (pl, pr) = pads
    dx = dxpad[:, :, pt : padded_shape[2] - pb, pl : padded_shape[3] - pr]
    return dx, dkernel, dbias
