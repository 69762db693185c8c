"""Gradient-descent optimizers. Their state (velocities, moments) lives on the parameter's device.

SGD (Keras' formulation)
    v ← μ·v − η·g ;  p ← p + v                      (momentum μ; plain gradient descent when μ = 0)
    Nesterov:        p ← p + μ·v − η·g
Adam (Kingma & Ba, with bias correction folded into the step size, as Keras does)
    m ← β₁·m + (1−β₁)·g ;  v ← β₂·v + (1−β₂)·g²
    p ← p − η·sqrt(1−β₂ᵗ)/(1−β₁ᵗ) · m / (sqrt(v) + ε)

Learning-rate schedule: ``epoch_decay`` multiplies the rate once per epoch,
η_e = η · decay^e (epoch e counted from 0), the usual step decay. ``fit`` sets the epoch, so a
resumed run continues on the same schedule.

Parameters are updated in place (the optimizer owns that step); kernels never mutate inputs.

Examples
--------
>>> opt = SGD(learning_rate=0.1, momentum=0.9)
>>> opt.get_config()
{'class': 'SGD', 'learning_rate': 0.1, 'momentum': 0.9, 'nesterov': False, 'epoch_decay': 1.0}
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace

from .backend import to_numpy
from .errors import InputError


def _positive(name, value, *, allow_zero=False, upper=None):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0) and (upper is None or value < upper)
    if not ok:
        bound = "a finite number >= 0" if allow_zero else "a finite number > 0"
        bound += f" and < {upper}" if upper is not None else ""
        raise InputError(f"The `{name}` argument must be {bound}. Received {name}={value!r}")
    return float(value)


class Optimizer:
    """Base class. ``apply(layers)`` updates every layer's params from its grads."""

    def __init__(self, learning_rate, epoch_decay=1.0):
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.epoch_decay = _positive("epoch_decay", epoch_decay)
        self.epoch = 0
        self.iterations = 0
        self.slots = {}  # slot name -> {"<layer index>/<param name>": array on the device}

    @property
    def current_learning_rate(self):
        """The rate used now: ``learning_rate · epoch_decay ** epoch``."""
        return self.learning_rate * self.epoch_decay**self.epoch

    def _slot(self, name, key, like):
        table = self.slots.setdefault(name, {})
        if key not in table:
            xp = array_namespace(like)
            table[key] = xp.zeros_like(like)
        return table[key]

    def apply(self, layers):
        self.iterations += 1
        for i, layer in enumerate(layers):
            for name, p in layer.params.items():
                self._update(f"{i}/{name}", p, layer.grads[name])

    def _update(self, key, p, g):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    # -- checkpoints: host arrays, loaded back onto any device ---------------------------------
    def get_state(self):
        arrays = {f"{slot}/{key}": to_numpy(a) for slot, table in self.slots.items() for key, a in table.items()}
        return {"iterations": self.iterations}, arrays

    def set_state(self, meta, arrays, backend, dtype):
        self.iterations = int(meta.get("iterations", 0))
        self.slots = {}
        for full, a in arrays.items():
            slot, key = full.split("/", 1)
            self.slots.setdefault(slot, {})[key] = backend.asarray(np.asarray(to_numpy(a), dtype=dtype))


class SGD(Optimizer):
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, epoch_decay=1.0):
        super().__init__(learning_rate, epoch_decay)
        self.momentum = _positive("momentum", momentum, allow_zero=True, upper=1.0)
        self.nesterov = bool(nesterov)

    def _update(self, key, p, g):
        lr = self.current_learning_rate
        if self.momentum == 0.0:
            p -= lr * g
            return
        v = self._slot("velocity", key, p)
        step = lr * g
        v *= self.momentum
        v -= step
        if self.nesterov:
            p += self.momentum * v - step
        else:
            p += v

    def get_config(self):
        return {"class": "SGD", "learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov, "epoch_decay": self.epoch_decay}


class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, epoch_decay=1.0):
        super().__init__(learning_rate, epoch_decay)
        self.beta_1 = _positive("beta_1", beta_1, allow_zero=True, upper=1.0)
        self.beta_2 = _positive("beta_2", beta_2, allow_zero=True, upper=1.0)
        self.epsilon = _positive("epsilon", epsilon)

    def apply(self, layers):
        t = self.iterations + 1
        self._step = self.current_learning_rate * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        super().apply(layers)

    def _update(self, key, p, g):
        xp = array_namespace(p)
        m = self._slot("m", key, p)
        v = self._slot("v", key, p)
        m *= self.beta_1
        m += (1.0 - self.beta_1) * g
        v *= self.beta_2
        v += (1.0 - self.beta_2) * (g * g)
        p -= self._step * m / (xp.sqrt(v) + self.epsilon)

    def get_config(self):
        return {"class": "Adam", "learning_rate": self.learning_rate, "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "epoch_decay": self.epoch_decay}


OPTIMIZERS = {"SGD": SGD, "Adam": Adam}


def get(spec, learning_rate=None, epoch_decay=1.0):
    """An optimizer from an instance, a config dict, or a name: "sgd", "momentum" (SGD 0.9), "adam"."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        cls = OPTIMIZERS.get(cfg.pop("class", None))
        if cls is None:
            raise InputError(f"Unknown optimizer config {spec!r}. Expected 'class' in {sorted(OPTIMIZERS)}.")
        return cls(**cfg)
    name = str(spec).lower()
    if name == "sgd":
        return SGD(0.01 if learning_rate is None else learning_rate, epoch_decay=epoch_decay)
    if name == "momentum":
        return SGD(0.01 if learning_rate is None else learning_rate, momentum=0.9, epoch_decay=epoch_decay)
    if name == "adam":
        return Adam(0.001 if learning_rate is None else learning_rate, epoch_decay=epoch_decay)
    raise InputError(f"Unknown optimizer {spec!r}. Expected one of 'sgd', 'momentum', 'adam'.")
