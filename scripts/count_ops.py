#!/usr/bin/env python3
"""Count the array operations of one LeNet training step: the GPU's kernel-launch budget, on a CPU.

On a GPU every array operation xpcnn asks for (an elementwise op, a matmul, a reduction, a copy
into a slice, a ``zeros``) is at least one kernel launch, and at LeNet's sizes a step is bound by
launches (~5–20 µs of host time each on CuPy), not by arithmetic. This script runs one training
step on array-api-strict (the standard's reference namespace, whose operations are Python
functions and so can be counted) and counts the calls that xpcnn's code makes into it, by phase:
forward, loss, backward, optimizer. Views (reshape, permute_dims, basic slicing) and
uninitialised allocations (``empty``) are counted apart: CuPy makes them without a kernel, except
that reshaping a non-contiguous array copies (a few times a step: the count is a floor by that
much).

    python scripts/count_ops.py [--batch-size 128] [--json-out ops.json]

Prints a table and writes JSON. The count is exact and repeatable (no timing involved); what a
launch costs must be measured on the GPU (scripts/gpu_check.sh, P3).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import array_api_strict as xps  # noqa: E402

from xpcnn import functional as F  # noqa: E402
from xpcnn.backend import Backend  # noqa: E402
from xpcnn.presets import build_model, get_preset  # noqa: E402

STRICT_DIR = os.path.dirname(xps.__file__)
# Calls that launch nothing on CuPy: metadata, namespace look-ups, and views of existing memory.
METADATA = {"shape", "dtype", "device", "ndim", "size", "T", "mT", "__array_namespace__", "__hash__",
            "__index__", "__len__", "isdtype", "result_type", "can_cast", "finfo", "iinfo", "__init__",
            "_new"}
VIEWS = {"reshape", "permute_dims", "matrix_transpose", "__getitem__", "expand_dims", "squeeze",
         "empty", "empty_like"}  # (reshape copies a non-contiguous array: a few a step, counted as views)


NOT_ARRAYS = ("_devices.py", "_dtypes.py")  # devices and dtypes compared: no array involved


def _strict(frame):
    return frame is not None and frame.f_code.co_filename.startswith(STRICT_DIR)


def _name(frame):
    """The standard's name of the function a frame runs (array-api-strict makes the elementwise
    functions from templates and wraps some in decorators, so the code's own name is generic)."""
    local = frame.f_locals
    if isinstance(local.get("func_name"), str):
        return local["func_name"]
    for key in ("func", "f", "wrapped"):
        fn = local.get(key)
        if callable(fn) and getattr(fn, "__code__", None) is not None:
            return inspect.getclosurevars(fn).nonlocals.get("func_name", fn.__name__)
    return frame.f_code.co_name


class OpCounter:
    """sys.setprofile hook: counts the calls from outside array-api-strict into it, by function name."""

    def __init__(self):
        self.calls = Counter()

    def __call__(self, frame, event, arg):
        if event != "call" or not _strict(frame) or _strict(frame.f_back):
            return  # not array-api-strict, or array-api-strict calling itself (part of one operation)
        if not frame.f_code.co_filename.endswith(NOT_ARRAYS):
            self.calls[_name(frame)] += 1

    def split(self):
        kernels = {k: v for k, v in self.calls.items() if k not in METADATA and k not in VIEWS}
        views = {k: v for k, v in self.calls.items() if k in VIEWS}
        return kernels, views


def counted(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` and the OpCounter of the calls it made."""
    counter, previous = OpCounter(), sys.getprofile()
    sys.setprofile(counter)
    try:
        out = fn(*args, **kwargs)
    finally:
        sys.setprofile(previous)  # a profiler that was running goes on
    return out, counter


def step_phases(model, x, y):
    """The counts of one training step, phase by phase (as Sequential.train_step runs them), and whole."""
    fwd, bwd, _ = F.LOSSES[model.loss]
    phases = {}
    out, phases["forward"] = counted(model.forward, x, training=True)
    (_, cache), phases["loss"] = counted(fwd, out, y)
    dout, loss_backward = counted(bwd, cache)
    phases["loss"].calls.update(loss_backward.calls)  # the loss: forward and backward
    _, phases["backward"] = counted(model.backward, dout)
    _, phases["optimizer"] = counted(model.optimizer.apply, [layer for layer in model.layers if layer.params])
    _, phases["whole train_step"] = counted(model.train_step, x, y)
    return phases


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--json-out", default="ops-per-step.json")
    args = p.parse_args(argv)

    backend = Backend("strict", xps, xps.Device("CPU_DEVICE"))
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((args.batch_size, 1, 28, 28)), "float32")
    y = backend.asarray(rng.integers(0, 10, args.batch_size), "int64")
    rows = []
    for optimizer in ("adam", "momentum", "sgd"):
        model = build_model(get_preset("lenet"), device=backend, dtype="float32", seed=0)
        model.compile(optimizer, loss="softmax_cross_entropy")
        model.train_step(x, y)  # the first step creates the optimizer's state: not a typical step
        for phase, counter in step_phases(model, x, y).items():
            if optimizer != "adam" and phase not in ("optimizer", "whole train_step"):
                continue  # the same for every optimizer
            kernels, views = counter.split()
            rows.append({"optimizer": optimizer, "phase": phase, "kernels": sum(kernels.values()),
                         "views": sum(views.values()), "by_name": dict(Counter(kernels).most_common())})

    print(f"LeNet-5 (lenet preset), batch {args.batch_size}: array operations xpcnn asks for in one training step")
    print(f"{'optimizer':<10} {'phase':<17} {'kernels':>8} {'views':>6}  most frequent")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in list(r["by_name"].items())[:5])
        print(f"{r['optimizer']:<10} {r['phase']:<17} {r['kernels']:>8} {r['views']:>6}  {top}")
    Path(args.json_out).write_text(json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=2))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
