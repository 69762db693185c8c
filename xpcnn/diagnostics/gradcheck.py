"""Finite-difference gradient checks: the one implementation the library and the tests share.

The core takes a scalar function ``f`` of a host float64 array ``x`` and estimates entry i of
its gradient by the central difference

    D_h = (f(x + h·e_i) - f(x - h·e_i)) / 2h

which :func:`compare` sets against the analytic gradient g with the relative error

    ‖g - D‖ / max(‖g‖, ‖D‖)        over the checked entries.

A central difference has two errors: truncation, O(h²), and rounding, O(ε·|f| / h), which a
badly conditioned function amplifies (batch standardization of large values with a small spread,
say). So when the first step misses the bound, larger steps are tried with Richardson
extrapolation, (4·D(h/2) - D(h)) / 3, whose truncation error is O(h⁴), and the best is reported
with its h. A wrong gradient matches at no step size.

:func:`gradcheck` applies this to every parameter array of a model on the model's device, with
the model's own loss (``xpcnn gradcheck`` prints :func:`format_rows` of it).

Examples
--------
>>> import numpy as np
>>> x = np.array([1.0, -2.0, 0.5])
>>> err, h = compare(3 * x**2, lambda v: float(np.sum(v**3)), x)
>>> err < 1e-9, h
(True, 1e-06)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import to_numpy


def central_differences(f, x, flat=None, *, h=1e-6):
    """D_h of scalar ``f`` at host array ``x`` for the flat indices ``flat`` (default: all), 1-D.

    ``f`` receives a float64 array that is changed in place afterwards: it must not keep it.
    """
    work = np.array(x, dtype=np.float64)  # a fresh copy: the caller's x is never touched
    view = work.reshape(-1)
    flat = range(view.size) if flat is None else flat
    out = np.empty(len(flat))
    for j, i in enumerate(flat):
        old = view[i]
        view[i] = old + h
        up = f(work)
        view[i] = old - h
        down = f(work)
        view[i] = old
        out[j] = (up - down) / (2 * h)
    return out


def numeric_grad(f, x, *, h=1e-6):
    """The central-difference gradient of scalar ``f`` at host array ``x``, shaped like ``x``."""
    return central_differences(f, x, h=h).reshape(np.shape(x))


def richardson(f, x, flat=None, *, h):
    """(4·D(h/2) - D(h)) / 3: central differences with truncation error O(h⁴)."""
    return (4 * central_differences(f, x, flat, h=h / 2) - central_differences(f, x, flat, h=h)) / 3


def rel_error(analytic, numeric):
    """‖analytic - numeric‖ / max(‖analytic‖, ‖numeric‖); 0 when both are 0."""
    a, n = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    return float(np.linalg.norm(a - n) / max(np.linalg.norm(a), np.linalg.norm(n), 1e-300))


def compare(analytic, f, x, flat=None, *, steps=(1e-6,), bound=1e-6):
    """``(rel_error, h)`` of ``analytic`` (the gradient at ``flat``, or all of it) against ``f``'s
    central differences at ``x``.

    The first step is plain central differences; the later ones (the fallback, tried only while
    the bound is missed) use Richardson extrapolation. Returns the smallest error and its step.
    """
    a = np.asarray(analytic, np.float64).reshape(-1)
    best = None
    for k, h in enumerate(steps):
        numeric = central_differences(f, x, flat, h=h) if k == 0 else richardson(f, x, flat, h=h)
        err = rel_error(a, numeric)
        if best is None or err < best[0]:
            best = (err, h)
        if err <= bound:
            break
    return best


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


def gradcheck(model, x, y, *, entries=12, steps=(1e-6, 1e-5, 1e-4, 1e-3), bound=1e-6, seed=0):
    """Rows of :class:`GradRow`, one per parameter array of ``model`` (compiled; its loss is used).

    ``x``, ``y`` are device arrays. ``entries`` randomly drawn entries (``seed``) of each
    parameter array are checked; the parameters are left as they were.
    """
    loss_forward, loss_backward = model.loss_function.forward, model.loss_function.backward

    def loss_and_cache():
        model.reseed_dropout(model.seed, 0, 0)  # the same dropout mask for every evaluation
        return loss_forward(model.forward(x, training=True), y)

    model.backward(loss_backward(loss_and_cache()[1]))
    rng = np.random.default_rng(seed)
    rows = []
    for layer in model.layers:
        for name, p in layer.params.items():
            size = int(np.prod(p.shape))
            flat = [int(i) for i in rng.choice(size, size=min(entries, size), replace=False)]
            analytic = to_numpy(layer.grads[name]).reshape(-1)[flat]

            def loss_at(v, layer=layer, name=name):
                layer.params[name] = model.backend.asarray(np.array(v, dtype=layer.dtype))
                return float(loss_and_cache()[0])

            try:
                err, h = compare(analytic, loss_at, to_numpy(p), flat, steps=steps, bound=bound)
            finally:
                layer.params[name] = p
            rows.append(GradRow(layer.name, name, len(flat), err, bound, h))
    return rows


def format_rows(rows):
    lines = [f"{'layer':<16} {'param':<7} {'checked':>7} {'rel. error':>11} {'bound':>8} {'h':>6}  ok"]
    for r in rows:
        lines.append(f"{r.layer:<16} {r.param:<7} {r.checked:>7} {r.rel_error:>11.2e} {r.bound:>8.0e} {r.h:>6.0e}  "
                     f"{'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
