"""Layers: hold parameters, gradients and caches; the math lives in :mod:`xpcnn.functional`.

Contract every layer keeps (written once in :class:`~xpcnn.layers.base.Layer`; a layer fills in
the hooks ``_forward(x, training) -> (y, cache)`` and ``_backward(dy, cache, need_dx) -> (dx, grads)``):

- ``forward(x, training=True) -> y`` and ``backward(dy) -> dx`` (None when the layer was told
  its input needs no gradient, e.g. the first layer); the activations a backward needs are kept
  from a training forward until that backward, never at inference;
- ``params`` and, after ``backward``, ``grads``: dicts with the same keys (``"kernel"``,
  ``"bias"``), arrays on the layer's device;
- ``get_weights()`` / ``set_weights(list)`` with host NumPy arrays, kernel then bias;
- ``get_config()``: plain data from which :func:`from_config` rebuilds the layer.

Input channels / features are inferred when the layer is built (by ``Sequential`` or at the first
``forward``). Shapes are per sample (no batch axis) in ``build`` and ``output_shape``.

Examples
--------
>>> import numpy as np
>>> from xpcnn.backend import get_backend
>>> conv = Conv2D(4, 3, padding="same", activation="relu", seed=0)
>>> y = conv.forward(get_backend("cpu").asarray(np.ones((2, 1, 8, 8)), "float32"))
>>> y.shape, sorted(conv.params), conv.params["kernel"].shape
((2, 4, 8, 8), ['bias', 'kernel'], (4, 1, 3, 3))
"""

from __future__ import annotations

from ..errors import InputError
from .base import Layer
from .core import Activation, Dropout, Flatten, ReLU, Sigmoid, Softmax, Tanh
from .normalization import BatchStandardize
from .pooling import AveragePooling2D, MaxPool2D
from .weighted import Conv2D, Dense

__all__ = ["Activation", "AveragePooling2D", "BatchStandardize", "Conv2D", "Dense", "Dropout", "Flatten", "Layer",
           "MaxPool2D", "ReLU", "Sigmoid", "Softmax", "Tanh", "from_config"]


LAYERS = {cls.__name__: cls for cls in (Conv2D, Dense, MaxPool2D, AveragePooling2D, Flatten, Dropout, Activation,
                                         Sigmoid, ReLU, Tanh, Softmax, BatchStandardize)}


def from_config(config):
    """Rebuild a layer from ``get_config()`` output (plain data, e.g. read from a JSON header)."""
    if not isinstance(config, dict) or config.get("class") not in LAYERS:
        raise InputError(f"Unknown layer config {config!r}. Expected a dict with 'class' in {sorted(LAYERS)}.")
    kwargs = {k: v for k, v in config.items() if k != "class"}
    try:
        return LAYERS[config["class"]](**kwargs)
    except TypeError as exc:
        raise InputError(f"Bad arguments for layer {config['class']}: {exc}") from None
