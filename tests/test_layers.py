"""Layers through their public contract, on every backend: build, forward/backward against finite
differences (float64), the cache and input-gradient protocol, params/grads on the device,
get/set_weights, configs, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import check_gradients

import xpcnn.functional as F
from xpcnn import layers as L
from xpcnn.backend import to_numpy
from xpcnn.errors import InputError, ShapeError
from xpcnn.layers.base import BackwardOrderError

LAYER_CASES = [
    (lambda: L.Conv2D(3, 3, padding="same", activation="tanh"), (2, 2, 6, 6)),
    (lambda: L.Conv2D(2, (3, 2), strides=2, dilation_rate=1, activation="sigmoid"), (2, 1, 7, 6)),
    (lambda: L.Conv2D(2, 3, use_bias=False), (1, 2, 5, 5)),
    (lambda: L.Dense(4, activation="relu"), (3, 5)),
    (lambda: L.Dense(3, activation="softmax"), (3, 4)),
    (lambda: L.MaxPool2D(2), (2, 2, 6, 6)),
    (lambda: L.AveragePooling2D(3, strides=2), (1, 2, 7, 7)),
    (lambda: L.Flatten(), (2, 2, 3, 3)),
    (lambda: L.BatchStandardize(), (5, 3)),
    (lambda: L.Dropout(0.4, seed=3), (4, 6)),
    (lambda: L.Sigmoid(), (2, 5)),
    (lambda: L.ReLU(), (2, 5)),
    (lambda: L.Tanh(), (2, 5)),
    (lambda: L.Softmax(), (2, 5)),
]


def _built(make, case, xshape, rng, dtype="float64"):
    layer = make()
    layer.build(xshape[1:], case.backend, dtype, rng)
    return layer


@pytest.mark.parametrize("make,xshape", LAYER_CASES)
def test_layer_gradients_match_finite_differences(case, rng, make, xshape):
    layer = _built(make, case, xshape, rng)
    keys = list(layer.params)
    reseed = hasattr(layer, "rng")

    def forward(x, *params):
        layer.params.update(zip(keys, params))
        if reseed:
            layer.rng = np.random.default_rng(7)  # the same dropout mask every time
        return layer.forward(x), None

    def backward(dy, _):
        return (layer.backward(dy), *(layer.grads[k] for k in keys))

    inputs = [rng.standard_normal(xshape), *(to_numpy(layer.params[k]) for k in keys)]
    check_gradients(case, forward, backward, inputs, rng)
    assert sorted(layer.grads) == sorted(layer.params)


@pytest.mark.parametrize("make,xshape", LAYER_CASES)
def test_layer_output_lives_on_the_input_device_and_dtype(case, rng, make, xshape):
    layer = _built(make, case, xshape, rng, case.dtype)
    y = layer.forward(case.asarray(rng.standard_normal(xshape)))
    case.check(y, (xshape[0], *layer.output_shape(xshape[1:])))
    for p in layer.params.values():
        assert case.backend.owns(p) and p.dtype == case.backend.dtype(case.dtype)


def test_first_layer_skips_input_gradient(case, rng, monkeypatch):
    asked = []

    def spy(dy, cache, *, need_dx=True):
        asked.append(need_dx)
        return F.conv2d_backward(dy, cache, need_dx=need_dx)

    monkeypatch.setattr(L.Conv2D, "_op_backward", staticmethod(spy))
    layer = _built(lambda: L.Conv2D(2, 3), case, (2, 1, 5, 5), rng)
    layer.need_input_grad = False
    layer.forward(case.asarray(rng.standard_normal((2, 1, 5, 5)), "float64"))
    assert layer.backward(case.asarray(np.ones((2, 2, 3, 3)), "float64")) is None
    assert asked == [False]  # the kernel itself skipped dx (conv: no col2im)
    assert set(layer.grads) == {"kernel", "bias"}


@pytest.mark.parametrize("make,xshape", [c for c in LAYER_CASES if not isinstance(c[0](), (L.Conv2D, L.Dense))])
def test_weightless_first_layer_computes_nothing_backward(case, rng, make, xshape, monkeypatch):
    layer = _built(make, case, xshape, rng)
    layer.need_input_grad = False
    y = layer.forward(case.asarray(rng.standard_normal(xshape), "float64"))
    monkeypatch.setattr(layer, "_backward", lambda *a: pytest.fail("hook called for nothing"))
    assert layer.backward(case.xp.ones_like(y)) is None and layer.grads == {}


@pytest.mark.parametrize("make,xshape", LAYER_CASES)
def test_cache_lives_from_a_training_forward_to_its_backward(case, rng, make, xshape):
    layer = _built(make, case, xshape, rng)
    x = case.asarray(rng.standard_normal(xshape), "float64")
    y = layer.forward(x, training=False)
    with pytest.raises(BackwardOrderError, match="needs a forward"):  # inference keeps no activations
        layer.backward(case.xp.ones_like(y))
    layer.forward(x)
    dx = layer.backward(case.xp.ones_like(y))
    assert tuple(dx.shape) == xshape
    with pytest.raises(BackwardOrderError, match=layer.name):  # the backward freed them
        layer.backward(case.xp.ones_like(y))


def test_dropout_without_dropping_passes_the_gradient_through(case, rng):
    x = case.asarray(rng.standard_normal((3, 4)))
    for layer, training in ((L.Dropout(0.0), True), (L.Dropout(0.5), False)):
        assert layer.forward(x, training=training) is x
    layer = L.Dropout(0.0)
    layer.forward(x)
    dy = case.asarray(rng.standard_normal((3, 4)))
    assert layer.backward(dy) is dy


def test_weights_round_trip_in_keras_order(case, rng):
    layer = _built(lambda: L.Dense(3), case, (2, 4), rng, case.dtype)
    k, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    layer.set_weights([k, b])
    got = layer.get_weights()
    assert all(isinstance(w, np.ndarray) for w in got)
    np.testing.assert_allclose(got[0], k.astype(case.dtype))
    np.testing.assert_allclose(got[1], b.astype(case.dtype))
    with pytest.raises(ShapeError, match=r"`kernel` must have shape \(4, 3\)"):
        layer.set_weights([k.T, b])


def test_weights_from_any_backend_cross_to_a_cpu_layer(case, rng):
    # A GPU model's arrays handed to a CPU layer: NumPy refuses to convert a CuPy array
    # implicitly, so the crossing must be explicit (to the host, then onto the layer's device).
    from xpcnn.backend import get_backend

    layer = L.Dense(3)
    layer.build((4,), get_backend("cpu"), "float32", rng)
    k, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    layer.set_weights([case.asarray(k), case.asarray(b)])
    assert all(isinstance(p, np.ndarray) for p in layer.params.values())
    np.testing.assert_allclose(layer.get_weights()[0], k.astype(case.dtype).astype(np.float32))
    assert get_backend("cpu").owns(get_backend("cpu").asarray(case.asarray(b)))


def test_lazy_build_infers_channels_and_checks_later_inputs(case, rng):
    conv = L.Conv2D(4, 3, seed=1)
    conv.forward(case.asarray(rng.standard_normal((2, 3, 6, 6))))
    assert tuple(conv.params["kernel"].shape) == (4, 3, 3, 3)
    with pytest.raises(ShapeError, match=r"expects input of shape \(batch, 3, 6, 6\).*\(2, 2, 6, 6\)"):
        conv.forward(case.asarray(rng.standard_normal((2, 2, 6, 6))))
    with pytest.raises(TypeError, match="expects float"):
        other = "float64" if case.dtype == "float32" else "float32"
        conv.forward(case.asarray(rng.standard_normal((2, 3, 6, 6)), other))


def test_same_seed_same_weights_on_every_device(case):
    a = L.Conv2D(3, 5)
    a.build((1, 28, 28), case.backend, "float32", np.random.default_rng(5))
    import xpcnn.backend as B

    b = L.Conv2D(3, 5)
    b.build((1, 28, 28), B.get_backend("cpu"), "float32", np.random.default_rng(5))
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.Conv2D(0, 3), "filters"),
        (lambda: L.Conv2D(2, (3, 0)), "kernel_size"),
        (lambda: L.Conv2D(2, 3, strides=-1), "strides"),
        (lambda: L.Conv2D(2, 3, padding="full"), "padding"),
        (lambda: L.Conv2D(2, 3, activation="swish"), "activation"),
        (lambda: L.Conv2D(2, 3, kernel_initializer="lecun"), "initializer"),
        (lambda: L.Dense(-3), "units"),
        (lambda: L.Dropout(1.5), "rate"),
        (lambda: L.MaxPool2D(0), "pool_size"),
        (lambda: L.from_config({"class": "Transformer"}), "Unknown layer config"),
    ],
)
def test_bad_layer_arguments(make, match):
    with pytest.raises(InputError, match=match):
        make()


def test_configs_round_trip():
    for make, _ in LAYER_CASES:
        layer = make()
        again = L.from_config(layer.get_config())
        assert again.get_config() == layer.get_config()


def test_get_weights_returns_copies_that_training_does_not_change(case, rng):
    import xpcnn

    model = xpcnn.Sequential([L.Flatten(), L.Dense(2)], input_shape=(1, 2, 2), device=case.backend, dtype=case.dtype)
    model.compile("sgd", loss="softmax_cross_entropy", learning_rate=0.5)
    before = model.get_weights()
    snapshot = [w.copy() for w in before]
    model.fit(rng.random((8, 1, 2, 2)).astype(case.dtype), rng.integers(0, 2, 8), epochs=2, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot))
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), snapshot))


def test_backends_compare_and_hash_by_what_they_name(case):
    # usable as dict keys and in sets on every backend (CuPy's Device objects themselves are unhashable)
    from xpcnn.backend import Backend

    twin = Backend(case.backend.name, case.backend.xp, case.backend.device)
    assert twin == case.backend and hash(twin) == hash(case.backend) and len({twin, case.backend}) == 1
    assert Backend("other", case.backend.xp, case.backend.device) != case.backend


def test_asarray_converts_dtype_and_lands_on_the_backends_device(case):
    a = case.backend.asarray(np.ones(3), "float32")
    b = case.backend.asarray(a, "float64")  # already on the backend: converted there
    assert b.dtype == case.backend.dtype("float64") and case.backend.owns(b)
    assert case.backend.asarray(a) is a  # no dtype asked: the same array, no copy
    for value in ([[1.0, 2.0]], 3.0):  # lists and Python scalars, not only NumPy arrays
        assert case.backend.owns(case.backend.asarray(value, "float32"))
