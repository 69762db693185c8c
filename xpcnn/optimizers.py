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

One update for all parameters: the gradients are laid end to end in one flat vector (one
``concat``), the rule above runs once on it and on flat state vectors, and each parameter then
takes its slice of the step. Elementwise, the arithmetic is the same as parameter by parameter
(bit for bit), but a step costs ~a dozen array operations instead of a dozen per parameter
array: on a GPU each operation is a kernel launch, and LeNet has ten parameter arrays (Adam: 22
operations a step instead of 120, counted by scripts/count_ops.py). Plain SGD has no state and
keeps going parameter by parameter (two operations each; the flat vector would only add a copy).
The state is saved per parameter
(``"m/0/kernel"``, ...), so checkpoints do not depend on the layout.

Examples
--------
>>> opt = SGD(learning_rate=0.1, momentum=0.9)
>>> opt.get_config()
{'class': 'SGD', 'learning_rate': 0.1, 'momentum': 0.9, 'nesterov': False, 'epoch_decay': 1.0}
"""

from __future__ import annotations

import math

import numpy as np
from array_api_compat import array_namespace, device

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
    """Base class. ``apply(layers)`` updates every layer's params from its grads.

    A subclass gives ``_step(g)``: the flat step to subtract for the flat gradient ``g``, using
    flat state from ``_slot(name, g)``.
    """

    stateless = False  # True: _step(g) needs no state, so it runs parameter by parameter

    def __init__(self, learning_rate, epoch_decay=1.0):
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.epoch_decay = _positive("epoch_decay", epoch_decay)
        self.epoch = 0
        self.iterations = 0
        self.slots = {}  # slot name -> one flat array on the device, laid out as self._layout
        self._layout = []  # [(key "<layer index>/<param name>", shape)] in the order of the flat vectors
        self._loaded = {}  # slot name -> {key: array}: state set per parameter, not yet laid out

    @property
    def current_learning_rate(self):
        """The rate used now: ``learning_rate · epoch_decay ** epoch``."""
        return self.learning_rate * self.epoch_decay**self.epoch

    def apply(self, layers):
        self.iterations += 1
        params = [(f"{i}/{name}", p, layer.grads[name]) for i, layer in enumerate(layers)
                  for name, p in layer.params.items()]
        if not params:
            return
        if self.stateless:  # plain gradient descent: the step of each parameter needs nothing else
            for _, p, g in params:
                p -= self._step(g)
            return
        xp = array_namespace(params[0][1])
        layout = [(key, tuple(p.shape)) for key, p, _ in params]
        if layout != self._layout:  # the first step (or new parameters): lay the state out anew
            self._loaded = self._per_parameter() or self._loaded
            self._layout, self.slots = layout, {}
        step = self._step(xp.concat([xp.reshape(g, (-1,)) for _, _, g in params]))
        for (_, p, _), (_, piece) in zip(params, self._pieces(step)):
            p -= piece

    def _slot(self, name, like):
        """Flat state ``name`` (zeros at first, or what set_state gave, laid out as the parameters)."""
        if name not in self.slots:
            xp = array_namespace(like)
            loaded = self._loaded.pop(name, {})
            if loaded:  # a parameter without state of its shape (new, or another model's) starts at 0
                self.slots[name] = xp.concat([
                    xp.reshape(loaded[key], (-1,)) if key in loaded and tuple(loaded[key].shape) == shape else
                    xp.zeros(_size(shape), dtype=like.dtype, device=device(like)) for key, shape in self._layout])
            else:
                self.slots[name] = xp.zeros_like(like)
        return self.slots[name]

    def _step(self, g):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    # -- checkpoints: host arrays, loaded back onto any device ---------------------------------
    def _pieces(self, flat):
        """``[(key, view)]``: a flat vector cut into one array per parameter, in layout order."""
        xp, start, pieces = array_namespace(flat), 0, []
        for key, shape in self._layout:
            stop = start + _size(shape)
            pieces.append((key, xp.reshape(flat[start:stop], shape)))
            start = stop
        return pieces

    def _per_parameter(self):
        """{slot: {key: array}}: the flat state cut back into one array per parameter."""
        return {name: dict(self._pieces(flat)) for name, flat in self.slots.items()}

    def get_state(self):
        tables = {**self._loaded, **self._per_parameter()}
        arrays = {f"{slot}/{key}": to_numpy(a) for slot, table in tables.items() for key, a in table.items()}
        return {"iterations": self.iterations}, arrays

    def set_state(self, meta, arrays, backend, dtype):
        self.iterations = int(meta.get("iterations", 0))
        self.slots, self._layout, self._loaded = {}, [], {}
        for full, a in arrays.items():
            slot, key = full.split("/", 1)
            # A copy: the arrays may be another optimizer's live state (get_state returns views).
            self._loaded.setdefault(slot, {})[key] = backend.asarray(np.array(to_numpy(a), dtype=dtype, copy=True))


def _size(shape):
    return math.prod(shape)


class SGD(Optimizer):
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, epoch_decay=1.0):
        super().__init__(learning_rate, epoch_decay)
        self.momentum = _positive("momentum", momentum, allow_zero=True, upper=1.0)
        self.nesterov = bool(nesterov)
        self.stateless = self.momentum == 0.0

    def _step(self, g):
        step = self.current_learning_rate * g
        if self.momentum == 0.0:
            return step
        v = self._slot("velocity", g)
        v *= self.momentum
        v -= step
        return step - self.momentum * v if self.nesterov else -v

    def get_config(self):
        return {"class": "SGD", "learning_rate": self.learning_rate, "momentum": self.momentum,
                "nesterov": self.nesterov, "epoch_decay": self.epoch_decay}


class Adam(Optimizer):
    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, epoch_decay=1.0):
        super().__init__(learning_rate, epoch_decay)
        self.beta_1 = _positive("beta_1", beta_1, allow_zero=True, upper=1.0)
        self.beta_2 = _positive("beta_2", beta_2, allow_zero=True, upper=1.0)
        self.epsilon = _positive("epsilon", epsilon)

    def _step(self, g):
        t = self.iterations
        size = self.current_learning_rate * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        xp = array_namespace(g)
        m = self._slot("m", g)
        v = self._slot("v", g)
        m *= self.beta_1
        m += (1.0 - self.beta_1) * g
        v *= self.beta_2
        v += (1.0 - self.beta_2) * (g * g)
        return size * m / (xp.sqrt(v) + self.epsilon)

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
