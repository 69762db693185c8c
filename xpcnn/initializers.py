"""Weight initializers, drawn on the HOST by a seeded NumPy Generator, then moved to the device.

One seed therefore gives the same starting weights on CPU and GPU (drawing with ``xp.random``
would not: NumPy and CuPy generators differ).

    uniform          U[0, 1)                              (what the tutorial uses)
    glorot_uniform   U[-a, a],  a = sqrt(6 / (fan_in + fan_out))
    he_normal        N(0, 2 / fan_in), truncated at 2 standard deviations (as Keras)
    zeros, ones

fan_in / fan_out: a conv kernel (F, C, KH, KW) has fan_in = C·KH·KW and fan_out = F·KH·KW;
a dense kernel (I, U) has fan_in = I and fan_out = U.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError


def fans(shape):
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    if len(shape) == 2:
        return shape[0], shape[1]
    return shape[0], shape[0]


def _uniform(shape, rng):
    return rng.random(shape)


def _glorot_uniform(shape, rng):
    fan_in, fan_out = fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def _he_normal(shape, rng):
    # Keras: stddev of the *truncated* normal is sqrt(2/fan_in) / 0.8796...
    std = np.sqrt(2.0 / fans(shape)[0]) / 0.87962566103423978
    w = rng.standard_normal(shape)
    bad = np.abs(w) > 2.0
    while bad.any():  # redraw the tails: a truncated normal
        w[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(w) > 2.0
    return w * std


INITIALIZERS = {
    "uniform": _uniform,
    "glorot_uniform": _glorot_uniform,
    "he_normal": _he_normal,
    "zeros": lambda shape, rng: np.zeros(shape),
    "ones": lambda shape, rng: np.ones(shape),
}


def get(name):
    """The initializer called ``name``; a callable ``(shape, rng) -> ndarray`` passes through."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise InputError(f"Unknown initializer {name!r}. Expected one of {sorted(INITIALIZERS)}.") from None
