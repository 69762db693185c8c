"""Optimizers against the textbook update rules, written here parameter by parameter in float64
NumPy (independent of the flat, all-parameters-at-once implementation), on every backend; and
their state through get_state/set_state (checkpoints, .to(device)) continuing bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

import xpcnn
from xpcnn.optimizers import get

SHAPES = {"kernel": (2, 1, 3, 3), "bias": (2,)}


class _Layer:
    """The optimizer's view of a layer: ``params`` and ``grads`` dicts."""

    def __init__(self, params):
        self.params, self.grads = params, {}


def _reference(kind, params, grads_per_step, lr, decay, steps_per_epoch, mu=0.9, b1=0.9, b2=0.999, eps=1e-7):
    """The rules in the optimizers module docstring, one parameter at a time, float64."""
    params = [{k: v.copy() for k, v in layer.items()} for layer in params]
    state = {}
    for t, grads in enumerate(grads_per_step, start=1):
        eta = lr * decay ** ((t - 1) // steps_per_epoch)
        for i, (layer, glayer) in enumerate(zip(params, grads)):
            for name, g in glayer.items():
                key = (i, name)
                if kind == "sgd":
                    layer[name] = layer[name] - eta * g
                elif kind in ("momentum", "nesterov"):
                    v = mu * state.get(key, 0.0) - eta * g
                    state[key] = v
                    layer[name] = layer[name] + (mu * v - eta * g if kind == "nesterov" else v)
                else:  # Adam, bias correction folded into the step size (Keras)
                    m, v = state.get(key, (0.0, 0.0))
                    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                    state[key] = (m, v)
                    layer[name] = layer[name] - eta * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return params


def _make(kind, lr, decay):
    return {"sgd": lambda: xpcnn.SGD(lr, epoch_decay=decay),
            "momentum": lambda: xpcnn.SGD(lr, momentum=0.9, epoch_decay=decay),
            "nesterov": lambda: xpcnn.SGD(lr, momentum=0.9, nesterov=True, epoch_decay=decay),
            "adam": lambda: xpcnn.Adam(lr, epoch_decay=decay)}[kind]()


def _run(opt, case, params, grads_per_step, steps_per_epoch, *, restart_at=None):
    layers = [_Layer({k: case.asarray(v.copy(), "float64") for k, v in layer.items()}) for layer in params]
    for step, grads in enumerate(grads_per_step):
        if step == restart_at:  # as a checkpoint does: host arrays out, a new optimizer, state back in
            meta, arrays = opt.get_state()
            fresh = get(opt.get_config())
            fresh.set_state(meta, {k: a.copy() for k, a in arrays.items()}, case.backend, "float64")
            opt = fresh
        opt.epoch = step // steps_per_epoch
        for layer, glayer in zip(layers, grads):
            layer.grads = {k: case.asarray(g, "float64") for k, g in glayer.items()}
        opt.apply(layers)
    return [{k: case.check(p, p.shape, "float64") for k, p in layer.params.items()} for layer in layers], opt


@pytest.mark.parametrize("kind", ["sgd", "momentum", "nesterov", "adam"])
def test_updates_follow_the_rules_parameter_by_parameter(case, rng, kind):
    lr, decay, per_epoch = 0.05, 0.5, 3
    params = [{k: rng.standard_normal(s) for k, s in SHAPES.items()}, {"kernel": rng.standard_normal((4, 3))}]
    grads = [[{k: rng.standard_normal(v.shape) for k, v in layer.items()} for layer in params] for _ in range(7)]
    want = _reference(kind, params, grads, lr, decay, per_epoch)
    got, opt = _run(_make(kind, lr, decay), case, params, grads, per_epoch)
    for w, g in zip(want, got):
        for name in w:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-12, atol=1e-14, err_msg=f"{kind} {name}")
    assert opt.iterations == 7


@pytest.mark.parametrize("kind", ["momentum", "nesterov", "adam"])
def test_state_saved_and_loaded_mid_run_continues_bit_for_bit(case, rng, kind):
    params = [{k: rng.standard_normal(s) for k, s in SHAPES.items()}, {"kernel": rng.standard_normal((4, 3))}]
    grads = [[{k: rng.standard_normal(v.shape) for k, v in layer.items()} for layer in params] for _ in range(6)]
    straight, opt = _run(_make(kind, 0.05, 1.0), case, params, grads, 100)
    resumed, _ = _run(_make(kind, 0.05, 1.0), case, params, grads, 100, restart_at=3)
    for a, b in zip(straight, resumed):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The saved state is per parameter, named by layer index and parameter: the checkpoint format.
    _, arrays = opt.get_state()
    slots = {"momentum": ["velocity"], "nesterov": ["velocity"], "adam": ["m", "v"]}[kind]
    assert sorted(arrays) == sorted(f"{s}/{k}" for s in slots for k in ("0/kernel", "0/bias", "1/kernel"))
    assert arrays[f"{slots[0]}/0/kernel"].shape == SHAPES["kernel"]


def test_state_of_a_parameter_missing_from_a_checkpoint_starts_at_zero(case, rng):
    params = [{"kernel": rng.standard_normal((3, 2)), "bias": rng.standard_normal(2)}]
    grads = [[{k: rng.standard_normal(v.shape) for k, v in params[0].items()}] for _ in range(2)]
    opt = xpcnn.SGD(0.1, momentum=0.5)
    opt.set_state({"iterations": 1}, {"velocity/0/kernel": np.ones((3, 2))}, case.backend, "float64")
    got, _ = _run(opt, case, params, grads[:1], 100)
    g = grads[0][0]
    np.testing.assert_allclose(got[0]["kernel"], params[0]["kernel"] + 0.5 * 1.0 - 0.1 * g["kernel"], rtol=1e-12)
    np.testing.assert_allclose(got[0]["bias"], params[0]["bias"] - 0.1 * g["bias"], rtol=1e-12)


@pytest.mark.parametrize(("make", "want"), [
    (lambda: xpcnn.SGD(0.1), 1.0 - 3 * 0.2),
    (lambda: xpcnn.SGD(0.1, momentum=0.9), 1 - 0.2 - 0.38 - 0.542),  # v = -0.2, -0.38, -0.542
    (lambda: xpcnn.SGD(0.1, momentum=0.9, nesterov=True), 1 - 0.38 - 0.542 - 0.6878),  # p += μv − ηg
    (lambda: get("momentum", 0.1), 1 - 0.2 - 0.38 - 0.542),  # the "momentum" name is SGD with μ = 0.9
])
def test_three_steps_by_hand(make, want):
    # p = 1, constant gradient 2, learning rate 0.1: numbers to check with pencil and paper
    layer = _Layer({"w": np.array([1.0])})
    layer.grads = {"w": np.array([2.0])}
    opt = make()
    for _ in range(3):
        opt.apply([layer])
    np.testing.assert_allclose(layer.params["w"], [want], rtol=1e-12)


def test_adams_first_step_moves_each_weight_by_the_learning_rate():
    # bias correction makes step 1 exactly lr · g/|g| (up to ε), whatever the gradient's scale
    layer = _Layer({"w": np.array([1.0, -2.0])})
    layer.grads = {"w": np.array([0.5, -3000.0])}
    xpcnn.Adam(0.1).apply([layer])
    np.testing.assert_allclose(layer.params["w"], [0.9, -1.9], rtol=1e-6)


def test_epoch_decay_schedule():
    opt = xpcnn.SGD(0.1, epoch_decay=0.5)
    assert opt.current_learning_rate == 0.1
    opt.epoch = 2
    assert opt.current_learning_rate == pytest.approx(0.025)


def test_momentum_is_kept_when_the_parameter_set_grows():
    a = _Layer({"w": np.array([1.0])})
    a.grads = {"w": np.array([2.0])}
    b = _Layer({"u": np.array([0.0])})
    b.grads = {"u": np.array([0.0])}
    opt = xpcnn.SGD(0.1, momentum=0.5)
    opt.apply([a])  # v = -0.2, w = 0.8
    opt.apply([a, b])  # a new layout: v_w = 0.5·(-0.2) - 0.2 = -0.3, w = 0.5
    np.testing.assert_allclose(a.params["w"], [0.5], rtol=1e-12)
    _, arrays = opt.get_state()
    np.testing.assert_allclose(arrays["velocity/0/w"], [-0.3], rtol=1e-12)


def test_one_optimizer_for_two_models_starts_the_second_at_zero_state():
    # the same names ("0/w"), other shapes: the first model's velocity does not fit, so it is not used
    first = _Layer({"w": np.array([1.0])})
    first.grads = {"w": np.array([2.0])}
    second = _Layer({"w": np.array([1.0, 1.0])})
    second.grads = {"w": np.array([2.0, 2.0])}
    opt = xpcnn.SGD(0.1, momentum=0.5)
    opt.apply([first])
    opt.apply([second])
    np.testing.assert_allclose(second.params["w"], [0.8, 0.8], rtol=1e-12)
