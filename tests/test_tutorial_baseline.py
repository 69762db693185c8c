"""The loop baseline in scripts/tutorial_loops.py computes what it claims to (forward pass).

The oracle is independent of the script: one ``np.einsum`` over ``sliding_window_view``.
Only a few images are used, so the loops finish in well under a second.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "tutorial_loops.py"


@pytest.fixture(scope="module")
def tutorial():
    spec = importlib.util.spec_from_file_location("tutorial_loops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _case(seed, n=3, n_filters=3, k=5, size=28):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, size, size))
    filters = rng.normal(size=(n_filters, k, k)) * 0.2
    out = size - k + 1
    # Small weights keep the output sigmoid away from saturation, so values are informative.
    weights = rng.normal(size=(n_filters * out * out, 1)) * 0.05
    targets = (rng.uniform(size=n) > 0.5).astype(np.float64)
    return images, targets, filters, weights


def _oracle_forward(images, filters, weights, standardize):
    k = filters.shape[1]
    windows = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(1, 2))
    conv = np.einsum("nhwij,fij->nfhw", windows, filters)  # (N, F, OH, OW)
    a1 = 1.0 / (1.0 + np.exp(-conv.reshape(len(images), -1)))
    z2 = a1 @ weights[:, 0]
    if standardize:
        z2 = (z2 - z2.mean()) / z2.std()
    return a1, z2, 1.0 / (1.0 + np.exp(-z2))


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_matches_einsum_oracle(tutorial, seed, standardize):
    images, _, filters, weights = _case(seed)
    got = tutorial.tutorial_forward(images, filters, weights, standardize=standardize)
    want = _oracle_forward(images, filters, weights, standardize)
    for name, g, w in zip(("a1", "z2", "out"), got, want):
        assert g.dtype == np.float64, name
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=name)


def test_one_iteration_runs_and_updates(tutorial):
    images, targets, filters, weights = _case(2)
    filters_in, weights_in = filters.copy(), weights.copy()
    new_f, new_w, loss = tutorial.tutorial_iteration(images, targets, filters, weights, 0.1)

    assert isinstance(loss, float) and np.isfinite(loss)
    assert new_f.shape == filters.shape and new_w.shape == weights.shape
    assert np.all(np.isfinite(new_f)) and np.all(np.isfinite(new_w))
    assert not np.array_equal(new_f, filters) and not np.array_equal(new_w, weights)
    np.testing.assert_array_equal(filters, filters_in)  # inputs untouched
    np.testing.assert_array_equal(weights, weights_in)

    # The loss is E = (t - O)² / 2 averaged over images, before the update; the dense step is
    # the exact full-batch gradient (that part of the tutorial is right).
    a1, _, out = _oracle_forward(images, filters, weights, standardize=False)
    np.testing.assert_allclose(loss, np.mean((targets - out) ** 2 / 2), rtol=1e-10)
    delta = -(targets - out) * out * (1 - out)
    np.testing.assert_allclose(new_w, weights - 0.1 * (a1.T @ delta)[:, None],
                               rtol=1e-10, atol=1e-12)


def test_rejects_mismatched_targets(tutorial):
    images, targets, filters, weights = _case(3)
    with pytest.raises(ValueError, match="targets"):
        tutorial.tutorial_iteration(images, targets[:2], filters, weights, 0.1)
