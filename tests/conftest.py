"""One test body for every backend: the ``case`` fixture.

Backends: NumPy (float32); array-api-strict on its default device (float64) and on a second
simulated device (float32: catches arrays created without ``device=``, the bug that breaks CuPy);
CuPy when a CUDA device is usable (float32 and float64, marked ``gpu``; skipped with the reason
otherwise). Gradient checks always run in float64 on the case's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from xpcnn.backend import Backend, gpu_problem, to_numpy


@dataclass(frozen=True)
class Case:
    backend: Backend
    dtype: str

    @property
    def xp(self):
        return self.backend.xp

    def asarray(self, a, dtype=None):
        return self.backend.asarray(np.asarray(a), dtype=dtype or self.dtype)

    def rtol(self, dtype=None):
        return {"float32": 2e-4, "float64": 1e-10}[dtype or self.dtype]

    def check(self, arr, shape, dtype=None):
        """Namespace, device, dtype and shape first; then hand back a NumPy copy for values."""
        assert self.backend.owns(arr), f"array escaped its backend/device: {type(arr)}"
        assert arr.dtype == self.backend.dtype(dtype or self.dtype), arr.dtype
        assert tuple(arr.shape) == tuple(shape), (tuple(arr.shape), tuple(shape))
        return to_numpy(arr)


def _cases():
    import array_api_compat.numpy as xp_np
    import array_api_strict as xps

    out = [
        pytest.param(Case(Backend("cpu", xp_np, "cpu"), "float32"), id="numpy-float32"),
        pytest.param(Case(Backend("strict", xps, xps.Device("CPU_DEVICE")), "float64"), id="strict-float64"),
        pytest.param(Case(Backend("strict", xps, xps.Device("device1")), "float32"), id="strict-device1-float32"),
    ]
    problem = gpu_problem()
    marks = [pytest.mark.gpu] + ([pytest.mark.skip(reason=f"cupy backend: {problem}")] if problem else [])
    for dt in ("float32", "float64"):
        if problem:
            out.append(pytest.param(None, id=f"cupy-{dt}", marks=marks))
        else:
            from xpcnn.backend import get_backend

            out.append(pytest.param(Case(get_backend("gpu"), dt), id=f"cupy-{dt}", marks=marks))
    return out


@pytest.fixture(params=_cases())
def case(request):
    return request.param


@pytest.fixture
def rng(request):
    # fresh, seeded, distinct per test
    return np.random.default_rng(abs(hash(request.node.nodeid)) % 2**32)


@pytest.fixture(scope="session")
def mnist_dir():
    d = os.environ.get("XPCNN_DATA_DIR")
    if not d or not (Path(d) / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not found: set XPCNN_DATA_DIR to a folder with the four gzip IDX files")
    return Path(d)
