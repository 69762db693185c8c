"""Everything that names CuPy: the GPU probe, the namespace and device, streams, memory, NCCL.

The only module of xpcnn that imports CuPy, and only inside functions, when a GPU is asked
for: ``import xpcnn`` works without CuPy installed.
"""

from __future__ import annotations

import time
import warnings

from ..errors import DeviceError


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


def namespace_and_device():
    """(``array_api_compat.cupy``, the current CUDA device) for a GPU :class:`~xpcnn.backend.Backend`."""
    import array_api_compat.cupy as xp_cp

    return xp_cp, _cupy().cuda.Device()


def synchronize() -> None:
    """Wait for the work queued on the current stream."""
    _cupy().cuda.get_current_stream().synchronize()


def memory_stats() -> dict:
    """Bytes in use and bytes held by CuPy's memory pool (its high-water mark after a job)."""
    pool = _cupy().get_default_memory_pool()
    return {"used_bytes": int(pool.used_bytes()), "pool_bytes": int(pool.total_bytes())}


def gpu_count() -> int:
    return _cupy().cuda.runtime.getDeviceCount()


def use_gpu(index: int) -> None:
    """Make GPU ``index`` current for this process (before any allocation)."""
    _cupy().cuda.Device(index).use()


class GpuReducer:
    """Allreduce of CuPy buffers for :mod:`xpcnn.parallel.mpi`: NCCL, else CUDA-aware MPI, else via
    the host. ``comm`` is the :class:`~xpcnn.parallel.mpi.MPICommunicator`; only its public methods
    are used (``allgather``, ``bcast``, ``processor_name``, ``sum_in_place``, ``count_collective``,
    ``check_peers``, ``stop``, ``timeout``)."""

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
        placed = comm.allgather((comm.processor_name(), self.device, data_device, bus))
        wrong = [r for r, (_, current, data, _) in enumerate(placed) if current != data]
        if wrong:
            raise self.wrong_gpu(wrong[0], placed[wrong[0]][2], placed[wrong[0]][1])
        shared = len({(host, pci) for host, _, _, pci in placed}) < len(placed)  # NCCL refuses two ranks on one GPU
        try:
            from cupy.cuda import nccl

            ok = bool(nccl.available) and not shared
        except Exception:  # ImportError, a missing libnccl
            ok = False
        ok = all(comm.allgather(ok))  # all ranks use NCCL or none: a lone rank in it would hang
        if ok:
            uid = nccl.get_unique_id() if comm.rank == 0 else None  # passed on as CuPy made it
            uid = comm.bcast(uid)
            with cupy.cuda.Device(self.device):
                self.nccl_comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
            self.nccl = nccl
            self.mode = "nccl"
        elif cuda_aware_mpi():
            self.mode = "cuda-aware MPI"
        else:
            self.mode = "host"
            why = ("several ranks share a GPU" if shared else
                   "neither NCCL (cupy.cuda.nccl) nor a CUDA-aware MPI is available")
            warnings.warn(f"xpcnn.parallel.mpi: {why}; gradients go through the host for the allreduce (slower).",
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
            self.c.count_collective()
            return flat
        if self.mode == "cuda-aware MPI":
            stream.synchronize()  # MPI knows nothing of CuPy's stream
            self.c.sum_in_place(flat, "the gradient allreduce")
            return flat
        host = self.c.sum_in_place(self.cupy.asnumpy(flat), "the gradient allreduce")
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
            self.c.check_peers("the NCCL gradient allreduce")
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)

    def abort(self):
        if self.nccl_comm is not None:
            try:
                self.nccl_comm.abort()
            except Exception:  # already broken: nothing more to release
                pass
