"""Layers without weights: activations, flatten, dropout."""


from __future__ import annotations

import numpy as np

from .. import functional as F
from ..errors import InputError
from .base import Kernels, Layer


def activation_kernels(name, *, optional=False):
    """The :class:`Kernels` of activation ``name``; with ``optional``, None for None or "linear"."""
    if optional and name in (None, "linear"):
        return None
    if name not in F.ACTIVATIONS:
        also = " or None" if optional else ""
        raise InputError(f"Unknown activation {name!r}. Expected one of {sorted(F.ACTIVATIONS)}{also}.")
    return Kernels(*F.ACTIVATIONS[name])


class Flatten(Layer):
    """Flatten each sample: (N, C, H, W) (or any (N, ...)) -> (N, C·H·W), in C order.

    Examples
    --------
    >>> Flatten().output_shape((16, 4, 4))
    (256,)
    """

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def _forward(self, x, training):
        return F.flatten_forward(x)  # a view, no copy where the backend allows

    def _backward(self, dy, cache, need_dx):
        return F.flatten_backward(dy, cache), {}


class Dropout(Layer):
    """Inverted dropout: in training each value is zeroed with probability ``rate`` and the others
    are scaled by 1 / (1 - rate); at inference (``training=False``) the input passes unchanged.

    Parameters
    ----------
    rate : float in [0, 1)
        Fraction of values dropped.
    seed : int, optional
        Seeds the mask generator when the layer is used alone; ``Sequential.fit`` reseeds it
        from (seed, epoch, step), so runs are reproducible and resumable.
    name : str, optional

    Notes
    -----
    The 0/1 mask comes from a host NumPy Generator (``self.rng``): the same seed gives the same
    mask on every device.

    Examples
    --------
    >>> Dropout(0.5).output_shape((128,))
    (128,)
    """

    def __init__(self, rate, seed=None, name=None):
        super().__init__(name)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise InputError(f"The `rate` argument must be a number in [0, 1). Received rate={rate!r}")
        self.rate = float(rate)
        self.rng = np.random.default_rng(seed)
        self.rows = None  # (nb, lo, hi): x is rows lo:hi of a batch of nb (set by Sequential.reseed_dropout)

    def _forward(self, x, training):
        if not training or self.rate == 0.0:
            return x, None  # x itself: nothing dropped
        nb, lo, hi = self.rows if self.rows is not None and self.rows[2] - self.rows[1] == x.shape[0] \
            else (x.shape[0], 0, x.shape[0])
        # host RNG: the same mask on every device; a shard keeps its rows of the whole batch's mask
        keep = self.rng.random((nb, *x.shape[1:]))[lo:hi] >= self.rate
        mask = self.backend.xp.astype(self.backend.asarray(keep), x.dtype)  # 1 byte a value crosses
        return F.dropout_forward(x, mask, self.rate)

    def _backward(self, dy, cache, need_dx):
        return (dy if cache is None else F.dropout_backward(dy, cache)), {}

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Activation(Layer):
    """An elementwise activation (``"sigmoid"``, ``"relu"``, ``"tanh"``) or ``"softmax"``."""

    def __init__(self, activation, name=None):
        super().__init__(name)
        self._kernels = activation_kernels(activation)
        self.activation = activation

    def _shape_ok(self, shape):
        return True  # elementwise: any shape

    def _forward(self, x, training):
        return self._kernels.forward(x)

    def _backward(self, dy, cache, need_dx):
        return self._kernels.backward(dy, cache), {}

    def get_config(self):
        cfg = {**super().get_config(), "activation": self.activation}
        if type(self) is not Activation:
            del cfg["activation"]
        return cfg


class Sigmoid(Activation):
    def __init__(self, name=None):
        super().__init__("sigmoid", name)


class ReLU(Activation):
    def __init__(self, name=None):
        super().__init__("relu", name)


class Tanh(Activation):
    def __init__(self, name=None):
        super().__init__("tanh", name)


class Softmax(Activation):
    def __init__(self, name=None):
        super().__init__("softmax", name)
