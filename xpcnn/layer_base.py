"""The base class every layer derives from: parameters, gradients, device, dtype, shape checks."""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

from . import initializers
from .backend import Backend, backend_of, to_numpy
from .errors import InputError, ShapeError


class Layer:
    """Base class: bookkeeping shared by all layers."""

    #: Whether one sample's output depends on the other samples of its batch (batch statistics):
    #: such a model trains on whole batches, never on shards of them in threads.
    couples_batch = False

    def __init__(self, name=None):
        self.name = name or type(self).__name__.lower()
        self.params, self.grads = {}, {}
        self.backend, self.dtype, self.input_shape = None, None, None
        self.need_input_grad = True
        self.built = False
        self._cache = None
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
        """The layer's output for a device batch ``x``; ``training`` enables dropout and caching."""
        raise NotImplementedError

    def backward(self, dy):
        """∂E/∂x from dy = ∂E/∂y of the last ``forward``; fills ``grads`` for layers with weights."""
        raise NotImplementedError

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


def _dtype_name(x):
    xp = array_namespace(x)
    for name in ("float32", "float64"):
        if x.dtype == getattr(xp, name):
            return name
    return str(x.dtype)
