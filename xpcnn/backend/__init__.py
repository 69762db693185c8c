"""Device selection: ``"cpu"``/``"gpu"``/``"auto"`` to an Array API namespace and a device.

``"cpu"`` gives NumPy's Array API namespace, ``"gpu"`` CuPy's namespace on the current CUDA
device, ``"auto"`` the GPU when one is usable and the CPU otherwise. The default comes from the
environment variable ``XPCNN_DEVICE``, else ``"cpu"``. Everything that names CuPy lives in
:mod:`xpcnn.backend.cuda`, the only such module of xpcnn, which imports CuPy lazily, only when a
GPU is asked for.

Everything above this module works with a :class:`Backend` (a namespace plus a device) and never
imports NumPy or CuPy for model arrays. Host data (datasets, initial weights, checkpoints) are
NumPy arrays; :meth:`Backend.asarray` moves them to the device in one transfer and
:func:`to_numpy` brings any array back.

Examples
--------
>>> from xpcnn.backend import get_backend, to_numpy
>>> be = get_backend("cpu")
>>> x = be.asarray([[1.0, 2.0]], dtype="float32")
>>> to_numpy(x * 2).tolist()
[[2.0, 4.0]]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import array_api_compat.numpy as xp_numpy
import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_cupy_array, is_numpy_array
from array_api_compat import device as _device_of
from array_api_compat import to_device as _to_device

from ..errors import DeviceError, InputError
from . import cuda
from .cuda import cupy_versions, gpu_count, gpu_name, gpu_problem, use_gpu  # noqa: F401  (the public API)

DEVICES = ("cpu", "gpu", "auto")
DTYPES = ("float32", "float64")


@dataclass(frozen=True, eq=False)
class Backend:
    """An Array API namespace and a device of it.

    Parameters
    ----------
    name : str
        ``"cpu"``, ``"gpu"`` or a free-form label (tests use ``"strict"``).
    xp : module
        The Array API namespace (``array_api_compat.numpy``, ``array_api_compat.cupy``,
        ``array_api_strict``, ...).
    device : object
        A device object of ``xp``; arrays are created there.
    """

    name: str
    xp: Any
    device: Any = None

    def asarray(self, a, dtype=None):
        """Move host data (NumPy array, list, scalar) onto this backend in one transfer."""
        if isinstance(dtype, str):
            dtype = getattr(self.xp, dtype)
        # (CuPy arrays have no __array_namespace__: is_array_api_obj knows them anyway.)
        if isinstance(a, (np.ndarray, np.generic)) if self.name == "cpu" else not is_array_api_obj(a):
            return self.xp.asarray(a, dtype=dtype, device=self.device)
        if self.owns(a):  # already here: no round trip through the host
            return a if dtype is None else self.xp.astype(a, dtype)
        # An array of another namespace or device (a CuPy array for the CPU, say): through the
        # host, explicitly; NumPy itself refuses to convert a CuPy array implicitly.
        return self.xp.asarray(to_numpy(a), dtype=dtype, device=self.device)

    def __eq__(self, other):
        return (isinstance(other, Backend) and self.name == other.name and self.xp is other.xp
                and self.device == other.device)

    def __hash__(self):  # CuPy's Device objects are unhashable: hash what names the device instead
        return hash((self.name, id(self.xp), str(self.device)))

    def dtype(self, name: str):
        """The namespace's dtype object for ``"float32"``/``"float64"``/``"int64"``."""
        return getattr(self.xp, name)

    @cached_property
    def namespace(self):
        """What ``array_namespace`` returns for this backend's arrays (compat wrapper or strict)."""
        return array_namespace(self.xp.empty(0, device=self.device))

    def owns(self, x) -> bool:
        """Whether ``x`` is an array of this namespace on this device."""
        try:
            same_ns = array_namespace(x) is self.namespace
        except TypeError:
            return False
        return same_ns and _device_of(x) == self.device

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU); call before reading a clock."""
        if self.name == "gpu":
            cuda.synchronize()

    def memory_stats(self) -> dict:
        """GPU: bytes in use and bytes held by CuPy's memory pool. The pool keeps what it once held
        (until ``free_all_blocks``), so ``pool_bytes`` after a job is its high-water mark. CPU: {}."""
        if self.name != "gpu":
            return {}
        return cuda.memory_stats()

    def __str__(self) -> str:  # what users see in summaries and logs
        if self.name == "gpu":
            return f"gpu:{self.device.id} ({cuda.gpu_name(self.device.id)})"
        return self.name


def default_device() -> str:
    """The device name from ``XPCNN_DEVICE``, else ``"cpu"``."""
    return os.environ.get("XPCNN_DEVICE", "cpu").strip().lower() or "cpu"


def get_backend(device: str | Backend | None = None) -> Backend:
    """Resolve ``"cpu"``, ``"gpu"``, ``"auto"`` (or None: ``XPCNN_DEVICE``) to a :class:`Backend`.

    Raises
    ------
    DeviceError
        ``"gpu"`` without CuPy (install ``xpcnn[gpu]``), or with CuPy but no usable CUDA device
        (the message gives CUDA's reason).
    InputError
        Any other device name (a ValueError).
    """
    if isinstance(device, Backend):
        return device
    name = default_device() if device is None else str(device).strip().lower()
    if name not in DEVICES:
        raise InputError(
            f"Unknown device {name!r}{'' if device is not None else ' (from XPCNN_DEVICE)'}. "
            "Expected one of 'cpu', 'gpu', 'auto'."
        )
    if name == "auto":
        name = "gpu" if cuda.gpu_problem() is None else "cpu"
    if name == "cpu":
        return Backend("cpu", xp_numpy, "cpu")
    problem = cuda.gpu_problem()
    if problem is not None:
        raise DeviceError(problem + ("" if device is not None else " (device 'gpu' came from XPCNN_DEVICE)"))
    return Backend("gpu", *cuda.namespace_and_device())


def backend_of(x) -> Backend:
    """The backend an existing array lives on."""
    xp = array_namespace(x)
    if is_numpy_array(x):
        return Backend("cpu", xp, "cpu")
    if is_cupy_array(x):
        return Backend("gpu", xp, _device_of(x))
    return Backend(getattr(xp, "__name__", "array"), xp, _device_of(x))


def to_numpy(x) -> np.ndarray:
    """Any supported array (NumPy, CuPy, array-api-strict) as a host NumPy array.

    A NumPy input comes back as itself (no copy); copy it if you keep it while training goes on.
    """
    if isinstance(x, np.ndarray):
        return x
    if is_cupy_array(x):
        return x.get()
    if hasattr(x, "__dlpack__"):
        return np.array(np.from_dlpack(x), copy=True)
    return np.asarray(x)


def move(x, backend: Backend):
    """``x`` on ``backend``: a no-op when already there, else one explicit transfer."""
    if backend.owns(x):
        return x
    try:
        if array_namespace(x) is backend.namespace:
            return _to_device(x, backend.device)
    except TypeError:
        pass
    return backend.asarray(to_numpy(x))


# CUDA library errors that mean "could not allocate" (the class name, the status in its message):
# the runtime's, the driver's (e.g. loading a kernel module) and cuBLAS' (its workspace).
_CUDA_ALLOCATION_FAILURES = {"CUDARuntimeError": "cudaErrorMemoryAllocation",
                             "CUDADriverError": "CUDA_ERROR_OUT_OF_MEMORY",
                             "CUBLASError": "CUBLAS_STATUS_ALLOC_FAILED"}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device or host out-of-memory error.

    CuPy's memory pool raises ``OutOfMemoryError`` (a ``MemoryError``); the CUDA libraries raise
    their own error classes, matched here by name and status so that CuPy is never imported.
    Not "an illegal memory access": that CUDA error is sticky, nothing to fall back from.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    word = _CUDA_ALLOCATION_FAILURES.get(type(exc).__name__)
    return word is not None and word in str(exc)


def is_gpu_array(x) -> bool:
    """Whether ``x`` is a CuPy array."""
    return is_cupy_array(x)
