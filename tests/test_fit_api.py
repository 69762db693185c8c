"""The public training API as a new user meets it: what repeated ``fit`` calls train and return,
integer inputs that are not images, target ranges, ``validation_data``, building a
``Sequential``, and what ``help()`` shows."""

from __future__ import annotations

import gc
import inspect
import pydoc
import re
import warnings

import numpy as np
import pytest

import xpcnn
from xpcnn import functional as F
from xpcnn import layers as L
from xpcnn.errors import InputError, ShapeError


def net(case=None, seed=0, input_shape=(1, 6, 6), **kw):
    layers = [L.Conv2D(2, 3, activation="relu"), L.Flatten(), L.Dense(3)]
    return xpcnn.Sequential(layers, input_shape=input_shape, device=None if case is None else case.backend,
                            dtype="float32" if case is None else case.dtype, seed=seed, **kw)


def data(rng, n=24):
    x = rng.random((n, 1, 6, 6)).astype(np.float32)
    return x, (x[:, 0].mean(axis=(1, 2)) * 6).astype(np.int64) % 3


def adam(model):
    # a learning rate that decays every epoch: wrong epoch counting changes the weights
    return model.compile(xpcnn.Adam(0.01, epoch_decay=0.5), loss="softmax_cross_entropy")


# -- 1. repeated fit calls ------------------------------------------------------------------------
def test_fit_epochs_1_twice_trains_two_epochs_exactly_like_epochs_2(case, rng):
    x, y = data(rng)
    once = adam(net(case))
    h = once.fit(x, y, batch_size=8, epochs=2, verbose=0)
    twice = adam(net(case))
    h1 = twice.fit(x, y, batch_size=8, epochs=1, verbose=0)
    h2 = twice.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert twice.epoch == 2 and twice.optimizer.iterations == 6
    for a, b in zip(once.get_weights(), twice.get_weights()):
        np.testing.assert_array_equal(a, b)  # the lr schedule and the shuffle seeds continued
    assert len(h1["loss"]) == len(h2["loss"]) == 1 and h2 is not h1
    assert h1["loss"] + h2["loss"] == h["loss"] == twice.history["loss"]
    assert h2 is not twice.history  # the return value is this call's, the model's is cumulative


def test_fit_returns_only_this_calls_epochs_and_history_survives_save_and_load(rng, tmp_path):
    x, y = data(rng)
    model = adam(net())
    model.fit(x, y, batch_size=8, epochs=2, validation_data=(x[:6], y[:6]), verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = xpcnn.load(tmp_path / "m.npz", device="cpu")
    third = loaded.fit(x, y, batch_size=8, epochs=1, validation_data=(x[:6], y[:6]), verbose=0)
    assert loaded.epoch == 3
    assert sorted(third) == ["accuracy", "images_per_second", "loss", "seconds", "val_accuracy", "val_loss"]
    assert all(len(v) == 1 for v in third.values())
    assert loaded.history["loss"] == model.history["loss"] + third["loss"]
    assert all(len(v) == 3 for v in loaded.history.values())


def test_explicit_initial_epoch_keeps_keras_total_epochs(case, rng):
    """``fit(epochs=E, initial_epoch=model.epoch)`` (what `xpcnn train --resume` passes) trains up
    to epoch E; nothing when E <= initial_epoch, as in Keras."""
    x, y = data(rng)
    straight = adam(net(case))
    straight.fit(x, y, batch_size=8, epochs=3, verbose=0)
    model = adam(net(case))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    h = model.fit(x, y, batch_size=8, epochs=3, initial_epoch=model.epoch, verbose=0)
    assert model.epoch == 3 and len(h["loss"]) == 2
    for a, b in zip(straight.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    before = model.get_weights()
    assert model.fit(x, y, batch_size=8, epochs=3, initial_epoch=3, verbose=0) == {}
    assert model.fit(x, y, batch_size=8, epochs=2, initial_epoch=3, verbose=0) == {}
    assert model.epoch == 3 and len(model.history["loss"]) == 3
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_a_bad_initial_epoch_is_one_clear_error(rng, bad):
    x, y = data(rng)
    with pytest.raises(InputError, match=rf"`initial_epoch` argument must be a non-negative int or None. "
                                         rf"Received initial_epoch={bad!r}"):
        adam(net()).fit(x, y, initial_epoch=bad, verbose=0)


# -- 2. integer inputs that are not images --------------------------------------------------------
@pytest.mark.parametrize("input_shape", [None, (6, 6)])
def test_uint8_into_a_model_without_image_inputs_warns_once_per_call(rng, input_shape):
    x = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 12)
    model = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=input_shape).compile("sgd")
    want = (r"x is uint8 of shape \(N, 6, 6\) and the model's inputs are \(6, 6\), not images \(C, H, W\): the "
            r"values are used as numbers 0..255. For pixels in \[0, 1\], build the model with "
            r"input_shape=\(1, 6, 6\) or pass xpcnn.data.prepare_images\(x\).")
    for call in (lambda: model.fit(x, y, batch_size=4, epochs=2, validation_data=(x, y), verbose=0),
                 lambda: model.evaluate(x, y, batch_size=4), lambda: model.predict(x, batch_size=4)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        assert len(caught) == 1  # one a call, not one per batch (nor again for validation_data)
        assert caught[0].category is UserWarning and caught[0].filename == __file__  # points at the call
        assert re.fullmatch(want, str(caught[0].message))


def test_uint8_validation_data_alone_is_named_x_val(rng):
    x = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 12)
    model = xpcnn.Sequential([L.Flatten(), L.Dense(3)], input_shape=(6, 6)).compile("sgd")
    with pytest.warns(UserWarning, match=r"^x_val is uint8 .*xpcnn.data.prepare_images\(x_val\)\.$"):
        model.fit(x.astype(np.float32), y, epochs=1, validation_data=(x, y), verbose=0)


def test_uint8_images_and_other_integers_do_not_warn(rng):
    pixels = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adam(net()).fit(pixels, y, epochs=1, verbose=0)  # (1, H, W) inputs: pixels, divided by 255
        flat = xpcnn.Sequential([L.Dense(3)], input_shape=(4,)).compile("sgd")
        flat.fit(rng.integers(0, 9, (12, 4)).astype(np.int64), y, epochs=1, verbose=0)  # int64 counts


# -- 3. targets of the binary losses --------------------------------------------------------------
@pytest.mark.parametrize("loss, activation", [("binary_cross_entropy", "sigmoid"),
                                              ("binary_cross_entropy_with_logits", None)])
def test_binary_losses_refuse_targets_outside_0_1(rng, loss, activation):
    x, labels = rng.random((10, 1, 6, 6)).astype(np.float32), np.arange(10) % 10
    model = xpcnn.Sequential([L.Flatten(), L.Dense(1, activation=activation)], input_shape=(1, 6, 6))
    model.compile("sgd", loss=loss)
    with pytest.raises(InputError, match=rf"^{loss} targets must lie in \[0, 1\]. Received values from 0 to 9.$"):
        model.fit(x, labels, verbose=0)
    with pytest.raises(InputError, match=r"from -0.5 to 1.$"):
        model.evaluate(x, np.linspace(-0.5, 1, 10))
    assert np.isfinite(model.fit(x, labels % 2, verbose=0)["loss"][0])  # 0/1 targets train
    assert model.fit(x, np.full(10, 0.25), verbose=0)["loss"][0] > 0  # soft targets too


def test_binary_targets_must_match_the_output_shape(rng):
    x = rng.random((10, 1, 6, 6)).astype(np.float32)
    model = xpcnn.Sequential([L.Flatten(), L.Dense(4, activation="sigmoid")], input_shape=(1, 6, 6))
    model.compile("sgd", loss="binary_cross_entropy")
    with pytest.raises(ShapeError, match=r"y must have shape \(N, 4\) to match the model output for "
                                         r"binary_cross_entropy. Received y.shape=\(10,\)"):
        model.fit(x, np.arange(10) % 2, verbose=0)


def test_squared_error_refuses_unreachable_targets_of_a_sigmoid_output_only(rng):
    x, y = rng.random((10, 1, 6, 6)).astype(np.float32), (np.arange(10) % 3).astype(np.float32)[:, None]
    squashed = xpcnn.Sequential([L.Flatten(), L.Dense(4), L.Sigmoid(), L.Dense(1), L.Sigmoid()],
                                input_shape=(1, 6, 6)).compile("sgd", loss="squared_error")
    with pytest.raises(InputError, match=r"^squared_error targets must lie in \[0, 1\] for a sigmoid output "
                                         r"\(layer 'sigmoid_1'\).*Received values from 0 to 2.$"):
        squashed.fit(x, y, verbose=0)
    linear = xpcnn.Sequential([L.Flatten(), L.Dense(1)], input_shape=(1, 6, 6)).compile("sgd", loss="squared_error")
    assert linear.fit(x, y, verbose=0)["loss"][0] > 0  # regression: any finite target


# -- 4. validation_data ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, received", [
    (lambda x, y: (x,), "a tuple of 1"),
    (lambda x, y: (x, y, y), "a tuple of 3"),
    (lambda x, y: [x], "a list of 1"),
    (lambda x, y: x, "numpy.ndarray"),
    (lambda x, y: (x, None), "(numpy.ndarray, None)"),
    (lambda x, y: (None, y), "(None, numpy.ndarray)"),
])
def test_validation_data_must_be_a_pair(rng, make, received):
    x, y = data(rng)
    model = adam(net())
    with pytest.raises(InputError) as err:
        model.fit(x, y, validation_data=make(x, y), verbose=0)
    assert str(err.value) == f"validation_data must be a pair (x_val, y_val). Received {received}."
    assert model.epoch == 0  # refused before any training


# -- 5. building a Sequential ---------------------------------------------------------------------
def test_a_single_layer_is_not_a_list_of_layers():
    with pytest.raises(InputError) as err:
        xpcnn.Sequential(L.Dense(3), input_shape=(4,))
    assert str(err.value) == ("Sequential takes a list of layers. Received a Dense layer; wrap it in a list: "
                              "Sequential([layer]).")


@pytest.mark.parametrize("layers, match", [
    ([], r"Received an empty list; expected at least one layer"),
    (None, r"Sequential takes a list of layers. Received NoneType."),
    ((L.Flatten(), "relu"), r"Received str at position 1; expected a layer from xpcnn.layers."),
    ([L.Flatten(), np.ones(3)], r"Received numpy.ndarray at position 1"),
])
def test_sequential_refuses_what_is_not_a_list_of_layers(layers, match):
    with pytest.raises(InputError, match=match):
        xpcnn.Sequential(layers)


def test_a_layer_serves_one_model():
    shared = L.Dense(2, name="head")
    first = xpcnn.Sequential([L.Flatten(), shared], input_shape=(1, 2, 2), name="first")
    kept = first.get_weights()
    with pytest.raises(InputError, match=r"Layer 'head' \(Dense, position 1\) already belongs to model 'first'.*"
                                         r"Create a new Dense\(\.\.\.\)"):
        xpcnn.Sequential([L.Flatten(), shared], input_shape=(1, 3, 3), name="second")
    assert all(np.array_equal(a, b) for a, b in zip(kept, first.get_weights()))  # untouched
    assert first.predict(np.ones((1, 1, 2, 2), np.float32)).shape == (1, 2)
    twice = L.Dense(2)
    with pytest.raises(InputError, match=r"positions 0 and 1"):
        xpcnn.Sequential([twice, twice])


def test_a_layer_is_free_again_after_a_failed_or_deleted_model():
    conv = L.Conv2D(2, 3)
    with pytest.raises(ShapeError):
        xpcnn.Sequential([conv, L.Flatten(), L.Dense(2)], input_shape=(2, 2, 2))
    model = xpcnn.Sequential([conv, L.Flatten(), L.Dense(2)], input_shape=(1, 6, 6))  # the retry works
    del model
    gc.collect()
    assert xpcnn.Sequential([conv], input_shape=(1, 5, 5)).output_shape == (2, 3, 3)


@pytest.mark.parametrize("shape, hint", [((28, 28, 1), "(1, 28, 28)"), ((32, 32, 3), "(3, 32, 32)")])
def test_channels_last_input_shape_gets_a_hint(shape, hint):
    with pytest.raises(ShapeError) as err:
        xpcnn.Sequential([L.Conv2D(4, 5), L.MaxPool2D(), L.Flatten(), L.Dense(2)], input_shape=shape)
    assert str(err.value).endswith(f"xpcnn takes (C, H, W); did you mean input_shape={hint}?")


def test_a_channels_first_error_gets_no_channels_last_hint():
    with pytest.raises(ShapeError) as err:
        xpcnn.Sequential([L.Conv2D(4, 5)], input_shape=(1, 3, 3))
    assert "did you mean" not in str(err.value)


# -- 6. help() ------------------------------------------------------------------------------------
DOCUMENTED = {
    xpcnn.Sequential: ["compile", "forward", "backward", "train_step", "fit", "evaluate", "predict", "get_weights",
                       "set_weights", "build", "count_params", "summary", "get_config", "from_config"],
    **{cls: ["forward", "backward"] for cls in (L.Conv2D, L.Dense, L.MaxPool2D, L.AveragePooling2D, L.Flatten,
                                                L.Dropout)},
}


@pytest.mark.parametrize("cls", list(DOCUMENTED), ids=lambda c: c.__name__)
def test_help_shows_docstrings_not_section_comments(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    assert "# --" not in text
    assert len(inspect.getdoc(cls).splitlines()) > 3  # more than a one-liner
    for name in DOCUMENTED[cls]:
        assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name} has no docstring"


def test_compile_docstring_lists_every_loss_and_optimizer_name():
    doc = inspect.getdoc(xpcnn.Sequential.compile)
    for name in [*F.LOSSES, "sgd", "momentum", "adam"]:
        assert f'"{name}"' in doc
    for name in ["filters", "kernel_size", "strides", "padding", "dilation_rate", "activation", "use_bias",
                 "kernel_initializer", "OH = (H + PT + PB - DH·(KH - 1) - 1) // SH + 1", "xpcnn.functional.conv"]:
        assert name in inspect.getdoc(L.Conv2D)


def test_labels_as_floats_holding_whole_numbers_are_class_labels(rng):
    x, y = data(rng)
    a, b = net(seed=1).compile("sgd", loss="softmax_cross_entropy"), net(seed=1).compile("sgd",
                                                                                           loss="softmax_cross_entropy")
    a.fit(x, y, epochs=1, verbose=0, seed=0)
    b.fit(x, y.astype(np.float32), epochs=1, verbose=0, seed=0)  # as Keras takes them
    assert all(np.array_equal(u, v) for u, v in zip(a.get_weights(), b.get_weights()))
    with pytest.raises(InputError, match=r"dtype float64. Expected whole numbers 0..K-1"):
        b.fit(x, y + 0.5, epochs=1, verbose=0)
    with pytest.raises(InputError, match=r"shape \(24, 3\).*They look one-hot: pass y.argmax\(axis=1\)"):
        b.fit(x, np.eye(3)[y], epochs=1, verbose=0)


@pytest.mark.parametrize(("loss", "last", "warns"), [
    ("softmax_cross_entropy", L.Dense(3, activation="softmax"), True),
    ("softmax_cross_entropy", L.Softmax(), True),
    ("binary_cross_entropy_with_logits", L.Dense(1, activation="sigmoid"), True),
    ("binary_cross_entropy", L.Dense(1, activation="sigmoid"), False),
    ("softmax_cross_entropy", L.Dense(3), False),
])
def test_an_activation_applied_twice_is_warned_about(loss, last, warns):
    model = xpcnn.Sequential([L.Flatten(), L.Dense(4), last], input_shape=(1, 2, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile("sgd", loss=loss)
    assert [("applied twice" in str(w.message), w.filename) for w in caught] == ([(True, __file__)] if warns else [])


def test_squared_error_refuses_unreachable_targets_of_a_softmax_output():
    rng = np.random.default_rng(0)
    x, y = rng.random((6, 1, 4, 4)).astype(np.float32), 2 * np.eye(3, dtype=np.float32)[np.arange(6) % 3]
    for layers in ([L.Flatten(), L.Dense(3, activation="softmax")], [L.Flatten(), L.Dense(3), L.Softmax()]):
        m = xpcnn.Sequential(layers, input_shape=(1, 4, 4)).compile("sgd", loss="squared_error")
        with pytest.raises(InputError, match=r"^squared_error targets must lie in \[0, 1\] for a softmax output "
                                             r".*Received values from 0 to 2.$"):
            m.fit(x, y, verbose=0)
