"""``xpcnn check``: the same computation on two devices, compared number by number.

From one seed (initial weights drawn on the host, so identical on both devices) and one batch
sequence, both devices run: a forward pass (logits, loss), a backward pass (every gradient), then
``steps`` plain-SGD steps (every parameter after them). For each quantity the report gives the
largest absolute difference and the normwise relative difference ``‖a − b‖∞ / ‖a‖∞``.

Bounds: two float32 implementations differ only by rounding (BLAS libraries sum in different
orders). Measured on the CPU, float32 against float64 for ``lenet`` (batch 32, SGD 0.01): at most
5.5e-7 relative on logits, loss and gradients, and 8.1e-7 on every parameter after 100 steps. Two
float32 devices should therefore agree to ~2e-6; the stated bound, 1e-4, leaves a factor 50 for
the odd ReLU or max-pool decision that flips between devices. float64: 1e-9.

Devices: "cpu", "gpu", "auto", or, for testing without a GPU, "strict" / "strict:device1"
(array-api-strict, if installed).
"""

from __future__ import annotations

import numpy as np

from ..backend import Backend, get_backend, to_numpy
from ..errors import InputError
from ..presets import build_model, get_preset, targets

BOUNDS = {"float32": 1e-4, "float64": 1e-9}


def resolve(name):
    if name.startswith("strict"):
        try:
            import array_api_strict as xps
        except ImportError:
            raise InputError("device 'strict' needs array-api-strict (pip install array-api-strict).") from None
        dev = name.split(":", 1)[1] if ":" in name else "CPU_DEVICE"
        return Backend(name, xps, xps.Device(dev))
    return get_backend(name)


def _diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    absdiff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    return absdiff, absdiff / scale if scale > 0 else absdiff


def _run(backend, preset, steps, batch_size, dtype, seed, data):
    model = build_model(preset, device=backend, dtype=dtype, seed=seed)
    model.compile("sgd", loss=preset["loss"], learning_rate=preset["learning_rate"] if preset["optimizer"] == "sgd"
                  else 0.01)
    x, y = data
    xb = backend.asarray(x[:batch_size])
    yb = backend.asarray(y[:batch_size])
    out = model.forward(xb)
    loss, cache = model.loss_function.forward(out, yb)
    model.backward(model.loss_function.backward(cache))
    first = {"logits": to_numpy(out), "loss": to_numpy(loss)}
    first.update({f"grad {layer.name}.{k}": to_numpy(g) for layer in model.layers for k, g in layer.grads.items()})
    n = len(x)
    for step in range(steps):
        lo = (step * batch_size) % (n - batch_size + 1)
        model.train_step(backend.asarray(x[lo:lo + batch_size]), backend.asarray(y[lo:lo + batch_size]))
    after = {f"param {layer.name}.{k}": to_numpy(p) for layer in model.layers for k, p in layer.params.items()}
    return first, after


def parity(preset_name, devices, *, steps=100, batch_size=32, dtype="float32", seed=0, rtol=None):
    preset = get_preset(preset_name)
    backends = [resolve(d) for d in devices]
    rng = np.random.default_rng(seed)
    n = batch_size * 4
    x = rng.random((n, *preset["input_shape"])).astype(dtype)
    y = targets(rng.integers(0, 10, n), preset["task"])
    if y.dtype.kind == "f":
        y = y.astype(dtype)
    runs = [_run(be, preset, steps, batch_size, dtype, seed, (x, y)) for be in backends]
    bound = BOUNDS[dtype] if rtol is None else rtol
    rows = []
    for part in (0, 1):
        for key in runs[0][part]:
            absdiff, rel = _diff(runs[0][part][key], runs[1][part][key])
            rows.append({"quantity": key, "max_abs": absdiff, "rel": rel, "ok": rel <= bound})
    return {"preset": preset_name, "devices": [str(b) for b in backends], "dtype": dtype, "steps": steps,
            "batch_size": batch_size, "bound": bound, "rows": rows, "ok": all(r["ok"] for r in rows)}


def format_report(report):
    lines = [f"Parity of preset {report['preset']}: {report['devices'][0]} vs {report['devices'][1]}, "
             f"{report['dtype']}, batch {report['batch_size']}; parameters after {report['steps']} SGD "
             f"step{'s' if report['steps'] != 1 else ''}",
             f"{'quantity':<28} {'max |a-b|':>11} {'relative':>11}  ok"]
    for r in report["rows"]:
        lines.append(f"{r['quantity']:<28} {r['max_abs']:>11.3e} {r['rel']:>11.3e}  {'yes' if r['ok'] else 'NO'}")
    worst = max(r["rel"] for r in report["rows"])
    lines.append(f"largest relative difference {worst:.3e} (bound {report['bound']:.0e}): "
                 + ("PASS" if report["ok"] else "FAIL"))
    return "\n".join(lines)
