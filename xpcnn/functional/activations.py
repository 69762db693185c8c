"""Elementwise activations and softmax, forward and backward side by side.

Each ``*_forward(x)`` returns ``(y, cache)`` and each ``*_backward(dy, cache)`` returns
∂E/∂x = dy · ∂y/∂x. Backward passes reuse the forward output where the derivative is a function
of it, so nothing is recomputed.

    sigmoid  σ(x) = 1 / (1 + e^{-x})        ∂σ/∂x = σ (1 - σ)
    relu     max(x, 0)                      ∂/∂x = 1 where x > 0, else 0  (dy · [y > 0], as a
                                            multiplication: no data-dependent ``where``)
    tanh     tanh(x)                        ∂/∂x = 1 - tanh²
    softmax  s_k = e^{x_k} / Σ_j e^{x_j}    ∂E/∂x_k = s_k (dy_k - Σ_j dy_j s_j)   (last axis)
"""

from __future__ import annotations

from array_api_compat import array_namespace

from ._checks import check_float_array


def sigmoid(x):
    """σ(x) without overflow and without a branch: σ(x) = e^{min(x, 0)} / (1 + e^{-|x|}).

    For x >= 0 that is 1 / (1 + e^{-x}), for x < 0 it is e^{x} / (1 + e^{x}); neither exponent is
    ever positive, so nothing overflows (σ(±inf) = 1 or 0), and both tails keep full relative
    precision. (A ``where`` over the two branches computes the same, but NumPy's ``where`` on an
    unpredictable mask costs more than both exponentials together.)
    """
    xp = array_namespace(x)
    return xp.exp(xp.minimum(x, 0.0)) / (1.0 + xp.exp(-xp.abs(x)))


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
