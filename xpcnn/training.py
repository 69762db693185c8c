"""The training loop behind ``Sequential.fit``/``evaluate``: input checks, moving data to the
device, the progress bar, and the non-finite-loss guard.

Every run trains through a communicator (:mod:`xpcnn.parallel`): one rank by default, where the
sums are the identity; data-parallel, every rank takes its shard of each global batch, the
gradients are summed with one allreduce per step, and the metrics are summed over the ranks.

No per-step host synchronisation: each step's loss is written into a device array; the host
reads it (one small transfer) only when the progress bar refreshes, at most ~4 times a second,
and at the end of the epoch. That read is also where a NaN/inf loss is caught, naming its step.
"""

from __future__ import annotations

import sys
import time
import warnings
from functools import partial
from typing import NamedTuple

import numpy as np
from array_api_compat import is_array_api_obj
from tqdm.auto import tqdm
from tqdm.notebook import tqdm_notebook

from . import functional as F
from .argcheck import TARGETS, require_given, require_positive_int
from .backend import is_out_of_memory, to_numpy
from .backend.hostmem import keep_freed_host_memory
from .errors import InputError, ShapeError, XpcnnError, type_name
from .parallel import LOCAL, shard_bounds
from .parallel.threads import ThreadGroup, run_ranks, usable_cores


class NonFiniteLossError(XpcnnError, FloatingPointError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch, step, value):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"The training loss became {value} at epoch {epoch + 1}, step {step + 1}. The learning rate "
            "is probably too large: lower --learning-rate. Parameters after this step are not finite; "
            "nothing was saved from this epoch (a checkpoint, if any, still holds the last good one)."
        )


def check_inputs(model, x, y, *, name="x", stacklevel=None):
    """Host arrays ready for :func:`stage`, with every problem named before any device work.

    ``x`` comes back in the model's dtype, except integer images (pixels 0..255) for a model with
    (C, H, W) inputs: they come back as uint8 (a quarter of the bytes on the host and the device)
    and :func:`device_batches` turns each batch into pixels in [0, 1] on the device, the same
    arithmetic as :func:`xpcnn.data.prepare_images`. Integers for any other model are numbers;
    uint8 ones (images, most likely) get a UserWarning saying so, pointing ``stacklevel`` frames
    up (the user's fit/evaluate/predict call); None: no warning.
    """
    if not isinstance(x, np.ndarray):
        raise InputError(f"x must be a NumPy array on the host. Received {type_name(x)}.")
    if x.dtype.kind not in "fiub":
        raise InputError(f"x must hold numbers. Received dtype {x.dtype}.")
    if x.shape[0] == 0:
        raise InputError("x is empty (0 samples). Expected at least one sample.")
    want = model.input_shape or x.shape[1:]
    if x.ndim == len(want) and len(want) == 3 and want[0] == 1 and tuple(x.shape[1:]) == tuple(want[1:]):
        x = x[:, None]  # (N, H, W) -> (N, 1, H, W) for one-channel models
    if tuple(x.shape[1:]) != tuple(want):
        raise ShapeError(
            f"Model '{model.name}' expects inputs of shape (N, {', '.join(map(str, want))}). "
            f"Received x.shape={tuple(x.shape)}."
        )
    pixels = x.dtype.kind in "iu" and len(want) == 3  # integer images (N, C, H, W) are pixels
    if x.dtype == np.uint8 and not pixels and stacklevel is not None:
        _warn_uint8_numbers(x, tuple(want), name, stacklevel + 2)
    if pixels and x.dtype != np.uint8:  # as in prepare_images
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(f"Integer images must hold pixels in 0..255. Received {x.dtype} values from "
                             f"{x.min()} to {x.max()}; pass floats to use other values as they are.")
        x = x.astype(np.uint8)
    x = np.ascontiguousarray(x, dtype=np.uint8 if pixels else model.dtype)  # integer features: numbers
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise InputError(f"x contains {bad} NaN or infinite values. Expected finite numbers.")
    if y is None:
        return x, None
    if is_array_api_obj(y) and not isinstance(y, np.ndarray):
        raise InputError(f"y must be a NumPy array (or a list) on the host, like x. Received {type_name(y)}.")
    y = np.asarray(y)
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        got = f"y has {y.shape[0]}" if y.ndim else f"y is a single value {y!r}"
        raise ShapeError(f"x has {x.shape[0]} samples but {got}. Expected the same number.")
    if not model.built:
        model.build(x.shape[1:])
    k = model.output_shape[-1]
    if model.loss == "softmax_cross_entropy":
        if y.ndim == 1 and y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)  # float labels that hold whole numbers (as Keras takes them)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            hint = (" They look one-hot: pass y.argmax(axis=1)." if y.ndim == 2 and y.shape[1] == k else
                    " Expected whole numbers 0..K-1." if y.ndim == 1 else "")
            raise InputError(f"y must be integer class labels of shape (N,). Received shape {y.shape}, "
                             f"dtype {y.dtype}.{hint}")
        if y.size and (y.min() < 0 or y.max() >= k):
            raise InputError(f"Labels must lie in [0, {k - 1}] for a {k}-class output. "
                             f"Received labels from {y.min()} to {y.max()}.")
        return x, y.astype(np.int64)
    if y.dtype.kind not in "fiub":
        raise InputError(f"y must hold numbers. Received dtype {y.dtype}.")
    given = y.shape
    y = y.reshape(len(y), -1).astype(model.dtype) if y.ndim == 1 else y.astype(model.dtype)
    if y.shape[1:] != tuple(model.output_shape):
        want = ", ".join(map(str, model.output_shape))
        raise ShapeError(f"y must have shape (N, {want}) to match the model output for {model.loss}"
                         f"{' (or (N,) for one output)' if model.output_shape == (1,) else ''}. "
                         f"Received y.shape={given}.")
    if not np.isfinite(y).all():
        raise InputError("y contains NaN or infinite values. Expected finite targets.")
    why = _unit_targets(model)
    if why is not None and y.size and (y.min() < 0 or y.max() > 1):
        raise InputError(f"{model.loss} targets must lie in [0, 1]{why}. Received values from {_num(y.min())} "
                         f"to {_num(y.max())}.")
    return x, y


def _unit_targets(model):
    """Why the targets must lie in [0, 1] for this model and loss (None when they need not)."""
    if model.loss in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        return ""  # a target outside [0, 1] gives a negative, meaningless loss
    last = model.layers[-1]
    if model.loss == "squared_error" and getattr(last, "activation", None) in ("sigmoid", "softmax"):
        return (f" for a {last.activation} output (layer '{last.name}'): the outputs cannot reach other "
                "values; for regression drop the output activation")
    return None


def _num(v):
    return int(v) if float(v).is_integer() else float(v)


def _warn_uint8_numbers(x, want, name, stacklevel):
    shape = "(N, " + ", ".join(map(str, x.shape[1:])) + ")"
    if len(want) == 2:
        fix = f"build the model with input_shape={(1, *want)} or pass xpcnn.data.prepare_images({name})"
    else:
        fix = f"pass floats: {name}.astype(np.float32) / 255"
    warnings.warn(f"{name} is uint8 of shape {shape} and the model's inputs are {want}, not images (C, H, W): "
                  f"the values are used as numbers 0..255. For pixels in [0, 1], {fix}.",
                  UserWarning, stacklevel=stacklevel)


class Staged(NamedTuple):
    """A dataset ready for :func:`device_batches`: on the device when it fits, else on the host.

    ``pixels``: ``x`` holds uint8 pixels, turned into floats batch by batch.
    """

    x: object
    y: object
    on_device: bool
    pixels: bool = False


def stage(model, x, y, device_data_bytes=2**31):
    """Move host ``x``, ``y`` to the model's device once (the whole set when it fits)."""
    be = model.backend
    pixels = x.dtype == np.uint8
    if x.nbytes + (0 if y is None else y.nbytes) <= device_data_bytes:
        try:
            return Staged(be.asarray(x), None if y is None else be.asarray(y), True, pixels)
        except Exception as exc:  # out of device memory: keep the set on the host, batches cross
            if not is_out_of_memory(exc):
                raise
    return Staged(x, y, False, pixels)


def device_batches(model, data: Staged, batch_size, order=None, shard=None):
    """Yield device batches of ``data`` in ``order`` (an index array; None: as stored).

    ``shard(nb) -> (lo, hi)`` keeps rows lo:hi of each batch of nb (data parallelism), before any
    transfer or conversion: each rank moves and converts only its own share.
    """
    be, batch_size = model.backend, require_positive_int(batch_size, "batch_size")
    n = data.x.shape[0]
    if data.on_device and order is not None:
        order = be.asarray(order.astype(np.int64))  # one small transfer an epoch
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if shard is not None:  # this rank's rows of the batch, chosen before anything is gathered
            lo, hi = shard(stop - start)
            start, stop = start + lo, start + hi
        if order is None:
            xb, yb = data.x[start:stop, ...], None if data.y is None else data.y[start:stop, ...]
        elif data.on_device:
            sel = order[start:stop]
            xb, yb = be.xp.take(data.x, sel, axis=0), None if data.y is None else be.xp.take(data.y, sel, axis=0)
        else:
            sel = order[start:stop]
            xb, yb = data.x[sel], None if data.y is None else data.y[sel]
        if not data.on_device:
            xb, yb = be.asarray(xb), None if yb is None else be.asarray(yb)
        if data.pixels:
            xb = be.xp.astype(xb, be.dtype(model.dtype)) / 255
        yield xb, yb


def _epoch_range(batch_size, epochs, initial_epoch, done):
    """(first, stop) epochs of a fit call, see ``Sequential.fit``; ``done``: epochs completed."""
    require_positive_int(batch_size, "batch_size")
    epochs = require_positive_int(epochs, "epochs")
    if initial_epoch is None:
        return done, done + epochs  # `epochs` more, as repeated calls in Keras/PyTorch loops expect
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise InputError(f"The `initial_epoch` argument must be a non-negative int or None. "
                         f"Received initial_epoch={initial_epoch!r}")
    return initial_epoch, epochs  # Keras: `epochs` is the last epoch; nothing when epochs <= initial_epoch


def _validation_pair(validation_data):
    if isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        if validation_data[0] is None or validation_data[1] is None:
            raise InputError(f"validation_data must be a pair (x_val, y_val). Received "
                             f"({type_name(validation_data[0])}, {type_name(validation_data[1])}).")
        return validation_data
    pair = isinstance(validation_data, (tuple, list))
    what = f"a {type(validation_data).__name__} of {len(validation_data)}" if pair else type_name(validation_data)
    raise InputError(f"validation_data must be a pair (x_val, y_val). Received {what}.")


# A thread's share of a batch must hold at least this much matrix work (multiply-adds of the
# forward pass): below it the calls that hold the GIL cost more than the threads gain. 25 million
# is 60 samples of LeNet-5 (measured on 2 cores: 2 threads lose at 48 samples each, win at 64).
MIN_SHARD_MACS = 25_000_000


def auto_threads(model, batch_size, cores):
    """The threads ``fit`` uses by default on ``cores`` cores: one per shard of at least
    ``MIN_SHARD_MACS`` of forward work, at most one per core (1 for a batch too small to split)."""
    per_sample = max(1, model.multiply_adds()) if model.built else 1
    min_shard = -(-MIN_SHARD_MACS // per_sample)
    return max(1, min(cores, batch_size // min_shard))


def resolve_threads(threads, model, batch_size, comm=LOCAL):
    """The number of threads ``fit``/``evaluate``/``predict`` (``threads=...``) use for ``model``.

    ``None`` (the default): :func:`auto_threads` on the usable cores on the CPU (a shard of a
    batch must hold ``MIN_SHARD_MACS`` of work); 1 under several processes (each process already
    has its cores), for a model whose layers couple the samples of a batch (batch statistics),
    and on other devices. An int is taken as given: it must be positive, and above 1 only on the
    CPU and for a model whose samples are independent.
    """
    coupled = next((layer for layer in model.layers if layer.couples_batch), None)
    if threads is None:
        if model.backend.name != "cpu" or comm.size > 1 or coupled is not None:
            return 1
        return auto_threads(model, batch_size, usable_cores())
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"The `threads` argument must be a positive int or None. Received threads={threads!r}")
    if threads > 1 and model.backend.name != "cpu":
        raise InputError(f"threads={threads} runs shards of each batch in threads of the CPU; the model is on "
                         f"{model.backend}. Use threads=1 (or None) on other devices.")
    if threads > 1 and coupled is not None:
        raise InputError(f"threads={threads} would split each batch, but layer '{coupled.name}' "
                         f"({type(coupled).__name__}) computes statistics over the whole batch. Use threads=1.")
    return threads


def check_shares(batch_size, comm, threads, name="The batch size"):
    """Every rank (process × thread) takes a share of each batch: refuse a batch with fewer samples."""
    if batch_size < comm.size * threads:
        raise InputError(f"{name} {batch_size} is smaller than the {comm.size * threads} ranks "
                         f"({comm.size} process{'es' if comm.size > 1 else ''} × {threads} thread"
                         f"{'s' if threads > 1 else ''}); each needs a share of every batch.")


def run_fit(model, x, y, *, batch_size, epochs, validation_data, shuffle, seed, verbose, initial_epoch,
            callbacks, device_data_bytes, comm, threads):
    initial_epoch, epochs = _epoch_range(batch_size, epochs, initial_epoch, model.epoch)
    model.loss_function  # noqa: B018  (raises when the model is not compiled)
    if validation_data is not None:
        validation_data = _validation_pair(validation_data)
    if model.backend.name == "cpu":
        keep_freed_host_memory()  # steps stop page-faulting their temporaries in (BENCHMARKS.md)
    x_uint8 = getattr(x, "dtype", None) == np.uint8
    x, y = check_inputs(model, x, require_given(y, "y", TARGETS), stacklevel=3)  # fit -> run_fit -> here
    val = None
    if validation_data is not None:  # one warning a call: x_val only when x had none
        val = check_inputs(model, *validation_data, name="x_val", stacklevel=None if x_uint8 else 3)
    threads = resolve_threads(threads, model, batch_size, comm)
    check_shares(batch_size, comm, threads)
    train_data = stage(model, x, y, device_data_bytes)  # once for all epochs (and shared by the threads)
    loop = {"batch_size": batch_size, "epochs": epochs, "initial_epoch": initial_epoch, "shuffle": shuffle,
            "seed": seed}
    if threads == 1:
        return _epochs(model, train_data, val, comm, verbose=verbose, callbacks=callbacks, **loop)
    # Callbacks run on rank 0 only; what they change (weights, learning rate) reaches the others.
    loop["sync_after_callbacks"] = bool(callbacks)
    group = ThreadGroup(threads, parent=comm)
    replicas = [model] + [model.replica() for _ in range(threads - 1)]
    ranks = [partial(_epochs, replica, train_data, val, c, verbose=verbose if c.local_rank == 0 else 0,
                     callbacks=callbacks if c.local_rank == 0 else (), **loop)
             for replica, c in zip(replicas, group.communicators())]
    return run_ranks(group, ranks)[0]


def _epochs(model, train_data, val, comm, *, batch_size, epochs, initial_epoch, shuffle, seed, verbose, callbacks,
            sync_after_callbacks=False):
    """The epoch loop of one rank; returns this call's history."""
    n = train_data.x.shape[0]
    val_data = None if val is None else _eval_data(model, *val, comm)
    steps = -(-n // batch_size)
    xp = model.backend.xp
    # Full-batch training (one step an epoch, like the tutorial) gets one bar over all epochs.
    interval = _bar_interval()
    run_bar = tqdm(total=epochs, initial=initial_epoch, unit="epoch", desc="Training", disable=not verbose or steps > 1,
                   dynamic_ncols=True, mininterval=interval)
    history = {}  # this call's epochs; model.history holds them all
    for epoch in range(initial_epoch, epochs):
        model.optimizer.epoch = epoch  # the learning-rate schedule follows the epoch, also on resume
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else None
        losses = xp.zeros(steps, dtype=model.backend.dtype(model.dtype), device=model.backend.device)
        hits = xp.zeros(steps, dtype=model.backend.dtype(model.dtype), device=model.backend.device)
        bar = tqdm(total=n, unit="img", desc=f"Epoch {epoch + 1}/{epochs}", disable=not verbose or steps == 1,
                   leave=True, dynamic_ncols=True, mininterval=interval)
        start = last = time.perf_counter()
        seen = seen_here = shown = 0
        for step, (xb, yb) in enumerate(device_batches(model, train_data, batch_size, order, comm.shard)):
            nb = min(batch_size, n - step * batch_size)  # the global batch; xb is this rank's share
            model.reseed_dropout(seed, epoch, step, rows=(nb, *comm.shard(nb)))  # its rows of the batch's masks
            loss, acc = model.train_step(xb, yb, comm, global_batch=nb)
            local = xb.shape[0]
            losses[step] = loss * local
            hits[step] = acc * local
            seen += nb
            seen_here += local
            now = time.perf_counter()
            # Several ranks must check at the same steps (the check is collective).
            due = (step % 16 == 15) if comm.size > 1 else (now - last > 0.25)
            if due or step == steps - 1:
                model.backend.synchronize()
                _check_losses(losses, shown, step, epoch, comm)
                shown = step + 1
                here = max(seen_here, 1)  # this rank's share: its running loss and accuracy
                bar.set_postfix(loss=f"{float(xp.sum(losses)) / here:.4f}", acc=f"{float(xp.sum(hits)) / here:.4f}",
                                img_s=f"{seen / (now - start):,.0f}", refresh=False)
                bar.update(seen - bar.n)
                last = now
        model.backend.synchronize()
        seconds = time.perf_counter() - start
        total_loss, total_hits = comm.allreduce_sum([float(xp.sum(losses)), float(xp.sum(hits))])
        logs = {"loss": total_loss / n, "accuracy": total_hits / n, "seconds": seconds,
                "images_per_second": n / seconds}
        if val_data is not None:
            val = _evaluate(model, val_data, comm, batch_size=max(batch_size, 256))
            logs.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
            bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{logs['accuracy']:.4f}", val_acc=f"{val['accuracy']:.4f}",
                            img_s=f"{logs['images_per_second']:,.0f}", refresh=False)
        bar.close()
        run_bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_accuracy")},
                            refresh=False)
        run_bar.update(1)
        model.epoch = epoch + 1
        for key, value in logs.items():
            model.history.setdefault(key, []).append(value)
            history.setdefault(key, []).append(value)
        for cb in callbacks:
            cb(model, epoch, logs)
        if sync_after_callbacks:
            _take_rank0_state(model, comm)
    run_bar.close()
    return history


def _bar_interval():
    """Seconds between progress-bar redraws: tqdm's 0.1 on a terminal or in a notebook; 30 when
    stderr is a file or a pipe (a log), which would otherwise fill with a redraw every 0.1 s
    (~90 KB a LeNet run): there each epoch leaves its first and last state and one line every 30 s."""
    return 0.1 if issubclass(tqdm, tqdm_notebook) or sys.stderr.isatty() else 30.0


def _take_rank0_state(model, comm):
    """Every rank takes rank 0's weights and learning-rate settings (after its callbacks ran)."""
    comm.broadcast_parameters([layer for layer in model.layers if layer.params])
    opt = model.optimizer
    opt.learning_rate, opt.epoch_decay = (float(v) for v in comm.broadcast_host([opt.learning_rate, opt.epoch_decay]))


def _check_losses(losses, first, last, epoch, comm):
    # Summed over the ranks: NaN on any rank is NaN everywhere, so all ranks stop together.
    part = comm.allreduce_sum(to_numpy(losses[first : last + 1]))
    bad = np.flatnonzero(~np.isfinite(part))
    if bad.size:
        raise NonFiniteLossError(epoch, first + int(bad[0]), float(part[bad[0]]))


def run_evaluate(model, x, y, *, comm, batch_size=256, verbose=0, threads=None):
    model.loss_function  # noqa: B018  (raises when the model is not compiled)
    x, y = check_inputs(model, x, require_given(y, "y", TARGETS), stacklevel=3)  # evaluate -> here
    threads = resolve_threads(threads, model, min(batch_size, x.shape[0]), comm)
    if threads == 1:
        return _evaluate_rank(model, x, y, comm, batch_size, verbose)
    # Inference keeps no activations, so the threads share the model itself: each its shard.
    group = ThreadGroup(threads, parent=comm)
    return run_ranks(group, [partial(_evaluate_rank, model, x, y, c, batch_size, verbose and c.local_rank == 0)
                             for c in group.communicators()])[0]


def _evaluate_rank(model, x, y, comm, batch_size, verbose):
    return _evaluate(model, _eval_data(model, x, y, comm), comm, batch_size=batch_size, verbose=verbose)


def run_predict(model, x, *, batch_size=256, threads=None):
    x = check_inputs(model, x, None, stacklevel=3)[0]  # predict -> run_predict -> here
    if not model.built:
        model.build(x.shape[1:])
    threads = resolve_threads(threads, model, min(batch_size, x.shape[0]))
    if threads == 1:
        return _predict(model, x, batch_size)
    bounds = [shard_bounds(x.shape[0], r, threads) for r in range(threads)]
    group = ThreadGroup(threads)
    return np.concatenate(run_ranks(group, [partial(_predict, model, x[lo:hi], batch_size) for lo, hi in bounds]))


def _predict(model, x, batch_size):
    data = stage(model, x, None)
    outs = [to_numpy(model.forward(xb, training=False)) for xb, _ in device_batches(model, data, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, *model.output_shape), model.dtype)


def _eval_data(model, x, y, comm):
    """(this rank's shard of x, y, staged on the device; the global count)."""
    lo, hi = comm.shard(x.shape[0])  # sharded evaluation, summed over the ranks in _evaluate
    return stage(model, x[lo:hi], y[lo:hi]), x.shape[0]


def _evaluate(model, eval_data, comm, *, batch_size, verbose=0):
    loss_fn = model.loss_function
    data, n = eval_data
    total_loss = total_hits = 0.0
    batches = device_batches(model, data, batch_size)
    steps = -(-data.x.shape[0] // batch_size)
    for xb, yb in tqdm(batches, total=steps, disable=not verbose, desc="Evaluate", unit="batch"):
        out = model.forward(xb, training=False)
        loss, _ = loss_fn.forward(out, yb)
        acc = F.accuracy(out, yb, threshold=loss_fn.threshold)
        total_loss = total_loss + loss * xb.shape[0]
        total_hits = total_hits + acc * xb.shape[0]
    total_loss, total_hits = comm.allreduce_sum([float(total_loss), float(total_hits)])
    return {"loss": total_loss / n, "accuracy": total_hits / n}
