"""Sequential end to end: gradients of a whole network, training, determinism, save/load,
resume, the non-finite-loss guard, bad input — and one real-MNIST run."""

from __future__ import annotations

import numpy as np
import pytest

import xpcnn
from xpcnn import layers as L
from xpcnn.diagnostics.gradcheck import gradcheck
from xpcnn.errors import CheckpointError, InputError, ShapeError


def small_net(case, dtype=None, dropout=False, **kw):
    layers = [L.Conv2D(3, 3, padding="same", activation="relu"), L.MaxPool2D(2), L.Conv2D(4, 2, activation="tanh"),
              L.AveragePooling2D(2), L.Flatten()]
    layers += [L.Dropout(0.3)] if dropout else []
    layers += [L.Dense(6, activation="sigmoid"), L.Dense(3)]
    return xpcnn.Sequential(layers, input_shape=(1, 8, 8), device=case.backend, dtype=dtype or case.dtype, **kw)


def toy_data(rng, n=48):
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) * 3 > 1.5).astype(np.int64) + (x[:, 0, 4:].mean(axis=(1, 2)) > 0.5)
    return x, y.astype(np.int64)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "squared_error"])
def test_whole_network_gradients(case, rng, loss):
    model = small_net(case, "float64", dropout=True)
    model.compile("sgd", loss=loss)
    x = case.backend.asarray(rng.standard_normal((3, 1, 8, 8)), "float64")
    y = (case.backend.asarray(rng.integers(0, 3, 3), "int64") if loss == "softmax_cross_entropy"
         else case.backend.asarray(rng.random((3, 3)), "float64"))
    rows = gradcheck(model, x, y, entries=6)
    assert len(rows) == 8
    assert all(r.ok for r in rows), [(r.layer, r.param, r.rel_error) for r in rows]


def test_fit_learns_and_keeps_everything_on_the_device(case, rng):
    x, y = toy_data(rng)
    model = small_net(case, seed=3).compile("adam", loss="softmax_cross_entropy", learning_rate=0.01)
    before = model.evaluate(x, y)["loss"]
    hist = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    assert hist["loss"][-1] < hist["loss"][0] and model.evaluate(x, y)["loss"] < before
    for _, _, p in model.parameters():
        assert case.backend.owns(p) and p.dtype == case.backend.dtype(case.dtype)
    assert model.predict(x[:5]).shape == (5, 3) and model.epoch == 6


def test_same_seed_same_run_different_seed_different_run(case, rng):
    x, y = toy_data(rng)

    def run(seed):
        m = small_net(case, seed=seed, dropout=True)
        m.compile("momentum", loss="softmax_cross_entropy", learning_rate=0.05)
        m.fit(x, y, batch_size=16, epochs=2, verbose=0)
        return m.get_weights()

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_initial_weights_identical_across_devices(case):
    cpu = small_net(type(case)(xpcnn.get_backend("cpu"), case.dtype), seed=11)
    here = small_net(case, seed=11)
    assert all(np.array_equal(u, v) for u, v in zip(cpu.get_weights(), here.get_weights()))


def test_save_load_and_resume_bit_exact(case, rng, tmp_path):
    x, y = toy_data(rng)
    straight = small_net(case, seed=5, dropout=True).compile("adam", loss="softmax_cross_entropy", learning_rate=0.01)
    straight.fit(x, y, batch_size=16, epochs=3, verbose=0)

    first = small_net(case, seed=5, dropout=True).compile("adam", loss="softmax_cross_entropy", learning_rate=0.01)
    first.fit(x, y, batch_size=16, epochs=1, verbose=0)
    first.save(tmp_path / "m.npz")
    resumed = xpcnn.load(tmp_path / "m.npz", device=case.backend)
    assert resumed.epoch == 1 and resumed.optimizer.iterations == 3
    resumed.fit(x, y, batch_size=16, epochs=3, initial_epoch=resumed.epoch, verbose=0)  # as `xpcnn train --resume`
    for u, v in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert resumed.history["loss"] == pytest.approx(straight.history["loss"])


def test_model_saved_anywhere_loads_on_cpu(case, rng, tmp_path):
    model = small_net(case, seed=2).compile("sgd", loss="softmax_cross_entropy")
    model.save(tmp_path / "m.npz")
    cpu = xpcnn.load(tmp_path / "m.npz", device="cpu")
    x = rng.random((4, 1, 8, 8)).astype(case.dtype)
    np.testing.assert_allclose(cpu.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)


def test_loading_into_another_architecture_is_refused(case, tmp_path):
    small_net(case).save(tmp_path / "m.npz")
    other = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 8, 8))
    with pytest.raises(CheckpointError, match="arch"):
        xpcnn.Sequential.load(tmp_path / "m.npz", expected_arch=other.get_config())


def test_exploding_loss_stops_with_epoch_and_step(case, rng):
    x, y = toy_data(rng)
    model = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 8, 8), device=case.backend, dtype=case.dtype)
    model.compile(xpcnn.SGD(1e6), loss="squared_error")
    onehot = np.eye(3, dtype=np.float32)[y]
    with pytest.raises(xpcnn.NonFiniteLossError, match=r"epoch \d+, step \d+") as err:
        model.fit(x, onehot, batch_size=8, epochs=20, verbose=0)
    assert err.value.step >= 1 and model.epoch == err.value.epoch


def test_to_moves_weights_and_optimizer_state(case, rng):
    x, y = toy_data(rng)
    m = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 8, 8), device="cpu", dtype=case.dtype)
    m.compile("momentum", loss="softmax_cross_entropy").fit(x, y, epochs=1, verbose=0)
    before = m.get_weights()
    m.to(case.backend)
    assert all(case.backend.owns(p) for _, _, p in m.parameters())
    assert all(np.array_equal(a, b) for a, b in zip(before, m.get_weights()))
    m.fit(x, y, epochs=2, verbose=0)


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda x, y: (x[:, :, :7], y), ShapeError, r"expects inputs of shape \(N, 1, 8, 8\)"),
        (lambda x, y: (x[:0], y[:0]), InputError, "empty"),
        (lambda x, y: (np.where(x > 0.99, np.nan, x), y), InputError, "NaN or infinite"),
        (lambda x, y: (x, y + 5), InputError, r"Labels must lie in \[0, 2\]"),
        (lambda x, y: (x, y[:-1]), ShapeError, "samples but y has"),
        (lambda x, y: (x, y.astype(np.float32) + 0.5), InputError, "integer class labels"),
        (lambda x, y: (x.astype(object), y), InputError, "must hold numbers"),
    ],
)
def test_bad_training_input(case, rng, bad, error, match):
    x, y = toy_data(rng)
    model = small_net(case).compile("sgd", loss="softmax_cross_entropy")
    with pytest.raises(error, match=match):
        model.fit(*bad(x, y), verbose=0)


def test_device_labels_are_refused_like_device_images(case, rng):
    # fit takes host data and moves it once; labels already on a device (a CuPy array, which
    # NumPy will not convert implicitly) get the same clear message as images there.
    x, y = toy_data(rng)
    model = small_net(case).compile("sgd", loss="softmax_cross_entropy")
    if case.backend.name == "cpu":  # NumPy labels are host labels
        model.fit(x, case.backend.asarray(y), epochs=1, verbose=0)
    else:
        with pytest.raises(InputError, match=r"y must be a NumPy array \(or a list\) on the host, like x. Received"):
            model.fit(x, case.backend.asarray(y), verbose=0)
    model.fit(x, y.tolist(), epochs=1, verbose=0)  # a list is host data


@pytest.mark.parametrize("kw, match", [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size")])
def test_bad_fit_arguments(case, rng, kw, match):
    x, y = toy_data(rng)
    with pytest.raises(InputError, match=match):
        small_net(case).compile("sgd", loss="softmax_cross_entropy").fit(x, y, verbose=0, **kw)


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_learning_rates_are_refused(lr):
    with pytest.raises(InputError, match="learning_rate"):
        xpcnn.SGD(lr)
    with pytest.raises(InputError, match="learning_rate"):
        xpcnn.Adam(lr)


def test_summary_lists_layers_and_parameters(case):
    text = small_net(case).summary(print_fn=None)
    assert "conv2d_1 (Conv2D)" in text and "(None, 3, 8, 8)" in text
    assert f"Total params: {small_net(case).count_params():,}" in text


def test_lenet_learns_real_mnist(mnist_dir):
    """LeNet-style, 2,000 real training images -> >= 95% on 1,000 held-out test images, CPU."""
    from xpcnn.data import load_dataset, prepare_images

    ds = load_dataset("mnist", mnist_dir, download=False, progress=False)
    x, y = prepare_images(ds.x_train[:2000]), ds.y_train[:2000]
    xt, yt = prepare_images(ds.x_test[:1000]), ds.y_test[:1000]
    model = xpcnn.Sequential(
        [L.Conv2D(16, 5, padding="same", activation="relu"), L.MaxPool2D(), L.Conv2D(32, 5, activation="relu"),
         L.MaxPool2D(), L.Flatten(), L.Dropout(0.5), L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(10)],
        input_shape=(1, 28, 28), device="cpu", seed=0)
    model.compile("adam", loss="softmax_cross_entropy", learning_rate=1e-3)
    model.fit(x, y, batch_size=16, epochs=12, verbose=0)  # ~13 s on an idle 2-core machine
    acc = model.evaluate(xt, yt)["accuracy"]
    print(f"LeNet on 2,000 MNIST images: test accuracy {acc:.4f}")
    assert acc >= 0.95  # speed is measured by scripts/bench.py, not asserted on a shared machine


def test_a_training_step_never_reads_back_to_the_host(monkeypatch, rng):
    """No silent device->host transfer (or sync) inside a step: every way an array-api-strict array
    can reach the host raises while the step runs, on the simulated second device."""
    import array_api_strict as xps

    from xpcnn.backend import Backend

    be = Backend("strict", xps, xps.Device("device1"))
    model = xpcnn.Sequential([L.Conv2D(3, 3, padding="same", activation="relu"), L.MaxPool2D(), L.Flatten(),
                              L.Dense(5, activation="tanh"), L.Dense(3)], input_shape=(1, 8, 8), device=be)
    model.compile("adam", loss="softmax_cross_entropy")
    xb = be.asarray(rng.random((4, 1, 8, 8)), "float32")
    yb = be.asarray(np.array([0, 1, 2, 1]), "int64")
    model.train_step(xb, yb)  # creates the optimizer's slots

    def forbidden(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"a training step moved data to the host (Array.{name})")
        return read

    array_type = type(xb)
    for name in ("__float__", "__int__", "__bool__", "__index__", "__dlpack__", "__array__", "__complex__"):
        monkeypatch.setattr(array_type, name, forbidden(name))
    loss, acc = model.train_step(xb, yb)
    monkeypatch.undo()
    assert np.isfinite(float(loss)) and 0.0 <= float(acc) <= 1.0


def test_fit_moves_the_data_to_the_device_once(case, rng, monkeypatch):
    """The training and validation sets cross to the device once per fit, not once per epoch."""
    import xpcnn.training

    x, y = toy_data(rng)
    model = small_net(case).compile("sgd", loss="softmax_cross_entropy")
    calls = []
    real_stage = xpcnn.training.stage
    monkeypatch.setattr(xpcnn.training, "stage", lambda *a, **k: calls.append(1) or real_stage(*a, **k))
    model.fit(x, y, batch_size=16, epochs=3, validation_data=(x[:8], y[:8]), verbose=0)
    assert len(calls) == 2 and len(model.history["val_loss"]) == 3


def test_uint8_images_train_exactly_as_prepared_floats_and_stay_uint8_on_the_device(case, rng, monkeypatch):
    """uint8 pixels cross to the device as uint8 (a quarter of the bytes) and each batch becomes
    pixels/255 there: weights, history, evaluate and predict are bit-identical to feeding
    ``prepare_images(x)`` (the same division, on the host)."""
    import xpcnn.training
    from xpcnn.data import prepare_images

    pixels = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    y = (pixels[:, :4].mean(axis=(1, 2)) > 127).astype(np.int64) + (pixels[:, 4:].mean(axis=(1, 2)) > 127)
    staged = []
    real_stage = xpcnn.training.stage
    monkeypatch.setattr(xpcnn.training, "stage", lambda *a, **k: staged.append(real_stage(*a, **k)) or staged[-1])

    def run(x):
        model = small_net(case, seed=5).compile("adam", loss="softmax_cross_entropy", learning_rate=0.01)
        hist = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x[:8], y[:8]), verbose=0)
        return model.get_weights(), hist, model.evaluate(x, y), model.predict(x[:7])

    w8, h8, e8, p8 = run(pixels)
    assert {str(s.x.dtype).split(".")[-1] for s in staged} == {"uint8"}
    assert all(s.pixels and s.on_device for s in staged)
    wf, hf, ef, pf = run(prepare_images(pixels, case.dtype))
    assert all(np.array_equal(a, b) for a, b in zip(w8, wf))
    assert {k: hf[k] for k in ("loss", "val_loss")} == {k: h8[k] for k in ("loss", "val_loss")}
    assert e8 == ef and np.array_equal(p8, pf)


def test_a_set_too_big_for_the_device_stays_on_the_host(case, rng, monkeypatch):
    """Out of device memory while staging the whole set: batches cross one by one instead, same
    results (a GPU with less free memory than MNIST needs still trains)."""
    import xpcnn.training

    x, y = toy_data(rng)
    ref = small_net(case, seed=4).compile("sgd", loss="softmax_cross_entropy")
    ref.fit(x, y, batch_size=16, epochs=2, verbose=0)
    model = small_net(case, seed=4).compile("sgd", loss="softmax_cross_entropy")
    real_asarray, staged = type(model.backend).asarray, []

    def asarray(self, a, dtype=None):
        if getattr(a, "shape", (0,))[0] == len(x):  # the whole set: refuse, as a full GPU would
            raise MemoryError("out of memory allocating the training set")
        return real_asarray(self, a, dtype)

    real_stage = xpcnn.training.stage
    monkeypatch.setattr(type(model.backend), "asarray", asarray)
    monkeypatch.setattr(xpcnn.training, "stage", lambda *a, **k: staged.append(real_stage(*a, **k)) or staged[-1])
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert staged and not staged[0].on_device
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), ref.get_weights()))


def test_integer_images_of_any_dtype_are_pixels(case, rng):
    """int16/int64 pixels give exactly what uint8 pixels give; values outside 0..255 are refused."""
    model = small_net(case)
    pixels = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)
    want = model.predict(pixels)
    for dtype in (np.int16, np.int64, np.uint16):
        np.testing.assert_array_equal(model.predict(pixels.astype(dtype)), want)
    with pytest.raises(InputError, match=r"pixels in 0..255. Received int32 values from 0 to 300"):
        model.predict(np.full((2, 1, 8, 8), 300, dtype=np.int32) * (np.arange(2) > 0)[:, None, None, None])


@pytest.mark.parametrize("shape", [(-3,), (1, 0, 4), (), "abc"])
def test_a_bad_input_shape_is_one_shape_error(case, shape):
    with pytest.raises(ShapeError, match="input_shape must be a tuple of positive ints"):
        xpcnn.Sequential([L.Flatten(), L.Dense(2)], input_shape=shape, device=case.backend)


def test_integer_features_of_a_dense_model_are_numbers(case):
    """Only image inputs (C, H, W) treat integers as pixels; a feature vector's integers stay numbers."""
    model = xpcnn.Sequential([L.Dense(1)], input_shape=(3,), device=case.backend, dtype=case.dtype)
    counts = np.array([[0, 1, 300]], dtype=np.int64)
    np.testing.assert_allclose(model.predict(counts), model.predict(counts.astype(case.dtype)), rtol=1e-6)


def test_fit_keeps_freed_host_memory_on_numpy(monkeypatch, rng):
    import xpcnn.training

    calls = []
    monkeypatch.setattr(xpcnn.training, "keep_freed_host_memory", lambda: calls.append(1))
    x, y = toy_data(rng, 16)
    model = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(1, 8, 8), device="cpu")
    model.compile("sgd", loss="softmax_cross_entropy").fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert calls == [1]


def test_only_allocation_failures_count_as_out_of_memory():
    from xpcnn.backend import is_out_of_memory

    class OutOfMemoryError(Exception):
        pass

    class CUDARuntimeError(RuntimeError):
        pass

    assert is_out_of_memory(MemoryError()) and is_out_of_memory(OutOfMemoryError("out of memory"))
    assert is_out_of_memory(CUDARuntimeError("cudaErrorMemoryAllocation: out of memory"))
    assert not is_out_of_memory(CUDARuntimeError("cudaErrorIllegalAddress: an illegal memory access was encountered"))

    # cuBLAS' workspace and the driver's module loads fail with their own classes (CuPy's names)
    class CUBLASError(RuntimeError):
        pass

    class CUDADriverError(RuntimeError):
        pass

    assert is_out_of_memory(CUBLASError("CUBLAS_STATUS_ALLOC_FAILED"))
    assert is_out_of_memory(CUDADriverError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"))
    assert not is_out_of_memory(CUBLASError("CUBLAS_STATUS_EXECUTION_FAILED"))
    assert not is_out_of_memory(CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered"))
    assert not is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED"))  # the class counts, not only the text
