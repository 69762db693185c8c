"""Benchmarks: ``python scripts/bench.py`` (or ``xpcnn bench``) prints a table and writes JSON.

Workloads (see BENCHMARKS.md for the latest tables and what they mean)

P1  one full-batch gradient-descent iteration of the tutorial network (Conv2D(3, 5) sigmoid,
    Flatten, Dense(1) sigmoid, squared error, SGD, float32) on the first 200 MNIST images, vs the
    tutorial's loop algorithm re-implemented in ``scripts/tutorial_loops.py``;
P2  LeNet-5 training step (SGD momentum 0.9, softmax cross-entropy, float32), images/s at batch
    32/128/512: xpcnn on NumPy vs PyTorch CPU (``scripts/torch_peers.py``) at the same thread
    count, plus the fraction of this machine's sgemm ceiling that xpcnn reaches;
P3  the same on a CUDA GPU (xpcnn on CuPy vs PyTorch CUDA eager), batch 64/256/1024, and the
    batch size from which xpcnn's GPU beats its CPU;
P4  wall time for the ``lenet`` preset to reach 99.0% MNIST test accuracy;
P5  peak resident memory of a P2-like job (whole MNIST train set loaded as uint8 pixels, 50 steps
    at batch 128 on float32 batches made from it), xpcnn vs PyTorch, each in its own process.

Every worker process (xpcnn and PyTorch alike) runs with the glibc malloc thresholds that
``Sequential.fit`` sets (:mod:`xpcnn.hostmem`). Every comparison is measured side by side in one
run: warm-up first, then A B A B ... blocks, median and min–max reported. Each workload runs in
a child process so that the BLAS/OpenMP thread count is set before NumPy or PyTorch start
(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, ``torch.set_num_threads``) and memory peaks never mix.

Examples
--------
>>> rows = [{"workload": "P2", "name": "xpcnn b=128", "median": 8000.0, "min": 7900.0,
...          "max": 8100.0, "unit": "img/s", "ratio": "1.02x torch"}]
>>> print(format_table(rows).splitlines()[0].split())
['workload', 'name', 'median', 'min–max', 'unit', 'ratio']
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .hostmem import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_host_memory

REPO = Path(__file__).resolve().parents[1]
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
    from .presets import PRESETS, build_model

    return build_model(PRESETS["lenet"], device=device, seed=seed)


def training_flops_per_image(model):
    """FLOPs of one training step per image: 2 x MACs of forward, ∂kernel and (where needed) ∂x."""
    from .layers import Conv2D, Dense

    macs, shape = 0, model.input_shape
    for layer in model.layers:
        out = layer.output_shape(shape)
        if isinstance(layer, Conv2D):
            kh, kw = layer.kernel_size
            fwd = out[0] * shape[0] * kh * kw * out[1] * out[2]
        elif isinstance(layer, Dense):
            fwd = shape[0] * out[0]
        else:
            fwd = 0
        macs += fwd * (3 if layer.need_input_grad else 2)
        shape = out
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
    from .data import load_dataset, prepare_images

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


# -- workers: each runs in its own process, prints one JSON object ---------------------------------
def worker_p1(a):
    import numpy as np

    from . import Sequential, layers
    from .data import load_dataset

    tutorial = _script("tutorial_loops")
    if tutorial is None:
        return {"rows": [_note("P1", "tutorial loops", f"not measured: {SCRIPTS / 'tutorial_loops.py'} not found")]}
    ds = load_dataset("mnist", a["data_dir"], download=False, progress=False)
    images = ds.x_train[:200].astype(np.float64) / 255.0
    targets = (ds.y_train[:200] > 4).astype(np.float64)
    filters, weights = tutorial.init_params(seed=0)
    model = Sequential([layers.Conv2D(3, 5, activation="sigmoid"), layers.Flatten(),
                        layers.Dense(1, activation="sigmoid")], input_shape=(1, 28, 28), device="cpu", seed=0)
    model.compile("sgd", loss="squared_error", learning_rate=0.1)
    be = model.backend
    xb, yb = be.asarray(images[:, None].astype(np.float32)), be.asarray(targets[:, None].astype(np.float32))
    inner = a["inner"]

    def xpcnn_block():
        for _ in range(inner):
            model.train_step(xb, yb)
        be.synchronize()

    state = [filters, weights]

    def baseline():
        state[0], state[1], _ = tutorial.tutorial_iteration(images, targets, state[0], state[1], 0.1)

    xpcnn_block()  # warm-up; the baseline's first call is as slow as its others
    base, ours = [], []
    for _ in range(a["repeats"]):
        base.append(_timed(baseline))
        ours.append(_timed(xpcnn_block) / inner)
    speedup = statistics.median(base) / statistics.median(ours)
    return {"rows": [_row("P1", "tutorial loop algorithm (baseline)", base, "s/iter"),
                     _row("P1", "xpcnn numpy float32", ours, "s/iter", f"{speedup:,.0f}x faster (target >= 1000x)",
                          speedup=speedup)]}


def worker_p1_torch(a):
    """Context for P1, in its own process: the tutorial net in PyTorch (BCE loss), full batch."""
    import numpy as np
    import torch

    from .data import load_dataset

    torch.set_num_threads(a["threads"])
    peers = _script("torch_peers")
    ds = load_dataset("mnist", a["data_dir"], download=False, progress=False)
    tx = torch.from_numpy(ds.x_train[:200, None].astype(np.float32) / 255)
    ty = torch.from_numpy((ds.y_train[:200] > 4).astype(np.float32))
    torch.manual_seed(0)
    step = peers.torch_train_step_fn(peers.torch_tutorial_net(), 0.1, 0.0)

    def block():
        for _ in range(a["inner"]):
            step(tx, ty)

    block()
    return {"seconds": [_timed(block) / a["inner"] for _ in range(a["repeats"])]}


def worker_p2(a):
    """One side of P2, as a server: builds its LeNet, then answers ``run <batch> <steps>`` with the
    seconds those steps took. Two such processes (xpcnn, torch) are driven alternately, so their
    thread pools (OpenBLAS, OpenMP) never spin against each other inside one process."""
    threads, side = a["threads"], a["side"]
    x_all, y_all, source = _batch(a["data_dir"], max(a["batch_sizes"]))
    info = {"data": source}
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        peers = _script("torch_peers")
        if peers is None:
            raise RuntimeError(f"{SCRIPTS / 'torch_peers.py'} not found")
        torch.manual_seed(0)
        tstep = peers.torch_train_step_fn(peers.torch_lenet(), 0.01, 0.9)
        data = {bs: (torch.from_numpy(x_all[:bs]), torch.from_numpy(y_all[:bs])) for bs in a["batch_sizes"]}

        def block(bs, steps):
            tx, ty = data[bs]
            for _ in range(steps):
                tstep(tx, ty)

        info["torch"] = torch.__version__
    elif side == "keras":
        os.environ["KERAS_BACKEND"] = "torch"  # before the import: Keras 3 picks its backend once
        import keras
        import torch

        torch.set_num_threads(threads)
        keras.utils.set_random_seed(0)
        L = keras.layers
        net = keras.Sequential([
            keras.Input((28, 28, 1)), L.Conv2D(6, 5, padding="same", activation="relu"), L.MaxPooling2D(),
            L.Conv2D(16, 5, activation="relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(120, activation="relu"),
            L.Dense(84, activation="relu"), L.Dense(10)])
        net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        # channels-last, as Keras users feed it (the transpose is done once, outside the timing)
        data = {bs: (x_all[:bs].transpose(0, 2, 3, 1).copy(), y_all[:bs]) for bs in a["batch_sizes"]}

        def block(bs, steps):
            xb, yb = data[bs]
            for _ in range(steps):
                net.train_on_batch(xb, yb)

        info["keras"] = f"{keras.__version__} on torch {torch.__version__}"
    else:
        from . import SGD

        model = lenet("cpu").compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
        be = model.backend
        data = {bs: (be.asarray(x_all[:bs]), be.asarray(y_all[:bs])) for bs in a["batch_sizes"]}

        def block(bs, steps):
            xb, yb = data[bs]
            for _ in range(steps):
                model.train_step(xb, yb)
            be.synchronize()

        info.update(flops_per_image=training_flops_per_image(model), sgemm_gflops=sgemm_gflops())
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        bs, steps = int(cmd[1]), int(cmd[2])
        start = time.perf_counter()
        block(bs, steps)
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


class _Server:
    """A :func:`worker_p2` child process: ``run(bs, steps)`` -> seconds."""

    def __init__(self, params, threads):
        self.proc = subprocess.Popen(_worker_cmd("p2", params), env=_worker_env(threads), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()[-3:]
            raise RuntimeError("P2 worker exited: " + " | ".join(err))
        return json.loads(line)

    def run(self, bs, steps):
        self.proc.stdin.write(f"run {bs} {steps}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def run_p2(params, threads):
    """xpcnn vs torch LeNet training at ``threads`` threads: warm-up, then A B / B A blocks."""
    tag, rows = f"t={threads}", []
    sides = {"xpcnn": _Server(dict(params, side="xpcnn", threads=threads), threads)}
    why = {}
    for peer in ("torch", "keras"):
        try:
            sides[peer] = _Server(dict(params, side=peer, threads=threads), threads)
        except RuntimeError as exc:
            why[peer] = str(exc)
    try:
        flops, ceiling = sides["xpcnn"].info["flops_per_image"], sides["xpcnn"].info["sgemm_gflops"]
        for bs in params["batch_sizes"]:
            steps = max(2, params["images_per_block"] // bs)
            for side in sides.values():
                side.run(bs, steps)  # warm-up
            rates = {k: [] for k in sides}
            for r in range(params["repeats"]):
                for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    rates[k].append(bs * steps / sides[k].run(bs, steps))
            achieved = statistics.median(rates["xpcnn"]) * flops / 1e9
            ratio = ""
            if "torch" in rates:
                ratio = f"{statistics.median(rates['xpcnn']) / statistics.median(rates['torch']):.2f}x torch; "
            ratio += f"{achieved:.1f} GFLOP/s = {100 * achieved / ceiling:.0f}% of sgemm"
            rows.append(_row("P2", f"xpcnn numpy  b={bs} {tag}", rates["xpcnn"], "img/s", ratio, batch=bs,
                             threads=threads, gflops=achieved, sgemm_fraction=achieved / ceiling))
            for peer, label in (("torch", "torch cpu   "), ("keras", "keras/torch ")):
                if peer in rates:
                    vs = statistics.median(rates["xpcnn"]) / statistics.median(rates[peer])
                    rows.append(_row("P2", f"{label} b={bs} {tag}", rates[peer], "img/s",
                                     f"xpcnn = {vs:.2f}x this", batch=bs, threads=threads))
                else:
                    rows.append(_note("P2", f"{label} b={bs} {tag}", f"unavailable: {why[peer]}"))
    finally:
        for side in sides.values():
            side.close()
    rows.append(_row("P2", f"sgemm ceiling (numpy, 2048^3) {tag}", [ceiling], "GFLOP/s",
                     f"LeNet training step = {flops / 1e6:.2f} MFLOP/img", flops_per_image=flops))
    return rows


def worker_p3(a):
    from .backend import gpu_problem

    problem = gpu_problem()
    if problem:
        return {"rows": [_note("P3", "xpcnn cupy vs torch cuda", f"not measured: {problem}")]}
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except Exception:  # torch is optional: xpcnn GPU vs CPU is still measured
        torch, torch_cuda = None, False
    from . import SGD

    peers = _script("torch_peers")
    gpu = lenet("gpu").compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
    cpu = lenet("cpu").compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
    x_all, y_all, _ = _batch(a["data_dir"], max(a["batch_sizes"] + a["crossover_sizes"]))
    rows, cross = [], None
    tstep = None
    if torch_cuda and peers is not None:
        torch.manual_seed(0)
        tstep = peers.torch_train_step_fn(peers.torch_lenet().cuda(), 0.01, 0.9)

    def rate(model, bs, steps):
        be = model.backend
        xb, yb = be.asarray(x_all[:bs]), be.asarray(y_all[:bs])

        def block():
            for _ in range(steps):
                model.train_step(xb, yb)
            be.synchronize()  # the clock is read only after the device finished

        return block

    for bs in a["batch_sizes"]:
        steps = max(5, 4 * a["images_per_block"] // bs)
        blocks = {"xpcnn": rate(gpu, bs, steps)}
        if tstep is not None:
            tx = torch.from_numpy(x_all[:bs]).cuda()
            ty = torch.from_numpy(y_all[:bs]).cuda()

            def theirs(tx=tx, ty=ty, steps=steps):
                for _ in range(steps):
                    tstep(tx, ty)
                torch.cuda.synchronize()

            blocks["torch"] = theirs
        rates = {k: [] for k in blocks}
        for fn in blocks.values():
            fn()
        for r in range(a["repeats"]):
            for k in (list(blocks) if r % 2 == 0 else list(blocks)[::-1]):
                rates[k].append(bs * steps / _timed(blocks[k]))
        ratio = (f"{statistics.median(rates['xpcnn']) / statistics.median(rates['torch']):.2f}x torch"
                 if "torch" in rates else "")
        rows.append(_row("P3", f"xpcnn cupy   b={bs}", rates["xpcnn"], "img/s", ratio, batch=bs))
        if "torch" in rates:
            rows.append(_row("P3", f"torch cuda   b={bs}", rates["torch"], "img/s", "", batch=bs))
        else:
            rows.append(_note("P3", f"torch cuda   b={bs}", "unavailable: torch has no CUDA device"))
    for bs in a["crossover_sizes"]:
        steps = max(3, a["images_per_block"] // bs)
        g, c = rate(gpu, bs, steps), rate(cpu, bs, steps)
        g(), c()
        rg = statistics.median(bs * steps / _timed(g) for _ in range(3))
        rc = statistics.median(bs * steps / _timed(c) for _ in range(3))
        rows.append(_row("P3", f"xpcnn gpu/cpu b={bs}", [rg / rc], "x", "gpu faster" if rg > rc else "cpu faster"))
        if cross is None and rg > rc:
            cross = bs
    rows.append(_note("P3", "crossover", f"xpcnn GPU beats xpcnn CPU from batch {cross}" if cross
                      else "xpcnn GPU did not beat the CPU at any measured batch size"))
    return {"rows": rows}


def worker_p4(a):
    from . import Adam

    x, y, xt, yt = _mnist(a["data_dir"], None if not a["quick"] else 12000, 10000)
    # step decay lr·decay^epoch, applied by fit through the optimizer's epoch counter
    model = lenet(a["device"], seed=0).compile(Adam(a["lr"], epoch_decay=a["decay"]), loss="softmax_cross_entropy")
    train_s = total_s = 0.0
    history, reached = [], None
    for epoch in range(a["max_epochs"]):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=a["batch_size"], epochs=epoch + 1, verbose=0, seed=0)
        t1 = time.perf_counter()
        acc = model.evaluate(xt, yt, batch_size=1000)["accuracy"]
        t2 = time.perf_counter()
        train_s += t1 - t0
        total_s += t2 - t0
        history.append({"epoch": epoch + 1, "test_accuracy": acc, "train_s": train_s, "total_s": total_s})
        if acc >= a["target"]:
            reached = epoch + 1
            break
    dev, acc = a["device"], history[-1]["test_accuracy"]
    setup = f"Adam lr={a['lr']:g} x{a['decay']:g}/epoch, batch {a['batch_size']}, {len(y)} train images"
    if reached:
        text = f"{reached} epochs, test acc {acc:.4f}; {setup}; incl. evaluation {total_s:.1f} s"
    else:
        best = max(h["test_accuracy"] for h in history)
        text = f"NOT reached in {len(history)} epochs (best test acc {best:.4f}); {setup}"
    limit = 60 if dev == "cpu" else 10
    return {"rows": [_row("P4", f"time to {100 * a['target']:.1f}% ({dev})", [train_s], "s",
                          f"target <= {limit} s; {text}", epochs=reached, history=history)]}


def worker_p5(a):
    """One peak-RSS measurement: load all of MNIST train, then ``steps`` training steps.

    Both libraries keep the set as uint8 pixels and make float32 batches from it, as a user's
    script (or torchvision's MNIST) does: the job measures the framework, not a choice of storage.
    """
    from .data import load_dataset

    framework, bs = a["framework"], a["batch_size"]
    if framework == "torch":
        import torch

        torch.set_num_threads(a["threads"])
        peers = _script("torch_peers")
    ds = load_dataset("mnist", a["data_dir"], download=False, progress=False)
    x, y = ds.x_train[:, None], ds.y_train.astype("int64")
    base = _vm_rss_mb()
    if framework == "torch":
        torch.manual_seed(0)
        step = peers.torch_train_step_fn(peers.torch_lenet(), 0.01, 0.9)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        for s in range(a["steps"]):
            i = (s * bs) % (len(y) - bs)
            step(tx[i : i + bs].float().div_(255), ty[i : i + bs])
    else:
        from . import SGD
        from .training import check_inputs, device_batches, stage

        model = lenet(a["device"]).compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
        data = stage(model, *check_inputs(model, x, y))  # what fit does: the uint8 set, once
        for _, (xb, yb) in zip(range(a["steps"]), device_batches(model, data, bs)):
            model.train_step(xb, yb)
        model.backend.synchronize()
        pool = model.backend.memory_stats().get("pool_bytes")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"peak_mb": peak, "after_data_mb": base}
    if framework != "torch" and pool is not None:
        out["gpu_pool_mb"] = pool / 2**20
    return out


def _vm_rss_mb():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


WORKERS = {"p1": worker_p1, "p1t": worker_p1_torch, "p2": worker_p2, "p3": worker_p3, "p4": worker_p4, "p5": worker_p5}


def _worker_env(threads):
    env = dict(os.environ)
    for key in BLAS_ENV:
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _worker_cmd(kind, params):
    return [sys.executable, "-m", "xpcnn.bench", "--worker", kind, "--params", json.dumps(params)]


def _run_worker(kind, params, threads):
    """Run ``WORKERS[kind](params)`` in a fresh interpreter with ``threads`` BLAS/OpenMP threads."""
    proc = subprocess.run(_worker_cmd(kind, params), env=_worker_env(threads), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}): " + " | ".join(tail))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the orchestrator -------------------------------------------------------------------------------
def run_p5(params, repeats, threads):
    peaks = {"xpcnn": [], "torch": []}
    base = {"xpcnn": [], "torch": []}
    pools = []
    rows = []
    for r in range(repeats):
        for fw in (("xpcnn", "torch") if r % 2 == 0 else ("torch", "xpcnn")):
            try:
                out = _run_worker("p5", dict(params, framework=fw), threads)
            except RuntimeError as exc:
                if fw == "torch":
                    peaks["torch"] = None
                    rows.append(_note("P5", "torch peak RSS", f"unavailable: {exc}"))
                    continue
                raise
            if peaks[fw] is not None:
                peaks[fw].append(out["peak_mb"])
                base[fw].append(out["after_data_mb"])
            if "gpu_pool_mb" in out:
                pools.append(out["gpu_pool_mb"])
    ratio = ""
    if peaks["torch"]:
        ratio = f"{statistics.median(peaks['xpcnn']) / statistics.median(peaks['torch']):.2f}x torch (target <= 0.5x)"
    job = f"{params['steps']} steps b={params['batch_size']}"
    rows.insert(0, _row("P5", f"xpcnn peak RSS ({params['device']}, {job})", peaks["xpcnn"], "MB", ratio,
                        after_data_mb=statistics.median(base["xpcnn"])))
    if peaks["torch"]:
        rows.insert(1, _row("P5", f"torch peak RSS (cpu, {job})", peaks["torch"], "MB", "",
                            after_data_mb=statistics.median(base["torch"])))
    for row in rows:
        if row.get("after_data_mb"):
            row["ratio"] = (row["ratio"] + "; " if row["ratio"] else "") + \
                f"after imports + uint8 MNIST train set {row['after_data_mb']:.0f} MB"
    if params["device"] == "gpu" and pools:
        rows.append(_row("P5", "xpcnn GPU memory pool high-water mark", pools, "MB",
                         "CuPy pool bytes held after the job"))
    return rows


def machine_info():
    import numpy as np

    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "worker_malloc": f"glibc mmap threshold {MMAP_THRESHOLD}, trim threshold {TRIM_THRESHOLD} (xpcnn.hostmem)"}
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
    for mod in ("array_api_compat", "torch", "cupy", "xpcnn"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
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
    info["blas_env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", *BLAS_ENV)}
    return info


def format_table(rows):
    def num(v):
        if v is None:
            return ""
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 0.1:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.3g}"

    lines = [f"{'workload':<8}  {'name':<46}  {'median':>10}  {'min–max':>21}  {'unit':<7}  ratio"]
    for r in rows:
        span = f"{num(r['min'])}–{num(r['max'])}" if r.get("min") is not None else ""
        tail = r.get("note") or r.get("ratio", "")
        lines.append(f"{r['workload']:<8}  {r['name']:<46}  {num(r.get('median')):>10}  {span:>21}  "
                     f"{r['unit']:<7}  {tail}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="xpcnn bench", description="xpcnn benchmarks (see BENCHMARKS.md)")
    p.add_argument("--workloads", help="comma-separated subset of P1,P2,P3,P4,P5 "
                   "(default: P1,P2,P4,P5 on --device cpu, P3,P4,P5 on --device gpu)")
    p.add_argument("--repeats", type=int, default=7, help="measured blocks per comparison (default 7)")
    p.add_argument("--json-out", default="bench-results.json", help="where to write the JSON results")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="device for P4/P5 (P2 is CPU, P3 GPU)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats, one batch size, short P4")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts for P2 (default: '1,<cores>'); P5 uses the last")
    p.add_argument("--batch-sizes", default=None, help="comma-separated P2 batch sizes (default 32,128,512)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $XPCNN_DATA_DIR, then the Keras cache)")
    p.add_argument("--p4-lr", type=float, default=4e-3, help="P4 Adam learning rate of epoch 1 (default 4e-3)")
    p.add_argument("--p4-decay", type=float, default=0.4, help="P4 learning-rate factor per epoch (default 0.4)")
    p.add_argument("--p4-batch-size", type=int, default=128, help="P4 batch size (default 128)")
    p.add_argument("--p4-max-epochs", type=int, default=10, help="P4 epoch limit (default 10)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `xpcnn bench -- --quick`: the CLI hands over everything after "bench"
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.worker:  # child process: one measurement, one JSON line on stdout
        # Every worker, xpcnn's and PyTorch's alike, runs with the malloc policy Sequential.fit
        # sets (freed memory kept for reuse, xpcnn.hostmem): same allocator for both sides.
        keep_freed_host_memory()
        result = WORKERS[args.worker](json.loads(args.params))
        if result is not None:
            print(json.dumps(result))
        return 0
    cores = os.cpu_count() or 1
    default = CPU_WORKLOADS if args.device == "cpu" else GPU_WORKLOADS
    workloads = [w.strip().upper() for w in args.workloads.split(",")] if args.workloads else list(default)
    unknown = sorted(set(workloads) - {"P1", "P2", "P3", "P4", "P5"})
    if unknown:
        raise SystemExit(f"Unknown workloads {unknown}. Expected a subset of P1,P2,P3,P4,P5.")
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    repeats = 3 if args.quick else max(1, args.repeats)
    data_dir = args.data_dir or os.environ.get("XPCNN_DATA_DIR")
    notes = []
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        notes.append("OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set: NumPy's BLAS may not use this CPU's own kernels")
    rows = []
    started = time.perf_counter()
    for w in workloads:
        t0 = time.perf_counter()
        print(f"[bench] {w} ...", file=sys.stderr, flush=True)
        try:
            if w == "P1":
                p1 = {"data_dir": data_dir, "repeats": 2 if args.quick else min(repeats, 5), "inner": 20,
                      "threads": cores}
                rows += _run_worker("p1", p1, cores)["rows"]
                if rows[-1]["name"].startswith("xpcnn"):
                    try:
                        theirs = _run_worker("p1t", p1, cores)["seconds"]
                        base = rows[-2]["median"]
                        rows.append(_row("P1", "torch cpu, same net (context; own process)", theirs, "s/iter",
                                         f"{base / statistics.median(theirs):,.0f}x faster than the baseline"))
                    except RuntimeError as exc:
                        rows.append(_note("P1", "torch cpu, same net (context)", f"unavailable: {exc}"))
            elif w == "P2":
                sizes = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else \
                    ([128] if args.quick else [32, 128, 512])
                for t in ([threads[-1]] if args.quick else threads):
                    rows += run_p2({"data_dir": data_dir, "repeats": repeats, "batch_sizes": sizes,
                                    "images_per_block": 4096}, t)
            elif w == "P3":
                out = _run_worker("p3", {"data_dir": data_dir, "repeats": repeats,
                                         "batch_sizes": [256] if args.quick else [64, 256, 1024],
                                         "crossover_sizes": [] if args.quick else [16, 32, 64, 128, 256, 512, 1024],
                                         "images_per_block": 8192}, cores)
                rows += out["rows"]
            elif w == "P4":
                out = _run_worker("p4", {"data_dir": data_dir, "device": args.device, "lr": args.p4_lr,
                                         "decay": args.p4_decay,
                                         "batch_size": args.p4_batch_size, "target": 0.99, "quick": args.quick,
                                         "max_epochs": 1 if args.quick else args.p4_max_epochs}, cores)
                rows += out["rows"]
            elif w == "P5":
                rows += run_p5({"data_dir": data_dir, "device": args.device, "steps": 20 if args.quick else 50,
                                "batch_size": 128, "threads": threads[-1]}, 1 if args.quick else 3, threads[-1])
        except Exception as exc:  # one broken workload must not hide the others
            rows.append(_note(w, "error", f"not measured: {type(exc).__name__}: {exc}"))
        print(f"[bench] {w} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if "P3" not in workloads:
        from .backend import gpu_problem

        problem = gpu_problem()
        rows.append(_note("P3", "xpcnn cupy vs torch cuda", f"not yet measured: no usable GPU ({problem})"
                          if problem else "not measured: not requested (run with --device gpu)"))
    result = {"machine": machine_info(), "args": vars(args), "workloads": workloads, "threads": threads,
              "seconds": time.perf_counter() - started, "notes": notes, "rows": rows}
    text = format_table(rows)
    print(text)
    for n in notes:
        print("note:", n)
    Path(args.json_out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
