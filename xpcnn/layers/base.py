"""The base class every layer derives from: the forward/backward protocol, parameters, gradients,
device, dtype and input checks."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from array_api_compat import array_namespace

from .. import initializers
from ..backend import Backend, backend_of, to_numpy
from ..errors import InputError, ShapeError, XpcnnError


class Kernels(NamedTuple):
    """A forward kernel ``(x, ...) -> (y, cache)`` and its backward ``(dy, cache) -> dx``."""

    forward: Callable
    backward: Callable


class BackwardOrderError(XpcnnError, RuntimeError):
    """``backward`` was called without a ``forward(training=True)`` of its own before it."""


class Layer:
    """Base class: the forward/backward protocol and the bookkeeping shared by all layers.

    The public methods are written once, here; a layer implements two hooks:

    - ``_forward(x, training) -> (y, cache)``: ``x`` is already checked (backend, dtype, shape)
      and the layer built. ``cache`` is what the backward needs.
    - ``_backward(dy, cache, need_dx) -> (dx, grads)``: ``grads`` has the keys of ``params``
      (``{}`` without weights); ``dx`` may be None when ``need_dx`` is False.

    :meth:`forward` keeps the cache only when ``training`` (inference keeps no activations);
    :meth:`backward` hands it to the hook once and frees it. ``need_input_grad`` (False for the
    first layer of a model) is read in :meth:`backward` only: a layer without weights then
    skips its hook, a layer with weights gets ``need_dx=False`` (conv skips its col2im).
    """

    #: Whether one sample's output depends on the other samples of its batch (batch statistics):
    #: such a model trains on whole batches, never on shards of them in threads.
    couples_batch = False

    def __init__(self, name=None):
        self.name = name or type(self).__name__.lower()
        self.params, self.grads = {}, {}
        self.backend, self.dtype, self.input_shape = None, None, None
        self.need_input_grad = True
        self.built = False
        self._pending = None  # (cache,) from a training forward until its backward; a cache may be None
        self._owner = None  # weakref to the Sequential holding this layer (a layer serves one model)

    def build(self, input_shape, backend: Backend, dtype="float32", rng=None):
        """Create the weights for per-sample ``input_shape`` on ``backend``; returns the output shape.

        ``Sequential`` calls this (with the model's seed); a layer used alone builds itself at
        its first ``forward``.
        """
        self.input_shape, self.backend, self.dtype = tuple(input_shape), backend, str(dtype)
        self._create_params(np.random.default_rng(rng))  # a Generator passes through unchanged
        self.built = True
        return self.output_shape(self.input_shape)

    def _create_params(self, rng):
        """Layers with weights draw them here (host RNG, then one move to the device)."""

    def output_shape(self, input_shape):
        """The per-sample output shape for per-sample ``input_shape`` (no batch axis)."""
        return tuple(input_shape)

    def _init(self, name, shape, rng):
        host = initializers.get(name)(tuple(shape), rng)
        return self.backend.asarray(np.asarray(host, dtype=self.dtype))

    def _check_input(self, x):
        if not self.built:
            self.build(tuple(x.shape[1:]), backend_of(x), _dtype_name(x), getattr(self, "seed", None))
        if not self.backend.owns(x):
            raise TypeError(
                f"Layer '{self.name}' lives on {self.backend} but received an array of "
                f"{type(x).__module__}.{type(x).__name__} on another device; move it first."
            )
        if _dtype_name(x) != self.dtype:
            raise TypeError(f"Layer '{self.name}' expects {self.dtype} input. Received dtype {x.dtype}.")
        if x.ndim != len(self.input_shape) + 1 or not self._shape_ok(tuple(x.shape[1:])):
            raise ShapeError(
                f"Layer '{self.name}' expects input of shape (batch, {', '.join(map(str, self.input_shape))}). "
                f"Received shape {tuple(x.shape)}."
            )

    def _shape_ok(self, shape):
        return shape == self.input_shape

    def forward(self, x, training=True):
        """The layer's output for a device batch ``x``; ``training`` enables dropout and keeps
        what :meth:`backward` needs (until that backward)."""
        self._check_input(x)
        y, cache = self._forward(x, training)
        self._pending = (cache,) if training else None
        return y

    def backward(self, dy):
        """∂E/∂x from dy = ∂E/∂y of the last ``forward(training=True)``; None when
        ``need_input_grad`` is False. Fills ``grads`` (same keys as ``params``) and frees the cache.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            raise BackwardOrderError(f"Layer '{self.name}': backward() needs a forward(x, training=True) first; "
                                     "inference and an earlier backward keep no activations.")
        (cache,) = pending
        need_dx = self.need_input_grad
        if not need_dx and not self.params:
            return None  # nothing to compute
        dx, self.grads = self._backward(dy, cache, need_dx)
        return dx if need_dx else None

    def _forward(self, x, training):
        raise NotImplementedError(f"{type(self).__name__} must implement _forward(x, training) -> (y, cache)")

    def _backward(self, dy, cache, need_dx):
        raise NotImplementedError(f"{type(self).__name__} must implement _backward(dy, cache, need_dx) -> (dx, grads)")

    def get_weights(self):
        """Host copies (as Keras): later training never changes what this returned."""
        host = [(to_numpy(p), p) for p in self.params.values()]
        # Off the CPU to_numpy made a fresh array already; only the same or a borrowed one is copied.
        return [h if h is not p and h.flags.owndata else h.copy() for h, p in host]

    def set_weights(self, weights):
        """Replace the weights (kernel then bias) from host or device arrays of the same shapes."""
        if len(weights) != len(self.params):
            raise InputError(f"Layer '{self.name}' has {len(self.params)} weight arrays. Received {len(weights)}.")
        for key, w in zip(list(self.params), weights):
            w = to_numpy(w)  # NumPy, a list, or an array of any backend
            want = tuple(self.params[key].shape)
            if w.shape != want:
                raise ShapeError(f"Layer '{self.name}': `{key}` must have shape {want}. Received {w.shape}.")
            self.params[key] = self.backend.asarray(w.astype(self.dtype))

    def get_config(self):
        """The constructor arguments as plain data (see :func:`xpcnn.layers.from_config`)."""
        return {"class": type(self).__name__, "name": self.name}

    def count_params(self):
        """The number of trainable values in ``params``."""
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def param_shapes(self, input_shape):
        """``{name: shape}`` of the weights this layer creates for per-sample ``input_shape``, in
        ``params`` order; nothing is built or allocated (checkpoint headers are checked with it)."""
        return {}

    def multiply_adds(self, input_shape):
        """Multiply-adds of the forward pass for one sample of per-sample ``input_shape`` (the
        matrix products; elementwise work is not counted)."""
        return 0


def _dtype_name(x):
    xp = array_namespace(x)
    for name in ("float32", "float64"):
        if x.dtype == getattr(xp, name):
            return name
    return str(x.dtype)
