"""Finite-difference check of a whole model's parameter gradients, on the model's device.

For every parameter array, a few entries p_i are perturbed and the loss's central difference

    (E(p_i + h) - E(p_i - h)) / 2h

is compared with the gradient backpropagation computed. The error of an array is
``‖analytic − numeric‖ / max(‖analytic‖, ‖numeric‖)`` over the checked entries. In float64 with
h = 1e-6, a correct gradient gives ~1e-9; the default bound is 1e-6. (``xpcnn gradcheck`` prints
this table.)
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

    @property
    def ok(self):
        return self.rel_error <= self.bound


def _loss(model, x, y):
    model.reseed_dropout(model.seed, 0, 0)  # the same dropout mask for every evaluation
    out = model.forward(x, training=True)
    loss, cache = model._loss_fns()[0](out, y)
    return loss, cache


def gradcheck(model, x, y, *, entries=12, h=1e-6, bound=1e-6, seed=0):
    """Rows of :class:`GradRow`, one per parameter array. ``x``, ``y`` are device arrays."""
    loss, cache = _loss(model, x, y)
    model.backward(model._loss_fns()[1](cache))
    rng = np.random.default_rng(seed)
    rows = []
    for layer in model.layers:
        for name, p in layer.params.items():
            analytic_all = to_numpy(layer.grads[name])
            flat_n = int(np.prod(p.shape))
            picks = rng.choice(flat_n, size=min(entries, flat_n), replace=False)
            analytic, numeric = [], []
            for flat in picks:
                idx = tuple(int(i) for i in np.unravel_index(flat, tuple(p.shape)))
                old = float(p[idx])
                p[idx] = old + h
                up = float(_loss(model, x, y)[0])
                p[idx] = old - h
                down = float(_loss(model, x, y)[0])
                p[idx] = old
                numeric.append((up - down) / (2 * h))
                analytic.append(float(analytic_all[idx]))
            a, n = np.asarray(analytic), np.asarray(numeric)
            err = float(np.linalg.norm(a - n) / max(np.linalg.norm(a), np.linalg.norm(n), 1e-300))
            rows.append(GradRow(layer.name, name, len(picks), err, bound))
    return rows


def format_rows(rows):
    lines = [f"{'layer':<16} {'param':<7} {'checked':>7} {'rel. error':>11} {'bound':>8}  ok"]
    for r in rows:
        lines.append(f"{r.layer:<16} {r.param:<7} {r.checked:>7} {r.rel_error:>11.2e} {r.bound:>8.0e}  {'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
