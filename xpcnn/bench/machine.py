"""The machine a benchmark ran on: CPU, usable cores, BLAS build, versions; the table's header."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import inspect
import os
import platform
from pathlib import Path

from ..backend.hostmem import MMAP_THRESHOLD, TRIM_THRESHOLD
from ..model import Sequential
from .common import BLAS_ENV


def usable_cores():
    """The cores this process may run on (its affinity mask), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def xpcnn_thread_mode():
    """How the thread sweep gives xpcnn threads: ``"fit"`` when ``Sequential.fit`` accepts
    ``threads=`` (data-parallel shards, one BLAS thread each), else ``"blas"`` (BLAS threads,
    set with threadpoolctl and OPENBLAS_NUM_THREADS)."""

    return "fit" if "threads" in inspect.signature(Sequential.fit).parameters else "blas"


def _dist_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def blas_build(blas, threadpools):
    """One line: the BLAS NumPy was built with and the kernels it picked on this CPU."""
    text = "unknown"
    if isinstance(blas, dict):
        text = f"{blas.get('name')} {blas.get('version')}"
        config = blas.get("openblas configuration")
        if config:
            text += f" ({config.split(None, 2)[-1]})"  # without "OpenBLAS <version>"
    if isinstance(threadpools, list):
        for pool in threadpools:
            if pool.get("user_api") == "blas":
                text += f"; runs {pool.get('internal_api')} {pool.get('architecture')} kernels, " \
                        f"{pool.get('threading_layer')}"
                break
    return text


def machine_info():
    import numpy as np

    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "affinity": usable_cores(), "usable_cores": usable_cores(),
            "worker_malloc": f"glibc mmap threshold {MMAP_THRESHOLD}, trim threshold {TRIM_THRESHOLD} "
                             "(xpcnn.backend.hostmem)"}
    try:
        fields = dict(ln.split(":", 1) for ln in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        info["cpu_model"] = fields.get("model name", platform.processor())
        info["cpu_family_model"] = f"family {fields.get('cpu family')} model {fields.get('model')}"
        info["avx512f"] = "avx512f" in fields.get("flags", "").split()
    except (OSError, ValueError):
        info["cpu_model"] = platform.processor()
    caches = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (idx / "level").read_text().strip(), (idx / "type").read_text().strip()
            caches[f"L{level} {kind}"] = (idx / "size").read_text().strip()
        except OSError:
            pass
    info["caches_per_cpu0"] = caches
    versions = {"numpy": np.__version__}
    # From the installed distributions: importing torch or CuPy here would only weigh on this
    # process (whose memory its workers would inherit at fork) and name CuPy outside backend/.
    for mod, dists in (("array_api_compat", ("array-api-compat",)), ("torch", ("torch",)),
                       ("cupy", ("cupy-cuda12x", "cupy-cuda13x", "cupy")), ("xpcnn", ("xpcnn",))):
        versions[mod] = next((v for v in map(_dist_version, dists) if v), None)
    info["versions"] = versions
    try:
        cfg = np.show_config(mode="dicts")
        info["blas"] = cfg.get("Build Dependencies", {}).get("blas")
    except Exception as exc:
        info["blas"] = f"unknown ({exc})"
    try:
        import threadpoolctl

        info["threadpools"] = threadpoolctl.threadpool_info()
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed; BLAS threads set via OPENBLAS_NUM_THREADS per worker"
    info["blas_build"] = blas_build(info["blas"], info["threadpools"])
    info["xpcnn_threads"] = xpcnn_thread_mode()
    info["blas_env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", *BLAS_ENV)}
    return info


def format_header(info):
    """The lines printed above the table: what machine, what BLAS, how threads were given."""
    v = info.get("versions", {})
    mode = {"fit": "fit(threads=N) by its own rule on t cores (N <= t shards of >= 25M multiply-adds; LeNet: "
                   "batch // 61), one BLAS thread each (N = 1: t BLAS threads)",
            "blas": "BLAS threads (threadpoolctl / OPENBLAS_NUM_THREADS); fit has no threads="}
    return "\n".join([
        f"# {info['date']}  {info.get('cpu_model')} ({info.get('cpu_family_model', '')}), "
        f"usable cores {info['usable_cores']} of {info['cpu_count']}",
        f"# BLAS: {info['blas_build']}",
        f"# numpy {v.get('numpy')}, torch {v.get('torch')}, xpcnn {v.get('xpcnn')}, python {info['python']}",
        f"# threads t: xpcnn via {mode[info['xpcnn_threads']]}; torch via torch.set_num_threads(t)",
    ])
