"""Data parallelism inside one process (``fit(threads=N)``): the same training as one thread to
float rounding, bit-identical run to run, collectives in a fixed order, failures that stop every
thread, and clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xpcnn
from xpcnn import layers as L
from xpcnn.backend import Backend
from xpcnn.parallel import LOCAL
from xpcnn.parallel.threads import ThreadGroup, run_ranks
from xpcnn.presets import PRESETS, build_model
from xpcnn.training import MIN_SHARD_MACS, auto_threads, resolve_threads


def _model(dtype="float64", optimizer="adam", dropout=False):
    layers = [L.Conv2D(4, 3, padding="same", activation="relu"), L.MaxPool2D(2), L.Flatten()]
    layers += [L.Dropout(0.25)] if dropout else []
    layers += [L.Dense(8, activation="tanh"), L.Dense(3)]
    return xpcnn.Sequential(layers, input_shape=(1, 8, 8), dtype=dtype, seed=3).compile(
        optimizer, loss="softmax_cross_entropy")


def _data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8))
    return x, (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64) + (x[:, 0, 0, 0] > .9)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_threads_train_the_same_weights_as_one_thread(threads, optimizer):
    x, y = _data()
    one, many = _model(optimizer=optimizer), _model(optimizer=optimizer)
    h1 = one.fit(x, y, batch_size=64, epochs=2, verbose=0, threads=1, validation_data=(x[:40], y[:40]))
    hn = many.fit(x, y, batch_size=64, epochs=2, verbose=0, threads=threads, validation_data=(x[:40], y[:40]))
    for a, b in zip(one.get_weights(), many.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)  # float64: only the order of the sums differs
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1[key], hn[key], rtol=1e-10)
    assert many.epoch == 2 and many.optimizer.iterations == one.optimizer.iterations == 6
    assert len(many.history["loss"]) == 2


def test_threads_are_bit_identical_run_to_run_in_float32():
    x, y = _data(200, seed=1)
    runs = []
    for _ in range(2):
        m = _model("float32", dropout=True)
        m.fit(x.astype(np.float32), y, batch_size=96, epochs=2, verbose=0, threads=2)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_a_threaded_fit_can_be_continued_by_one_thread():
    x, y = _data()
    straight, split = _model(), _model()
    straight.fit(x, y, batch_size=50, epochs=2, verbose=0, threads=1)
    split.fit(x, y, batch_size=50, epochs=1, verbose=0, threads=2)
    split.fit(x, y, batch_size=50, epochs=1, verbose=0, threads=1)  # optimizer state carried over from rank 0
    for a, b in zip(straight.get_weights(), split.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_callbacks_and_progress_run_once_per_epoch_on_rank_0():
    x, y = _data()
    calls = []
    _model().fit(x, y, batch_size=64, epochs=2, verbose=0, threads=2,
                 callbacks=[lambda m, e, logs: calls.append((threading.current_thread().name, e))])
    assert calls == [(threading.main_thread().name, 0), (threading.main_thread().name, 1)]


def test_a_nan_loss_stops_every_thread_with_the_step_named():
    x, y = _data()
    m = _model("float32", optimizer="sgd")
    m.optimizer.learning_rate = 1e30
    with pytest.raises(xpcnn.NonFiniteLossError, match="epoch 1"):
        m.fit(x.astype(np.float32), y, batch_size=64, epochs=3, verbose=0, threads=2)
    assert not [t for t in threading.enumerate() if t.name.startswith("xpcnn-rank")]  # none left behind


def test_an_error_in_a_worker_thread_reaches_the_caller():
    group = ThreadGroup(3)

    def worker(comm):
        if comm.rank == 2:
            raise ValueError("rank 2 broke")
        comm.barrier()  # would wait forever for rank 2 without the abort
        return comm.rank

    with pytest.raises(ValueError, match="rank 2 broke"):
        run_ranks(group, [lambda c=c: worker(c) for c in group.communicators()])


def test_thread_collectives_sum_in_rank_order_and_broadcast_rank_0():
    group = ThreadGroup(3)

    def rank(comm):
        total = comm.allreduce_sum([comm.rank, 1.0])
        top = comm.allreduce_max([comm.rank, -comm.rank])
        layer = L.Dense(2, seed=comm.rank)
        layer.build((3,), xpcnn.get_backend("cpu"), "float64", comm.rank)
        comm.broadcast_parameters([layer])
        comm.check_same(7, "a number")
        return total.tolist(), top.tolist(), layer.get_weights()[0]

    out = run_ranks(group, [lambda c=c: rank(c) for c in group.communicators()])
    assert [o[0] for o in out] == [[3.0, 3.0]] * 3 and [o[1] for o in out] == [[2.0, 0.0]] * 3
    for _, _, w in out:
        np.testing.assert_array_equal(w, out[0][2])
    with pytest.raises(xpcnn.InputError, match="disagree on the rank"):
        group = ThreadGroup(2)
        run_ranks(group, [lambda c=c: c.check_same(c.rank, "the rank") for c in group.communicators()])


def test_default_threads_follow_cores_work_per_shard_device_and_layers(monkeypatch):
    import xpcnn.training as training

    monkeypatch.setattr(training, "usable_cores", lambda: 4)
    lenet = build_model(PRESETS["lenet"])
    assert lenet.multiply_adds() == 416_520  # conv 117,600 + conv 240,000 + dense 48,000 + 10,080 + 840
    shard = -(-MIN_SHARD_MACS // 416_520)  # 61 images of LeNet-5
    assert resolve_threads(None, lenet, 8 * shard) == 4
    assert resolve_threads(None, lenet, 2 * shard) == 2
    assert resolve_threads(None, lenet, 2 * shard - 1) == 1
    assert resolve_threads(None, lenet, 1000, LOCAL) == 4
    assert resolve_threads(3, lenet, 10) == 3  # given: taken as given
    tiny = _model()  # 2,840 multiply-adds a sample: no batch here is worth splitting
    assert resolve_threads(None, tiny, 1000) == 1
    assert auto_threads(tiny, 10**5, 4) == 4
    other = _model()
    other.backend = Backend("strict", other.backend.xp, "cpu")
    assert resolve_threads(None, other, 10**6) == 1
    with pytest.raises(xpcnn.InputError, match="threads=2 runs shards of each batch in threads of the CPU"):
        resolve_threads(2, other, 1000)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(xpcnn.InputError, match="The `threads` argument"):
            resolve_threads(bad, lenet, 1000)
    coupled = build_model(PRESETS["tutorial-faithful"])  # BatchStandardize: statistics over the batch
    assert resolve_threads(None, coupled, 10**6) == 1
    with pytest.raises(xpcnn.InputError, match="layer 'batchstandardize' .* over the whole batch"):
        resolve_threads(2, coupled, 200)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_evaluate_and_predict_equal_one_thread(threads):
    x, y = _data(203)
    m = _model()
    m.fit(x, y, batch_size=64, epochs=1, verbose=0, threads=1)
    np.testing.assert_allclose(m.predict(x, batch_size=50, threads=threads), m.predict(x, batch_size=50, threads=1),
                               rtol=1e-12)
    one, many = m.evaluate(x, y, batch_size=50, threads=1), m.evaluate(x, y, batch_size=50, threads=threads)
    assert many["accuracy"] == one["accuracy"] and many["loss"] == pytest.approx(one["loss"], rel=1e-12)
    assert m.predict(x[:1], threads=threads).shape == (1, 3)  # fewer samples than threads: fine


def test_more_threads_than_samples_in_a_batch_is_refused():
    x, y = _data(20)
    with pytest.raises(xpcnn.InputError, match="batch size 2 is smaller than the 3 ranks"):
        _model().fit(x, y, batch_size=2, epochs=1, verbose=0, threads=3)


def test_fit_called_again_with_threads_continues_the_optimizer_state_exactly():
    # The replicas copy the model's momentum; they must not alias it (rank 0 updates it in place).
    x, y = _data()
    once, twice = _model(optimizer="momentum"), _model(optimizer="momentum")
    once.fit(x, y, batch_size=64, epochs=2, verbose=0, threads=2, shuffle=False)
    for _ in range(2):
        twice.fit(x, y, batch_size=64, epochs=1, verbose=0, threads=2, shuffle=False)
    for a, b in zip(once.get_weights(), twice.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_dropout_shards_take_their_rows_of_the_batchs_masks():
    x, y = _data()
    one, many = _model(dropout=True), _model(dropout=True)
    one.fit(x, y, batch_size=64, epochs=2, verbose=0, threads=1)
    many.fit(x, y, batch_size=64, epochs=2, verbose=0, threads=2)
    for a, b in zip(one.get_weights(), many.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_what_a_callback_changes_on_rank_0_reaches_every_thread():
    x, y = _data()

    def slow_down(model, epoch, logs):
        model.optimizer.learning_rate *= 0.1

    one, many = _model(), _model()
    one.fit(x, y, batch_size=64, epochs=3, verbose=0, threads=1, callbacks=[slow_down])
    many.fit(x, y, batch_size=64, epochs=3, verbose=0, threads=2, callbacks=[slow_down])
    for a, b in zip(one.get_weights(), many.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
