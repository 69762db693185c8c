"""Elementwise activations and softmax, forward and backward side by side.

Each ``*_forward(x)`` returns ``(y, cache)`` and each ``*_backward(dy, cache)`` returns
∂E/∂x = dy · ∂y/∂x. Backward passes reuse the forward output where the derivative is a function
of it, so nothing is recomputed.

    sigmoid  σ(x) = 1 / (1 + e^{-x})        ∂σ/∂x = σ (1 - σ)
    relu     max(x, 0)                      ∂/∂x = 1 where x > 0, else 0
    tanh     tanh(x)                        ∂/∂x = 1 - tanh²
    softmax  s_k = e^{x_k} / Σ_j e^{x_j}    ∂E/∂x_k = s_k (dy_k - Σ_j dy_j s_j)   (last axis)
"""

from __future__ import annotations

from array_api_compat import array_namespace

from ._checks import check_float_array


def sigmoid(x):
    """σ(x) without overflow: e^{-|x|} never overflows, then pick the stable branch by sign."""
    xp = array_namespace(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_forward(x):
    check_float_array("sigmoid", "x", x)
    y = sigmoid(x)
    return y, y


def sigmoid_backward(dy, y):
    return dy * (y * (1.0 - y))


def relu_forward(x):
    check_float_array("relu", "x", x)
    xp = array_namespace(x)
    y = xp.maximum(x, 0.0)
    return y, y


def relu_backward(dy, y):
    xp = array_namespace(dy)
    return dy * xp.astype(y > 0, dy.dtype)


def tanh_forward(x):
    check_float_array("tanh", "x", x)
    y = array_namespace(x).tanh(x)
    return y, y


def tanh_backward(dy, y):
    return dy * (1.0 - y * y)


def softmax(x, axis=-1):
    """Numerically stable softmax: subtracting the row max changes nothing mathematically."""
    xp = array_namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_forward(x):
    check_float_array("softmax", "x", x)
    y = softmax(x)
    return y, y


def softmax_backward(dy, y):
    xp = array_namespace(dy)
    return y * (dy - xp.sum(dy * y, axis=-1, keepdims=True))


ACTIVATIONS = {
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "softmax": (softmax_forward, softmax_backward),
}
