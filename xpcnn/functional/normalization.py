"""Batch standardization: every feature standardized over the batch, forward and backward.

Notation: N samples (axis 0); every other axis is a feature, standardized on its own.

    μ = mean_n(z)           σ = sqrt(mean_n((z - μ)²) + ε)           ẑ = (z - μ) / σ

Batch normalization without scale and shift, and without running averages: an output depends on
the whole batch. Since ẑ depends on every z_m through μ and σ (∂μ/∂z_m = 1/N,
∂σ/∂z_m = ẑ_m / N), the chain rule gives, with dẑ = ∂E/∂ẑ,

    ∂E/∂z = (1/σ) · (dẑ - mean_n(dẑ) - ẑ · mean_n(dẑ · ẑ))
"""

from __future__ import annotations

from array_api_compat import array_namespace

from ._checks import check_float_array


def batch_standardize_forward(x, *, epsilon=1e-8):
    """ẑ = (x - μ) / σ over axis 0, σ = sqrt(var + ``epsilon``). Returns ``(ẑ, cache)``.

    Examples
    --------
    >>> import array_api_compat.numpy as xp
    >>> y, _ = batch_standardize_forward(xp.asarray([[1.0, 10.0], [3.0, 30.0]]))
    >>> [round(float(v), 6) for v in y[0]]
    [-1.0, -1.0]
    """
    check_float_array("batch_standardize", "x", x)
    xp = array_namespace(x)
    mu = xp.mean(x, axis=0, keepdims=True)
    sigma = xp.sqrt(xp.var(x, axis=0, keepdims=True) + epsilon)
    y = (x - mu) / sigma
    return y, (y, sigma)


def batch_standardize_backward(dy, cache):
    """∂E/∂x = (dy - mean_n(dy) - ẑ · mean_n(dy · ẑ)) / σ from dy = ∂E/∂ẑ."""
    y, sigma = cache
    xp = array_namespace(dy, y)
    return (dy - xp.mean(dy, axis=0, keepdims=True) - y * xp.mean(dy * y, axis=0, keepdims=True)) / sigma
