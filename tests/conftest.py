"""One test body for every backend: the ``case`` fixture.

Backends: NumPy (float32); array-api-strict on its default device (float64) and on a second
simulated device (float32: catches arrays created without ``device=``, the bug that breaks CuPy);
CuPy when a CUDA device is usable (float32 and float64, marked ``gpu``; skipped with the reason
otherwise, or failed with it when XPCNN_REQUIRE_GPU=1, as scripts/gpu_check.sh sets: a GPU run
must not pass by skipping). Gradient checks always run in float64 on the case's device.

The functional-kernel tests (tests/test_functional.py) also run on PyTorch CPU through
``array_api_compat.torch`` (float64 and float32) where torch is importable, skipped with the
reason otherwise: a third array library that catches NumPy-only habits in the kernels. Torch is
an optional test peer, never a runtime dependency; layer and model tests keep the matrix above.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from xpcnn.backend import Backend, gpu_problem, to_numpy

# Fuzz tests: the default profile replays the same examples every run (a CI result never depends
# on luck); HYPOTHESIS_PROFILE=explore draws new random inputs on every run, to find new bugs.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


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
    skip = problem and os.environ.get("XPCNN_REQUIRE_GPU", "0") in ("", "0")
    marks = [pytest.mark.gpu] + ([pytest.mark.skip(reason=f"cupy backend: {problem}")] if skip else [])
    for dt in ("float32", "float64"):
        if problem:
            out.append(pytest.param(None, id=f"cupy-{dt}", marks=marks))
        else:
            from xpcnn.backend import get_backend

            out.append(pytest.param(Case(get_backend("gpu"), dt), id=f"cupy-{dt}", marks=marks))
    return out


TORCH_MODULES = ("test_functional",)  # test modules whose ``case`` matrix includes PyTorch CPU


def _torch_cases():
    try:
        import array_api_compat.torch as xp_torch
        import torch
    except ImportError as exc:
        skip = pytest.mark.skip(reason=f"torch backend: torch is not importable ({exc}); an optional test peer")
        return [pytest.param(None, id=f"torch-{dt}", marks=skip) for dt in ("float64", "float32")]
    be = Backend("torch", xp_torch, torch.device("cpu"))
    return [pytest.param(Case(be, dt), id=f"torch-{dt}") for dt in ("float64", "float32")]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        torch = metafunc.module.__name__.rsplit(".", 1)[-1] in TORCH_MODULES
        metafunc.parametrize("case", _cases() + (_torch_cases() if torch else []), indirect=True)


@pytest.fixture
def case(request):
    if request.param is None:  # a cupy case, not skipped: XPCNN_REQUIRE_GPU is set
        pytest.fail(f"XPCNN_REQUIRE_GPU is set but the cupy backend is unusable: {gpu_problem()}")
    return request.param


@pytest.fixture
def rng(request):
    # fresh, distinct per test, and the same in every run and process (not hash(): it is salted),
    # so a failure seen once, on a GPU say, can be replayed with the same numbers anywhere
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def mnist_dir():
    d = os.environ.get("XPCNN_DATA_DIR")
    if not d or not (Path(d) / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST not found: set XPCNN_DATA_DIR to a folder with the four gzip IDX files")
    return Path(d)


def write_idx(path, array):
    """Write ``array`` (uint8) as a gzip IDX file, the LeCun format."""
    import gzip
    import struct

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


def make_digits(rng, n):
    """Learnable fake digits: class k is a bright bar at row 2k+4 plus noise."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    for k in range(10):
        images[labels == k, 2 * k + 4 : 2 * k + 7, 4:24] = 230
    return images, labels


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A folder with the four MNIST IDX files holding 2,000 + 400 generated digits."""
    folder = tmp_path_factory.mktemp("tiny-mnist")
    rng = np.random.default_rng(1234)
    for split, n in (("train", 2000), ("t10k", 400)):
        images, labels = make_digits(rng, n)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder
