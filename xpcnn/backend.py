"""Device selection: the only module of xpcnn that names CuPy.

``"cpu"`` gives NumPy's Array API namespace, ``"gpu"`` CuPy's namespace on the current CUDA
device, ``"auto"`` the GPU when one is usable and the CPU otherwise. The default comes from the
environment variable ``XPCNN_DEVICE``, else ``"cpu"``. CuPy is imported lazily, only when a GPU
is asked for.

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
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj, is_cupy_array, is_numpy_array
from array_api_compat import device as _device_of
from array_api_compat import to_device as _to_device

from .errors import DeviceError, InputError

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
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def memory_stats(self) -> dict:
        """GPU: bytes in use and bytes held by CuPy's memory pool. The pool keeps what it once held
        (until ``free_all_blocks``), so ``pool_bytes`` after a job is its high-water mark. CPU: {}."""
        if self.name != "gpu":
            return {}
        pool = _cupy().get_default_memory_pool()
        return {"used_bytes": int(pool.used_bytes()), "pool_bytes": int(pool.total_bytes())}

    def __str__(self) -> str:  # what users see in summaries and logs
        if self.name == "gpu":
            return f"gpu:{self.device.id} ({gpu_name(self.device.id)})"
        return self.name


def default_device() -> str:
    """The device name from ``XPCNN_DEVICE``, else ``"cpu"``."""
    return os.environ.get("XPCNN_DEVICE", "cpu").strip().lower() or "cpu"


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise DeviceError(
            "device='gpu' needs CuPy, which is not installed. Install the GPU extra, "
            "e.g. `pip install 'xpcnn[gpu]'` (a CuPy wheel matching your CUDA major version), "
            f"or use --device cpu. (import error: {exc})"
        ) from None
    return cupy


def gpu_problem() -> str | None:
    """Why no CUDA device is usable, or None when one is. Never raises."""
    try:
        cupy = _cupy()
    except DeviceError as exc:
        return str(exc)
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            return "CuPy is installed but CUDA reports no GPU (device count 0)."
        cupy.cuda.Device().compute_capability  # noqa: B018  (the current device; touches the driver)
        cupy.zeros(1).sum().item()
    except Exception as exc:  # CUDARuntimeError, CompileException, driver errors
        return (
            "CuPy is installed but no CUDA device is usable: "
            f"{type(exc).__name__}: {exc}. Use --device cpu, or check the NVIDIA driver "
            "(nvidia-smi) and that the CuPy wheel matches your CUDA version."
        )
    return None


def cupy_versions() -> str:
    """One line: CuPy's and the CUDA runtime's versions, or why CuPy is not available."""
    try:
        import cupy

        return f"CuPy {cupy.__version__}; CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}"
    except Exception as exc:  # ImportError, or a CUDA library problem
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"CuPy: not available ({type(exc).__name__}: {first})"


def gpu_name(index: int = 0) -> str:
    cupy = _cupy()
    props = cupy.cuda.runtime.getDeviceProperties(index)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


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
        name = "gpu" if gpu_problem() is None else "cpu"
    if name == "cpu":
        import array_api_compat.numpy as xp_np

        return Backend("cpu", xp_np, "cpu")
    problem = gpu_problem()
    if problem is not None:
        raise DeviceError(problem + ("" if device is not None else " (device 'gpu' came from XPCNN_DEVICE)"))
    import array_api_compat.cupy as xp_cp

    cupy = _cupy()
    return Backend("gpu", xp_cp, cupy.cuda.Device())


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


# ---------------------------------------------------------------- multi-process GPU plumbing
def is_gpu_array(x) -> bool:
    """Whether ``x`` is a CuPy array."""
    return is_cupy_array(x)


def gpu_count() -> int:
    return _cupy().cuda.runtime.getDeviceCount()


def use_gpu(index: int) -> None:
    """Make GPU ``index`` current for this process (before any allocation)."""
    _cupy().cuda.Device(index).use()


class GpuReducer:
    """Allreduce of CuPy buffers for :mod:`xpcnn.distributed`: NCCL, else CUDA-aware MPI, else via
    the host. ``comm`` is the distributed Communicator. UNTESTED on real GPUs (none was available)."""

    def __init__(self, comm, data_device, *, wrong_gpu, cuda_aware_mpi):
        cupy = _cupy()
        self.wrong_gpu = wrong_gpu

        self.c, self.cupy = comm, cupy
        self.device = cupy.cuda.Device().id
        self.nccl = self.nccl_comm = self.event = None
        # Collective, before NCCL starts, so that every rank raises or falls back alike.
        # The PCI bus id names the physical GPU: with CUDA_VISIBLE_DEVICES set per rank (Slurm's
        # --gpus-per-task) every rank sees its own GPU as device 0.
        bus = cupy.cuda.Device().pci_bus_id
        placed = comm.comm.allgather((comm.MPI.Get_processor_name(), self.device, data_device, bus))
        wrong = [r for r, (_, current, data, _) in enumerate(placed) if current != data]
        if wrong:
            raise self.wrong_gpu(wrong[0], placed[wrong[0]][2], placed[wrong[0]][1])
        shared = len({(host, pci) for host, _, _, pci in placed}) < len(placed)  # NCCL refuses two ranks on one GPU
        try:
            from cupy.cuda import nccl

            ok = bool(nccl.available) and not shared
        except Exception:  # ImportError, a missing libnccl
            ok = False
        ok = all(comm.comm.allgather(ok))  # all ranks use NCCL or none: a lone rank in it would hang
        if ok:
            uid = nccl.get_unique_id() if comm.rank == 0 else None  # passed on as CuPy made it
            uid = comm.comm.bcast(uid, root=0)
            with cupy.cuda.Device(self.device):
                self.nccl_comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
            self.nccl = nccl
            self.mode = "nccl"
        elif cuda_aware_mpi(comm.MPI):
            self.mode = "cuda-aware MPI"
        else:
            self.mode = "host"
            why = ("several ranks share a GPU" if shared else
                   "neither NCCL (cupy.cuda.nccl) nor a CUDA-aware MPI is available")
            warnings.warn(f"xpcnn.distributed: {why}; gradients go through the host for the allreduce (slower).",
                          RuntimeWarning, stacklevel=4)

    def allreduce(self, flat):
        if flat.device.id != self.device:
            raise self.wrong_gpu(self.c.rank, flat.device.id, self.device)
        stream = self.cupy.cuda.get_current_stream()
        if self.mode == "nccl":
            dtypes = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64,
                      "float16": self.nccl.NCCL_FLOAT16}
            # The previous step's allreduce must have finished: a watchdog lagging one step, so the
            # host never waits on the step it just queued.
            self._wait_event()
            self.nccl_comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, dtypes[str(flat.dtype)],
                                     self.nccl.NCCL_SUM, stream.ptr)
            self.event = self.cupy.cuda.Event(disable_timing=True)
            self.event.record(stream)
            self.c.done += 1
            return flat
        if self.mode == "cuda-aware MPI":
            stream.synchronize()  # MPI knows nothing of CuPy's stream
            self.c._wait(self.c.comm.Iallreduce(self.c.MPI.IN_PLACE, flat, op=self.c.MPI.SUM), "the gradient allreduce")
            return flat
        host = self.c._host_sum(self.cupy.asnumpy(flat))
        flat.set(host)
        return flat

    def _wait_event(self):
        if self.event is None:
            return
        start, pause = time.monotonic(), 1e-5
        while not self.event.done:
            if time.monotonic() - start > self.c.timeout:
                self.c.stop(f"no answer from the other ranks for {self.c.timeout:g} s (a rank probably died); "
                            "stopping (waiting in the NCCL gradient allreduce)")
            self.c._check_peers("the NCCL gradient allreduce")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)

    def abort(self):
        if self.nccl_comm is not None:
            try:
                self.nccl_comm.abort()
            except Exception:  # already broken: nothing more to release
                pass
