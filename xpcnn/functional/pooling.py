"""Max and average pooling over 2-D windows, NCHW, no padding ("valid", as Keras' default).

Notation
--------
N, C     images, channels
H, W     input height and width
PH, PW   pool height and width
SH, SW   strides (default: the pool size)
OH, OW   output size: OH = (H - PH) // SH + 1

Both kernels loop over the PH×PW offsets of the window with one strided slice each: never over
images or pixels, and no fancy or boolean indexing (not in the Array API standard).

Max pooling
-----------
    y[n, c, oh, ow] = max_{i,j} x[n, c, oh·SH + i, ow·SW + j]
    ∂E/∂x[n, c, oh·SH + i, ow·SW + j] += dy[n, c, oh, ow]   for the (first) arg-max (i, j) only

The forward is a chain of ``maximum`` over the PH·PW offset slices (when the windows tile x,
over the PH rows of each window, then its PW columns); it keeps x and y. The
backward routes dy to the FIRST offset k = i·PW + j (row-major, as PyTorch) whose slice equals y,
without a data-dependent ``where`` (NumPy's is slow) and without an arg-max array:

    r₀ = dy;   d_k = r_k · [x_k == y],   r_{k+1} = r_k − d_k;   d_last = r_last

so a tie sends everything to its first position and the rest receive exactly 0 (a valid
subgradient). When the windows tile x exactly (strides = pool size, H = OH·PH, W = OW·PW) each
d_k is written into its slice of an uninitialised ∂E/∂x; otherwise they are added into zeros.

Average pooling
---------------
    y = (1 / (PH·PW)) Σ_{i,j} x[..., oh·SH + i, ow·SW + j]
    ∂E/∂x[..., oh·SH + i, ow·SW + j] += dy[..., oh, ow] / (PH·PW)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..errors import ShapeError
from ._checks import check_float_array, pair


class MaxPoolCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs: the input, the output and the window geometry."""

    x: Any  # (N, C, H, W)
    y: Any  # (N, C, OH, OW)
    pool: tuple  # (PH, PW)
    strides: tuple  # (SH, SW)
    out_hw: tuple  # (OH, OW)


class AvgPoolCache(NamedTuple):
    """What :func:`avg_pool2d_backward` needs: shapes only, no arrays."""

    x_shape: tuple  # (N, C, H, W)
    pool: tuple
    strides: tuple
    out_hw: tuple


def pool_output_size(in_hw, pool_size, strides, where):
    """(OH, OW) of pooling an (H, W) input; ``where`` starts the error message."""
    (h, w), (ph, pw), (sh, sw) = in_hw, pool_size, strides
    if ph > h or pw > w:
        raise ShapeError(f"{where}: pool_size {(ph, pw)} is larger than the input {h}x{w}.")
    return (h - ph) // sh + 1, (w - pw) // sw + 1


def _geometry(op, x, pool_size, strides):
    check_float_array(op, "x", x, ndim=4)
    pool = pair(pool_size, "pool_size")
    strides = pair(pool_size if strides is None else strides, "strides")
    return pool, strides, pool_output_size(tuple(x.shape[2:]), pool, strides, f"{op} (x.shape={tuple(x.shape)})")


def _window(i, j, strides, out_hw):
    (sh, sw), (oh, ow) = strides, out_hw
    return (slice(None), slice(None), slice(i, i + sh * (oh - 1) + 1, sh), slice(j, j + sw * (ow - 1) + 1, sw))


def max_pool2d_forward(x, pool_size=2, strides=None):
    """Max pooling. Returns ``(y, cache)``.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> x = xp.reshape(xp.arange(16.0), (1, 1, 4, 4))
    >>> max_pool2d_forward(x)[0][0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    xp = array_namespace(x)
    (ph, pw), strides, out_hw = _geometry("max_pool2d", x, pool_size, strides)
    if _tiles(tuple(x.shape), (ph, pw), strides, out_hw):
        y = _tiled_max(xp, x, (ph, pw), out_hw)
    else:
        y = x[_window(0, 0, strides, out_hw)]
        for i in range(ph):
            for j in range(pw):
                if i or j:
                    y = xp.maximum(y, x[_window(i, j, strides, out_hw)])
    return y, MaxPoolCache(x, y, (ph, pw), strides, out_hw)


def _tiled_max(xp, x, pool, out_hw):
    """The window maxima when the windows tile x: x viewed as (N, C, OH, PH, OW·PW), the PH rows
    of each window first (whole rows, contiguous), then the PW columns of what remains: fewer
    and faster passes than PH·PW strided slices of x (about 25% less time for LeNet's pools)."""
    (ph, pw), (oh, ow) = pool, out_hw
    n, c = x.shape[:2]
    rows = xp.reshape(x, (n, c, oh, ph, ow * pw))
    r = rows[:, :, :, 0, :]
    for i in range(1, ph):
        r = xp.maximum(r, rows[:, :, :, i, :])
    r = xp.reshape(r, (n, c, oh, ow, pw))
    y = r[..., 0]
    for j in range(1, pw):
        y = xp.maximum(y, r[..., j])
    return y


def max_pool2d_backward(dy, cache):
    """∂E/∂x of :func:`max_pool2d_forward`: dy routed to each window's first arg-max.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> y, cache = max_pool2d_forward(xp.ones((1, 1, 2, 2)))
    >>> max_pool2d_backward(xp.ones_like(y), cache)[0, 0]
    array([[1., 0.],
           [0., 0.]])
    """
    xp = array_namespace(dy)
    x, y, strides, out_hw = cache.x, cache.y, cache.strides, cache.out_hw
    ph, pw = cache.pool
    tiles = _tiles(tuple(x.shape), (ph, pw), strides, out_hw)
    dx = xp.empty_like(x) if tiles else xp.zeros_like(x)
    rest = dy
    last = ph * pw - 1
    for k in range(ph * pw):
        win = _window(k // pw, k % pw, strides, out_hw)
        if k < last:
            d = rest * xp.astype(x[win] == y, dy.dtype)
            rest = rest - d
        else:
            d = rest
        if tiles:
            dx[win] = d
        else:
            dx[win] += d
    return dx


def avg_pool2d_forward(x, pool_size=2, strides=None):
    """Average pooling. Returns ``(y, cache)``."""
    (ph, pw), strides, out_hw = _geometry("avg_pool2d", x, pool_size, strides)
    y = x[_window(0, 0, strides, out_hw)]
    for i in range(ph):
        for j in range(pw):
            if i or j:
                y = y + x[_window(i, j, strides, out_hw)]
    return y / (ph * pw), AvgPoolCache(tuple(x.shape), (ph, pw), strides, out_hw)


def avg_pool2d_backward(dy, cache):
    """∂E/∂x of :func:`avg_pool2d_forward`: dy / (PH·PW) spread over each window."""
    xp = array_namespace(dy)
    x_shape, strides, out_hw = cache.x_shape, cache.strides, cache.out_hw
    ph, pw = cache.pool
    tiles = _tiles(x_shape, (ph, pw), strides, out_hw)
    dx = xp.empty(x_shape, dtype=dy.dtype, device=device_of(dy)) if tiles else \
        xp.zeros(x_shape, dtype=dy.dtype, device=device_of(dy))
    share = dy / (ph * pw)
    for i in range(ph):
        for j in range(pw):
            win = _window(i, j, strides, out_hw)
            if tiles:
                dx[win] = share
            else:
                dx[win] += share
    return dx


def _tiles(x_shape, pool, strides, out_hw):
    """Whether the windows cover x exactly once (then ∂E/∂x needs no zero-fill and no sums)."""
    return strides == pool and out_hw[0] * pool[0] == x_shape[2] and out_hw[1] * pool[1] == x_shape[3]
