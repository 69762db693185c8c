"""The measurements. Each worker runs in its own process (started by :mod:`.runner`) and
prints one JSON object; :func:`worker_p2` is a long-lived server answering ``run`` commands."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from .. import layers
from ..backend import gpu_problem
from ..data import load_dataset
from ..model import Sequential
from ..optimizers import SGD, Adam
from ..training import auto_threads
from .common import (
    SCRIPTS,
    _batch,
    _note,
    _row,
    _script,
    _timed,
    _vm_peak_mb,
    _vm_rss_mb,
    lenet,
    sgemm_gflops,
    training_flops_per_image,
)
from .machine import xpcnn_thread_mode


def worker_p1(a):
    import numpy as np


    tutorial = _script("tutorial_loops")
    if tutorial is None:
        return {"rows": [_note("P1", "tutorial loops", f"not measured: {SCRIPTS / 'tutorial_loops.py'} not found")]}
    images, targets = tutorial.load_mnist_subset(200, a["data_dir"])  # the same data on both sides
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
        block, info["thread_mode"], model = _xpcnn_p2_block(x_all, y_all, a["batch_sizes"], threads)
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



def _xpcnn_p2_block(x_all, y_all, batch_sizes, threads):
    """xpcnn's side of P2: ``block(bs, steps)``, the thread mode and the model.

    Mode "fit": ``Sequential.fit`` over ``steps`` copies of the batch with what its default does
    on ``threads`` cores: :func:`xpcnn.training.auto_threads` shards in threads, each shard's BLAS on
    one thread, or, when the batch is too small to split, one thread with BLAS on ``threads``
    threads. Mode "blas": a loop of ``train_step`` with OpenBLAS limited to ``threads``
    (threadpoolctl, besides OPENBLAS_NUM_THREADS from the runner).
    """
    import numpy as np
    from threadpoolctl import threadpool_limits

    mode = xpcnn_thread_mode()
    model = lenet("cpu").compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
    be = model.backend
    if mode == "fit":
        repeated = {}

        def block(bs, steps):
            if (bs, steps) not in repeated:
                repeated[bs, steps] = (np.concatenate([x_all[:bs]] * steps), np.concatenate([y_all[:bs]] * steps))
            x, y = repeated[bs, steps]
            shards = auto_threads(model, bs, threads)
            with threadpool_limits(threads if shards == 1 else 1, user_api="blas"):
                model.fit(x, y, batch_size=bs, epochs=1, shuffle=False, verbose=0, threads=shards)
            be.synchronize()

        return block, mode, model
    data = {bs: (be.asarray(x_all[:bs]), be.asarray(y_all[:bs])) for bs in batch_sizes}

    def block(bs, steps):
        xb, yb = data[bs]
        for _ in range(steps):
            model.train_step(xb, yb)
        be.synchronize()

    return block, mode, model


def worker_p3(a):

    problem = gpu_problem()
    if problem:
        return {"rows": [_note("P3", "xpcnn cupy vs torch cuda", f"not measured: {problem}")]}
    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except Exception:  # torch is optional: xpcnn GPU vs CPU is still measured
        torch, torch_cuda = None, False

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

    # uint8 pixels, as `xpcnn train` feeds them (bit-identical to scaled floats, but each epoch's
    # fit call checks and stages a quarter of the bytes)
    ds = load_dataset("mnist", a["data_dir"], download=False, progress=False)
    n = None if not a["quick"] else 12000
    x, y, xt, yt = ds.x_train[:n], ds.y_train[:n], ds.x_test, ds.y_test
    # step decay lr·decay^epoch, applied by fit through the optimizer's epoch counter
    model = lenet(a["device"], seed=0).compile(Adam(a["lr"], epoch_decay=a["decay"]), loss="softmax_cross_entropy")
    train_s = total_s = 0.0
    history, reached = [], None
    for epoch in range(a["max_epochs"]):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=a["batch_size"], epochs=1, verbose=0, seed=0)  # one more epoch a call
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
    """One peak-RSS measurement: load all of MNIST train, then ``steps`` training steps (xpcnn: one
    ``fit`` epoch over ``steps`` batches, with its default threads).

    Both libraries keep the set as uint8 pixels and make float32 batches from it, as a user's
    script (or torchvision's MNIST) does: the job measures the framework, not a choice of storage.
    """

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

        model = lenet(a["device"]).compile(SGD(0.01, momentum=0.9), loss="softmax_cross_entropy")
        # fit as a user runs it: the set staged once (uint8), its default threads on these cores
        n = a["steps"] * bs
        model.fit(x[:n], y[:n], batch_size=bs, epochs=1, shuffle=False, verbose=0)
        model.backend.synchronize()
        pool = model.backend.memory_stats().get("pool_bytes")
    # VmHWM, this process image's own high-water mark: ru_maxrss would also count the parent's RSS
    # at fork (Linux keeps it across exec), which was the runner's, PyTorch imported, ~230 MB.
    peak = _vm_peak_mb()
    out = {"peak_mb": peak, "after_data_mb": base}
    if framework != "torch" and pool is not None:
        out["gpu_pool_mb"] = pool / 2**20
    return out



WORKERS = {"p1": worker_p1, "p1t": worker_p1_torch, "p2": worker_p2, "p3": worker_p3, "p4": worker_p4, "p5": worker_p5}
