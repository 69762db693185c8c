"""Gathering convolution windows with basic slices only: padding, im2col, col2im, shifted columns.

The math and the measurements behind each layout are in :mod:`xpcnn.functional.conv`'s
docstring (same notation); :func:`chunk_images` sizes the chunks of whole images that keep a
large batch's intermediates in cache.
"""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of


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
    """(N, C, Hp, Wp) -> cols (N, C·KK [+ 1], P), with basic slices only.

    Row (c, i, j) is c·KK + i·KW + j. Two steps, so that most copies move whole (OH, OW) planes
    instead of OW-long row pieces: the KW column shifts first, ``xs[j] = xp[..., j·DW + SW·ow]``
    (N, C, Hp, OW), then each offset (i, j) is a row slice of ``xs[j]`` written to rows
    i·KW + j, + KK, + 2·KK, ... (one slice with step KK). ``ones_row`` appends the row of ones
    that carries the bias.
    """
    xp = array_namespace(xpad)
    n, c = xpad.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel_hw, strides, dilation, out_hw
    kk = kh * kw
    rows = c * kk
    xs = xp.stack([xpad[:, :, :, j * dw : j * dw + sw * (ow - 1) + 1 : sw] for j in range(kw)])
    cols = xp.empty((n, rows + int(ones_row), oh, ow), dtype=xpad.dtype, device=device_of(xpad))
    for i in range(kh):
        for j in range(kw):
            cols[:, i * kw + j : rows : kk, ...] = xs[j, :, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, :]
    if ones_row:
        cols[:, rows, ...] = 1
    return xp.reshape(cols, (n, rows + int(ones_row), oh * ow))


def col2im_flat(dy, kmat, padded_shape, kernel_hw, strides, dilation):
    """∂E/∂xp (N, C, Hp, Wp) = col2im(Kᵀ·dY), summed on flattened rows (see the module docstring).

    ``kmat`` is the kernel as (F, C·KK); the result is an NCHW view of a (C, N, Hp, Wp) array.
    """
    xp = array_namespace(dy, kmat)
    dev = device_of(dy)
    n, f, oh, ow = dy.shape
    _, c, hp, wp = padded_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
    hg = (oh - 1) * sh + 1  # grid rows that receive dy
    m = n * hg * wp
    # dy spread onto rows of the padded width, channel-major: grid[f, n, oh·SH, ow·SW] = dy
    grid = xp.zeros((f, n, hg, wp), dtype=dy.dtype, device=dev)
    grid[:, :, ::sh, : (ow - 1) * sw + 1 : sw] = xp.permute_dims(dy, (1, 0, 2, 3))
    grid = xp.reshape(grid, (f, m))
    # Kᵀ as (KH, KW·C, F): kernel row i gives the (KW·C, N·HG·Wp) block G_i of G = Kᵀ · grid
    kt = xp.reshape(xp.permute_dims(xp.reshape(kmat, (f, c, kh, kw)), (2, 3, 1, 0)), (kh, kw * c, f))
    dxt = xp.zeros((c, n, hp, wp), dtype=dy.dtype, device=dev)
    for i in range(kh):
        g = xp.matmul(kt[i, ...], grid)  # G_i, rows (j, c): 1/KH of G in memory at a time
        # Column shifts j·DW keep every non-zero entry inside its grid row, so the KW shifts are
        # additions of whole flattened rows; the spare (KW-1)·DW columns absorb the last one.
        row = xp.zeros((c, m + (kw - 1) * dw), dtype=dy.dtype, device=dev)
        for j in range(kw):
            row[:, j * dw : j * dw + m] += g[j * c : (j + 1) * c, :]
        dxt[:, :, i * dh : i * dh + hg, :] += xp.reshape(row[:, :m], (c, n, hg, wp))
    return xp.permute_dims(dxt, (1, 0, 2, 3))


def shifted_columns(xpad, kw, sw, dw, ow):
    """(N, C, Hp, Wp) -> V (N, C·KW, Hp·OW), V[n, c·KW + j, h·OW + ow] = xp[n, c, h, j·DW + ow·SW].

    With stride 1 in height, im2col's rows (c, i, j) for kernel row i are the columns
    i·DH·OW ... i·DH·OW + P of V: a basic slice, so the forward is KH matmuls on views of V
    (KH times smaller than cols) instead of one matmul on a written-out im2col.
    """
    xp = array_namespace(xpad)
    n, c, hp, _ = xpad.shape
    xs = xp.stack([xpad[:, :, :, j * dw : j * dw + sw * (ow - 1) + 1 : sw] for j in range(kw)], axis=2)
    return xp.reshape(xs, (n, c * kw, hp * ow))


def row_views(v, kh, dh, out_hw):
    """The KH views V_i = V[:, :, i·DH·OW : i·DH·OW + P], im2col's rows of kernel row i."""
    oh, ow = out_hw
    return [v[:, :, i * dh * ow : i * dh * ow + oh * ow] for i in range(kh)]


def shifted_matmuls(xp, kernel, v, dh, out_hw):
    """y[n] = Σ_i K_i · V_i[n], K_i = k[:, :, i, :] as (F, C·KW); returned as (N, F, OH, OW)."""
    f, c, kh, kw = kernel.shape
    kt = xp.reshape(xp.permute_dims(kernel, (2, 0, 1, 3)), (kh, f, c * kw))
    y = None
    for i, vi in enumerate(row_views(v, kh, dh, out_hw)):
        if y is None:
            y = xp.matmul(kt[i, ...], vi)
        else:
            y += xp.matmul(kt[i, ...], vi)
    return xp.reshape(y, (v.shape[0], f) + tuple(out_hw))


def chunk_images(n, bytes_per_image, chunk_bytes):
    """Images per chunk: the fewest chunks of at most ``chunk_bytes`` (at least one image each),
    of equal size but for a shorter last one; ``n`` when ``chunk_bytes`` is None."""
    if chunk_bytes is None:
        return n
    chunks = -(-n // max(1, chunk_bytes // max(bytes_per_image, 1)))
    return -(-n // chunks)
