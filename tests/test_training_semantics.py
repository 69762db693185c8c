"""What fit/evaluate/predict and the layers promise, against independent results: every sample
once per epoch in the documented order, sample-mean metrics for any batch size, predict over
every batch, dropout's rate and seeding, inference without dropout, layer settings through
save/load, optimizer state through .to()."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import layers as L
from xpcnn.backend import get_backend, to_numpy

CPU = get_backend("cpu")


def _dense_model(opt="sgd", **kw):
    m = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 2, 2), device="cpu", dtype="float64", seed=0)
    return m.compile(opt, loss="softmax_cross_entropy", **kw)


def _data(n=10):
    r = np.random.default_rng(3)
    return r.random((n, 1, 2, 2)), r.integers(0, 3, n)


def test_fit_visits_every_sample_once_per_epoch_in_the_documented_order(monkeypatch):
    x, y = _data(10)
    x[:, 0, 0, 0] = np.arange(10)  # each sample carries its index
    m = _dense_model()
    seen = []
    real = type(m).train_step

    def spy(self, xb, yb, *args, **kwargs):
        seen.append((to_numpy(xb)[:, 0, 0, 0].astype(int), to_numpy(yb)))
        return real(self, xb, yb, *args, **kwargs)

    monkeypatch.setattr(type(m), "train_step", spy)
    m.fit(x, y, batch_size=4, epochs=2, seed=7, verbose=0)
    assert [len(t) for t, _ in seen] == [4, 4, 2, 4, 4, 2] and m.optimizer.iterations == 6  # the last, partial, too
    for e in range(2):  # order: default_rng([seed, epoch]).permutation(n), labels with their images
        tags = np.concatenate([t for t, _ in seen[3 * e: 3 * e + 3]])
        np.testing.assert_array_equal(tags, np.random.default_rng([7, e]).permutation(10))
        np.testing.assert_array_equal(np.concatenate([lab for _, lab in seen[3 * e: 3 * e + 3]]), y[tags])


def test_epoch_loss_and_accuracy_are_sample_means():
    x, y = _data(10)
    m = _dense_model(learning_rate=1e-12)  # the weights barely move during the epoch
    before = m.evaluate(x, y, batch_size=256)
    h = m.fit(x, y, batch_size=4, epochs=1, verbose=0)  # batches of 4, 4, 2
    assert h["loss"][0] == pytest.approx(before["loss"], rel=1e-9)
    assert h["accuracy"][0] == pytest.approx(before["accuracy"])


def test_evaluate_is_the_sample_mean_for_any_batch_size():
    x, y = _data(10)
    m = _dense_model()
    z = m.predict(x)
    z = z - z.max(1, keepdims=True)
    want_loss = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(10), y])
    want_acc = np.mean(z.argmax(1) == y)
    for bs in (3, 4, 256):
        got = m.evaluate(x, y, batch_size=bs)
        assert got["loss"] == pytest.approx(want_loss, rel=1e-12) and got["accuracy"] == pytest.approx(want_acc)


def test_predict_covers_every_batch():
    x, _ = _data(10)
    m = _dense_model()
    whole = to_numpy(m.forward(CPU.asarray(x, "float64"), training=False))
    np.testing.assert_allclose(m.predict(x, batch_size=4), whole, rtol=1e-12)


def test_logit_model_accuracy_uses_zero_threshold():
    m = xpcnn.Sequential([L.Dense(1)], input_shape=(1,), device="cpu", dtype="float64")
    m.set_weights([np.zeros((1, 1)), np.array([0.3])])  # every logit is 0.3: class 1
    m.compile("sgd", loss="binary_cross_entropy_with_logits")
    assert m.evaluate(np.zeros((4, 1)), np.ones(4))["accuracy"] == 1.0


def test_dropout_is_the_identity_at_inference():
    layer = L.Dropout(0.5, seed=0)
    layer.build((6,), CPU, "float64")
    x = CPU.asarray(np.random.default_rng(0).random((4, 6)), "float64")
    np.testing.assert_array_equal(to_numpy(layer.forward(x, training=False)), to_numpy(x))
    with_d = xpcnn.Sequential([L.Flatten(), L.Dropout(0.5), L.Dense(3)], input_shape=(1, 4, 4), device="cpu",
                              dtype="float64", seed=0)
    without = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 4, 4), device="cpu", dtype="float64")
    without.set_weights(with_d.get_weights())
    for m in (with_d, without):
        m.compile("sgd", loss="softmax_cross_entropy")
    xs, ys = np.random.default_rng(1).random((8, 1, 4, 4)), np.arange(8) % 3
    np.testing.assert_array_equal(with_d.predict(xs), without.predict(xs))
    assert with_d.evaluate(xs, ys) == without.evaluate(xs, ys)


def test_dropout_drops_the_rate_and_keeps_the_mean():
    layer = L.Dropout(0.3, seed=0)
    layer.build((500,), CPU, "float64")
    y = to_numpy(layer.forward(CPU.asarray(np.ones((200, 500)), "float64"), training=True))
    assert abs(np.mean(y == 0) - 0.3) < 0.01  # rate is the fraction dropped
    assert abs(y.mean() - 1.0) < 0.02  # inverted dropout: the survivors are scaled by 1 / (1 - rate)
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.7])


def test_dropout_masks_are_seeded_per_step():
    m = xpcnn.Sequential([L.Flatten(), L.Dropout(0.5), L.Dense(2)], input_shape=(1, 2, 2), device="cpu")
    m.reseed_dropout(3, 1, 2)  # (seed, epoch, step): layer 1 draws from default_rng([3, 1, 2, 1])
    np.testing.assert_array_equal(m.layers[1].rng.random(5), np.random.default_rng([3, 1, 2, 1]).random(5))


def test_strides_and_dilation_survive_save_and_load(tmp_path):
    m = xpcnn.Sequential([L.Conv2D(2, 3, strides=2, dilation_rate=2), L.MaxPool2D(2, strides=1), L.Flatten(),
                          L.Dense(3)], input_shape=(1, 13, 13), device="cpu", seed=1)
    m.save(tmp_path / "m.npz")
    back = xpcnn.load(tmp_path / "m.npz", device="cpu")
    assert back.layers[0].strides == (2, 2) and back.layers[0].dilation_rate == (2, 2)
    assert back.layers[1].strides == (1, 1)
    x = np.random.default_rng(0).random((3, 1, 13, 13)).astype(np.float32)
    np.testing.assert_array_equal(back.predict(x), m.predict(x))


def test_to_keeps_the_optimizer_state():
    x, y = _data(10)
    m = _dense_model(opt="momentum")
    m.fit(x, y, batch_size=4, epochs=1, verbose=0)
    _, before = m.optimizer.get_state()
    before = {k: a.copy() for k, a in before.items()}
    m.to("cpu")
    _, after = m.optimizer.get_state()
    assert before and before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
