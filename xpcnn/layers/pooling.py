"""Pooling layers: MaxPool2D and AveragePooling2D (kernels in xpcnn.functional.pooling)."""


from __future__ import annotations

from .. import functional as F
from ..errors import ShapeError
from ..functional._checks import pair
from ..functional.pooling import pool_output_size
from .base import Kernels, Layer


class _Pool(Layer):
    _kernels: Kernels  # set by each pooling class

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

    def _forward(self, x, training):
        return self._kernels.forward(x, self.pool_size, self.strides)

    def _backward(self, dy, cache, need_dx):
        return self._kernels.backward(dy, cache), {}

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

    _kernels = Kernels(F.max_pool2d_forward, F.max_pool2d_backward)


class AveragePooling2D(_Pool):
    """Average pooling: the mean of each ``pool_size`` window, per channel.

    Parameters and output size as :class:`MaxPool2D` (``pool_size=2``, ``strides`` default the
    pool size, no padding). The gradient is shared equally by the window's values.

    Examples
    --------
    >>> AveragePooling2D(3, strides=1).output_shape((1, 5, 5))
    (1, 3, 3)
    """

    _kernels = Kernels(F.avg_pool2d_forward, F.avg_pool2d_backward)
