"""The header of a model checkpoint, checked field by field, and the weight shapes its architecture
implies, computed from the layer configs alone: nothing is built and no array is allocated, so a
header that claims a 2,000,000-unit layer costs a few bytes to refuse (the layers are constructed
from their configs, which allocates nothing, and asked for their output and weight shapes).

>>> arch = {"input_shape": [1, 8, 8], "layers": [
...     {"class": "Conv2D", "filters": 4, "kernel_size": [3, 3]}, {"class": "Flatten"},
...     {"class": "Dense", "units": 10, "use_bias": False}]}
>>> param_shapes(arch)
{'weights/0/kernel': (4, 1, 3, 3), 'weights/0/bias': (4,), 'weights/2/kernel': (144, 10)}
"""

from __future__ import annotations

import json
import math

from .. import optimizers
from ..errors import CheckpointError, InputError
from ..functional.losses import LOSSES
from ..layers import from_config
from ..optimizers import OPTIMIZERS

MAX_EPOCH = 10**6
MAX_LAYERS = 1000
MAX_ACTIVATION = 2**24  # values per sample after any layer (64 MB in float32): far beyond MNIST-sized work


class FieldError(ValueError):
    """``(field, message)``: the first field of a header that does not fit."""


def is_model_header(header) -> bool:
    """True for what :meth:`xpcnn.Sequential.save` writes: an ``arch`` object (input shape, layers)."""
    return isinstance(header.get("arch"), dict)


def check_model_header(where, header, specs):
    """Raise CheckpointError naming ``where`` and the field when the header of a model checkpoint
    does not fit the schema, or the arrays ``specs`` ({name: (dtype, shape)}) are not those the
    architecture implies. Optional fields are checked when present."""
    try:
        _check_fields(header)
        expected = param_shapes(header["arch"])
        _check_arrays(expected, specs)
    except FieldError as bad:
        field, message = bad.args
        raise CheckpointError(f"{where}: the header's `{field}` {message}") from None


def _check_fields(h):
    _want(h.get("dtype") in ("float32", "float64"), "dtype", h.get("dtype"), "'float32' or 'float64'")
    if "seed" in h:
        _want(_is_int(h["seed"]) and 0 <= h["seed"] < 2**63, "seed", h["seed"], "an integer in 0..2**63-1")
    if "epoch" in h:
        _want(_is_int(h["epoch"]) and 0 <= h["epoch"] <= MAX_EPOCH, "epoch", h["epoch"],
              f"an integer in 0..{MAX_EPOCH}")
    if h.get("loss") is not None:
        _want(isinstance(h["loss"], str) and h["loss"] in LOSSES, "loss", h["loss"], f"one of {sorted(LOSSES)}")
    if h.get("history") is not None:
        hist = h["history"]
        _want(isinstance(hist, dict) and all(
            isinstance(v, list) and all(x is None or _is_number(x) for x in v) for v in hist.values()),
            "history", hist, "an object of lists of numbers")
    if h.get("optimizer") is not None:
        _check_optimizer(h["optimizer"])
    if "device" in h:
        _want(isinstance(h["device"], str), "device", h["device"], "a string")
    if h.get("extra") is not None:
        extra = h["extra"]
        _want(isinstance(extra, dict), "extra", extra, "an object")
        for key in ("preset", "dataset", "task"):
            if extra.get(key) is not None:
                _want(isinstance(extra[key], str), f"extra.{key}", extra[key], "a string")
        for key in ("batch_size", "train_size", "test_size"):
            if extra.get(key) is not None:
                _want(_is_int(extra[key]) and 1 <= extra[key] <= 2**31, f"extra.{key}", extra[key],
                      "a positive integer")


def _check_optimizer(opt):
    _want(isinstance(opt, dict) and isinstance(opt.get("config"), dict), "optimizer", opt,
          "an object with a `config` object")
    config = opt["config"]
    _want(isinstance(config.get("class"), str) and config["class"] in OPTIMIZERS, "optimizer.config.class",
          config.get("class"), f"one of {list(OPTIMIZERS)}")
    for key, value in config.items():
        if key != "class":
            _want(_is_number(value) or isinstance(value, bool), f"optimizer.config.{key}", value, "a number")
    try:
        optimizers.get(config)  # the constructor checks names and ranges; it allocates nothing
    except (InputError, TypeError, ValueError) as exc:
        raise FieldError("optimizer.config", f"does not describe an optimizer: {exc}") from None
    if "iterations" in opt:
        _want(_is_int(opt["iterations"]) and 0 <= opt["iterations"] < 2**63, "optimizer.iterations",
              opt["iterations"], "a non-negative integer")


def _check_arrays(expected, specs):
    for name, shape in expected.items():
        if name not in specs:
            raise FieldError("arrays", f"lacks {name!r}, which the architecture needs (shape {list(shape)})")
        dtype, stored = specs[name]
        if stored != shape:
            raise FieldError("arch", f"implies {name!r} of shape {list(shape)}, but the file stores {list(stored)}")
        if dtype.kind != "f":
            raise FieldError("arrays", f"gives {name!r} dtype {dtype}; expected floats")
    # optimizer/<slot>/<k>/<param>: k counts the layers that have weights, in order
    weighted = list(dict.fromkeys(name.split("/")[1] for name in expected))
    for name, (_, stored) in specs.items():
        if name.startswith("optimizer/"):
            parts = name.split("/")
            k = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() and int(parts[2]) < len(weighted) else None
            key = None if k is None else f"weights/{weighted[k]}/{parts[3]}"
            if expected.get(key) != stored:
                raise FieldError("arrays", f"holds optimizer state {name!r} of shape {list(stored)}, which matches no "
                                     "weight of the architecture")


def param_shapes(arch) -> dict[str, tuple[int, ...]]:
    """``{"weights/<layer>/<param>": shape}`` that ``arch`` (``Sequential.get_config()``) implies, in
    the model's order (kernel, then bias). Raises :class:`FieldError` (a ValueError) naming the field;
    :func:`check_model_header` turns it into a CheckpointError naming the file."""
    _want(isinstance(arch, dict), "arch", arch, "an object")
    shape = arch.get("input_shape")
    _want(isinstance(shape, list) and 1 <= len(shape) <= 3 and all(_is_int(s) and s >= 1 for s in shape),
          "arch.input_shape", shape, "a list of 1 to 3 positive integers")
    shape = tuple(shape)
    _want(math.prod(shape) <= MAX_ACTIVATION, "arch.input_shape", list(shape), f"at most {MAX_ACTIVATION} values")
    layers = arch.get("layers")
    _want(isinstance(layers, list) and 1 <= len(layers) <= MAX_LAYERS, "arch.layers", layers,
          f"a list of 1 to {MAX_LAYERS} layer configs")
    out = {}
    for i, config in enumerate(layers):
        field = f"arch.layers[{i}]"
        _want(isinstance(config, dict), field, config, "an object")
        try:
            shape = _layer(config, shape, i, out)
        except (InputError, TypeError, ValueError) as exc:
            raise FieldError(field, f"does not fit input {list(shape)}: {exc}") from None
        _want(math.prod(shape) <= MAX_ACTIVATION, field, config, f"an output of at most {MAX_ACTIVATION} values "
              f"per sample; it gives {list(shape)}")
    return out


def _layer(config, shape, i, out):
    """The layer's output shape for ``shape``, its weights' shapes added to ``out``: the layer
    itself is constructed (which checks its arguments) but never built."""
    layer = from_config(config)
    out.update({f"weights/{i}/{name}": s for name, s in layer.param_shapes(shape).items()})
    return tuple(layer.output_shape(shape))


def _want(ok, field, value, expected):
    if not ok:
        text = json.dumps(value) if not isinstance(value, (dict, list)) or len(json.dumps(value)) < 80 else \
            json.dumps(value)[:77] + "..."
        raise FieldError(field, f"must be {expected}; it is {text}")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
