"""Layers without weights: pooling, flatten, dropout, activations, batch standardization."""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from . import functional as F
from .errors import InputError, ShapeError
from .functional._checks import pair
from .functional.pooling import pool_output_size
from .layer_base import Layer


class _Pool(Layer):
    _forward = _backward = None

    def __init__(self, pool_size=2, strides=None, name=None):
        super().__init__(name)
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"Layer '{self.name}' needs (channels, height, width) inputs. "
                             f"Received {tuple(input_shape)}.")
        c, h, w = input_shape
        return (c, *pool_output_size((h, w), self.pool_size, self.strides, f"Layer '{self.name}'"))

    def _shape_ok(self, shape):
        return shape[0] == self.input_shape[0]

    def forward(self, x, training=True):
        """Pool each channel of a device batch (N, C, H, W) -> (N, C, OH, OW)."""
        self._check_input(x)
        y, self._cache = type(self)._forward(x, self.pool_size, self.strides)
        return y

    def backward(self, dy):
        """∂E/∂x from dy = ∂E/∂y (None when the layer needs no input gradient)."""
        return type(self)._backward(dy, self._cache) if self.need_input_grad else None

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides)}


class MaxPool2D(_Pool):
    """Max pooling: the largest value of each ``pool_size`` window, per channel.

    Parameters
    ----------
    pool_size : int or pair of ints, default 2
        (PH, PW) window.
    strides : int or pair of ints, optional
        Step between windows; default the pool size (windows do not overlap).
    name : str, optional

    Notes
    -----
    No padding: OH = (H - PH) // SH + 1 (the last rows/columns that do not fill a window are
    dropped). The gradient goes to the first maximum of each window. See
    :mod:`xpcnn.functional.pooling`.

    Examples
    --------
    >>> MaxPool2D().output_shape((6, 28, 28))
    (6, 14, 14)
    """

    _forward, _backward = staticmethod(F.max_pool2d_forward), staticmethod(F.max_pool2d_backward)


class AveragePooling2D(_Pool):
    """Average pooling: the mean of each ``pool_size`` window, per channel.

    Parameters and output size as :class:`MaxPool2D` (``pool_size=2``, ``strides`` default the
    pool size, no padding). The gradient is shared equally by the window's values.

    Examples
    --------
    >>> AveragePooling2D(3, strides=1).output_shape((1, 5, 5))
    (1, 3, 3)
    """

    _forward, _backward = staticmethod(F.avg_pool2d_forward), staticmethod(F.avg_pool2d_backward)


class Flatten(Layer):
    """Flatten each sample: (N, C, H, W) (or any (N, ...)) -> (N, C·H·W), in C order.

    Examples
    --------
    >>> Flatten().output_shape((16, 4, 4))
    (256,)
    """

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=True):
        """Reshape a device batch to (N, features) (a view, no copy where the backend allows)."""
        self._check_input(x)
        y, self._cache = F.flatten_forward(x)
        return y

    def backward(self, dy):
        """dy reshaped back to the input's shape (None when no input gradient is needed)."""
        return F.flatten_backward(dy, self._cache) if self.need_input_grad else None


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

    def forward(self, x, training=True):
        """Apply a fresh mask when ``training``; else return ``x`` itself."""
        self._check_input(x)
        if not training or self.rate == 0.0:
            self._cache = None
            return x
        keep = self.rng.random(tuple(x.shape)) >= self.rate  # host RNG: the same mask on every device
        mask = self.backend.xp.astype(self.backend.asarray(keep), x.dtype)  # 1 byte a value crosses
        y, self._cache = F.dropout_forward(x, mask, self.rate)
        return y

    def backward(self, dy):
        """dy times the forward's scaled mask (None when no input gradient is needed)."""
        if not self.need_input_grad:
            return None
        return dy if self._cache is None else F.dropout_backward(dy, self._cache)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Activation(Layer):
    """An elementwise activation (``"sigmoid"``, ``"relu"``, ``"tanh"``) or ``"softmax"``."""

    def __init__(self, activation, name=None):
        super().__init__(name)
        if activation not in F.ACTIVATIONS:
            raise InputError(f"Unknown activation {activation!r}. Expected one of {sorted(F.ACTIVATIONS)}.")
        self.activation = activation

    def _shape_ok(self, shape):
        return True  # elementwise: any shape

    def forward(self, x, training=True):
        self._check_input(x)
        y, self._cache = F.ACTIVATIONS[self.activation][0](x)
        return y

    def backward(self, dy):
        return F.ACTIVATIONS[self.activation][1](dy, self._cache) if self.need_input_grad else None

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


class BatchStandardize(Layer):
    """Standardize each feature over the batch: ẑ = (z - μ) / σ, σ = sqrt(var + ε).

    The tutorial's code does this to the dense output before the last sigmoid and then ignores it
    in backprop. Its true gradient (batch normalization without scale and shift) is

        ∂E/∂z = (1/σ) · (dẑ - mean_n(dẑ) - ẑ · mean_n(dẑ · ẑ))

    Like the tutorial's code it uses the batch's own statistics also at inference (there are no
    running averages, unlike batch normalization): an output depends on the whole batch, and a
    batch of one image standardizes to 0.
    """

    couples_batch = True  # its output depends on the whole batch: a batch is never split across threads

    def __init__(self, epsilon=1e-8, name=None):
        super().__init__(name)
        self.epsilon = float(epsilon)

    def forward(self, x, training=True):
        self._check_input(x)
        xp = array_namespace(x)
        mu = xp.mean(x, axis=0, keepdims=True)
        sigma = xp.sqrt(xp.var(x, axis=0, keepdims=True) + self.epsilon)
        z = (x - mu) / sigma
        self._cache = (z, sigma)
        return z

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        xp = array_namespace(dy)
        z, sigma = self._cache
        return (dy - xp.mean(dy, axis=0, keepdims=True) - z * xp.mean(dy * z, axis=0, keepdims=True)) / sigma

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
