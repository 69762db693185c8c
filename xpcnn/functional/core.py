"""Kernels without weights: flatten (a reshape) and dropout (a mask).

flatten    y = reshape(x, (N, -1))             ∂E/∂x = reshape(dy, x.shape)
dropout    y = x · m / (1 - rate), m ∈ {0, 1}   ∂E/∂x = dy · m / (1 - rate)
"""

from __future__ import annotations

from array_api_compat import array_namespace

from ..errors import ShapeError
from ._checks import check_same_backend


def flatten_forward(x):
    xp = array_namespace(x)
    return xp.reshape(x, (x.shape[0], -1)), tuple(x.shape)


def flatten_backward(dy, shape):
    return array_namespace(dy).reshape(dy, shape)


def dropout_forward(x, mask, rate):
    """``mask`` is a 0/1 array of x's shape, dtype and device (see layers.Dropout)."""
    check_same_backend("dropout", x, mask)
    if tuple(mask.shape) != tuple(x.shape):
        raise ShapeError(f"dropout: mask shape {tuple(mask.shape)} differs from x shape {tuple(x.shape)}.")
    scaled = mask * (1.0 / (1.0 - rate))
    return x * scaled, scaled


def dropout_backward(dy, scaled):
    return dy * scaled
