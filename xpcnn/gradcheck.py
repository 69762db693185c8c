"""Finite-difference check of a whole model's parameter gradients, on the model's device.

For every parameter array, a few entries p_i are perturbed and the loss's central difference

    (E(p_i + h) - E(p_i - h)) / 2h

is compared with the gradient backpropagation computed. The error of an array is
``‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖)`` over the checked entries. In float64 with
h = 1e-6, a correct gradient gives ~1e-9; the default bound is 1e-6. (``xpcnn gradcheck`` prints
this table.)

A central difference has two errors: truncation, O(h²), and rounding, O(ε·|E| / h) — which a
badly conditioned layer amplifies (the tutorial's batch standardization divides values of ~900
by a spread of ~0.4). So when h = 1e-6 misses the bound, larger steps are tried with Richardson
extrapolation, (4·D(h/2) − D(h)) / 3, whose truncation error is O(h⁴), and the best is reported
with its h. A wrong gradient matches at no step size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backend import to_numpy


@dataclass
class GradRow:
    layer: str
    param: str
    checked: int
    rel_error: float
    bound: float
    h: float = 1e-6

    @property
    def ok(self):
        return self.rel_error <= self.bound


def _loss(model, x, y):
    model.reseed_dropout(model.seed, 0, 0)  # the same dropout mask for every evaluation
    out = model.forward(x, training=True)
    loss, cache = model.loss_function.forward(out, y)
    return loss, cache


def _central(model, x, y, p, idx, h):
    old = float(p[idx])
    p[idx] = old + h
    up = float(_loss(model, x, y)[0])
    p[idx] = old - h
    down = float(_loss(model, x, y)[0])
    p[idx] = old
    return (up - down) / (2 * h)


def _richardson(model, x, y, p, idx, h):
    if h <= 1e-6:
        return _central(model, x, y, p, idx, h)
    return (4 * _central(model, x, y, p, idx, h / 2) - _central(model, x, y, p, idx, h)) / 3


def gradcheck(model, x, y, *, entries=12, steps=(1e-6, 1e-5, 1e-4, 1e-3), bound=1e-6, seed=0):
    """Rows of :class:`GradRow`, one per parameter array. ``x``, ``y`` are device arrays."""
    loss, cache = _loss(model, x, y)
    model.backward(model.loss_function.backward(cache))
    rng = np.random.default_rng(seed)
    rows = []
    for layer in model.layers:
        for name, p in layer.params.items():
            analytic_all = to_numpy(layer.grads[name])
            flat_n = int(np.prod(p.shape))
            picks = [tuple(int(i) for i in np.unravel_index(f, tuple(p.shape)))
                     for f in rng.choice(flat_n, size=min(entries, flat_n), replace=False)]
            a = np.asarray([float(analytic_all[idx]) for idx in picks])
            best = None
            for h in steps:
                n = np.asarray([_richardson(model, x, y, p, idx, h) for idx in picks])
                err = float(np.linalg.norm(a - n) / max(np.linalg.norm(a), np.linalg.norm(n), 1e-300))
                if best is None or err < best[0]:
                    best = (err, h)
                if err <= bound:
                    break
            rows.append(GradRow(layer.name, name, len(picks), best[0], bound, best[1]))
    return rows


def format_rows(rows):
    lines = [f"{'layer':<16} {'param':<7} {'checked':>7} {'rel. error':>11} {'bound':>8} {'h':>6}  ok"]
    for r in rows:
        lines.append(f"{r.layer:<16} {r.param:<7} {r.checked:>7} {r.rel_error:>11.2e} {r.bound:>8.0e} {r.h:>6.0e}  "
                     f"{'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
