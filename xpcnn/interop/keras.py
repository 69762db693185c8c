"""A bridge to Keras 3: :func:`to_keras` builds the equivalent ``keras.Sequential``, :func:`from_keras`
turns one back into an xpcnn :class:`~xpcnn.model.Sequential`.

``pip install 'xpcnn[keras]'``; Keras is imported only here, on first use, with the torch backend
unless ``KERAS_BACKEND`` says otherwise (a Keras already imported keeps its backend).

Channels: the Keras model is **channels_last**, the Keras convention that every backend runs
(TensorFlow's CPU convolution has no channels_first): it takes (batch, H, W, C) images where
xpcnn takes (batch, C, H, W). Kernels are transposed, (F, C, KH, KW) -> (KH, KW, C, F); Dense
kernels are (in, out) on both sides. Before a Flatten of images, ``Permute((3, 1, 2))`` puts the
features back in xpcnn's (C, H, W) order, so Dense kernels copy unchanged.

=====================================  ===========================================================
xpcnn                                  Keras
=====================================  ===========================================================
Conv2D, padding "valid" / "same"       Conv2D (same padding rule: the odd zero at bottom/right)
Conv2D, padding int or pair            ZeroPadding2D + Conv2D(padding="valid")
MaxPool2D / AveragePooling2D           MaxPooling2D / AveragePooling2D, padding "valid"
Dense, Dropout                         Dense, Dropout
Flatten of images                      Permute((3, 1, 2)) + Flatten
Sigmoid, ReLU, Tanh, Softmax           Activation("sigmoid" / "relu" / "tanh" / "softmax")
=====================================  ===========================================================

Refused, naming the layer: BatchStandardize (Keras has no layer that standardizes over the batch
at inference; export to ONNX instead), softmax over an image's width (Keras' channels_last
softmax runs over channels), and Conv2D with both strides and dilation above 1 (Keras refuses it).
:func:`from_keras` also reads channels_first models, ``ReLU()`` and ``Softmax()`` layers, and a
plain Flatten of channels-last images (the next Dense kernel's rows are reordered from (H, W, C)
to (C, H, W)); anything else is an InputError naming the layer.
"""

from __future__ import annotations

import os

import numpy as np

from .. import layers as L
from ..errors import InputError
from ..model import Sequential
from . import layer_error, require, write_atomically

_ACTS = ("sigmoid", "relu", "tanh", "softmax")
CL = "channels_last"  # said on every layer: a user's keras.json may default to channels_first


def keras_module():
    """``import keras``, with the torch backend unless KERAS_BACKEND is set."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return require("keras", "keras")


# ------------------------------------------------------------------------------- xpcnn -> Keras
def to_keras(model, path=None):
    """The ``keras.Sequential`` computing what ``model`` computes at inference (channels_last).

    ``path`` (``*.keras``): also save it there, atomically. Raises InputError for a layer Keras
    cannot express (see the module docstring).
    """
    keras = keras_module()
    if not model.built:
        raise InputError("Cannot export a model that is not built: give input_shape or train it first.")
    shape = tuple(model.input_shape)
    k_shape = (*shape[1:], shape[0]) if len(shape) == 3 else shape
    out, weights = [keras.Input(shape=k_shape, name="input")], []
    for layer in model.layers:
        for k_layer, w in _keras_layers(keras, layer, image=len(shape) == 3):
            out.append(k_layer)
            weights.append((k_layer, w))
        shape = layer.output_shape(shape)
    k_model = keras.Sequential(out, name=model.name)
    for k_layer, w in weights:
        if w:
            k_layer.set_weights(w)
    if path is not None:
        if not str(path).endswith(".keras"):
            raise InputError(f"A Keras model file must end in .keras. Received {path}.")
        write_atomically(path, k_model.save)
    return k_model


def _keras_layers(keras, layer, image):
    """[(keras layer, weights to set)] for one xpcnn layer; ``image``: its input is (C, H, W)."""
    kl, kind, name = keras.layers, type(layer).__name__, layer.name
    act = getattr(layer, "activation", None)
    if act == "softmax" and image:
        raise layer_error(layer, "exported to Keras", "its softmax runs over the image width (xpcnn's last axis); "
                          "a channels_last Keras softmax runs over channels.")
    if kind == "Conv2D":
        if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:
            raise layer_error(layer, "exported to Keras", f"Keras refuses strides {layer.strides} together with "
                              f"dilation_rate {layer.dilation_rate}.")
        kernel, *bias = layer.get_weights()
        pre, padding = [], layer.padding
        if not isinstance(padding, str):
            ph, pw = padding
            pre, padding = ([(kl.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{name}_pad", data_format=CL), [])]
                            if ph or pw else []), "valid"
        conv = kl.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=padding, data_format=CL,
                         dilation_rate=layer.dilation_rate, activation=act, use_bias=layer.use_bias, name=name)
        return [*pre, (conv, [np.transpose(kernel, (2, 3, 1, 0)), *bias])]
    if kind == "Dense":
        return [(kl.Dense(layer.units, activation=act, use_bias=layer.use_bias, name=name), layer.get_weights())]
    if kind in ("MaxPool2D", "AveragePooling2D"):
        cls = kl.MaxPooling2D if kind == "MaxPool2D" else kl.AveragePooling2D
        return [(cls(layer.pool_size, strides=layer.strides, padding="valid", name=name, data_format=CL), [])]
    if kind == "Flatten":
        to_chw = [(kl.Permute((3, 1, 2), name=f"{name}_to_chw"), [])] if image else []
        return [*to_chw, (kl.Flatten(name=name, data_format=CL), [])]
    if kind == "Dropout":
        return [(kl.Dropout(layer.rate, name=name), [])]
    if isinstance(layer, L.Activation):
        return [(kl.Activation(act, name=name), [])]
    why = ("Keras has no layer that standardizes over the batch at inference (BatchNormalization uses "
           "running averages); export it to ONNX instead." if kind == "BatchStandardize" else
           f"no Keras mapping for {kind}.")
    raise layer_error(layer, "exported to Keras", why)


# ------------------------------------------------------------------------------- Keras -> xpcnn
def from_keras(model, *, device=None, dtype="float32", seed=0):
    """An xpcnn ``Sequential`` with the architecture and weights of a Keras ``Sequential``.

    Parameters
    ----------
    model : keras.Sequential or path to a ``.keras`` file
    device, dtype, seed
        As for :class:`~xpcnn.model.Sequential` (the seed only matters for later training).

    Raises
    ------
    InputError
        Keras is missing, the model is not a built Sequential, or a layer has no xpcnn
        counterpart (the message names it).
    """
    keras = keras_module()
    if isinstance(model, (str, os.PathLike)):
        model = _load(keras, model)
    if not isinstance(model, keras.Sequential):
        raise InputError(f"from_keras takes a keras.Sequential model. Received {type(model).__name__}.")
    try:
        k_shape = tuple(model.input_shape[1:])
    except (AttributeError, ValueError):
        k_shape = ()
    if not k_shape or None in k_shape:
        raise InputError(f"Keras model '{model.name}' has no fixed input shape (received {k_shape}); "
                         "build it with keras.Input(shape=...) first.")
    reader = _Reader(model.layers, k_shape)
    for k_layer in model.layers:
        reader.read(k_layer)
    reader.finish()
    out = Sequential([layer for layer, _ in reader.layers], input_shape=reader.input_shape, device=device,
                     dtype=dtype, seed=seed, name=model.name)
    for layer, weights in reader.layers:
        if weights:
            layer.set_weights(weights)
    return out


def _load(keras, path):
    if not str(path).endswith(".keras") or not os.path.isfile(path):
        raise InputError(f"Expected a Keras model file ending in .keras. Received {path}"
                         f"{'' if os.path.isfile(path) else ', which does not exist'}.")
    try:
        return keras.saving.load_model(path)
    except Exception as exc:  # Keras raises anything from zipfile, h5py, JSON or its own checks
        raise InputError(f"Cannot read {path} as a Keras model: {type(exc).__name__}: {exc}") from None


class _Reader:
    """Walks the Keras layers, tracking the image layout ("hwc" / "chw", None once flat)."""

    def __init__(self, k_layers, k_shape):
        self.layers, self.pad, self.perm = [], None, None  # perm: Dense rows still in (H, W, C) order
        self.layout, self.input_shape = None, k_shape
        if len(k_shape) == 3:
            first = next((kl for kl in k_layers if hasattr(kl, "data_format") and type(kl).__name__ != "Flatten"),
                         None)
            self.layout = "chw" if getattr(first, "data_format", None) == "channels_first" else "hwc"
            if self.layout == "hwc":
                self.input_shape = (k_shape[2], k_shape[0], k_shape[1])
        self.shape = self.input_shape  # per sample, in xpcnn's order, after the layers read so far

    def refuse(self, k_layer, why):
        raise layer_error(k_layer, "imported into xpcnn", why)

    def check_layout(self, k_layer):
        want = "chw" if k_layer.data_format == "channels_first" else "hwc"
        if self.layout != want:
            self.refuse(k_layer, f"it expects {k_layer.data_format} images, but its input is "
                        f"{'flat' if self.layout is None else self.layout.upper()}.")

    def act(self, k_layer, name):
        if name in (None, "linear"):
            return None
        if name not in _ACTS:
            self.refuse(k_layer, f"activation {name!r} has no xpcnn counterpart; expected one of {_ACTS}.")
        if name == "softmax" and self.layout == "hwc":
            self.refuse(k_layer, "a channels_last softmax over channels has no xpcnn counterpart "
                        "(xpcnn's softmax runs over the last axis).")
        return name

    def add(self, layer, weights=()):
        self.layers.append((layer, list(weights)))
        self.shape = layer.output_shape(self.shape)

    def read(self, k):
        kind, cfg = type(k).__name__, k.get_config()
        if self.pad is not None and kind != "Conv2D":
            self.refuse(self.pad, "only a ZeroPadding2D right before a Conv2D maps (to its padding).")
        if kind == "InputLayer":
            return
        if kind == "ZeroPadding2D":
            self.check_layout(k)
            (t, b), (left, r) = cfg["padding"]
            if t != b or left != r:
                self.refuse(k, f"xpcnn pads symmetrically; received padding {cfg['padding']}.")
            self.pad = k
            return
        handler = getattr(self, f"_{kind}", None)
        if handler is None:
            self.refuse(k, f"no xpcnn counterpart for Keras {kind}.")
        handler(k, cfg)

    def _Conv2D(self, k, cfg):
        self.check_layout(k)
        padding = cfg["padding"]
        if self.pad is not None:
            if padding != "valid":
                self.refuse(k, "padding='same' after a ZeroPadding2D has no xpcnn counterpart.")
            padding, self.pad = [p[0] for p in self.pad.get_config()["padding"]], None
        if cfg.get("groups", 1) != 1:
            self.refuse(k, f"grouped convolution (groups={cfg['groups']}) has no xpcnn counterpart.")
        kernel, *bias = k.get_weights()
        self.add(L.Conv2D(cfg["filters"], tuple(cfg["kernel_size"]), strides=tuple(cfg["strides"]), padding=padding,
                          dilation_rate=tuple(cfg["dilation_rate"]), activation=self.act(k, cfg["activation"]),
                          use_bias=cfg["use_bias"], name=k.name),
                 [np.transpose(kernel, (3, 2, 0, 1)), *bias])

    def _pool(self, k, cfg, cls):
        self.check_layout(k)
        if cfg["padding"] != "valid":
            self.refuse(k, f"xpcnn pools without padding; received padding={cfg['padding']!r}.")
        self.add(cls(tuple(cfg["pool_size"]), strides=tuple(cfg["strides"] or cfg["pool_size"]), name=k.name))

    def _MaxPooling2D(self, k, cfg):
        self._pool(k, cfg, L.MaxPool2D)

    def _AveragePooling2D(self, k, cfg):
        self._pool(k, cfg, L.AveragePooling2D)

    def _Permute(self, k, cfg):
        swaps = {("hwc", (3, 1, 2)): "chw", ("chw", (2, 3, 1)): "hwc"}
        layout = swaps.get((self.layout, tuple(cfg["dims"])))
        if layout is None:
            self.refuse(k, f"only a Permute between (H, W, C) and (C, H, W) images maps; received dims "
                        f"{tuple(cfg['dims'])} on {self.layout or 'flat'} input.")
        self.layout = layout

    def _Flatten(self, k, cfg):
        if self.layout is not None:
            first = cfg.get("data_format") == "channels_first"  # Keras then flattens in (H, W, C) order
            if first and self.layout == "hwc":
                self.refuse(k, "data_format='channels_first' on channels_last images has no xpcnn counterpart.")
            if first or self.layout == "hwc":
                c, h, w = self.shape
                self.perm = np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).ravel()
        self.layout = None
        self.add(L.Flatten(name=k.name))

    def _Dense(self, k, cfg):
        if self.layout is not None:
            self.refuse(k, "xpcnn's Dense takes flat inputs; put a Flatten before it.")
        kernel, *bias = k.get_weights()
        if self.perm is not None:
            kernel, self.perm = kernel[self.perm], None
        self.add(L.Dense(cfg["units"], activation=self.act(k, cfg["activation"]), use_bias=cfg["use_bias"],
                         name=k.name), [kernel, *bias])

    def _Dropout(self, k, cfg):
        if cfg.get("noise_shape") is not None:
            self.refuse(k, f"a noise_shape ({cfg['noise_shape']}) has no xpcnn counterpart.")
        self.add(L.Dropout(cfg["rate"], name=k.name))

    def _Activation(self, k, cfg):
        name = self.act(k, cfg["activation"])
        if name is not None:
            self.add(L.Activation(name, name=k.name))

    def _ReLU(self, k, cfg):
        if cfg.get("max_value") is not None or cfg.get("negative_slope") or cfg.get("threshold"):
            self.refuse(k, "only the plain ReLU (no max_value, negative_slope or threshold) maps.")
        self.add(L.ReLU(name=k.name))

    def _Softmax(self, k, cfg):
        if cfg.get("axis", -1) not in (-1, len(self.shape)):
            self.refuse(k, f"xpcnn's softmax runs over the last axis; received axis={cfg.get('axis')}.")
        self.act(k, "softmax")
        self.add(L.Softmax(name=k.name))

    def finish(self):
        if self.pad is not None:
            self.refuse(self.pad, "only a ZeroPadding2D right before a Conv2D maps (to its padding).")
        if self.perm is not None:
            raise InputError("A Flatten of channels_last images that no Dense follows: its (H, W, C) feature "
                             "order has no xpcnn counterpart (xpcnn flattens (C, H, W)).")
