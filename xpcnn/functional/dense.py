"""Fully connected layer, flatten and dropout.

Notation: N samples, I input features, U units.

Dense (Keras layout; the tutorial's Z = WᵀX + b with samples as rows)
-----
    y = x · K + b                 x (N, I), K (I, U), b (U,)
    ∂E/∂x = dy · Kᵀ               ∂E/∂K = xᵀ · dy               ∂E/∂b = Σ_n dy[n]

Flatten:  (N, C, H, W) -> (N, C·H·W) in C order, and back.

Dropout (inverted): y = x · m / (1 - rate) with a 0/1 mask m drawn on the host from a seeded
NumPy Generator (so CPU and GPU drop the same units); ∂E/∂x = dy · m / (1 - rate).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace

from ..errors import ShapeError
from ._checks import check_float_array, check_same_backend


class DenseCache(NamedTuple):
    """What :func:`dense_backward` needs."""

    x: Any  # (N, I)
    kernel: Any  # (I, U)
    has_bias: bool


def dense_forward(x, kernel, bias=None):
    """y = x @ kernel + bias. Returns ``(y, cache)``.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> y, _ = dense_forward(xp.ones((2, 3)), xp.ones((3, 4)), xp.zeros(4))
    >>> y.shape, float(y[0, 0])
    ((2, 4), 3.0)
    """
    arrays = (x, kernel) if bias is None else (x, kernel, bias)
    xp = check_same_backend("dense", *arrays)
    check_float_array("dense", "x", x, ndim=2)
    check_float_array("dense", "kernel", kernel, ndim=2)
    if x.shape[1] != kernel.shape[0]:
        raise ShapeError(
            f"dense: kernel expects {kernel.shape[0]} input features but x has {x.shape[1]}. "
            f"Received x.shape={tuple(x.shape)}, kernel.shape={tuple(kernel.shape)}."
        )
    y = xp.matmul(x, kernel)
    if bias is not None:
        y = y + bias
    return y, DenseCache(x, kernel, bias is not None)


def dense_backward(dy, cache, *, need_dx=True):
    """Returns ``(dx or None, dkernel, dbias or None)``."""
    xp = array_namespace(dy, cache.x)
    dkernel = xp.matmul(xp.matrix_transpose(cache.x), dy)
    dbias = xp.sum(dy, axis=0) if cache.has_bias else None
    dx = xp.matmul(dy, xp.matrix_transpose(cache.kernel)) if need_dx else None
    return dx, dkernel, dbias
