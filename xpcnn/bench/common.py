"""Shared pieces of the benchmarks: row records, the LeNet under test, FLOP counting, data."""

from __future__ import annotations

import importlib.util
import resource
import statistics
import time
from pathlib import Path

from ..data import load_dataset, prepare_images
from ..presets import PRESETS, build_model

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
CPU_WORKLOADS = ("P1", "P2", "P4", "P5")
GPU_WORKLOADS = ("P3", "P4", "P5")
BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# -- shared helpers --------------------------------------------------------------------------------
def _script(name):
    """Import ``scripts/<name>.py`` of this checkout, or None when it is not there."""
    path = SCRIPTS / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"_xpcnn_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "samples": list(values)}


def _row(workload, name, values, unit, ratio="", **extra):
    return {"workload": workload, "name": name, **_stats(values), "unit": unit, "ratio": ratio, **extra}


def _note(workload, name, text):
    return {"workload": workload, "name": name, "median": None, "min": None, "max": None, "unit": "",
            "ratio": "", "note": text}


def lenet(device="cpu", seed=0):
    """The ``lenet`` preset: Conv2D(6, 5, same, relu), pool, Conv2D(16, 5, relu), pool, 120, 84, 10."""

    return build_model(PRESETS["lenet"], device=device, seed=seed)


def training_flops_per_image(model):
    """FLOPs of one training step per image: 2 x MACs of forward, ∂kernel and (where needed) ∂x."""

    macs, shape = 0, model.input_shape
    for layer in model.layers:
        macs += layer.multiply_adds(shape) * (3 if layer.need_input_grad else 2)
        shape = layer.output_shape(shape)
    return 2 * macs


def sgemm_gflops(n=2048, repeats=3):
    """This process's float32 matmul rate (GFLOP/s) on an n x n x n product, best of ``repeats``."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn, sync=None):
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def _mnist(data_dir, n_train=None, n_test=0):

    ds = load_dataset("mnist", data_dir, download=False, progress=False)
    n_train = len(ds.y_train) if n_train is None else n_train
    return (prepare_images(ds.x_train[:n_train]), ds.y_train[:n_train].astype("int64"),
            prepare_images(ds.x_test[:n_test]), ds.y_test[:n_test].astype("int64"))


def _batch(data_dir, n, seed=0):
    """``n`` MNIST training images and labels (random stand-ins when MNIST is not found)."""
    import numpy as np

    try:
        x, y, _, _ = _mnist(data_dir, n)
        if len(y) == n:
            return x, y, "mnist"
    except Exception:  # DataError, missing folder: throughput does not depend on pixel values
        pass
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n), "random"



def _vm_rss_mb(field="VmRSS"):
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _vm_peak_mb():
    """This process's peak resident memory since its exec (VmHWM), MB; ru_maxrss as a fallback."""
    peak = _vm_rss_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

