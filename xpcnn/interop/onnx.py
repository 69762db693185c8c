"""Export a :class:`~xpcnn.model.Sequential` as an ONNX graph of its inference network.

The graph is built with the ``onnx`` package (``pip install 'xpcnn[onnx]'``): opset 17, float32,
NCHW as xpcnn, one input ``"input"`` of shape (batch, *input_shape) and one output ``"output"``,
the batch dimension dynamic (``"batch"``); height and width are those the model was built for.

=====================================  ===========================================================
xpcnn                                  ONNX
=====================================  ===========================================================
Conv2D (strides, dilation, padding)    Conv with explicit ``pads`` [PT, PL, PB, PR] (so "same"
                                       keeps the odd extra zero at the bottom/right, as xpcnn and
                                       Keras do), then the fused activation
MaxPool2D / AveragePooling2D           MaxPool / AveragePool, no padding, floor rounding
Dense                                  Gemm (kernel (in, out) as B, bias as C), then activation
Flatten                                Flatten(axis=1): C order, as xpcnn
Dropout                                Identity (inference)
Sigmoid, ReLU, Tanh, Softmax           Sigmoid, Relu, Tanh, Softmax(axis=-1) (xpcnn's last axis)
BatchStandardize                       ReduceMean over axis 0 (the batch), as xpcnn computes it:
                                       (x - μ) / sqrt(mean((x - μ)²) + ε)
=====================================  ===========================================================

BatchStandardize is exported faithfully: like xpcnn, the graph standardizes each feature over
the batch it is given, so an output depends on the other images run with it (and a batch of one
gives 0, before the sigmoid that follows it). ONNX Runtime and ``model.predict`` agree when they
see the same batches (``predict`` runs batches of ``batch_size=256``).

Examples
--------
>>> import xpcnn
>>> m = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 2, 2))
>>> proto = m.to_onnx()          # doctest: +SKIP
>>> [n.op_type for n in proto.graph.node]   # doctest: +SKIP
['Flatten', 'Gemm']
"""

from __future__ import annotations

import numpy as np

from .._version import __version__
from ..errors import InputError
from ..functional.conv import resolve_padding
from ..layers import Activation
from . import layer_error, require, write_atomically

OPSET = 17
IR_VERSION = 8  # the IR of opset 17: readable by every ONNX Runtime since 1.13
_ACTIVATIONS = {"sigmoid": "Sigmoid", "relu": "Relu", "tanh": "Tanh", "softmax": "Softmax"}


class _Graph:
    """Nodes and initializers in the order the layers add them; tensor names are unique."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers = onnx, [], []

    def const(self, name, array):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op, inputs, name, **attrs):
        out = f"{name}/{op}:{len(self.nodes)}"  # node and tensor share the name: both unique
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def activation(self, act, x, name):
        if act is None:
            return x
        return self.node(_ACTIVATIONS[act], [x], name, **({"axis": -1} if act == "softmax" else {}))


def _conv(g, layer, x, shape):
    kernel, *bias = layer.get_weights()
    n = layer.name
    inputs = [x, g.const(f"{n}/kernel", kernel)] + ([g.const(f"{n}/bias", bias[0])] if bias else [])
    (pt, pb), (pl, pr) = resolve_padding(layer.padding, shape[1:], layer.kernel_size, layer.strides,
                                         layer.dilation_rate)
    y = g.node("Conv", inputs, n, kernel_shape=list(layer.kernel_size), strides=list(layer.strides),
               dilations=list(layer.dilation_rate), pads=[pt, pl, pb, pr])
    return g.activation(layer.activation, y, n)


def _dense(g, layer, x, shape):
    kernel, *bias = layer.get_weights()
    n = layer.name
    inputs = [x, g.const(f"{n}/kernel", kernel)] + ([g.const(f"{n}/bias", bias[0])] if bias else [])
    return g.activation(layer.activation, g.node("Gemm", inputs, n), n)


def _pool(op):
    def emit(g, layer, x, shape):
        return g.node(op, [x], layer.name, kernel_shape=list(layer.pool_size), strides=list(layer.strides))

    return emit


def _batch_standardize(g, layer, x, shape):
    n = layer.name
    mean = g.node("ReduceMean", [x], n, axes=[0], keepdims=1)
    centred = g.node("Sub", [x, mean], n)
    var = g.node("ReduceMean", [g.node("Mul", [centred, centred], n)], n, axes=[0], keepdims=1)
    sigma = g.node("Sqrt", [g.node("Add", [var, g.const(f"{n}/epsilon", layer.epsilon)], n)], n)
    return g.node("Div", [centred, sigma], n)


_EMIT = {
    "Conv2D": _conv,
    "Dense": _dense,
    "MaxPool2D": _pool("MaxPool"),
    "AveragePooling2D": _pool("AveragePool"),
    "Flatten": lambda g, layer, x, shape: g.node("Flatten", [x], layer.name, axis=1),
    "Dropout": lambda g, layer, x, shape: g.node("Identity", [x], layer.name),
    "BatchStandardize": _batch_standardize,
}


def _emitter(layer):
    kind = type(layer).__name__
    if kind in _EMIT:
        return _EMIT[kind]
    if isinstance(layer, Activation):  # Sigmoid, ReLU, Tanh, Softmax are Activations too
        return lambda g, layer, x, shape: g.activation(layer.activation, x, layer.name)
    raise layer_error(layer, "exported to ONNX", f"no ONNX mapping for {kind} (a layer class from outside "
                      f"xpcnn.layers?); expected one of {sorted(_EMIT)} or an Activation.")


def to_onnx(model, path=None):
    """The ONNX ``ModelProto`` of ``model``'s inference network; also written to ``path`` if given.

    Parameters
    ----------
    model : xpcnn.Sequential
        A built model (float32 or float64; the graph is float32).
    path : str or Path, optional
        Where to write the ``.onnx`` file (atomically; an existing file is replaced).

    Raises
    ------
    InputError
        The ``onnx`` package is missing, the model is not built, or a layer has no ONNX mapping.
    """
    onnx = require("onnx", "onnx")
    if not model.built:
        raise InputError("Cannot export a model that is not built: give input_shape or train it first.")
    g, x, shape = _Graph(onnx), "input", tuple(model.input_shape)
    for layer in model.layers:
        x = _emitter(layer)(g, layer, x, shape)
        shape = layer.output_shape(shape)
    g.nodes[-1].output[0] = "output"  # every layer adds at least one node: the last one's result
    floats = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, model.name, [onnx.helper.make_tensor_value_info("input", floats, ["batch", *model.input_shape])],
        [onnx.helper.make_tensor_value_info("output", floats, ["batch", *model.output_shape])], g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="xpcnn", producer_version=__version__)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        write_atomically(path, lambda tmp: onnx.save(proto, tmp))
    return proto
