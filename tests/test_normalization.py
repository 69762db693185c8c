"""Batch standardization kernel: namespace/device/dtype/shape, forward vs a naive float64 loop,
backward vs central differences in float64 (relative error <= 1e-6), on every backend of ``case``."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import check_gradients

import xpcnn.functional as F

SHAPES = [(5, 3), (4, 2, 3, 3), (3, 1)]


def naive_standardize(x, eps):
    """Feature by feature, with the batch's mean and (biased) variance written out."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(x.shape[0], -1)
    out = np.empty_like(flat)
    n = flat.shape[0]
    for j in range(flat.shape[1]):
        col = flat[:, j]
        mu = sum(col) / n
        var = sum((v - mu) ** 2 for v in col) / n
        out[:, j] = [(v - mu) / (var + eps) ** 0.5 for v in col]
    return out.reshape(x.shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_standardize_forward_matches_naive_loops(case, rng, shape):
    x = rng.standard_normal(shape) * 3 + 1
    y, _ = F.batch_standardize_forward(case.asarray(x), epsilon=1e-5)
    want = naive_standardize(x, 1e-5)
    np.testing.assert_allclose(case.check(y, shape), want, rtol=case.rtol() * 10, atol=case.rtol() * 10)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_standardize_backward_matches_finite_differences(case, rng, shape):
    x = rng.standard_normal(shape)
    check_gradients(case, F.batch_standardize_forward, F.batch_standardize_backward, [x], rng)


def test_batch_standardize_does_not_mutate_and_keeps_a_constant_feature_finite(case, rng):
    x0 = np.concatenate([rng.standard_normal((4, 1)), np.full((4, 1), 2.5)], axis=1)
    x = case.asarray(x0)
    y, cache = F.batch_standardize_forward(x)
    dx = case.check(F.batch_standardize_backward(case.xp.ones_like(y), cache), (4, 2))
    np.testing.assert_array_equal(case.check(x, (4, 2)), x0.astype(case.dtype))
    assert np.all(case.check(y, (4, 2))[:, 1] == 0) and np.all(np.isfinite(dx))


def test_batch_standardize_refuses_integers(case):
    with pytest.raises(TypeError, match="floating-point"):
        F.batch_standardize_forward(case.backend.asarray(np.ones((2, 3)), "int64"))
