"""Losses (averaged over the batch) and accuracy; each forward returns ``(loss, cache)`` and each
backward returns ∂E/∂(prediction) of that averaged loss.

Notation: N samples, K outputs (classes); O predictions, y targets.

squared_error (the tutorial's loss)
    E = (1/N) Σ_n Σ_k (y - O)² / 2                      ∂E/∂O = (O - y) / N
binary_cross_entropy (O are probabilities, clipped to [ε, 1-ε])
    E = -(1/N) Σ [y log O + (1-y) log(1-O)]             ∂E/∂O = (O - y) / (O (1-O)) / N
binary_cross_entropy_with_logits (stable for any z)
    E = (1/N) Σ [max(z, 0) - z y + log(1 + e^{-|z|})]    ∂E/∂z = (σ(z) - y) / N
softmax_cross_entropy (logits z (N, K), integer labels t (N,); stable log-sum-exp)
    E = (1/N) Σ_n [log Σ_k e^{z_nk} - z_{n,t_n}]        ∂E/∂z = (softmax(z) - onehot(t)) / N
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..errors import InputError, ShapeError
from ._checks import check_float_array, check_same_backend
from .activations import sigmoid, softmax


class ProbabilityCache(NamedTuple):
    """binary_cross_entropy: the clipped probabilities and the targets, as floats."""

    p: Any
    target: Any


class LogitCache(NamedTuple):
    """The *_with_logits and softmax losses: the logits and the (one-hot) targets, as floats."""

    logits: Any
    target: Any


def _check_pair(op, pred, target):
    xp = check_same_backend(op, pred, target)
    check_float_array(op, "prediction", pred)
    if tuple(pred.shape) != tuple(target.shape):
        raise ShapeError(
            f"{op}: prediction and target shapes differ. Received prediction.shape={tuple(pred.shape)}, "
            f"target.shape={tuple(target.shape)}."
        )
    return xp


def squared_error_forward(pred, target):
    xp = _check_pair("squared_error", pred, target)
    diff = pred - xp.astype(target, pred.dtype, copy=False)
    return xp.sum(diff * diff) / (2 * pred.shape[0]), diff


def squared_error_backward(diff):
    return diff / diff.shape[0]


def binary_cross_entropy_forward(pred, target, eps=1e-7):
    xp = _check_pair("binary_cross_entropy", pred, target)
    # minimum/maximum, not clip: array-api-compat's clip for CuPy indexes with boolean masks,
    # which synchronises the device twice a call.
    p = xp.minimum(xp.maximum(pred, eps), 1.0 - eps)
    t = xp.astype(target, pred.dtype, copy=False)
    loss = -xp.sum(t * xp.log(p) + (1.0 - t) * xp.log1p(-p)) / pred.shape[0]
    return loss, ProbabilityCache(p, t)


def binary_cross_entropy_backward(cache):
    p = cache.p
    return (p - cache.target) / (p * (1.0 - p)) / p.shape[0]


def binary_cross_entropy_with_logits_forward(logits, target):
    xp = _check_pair("binary_cross_entropy_with_logits", logits, target)
    t = xp.astype(target, logits.dtype, copy=False)
    z = logits
    loss = xp.sum(xp.maximum(z, xp.zeros_like(z)) - z * t + xp.log1p(xp.exp(-xp.abs(z)))) / z.shape[0]
    return loss, LogitCache(z, t)


def binary_cross_entropy_with_logits_backward(cache):
    return (sigmoid(cache.logits) - cache.target) / cache.logits.shape[0]


def one_hot(labels, num_classes, dtype):
    """(N,) integer labels -> (N, K) 0/1 array, by comparison (no fancy indexing)."""
    xp = array_namespace(labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=device_of(labels))
    return xp.astype(labels[:, None] == classes, dtype)


def softmax_cross_entropy_forward(logits, labels, *, check_range=False):
    """``check_range=True`` verifies 0 <= labels < K (a device sync; the model checks on the host)."""
    xp = check_same_backend("softmax_cross_entropy", logits, labels)
    check_float_array("softmax_cross_entropy", "logits", logits, ndim=2)
    n, k = logits.shape
    if labels.ndim != 1 or labels.shape[0] != n or not xp.isdtype(labels.dtype, "integral"):
        raise ShapeError(
            "softmax_cross_entropy: labels must be integers of shape "
            f"({n},). Received labels.shape={tuple(labels.shape)}, dtype {labels.dtype}."
        )
    if check_range and n and (int(xp.min(labels)) < 0 or int(xp.max(labels)) >= k):
        raise InputError(
            f"softmax_cross_entropy: labels must lie in [0, {k - 1}]. Received labels from "
            f"{int(xp.min(labels))} to {int(xp.max(labels))}."
        )
    m = xp.max(logits, axis=1, keepdims=True)
    shifted = logits - m
    lse = xp.log(xp.sum(xp.exp(shifted), axis=1))
    target = one_hot(labels, k, logits.dtype)
    loss = xp.sum(lse - xp.sum(shifted * target, axis=1)) / n
    return loss, LogitCache(logits, target)


def softmax_cross_entropy_backward(cache):
    return (softmax(cache.logits) - cache.target) / cache.logits.shape[0]


def accuracy(pred, target, *, threshold=0.5):
    """Fraction correct (a 0-d array). Multi-class: arg-max vs integer labels (or the arg-max of
    one-hot targets); one output: pred > threshold vs the 0/1 target."""
    xp = array_namespace(pred)
    if pred.ndim == 2 and pred.shape[1] > 1:
        labels = xp.argmax(target, axis=1) if target.ndim == 2 else xp.astype(target, xp.int64, copy=False)
        hits = xp.argmax(pred, axis=1) == labels
    else:
        hits = xp.astype(pred > threshold, xp.int64) == xp.astype(target, xp.int64)
    return xp.mean(xp.astype(hits, pred.dtype))


class Loss(NamedTuple):
    """A loss as the training loop uses it."""

    forward: Callable  #: ``(pred, target) -> (loss, cache)``: the batch mean, a 0-d array
    backward: Callable  #: ``(cache) -> ∂loss/∂pred``
    threshold: float  #: a single output counts as class 1 above this (accuracy); unused for several


LOSSES = {
    "squared_error": Loss(squared_error_forward, squared_error_backward, 0.5),
    "binary_cross_entropy": Loss(binary_cross_entropy_forward, binary_cross_entropy_backward, 0.5),
    "binary_cross_entropy_with_logits": Loss(binary_cross_entropy_with_logits_forward,
                                             binary_cross_entropy_with_logits_backward, 0.0),
    "softmax_cross_entropy": Loss(softmax_cross_entropy_forward, softmax_cross_entropy_backward, 0.5),
}
