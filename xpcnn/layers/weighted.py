"""The layers with weights: Conv2D and Dense (kernel + bias, an optional fused activation)."""


from __future__ import annotations

from .. import functional as F
from .. import initializers
from ..errors import InputError, ShapeError
from ..functional._checks import pair
from ..functional.conv import output_size, resolve_padding
from .base import Layer
from .core import activation_kernels


class _Weighted(Layer):
    """Shared part of Conv2D and Dense: optional fused activation, kernel + bias."""

    def __init__(self, activation, use_bias, kernel_initializer, bias_initializer, seed, name):
        super().__init__(name)
        self._act = activation_kernels(activation, optional=True)
        self.activation = None if self._act is None else activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer
        initializers.get(kernel_initializer), initializers.get(bias_initializer)  # validate early
        self.seed = seed

    def _create_params(self, rng):
        for name, shape in self.param_shapes(self.input_shape).items():  # kernel, then bias
            init = self.kernel_initializer if name == "kernel" else self.bias_initializer
            self.params[name] = self._init(init, shape, rng)

    def param_shapes(self, input_shape):
        kernel, units = self._kernel_shape(tuple(input_shape))
        return {"kernel": kernel, "bias": (units,)} if self.use_bias else {"kernel": kernel}

    def _forward(self, x, training):
        """y = activation(op(x)); the cache holds both stages'."""
        z, op_cache = self._op_forward(x)
        if self._act is None:
            return z, (op_cache, None)
        y, act_cache = self._act.forward(z)
        return y, (op_cache, act_cache)

    def _backward(self, dy, cache, need_dx):
        """∂E/∂x (None unless ``need_dx``) and {∂E/∂kernel, ∂E/∂bias} from dy = ∂E/∂y."""
        op_cache, act_cache = cache
        if self._act is not None:
            dy = self._act.backward(dy, act_cache)
        dx, dkernel, dbias = self._op_backward(dy, op_cache, need_dx=need_dx)
        return dx, {"kernel": dkernel, **({"bias": dbias} if self.use_bias else {})}

    def get_config(self):
        """The constructor arguments as plain data (see :func:`from_config`)."""
        return {
            **super().get_config(),
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": _init_name(self.kernel_initializer),
            "bias_initializer": _init_name(self.bias_initializer),
        }


def _init_name(init):
    return init if isinstance(init, str) else getattr(init, "__name__", "custom")


class Conv2D(_Weighted):
    """2-D convolution (cross-correlation) of (N, C, H, W) images; output (N, filters, OH, OW).

    Parameters
    ----------
    filters : int
        Output channels F. The kernel has shape (F, C, KH, KW), C inferred when built.
    kernel_size : int or pair of ints
        (KH, KW); an int k means (k, k).
    strides : int or pair of ints, default 1
        (SH, SW): the window moves SH rows / SW columns at a time.
    padding : "valid", "same", int or pair of ints, default "valid"
        "valid": no padding. "same" (as Keras/TensorFlow): OH = ceil(H / SH), zeros split
        evenly with any odd one at the bottom/right. An int p or a pair (ph, pw) of
        non-negative ints: that many rows of zeros top and bottom, columns left and right.
    dilation_rate : int or pair of ints, default 1
        (DH, DW): spacing between kernel taps (a 3x3 kernel with rate 2 spans 5x5).
    activation : {"relu", "sigmoid", "tanh", "softmax", "linear", None}, default None
        Applied to the convolution output inside the layer (fused); None or "linear": none.
    use_bias : bool, default True
        Add one bias per filter.
    kernel_initializer, bias_initializer : str or callable
        "glorot_uniform" (kernel default), "he_normal", "uniform", "zeros" (bias default),
        "ones", or a callable ``(shape, rng) -> ndarray`` drawing on the host.
    seed : int, optional
        Initial weights when the layer is used alone; inside a Sequential the model's seed decides.
    name : str, optional

    Notes
    -----
    Output size per spatial axis, with (PT, PB) the padding resolved as above::

        OH = (H + PT + PB - DH·(KH - 1) - 1) // SH + 1

    The forward equation and both gradients are in :mod:`xpcnn.functional.conv`.

    Examples
    --------
    >>> Conv2D(8, 3, padding="same").output_shape((1, 28, 28))
    (8, 28, 28)
    >>> Conv2D(8, 5, strides=2).output_shape((1, 28, 28))
    (8, 12, 12)
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", dilation_rate=1, activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros", seed=None, name=None):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, seed, name)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise InputError(f"The `filters` argument must be a positive int. Received filters={filters!r}")
        self.filters = filters
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.dilation_rate = pair(dilation_rate, "dilation_rate")
        resolve_padding(padding, (1, 1), (1, 1), (1, 1), (1, 1))  # validate early
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding", minimum=0)

    def _kernel_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"Layer '{self.name}' needs (channels, height, width) inputs. "
                             f"Received {input_shape}.")
        return (self.filters, input_shape[0], *self.kernel_size), self.filters

    def output_shape(self, input_shape):
        c, h, w = input_shape
        pads = resolve_padding(self.padding, (h, w), self.kernel_size, self.strides, self.dilation_rate)
        oh, ow = (output_size(s, k, st, d, p) for s, k, st, d, p in
                  zip((h, w), self.kernel_size, self.strides, self.dilation_rate, pads))
        if oh < 1 or ow < 1:
            raise ShapeError(f"Layer '{self.name}': kernel {self.kernel_size} is larger than its padded "
                             f"input {(h, w)}.")
        return (self.filters, oh, ow)

    def multiply_adds(self, input_shape):
        f, oh, ow = self.output_shape(input_shape)
        return f * input_shape[0] * self.kernel_size[0] * self.kernel_size[1] * oh * ow

    def _shape_ok(self, shape):
        return shape[0] == self.input_shape[0]  # any image size, the channel count must match

    def _op_forward(self, x):
        return F.conv2d_forward(x, self.params["kernel"], self.params.get("bias"), strides=self.strides,
                                padding=self.padding, dilation=self.dilation_rate)

    _op_backward = staticmethod(F.conv2d_backward)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "dilation_rate": list(self.dilation_rate),
                "padding": self.padding if isinstance(self.padding, str) else list(self.padding)}


class Dense(_Weighted):
    """Fully connected layer: y = activation(x @ kernel + bias); (N, features) -> (N, units).

    Parameters
    ----------
    units : int
        Output features. The kernel has shape (features, units), features inferred when built;
        put a ``Flatten()`` before it for images.
    activation : {"relu", "sigmoid", "tanh", "softmax", "linear", None}, default None
        Applied inside the layer (fused); None or "linear": none.
    use_bias : bool, default True
    kernel_initializer, bias_initializer : str or callable
        As for :class:`Conv2D`: "glorot_uniform" (kernel default), "he_normal", "uniform",
        "zeros" (bias default), "ones", or ``(shape, rng) -> ndarray``.
    seed : int, optional
        Initial weights when the layer is used alone; inside a Sequential the model's seed decides.
    name : str, optional

    Examples
    --------
    >>> Dense(10).output_shape((784,))
    (10,)
    """

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", seed=None, name=None):
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer, seed, name)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise InputError(f"The `units` argument must be a positive int. Received units={units!r}")
        self.units = units

    def _kernel_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ShapeError(f"Layer '{self.name}' needs flat (features,) inputs; add Flatten(). "
                             f"Received {input_shape}.")
        return (input_shape[0], self.units), self.units

    def output_shape(self, input_shape):
        return (self.units,)

    def multiply_adds(self, input_shape):
        return input_shape[0] * self.units

    def _op_forward(self, x):
        return F.dense_forward(x, self.params["kernel"], self.params.get("bias"))

    _op_backward = staticmethod(F.dense_backward)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
