"""What each ``xpcnn`` subcommand does (argument parsing lives in :mod:`xpcnn.cli`)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__, optimizers
from . import functional as F
from .argtypes import writable_file
from .backend import DEVICES, cupy_versions, default_device, get_backend, gpu_name, gpu_problem
from .checkpoint import check_arch, previous_path, read_header
from .data import CLASS_NAMES, load_dataset
from .errors import CheckpointError, InputError
from .io import load_model
from .outputs import check_train_outputs, metrics_refusal, reported_after_save, set_aside
from .presets import build_model, get_preset, targets


# ----------------------------------------------------------------------------------- helpers
def _subset(n_wanted, available, flag):
    """The user's --train-size/--test-size must fit; a preset's default is capped silently."""
    if n_wanted is None:
        return available
    if isinstance(n_wanted, _Default):
        return min(int(n_wanted), available)
    if n_wanted > available:
        raise InputError(f"{flag} {n_wanted} is larger than the {available} images available.")
    return n_wanted


class _Default(int):
    """A size that came from a preset, not from the user."""


def _default(value):
    return None if value is None else _Default(value)


def _split(images, labels, wanted, flag, task):
    """The first ``wanted`` images (uint8, as loaded: the model scales each batch on the device)
    and their targets for ``task``."""
    n = _subset(wanted, len(images), flag)
    return images[:n], targets(labels[:n], task)


class MetricsFile:
    """One JSON object per epoch; on resume, lines of epochs after the checkpoint are dropped."""

    def __init__(self, path, keep_until_epoch=0):
        self.path = Path(path) if path else None
        if self.path is None:
            return
        kept = []
        if keep_until_epoch and self.path.exists():
            try:
                text = self.path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError) as exc:
                raise InputError(f"Cannot continue the metrics file {self.path}: {type(exc).__name__}: {exc}. "
                                 "Expected the JSON-lines file an earlier run wrote (or a new path).") from None
            for line in text.splitlines():
                try:
                    if json.loads(line).get("epoch", 10**9) <= keep_until_epoch:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record):
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


# ------------------------------------------------------------------------------------- train
def train(args):
    if args.resume and not args.checkpoint:
        raise InputError("--resume needs --checkpoint PATH (the file to continue from).")
    comm = None
    if args.distributed:
        from .distributed import init

        # First, before checks that can fail on one host only: a rank that stops after init stops
        # the others at once. On GPUs, init makes this rank's own GPU current before anything else.
        comm = init(args.device)
        if comm.rank != 0:  # rank 0 alone prints, writes metrics, checkpoints and pictures
            args.quiet, args.metrics_out, args.plots = True, None, None
    # PATH.prev alone is what a crash between the two renames of a save leaves: resume from it.
    found = [] if not args.checkpoint else \
        [p for p in (Path(args.checkpoint), previous_path(args.checkpoint)) if p.exists()]
    if comm is not None:  # every rank decides alike (a rank-local disk could differ)
        comm.check_same(len(found), "how many of --checkpoint and its .prev exist")
    try:
        _check_outputs(args, found)
        refused = None
    except InputError as exc:
        refused = exc
    # Rank 0 alone writes outputs, so it alone may refuse: every rank stops with it (exit 2).
    if comm is not None and comm.allreduce_sum([float(refused is not None)])[0] > 0:
        raise refused or InputError("Rank 0 refused its outputs (its message says why).")
    if refused is not None:
        raise refused
    backend = get_backend(args.device) if comm is None else comm.backend
    main_rank = comm is None or comm.rank == 0
    changed = []  # resume options deliberately changed: said once the epochs to train are known
    if args.resume and found:
        model = load_model(args.checkpoint, device=backend, fallback=True)
        saved = model.checkpoint_header.get("extra", {})
        preset_name = _check_resume_options(args, model, saved)
        preset = get_preset(preset_name)
        try:
            check_arch(model.checkpoint_path, model.checkpoint_header,
                       build_model(preset, device="cpu", dtype=model.dtype).get_config())
        except CheckpointError as exc:
            given = ("" if args.preset else " (the default)" if not saved.get("preset") else
                     " (as its header says)")
            raise InputError(f"{exc}. It was not trained with --preset {preset_name}{given}: give the --preset "
                             "it was trained with, or start a new run (--overwrite or another --checkpoint).") from None
        if args.dtype is not None and model.dtype != args.dtype:  # else: the checkpoint's dtype
            raise InputError(f"The checkpoint was trained in {model.dtype}; received --dtype {args.dtype}.")
        for flag, value, attr in (("--learning-rate", args.learning_rate, "learning_rate"),
                                  ("--lr-decay", args.lr_decay, "epoch_decay")):
            if value and value != getattr(model.optimizer, attr):  # a deliberate change, said once
                changed.append(f"{flag} {value} replaces the saved {getattr(model.optimizer, attr)}")
                setattr(model.optimizer, attr, value)
        fell_back = Path(model.checkpoint_path) == previous_path(args.checkpoint)
        why = ""
        if fell_back and Path(args.checkpoint).exists() and main_rank:
            # Damaged: set it aside, or the next save would move it over the good .prev.
            damaged = set_aside(args.checkpoint, ".damaged")  # a fresh name: never over an earlier one
            why = f" ({args.checkpoint} is damaged, kept as {damaged.name}; its previous version is intact)"
        elif fell_back:
            why = f" ({args.checkpoint} is missing; its previous version is intact)"
        if main_rank:
            print(f"Resuming from {model.checkpoint_path} after epoch {model.epoch}{why}.", flush=True)
    else:
        if args.resume and main_rank:  # said even with --quiet: a mistyped path must not pass unseen
            print(f"No checkpoint at {args.checkpoint} yet: starting from scratch.", flush=True)
        saved = {}
        preset_name = args.preset or "lenet"
        preset = get_preset(preset_name)
        model = build_model(preset, device=backend, dtype=args.dtype or "float32",
                            seed=0 if args.seed is None else args.seed)
        opt = optimizers.get(args.optimizer or preset["optimizer"], args.learning_rate or preset["learning_rate"],
                             args.lr_decay or preset.get("lr_decay", 1.0))
        model.compile(opt, loss=preset["loss"])
    epochs = args.epochs or preset["epochs"]
    if changed and main_rank and epochs > model.epoch:  # the schedule goes on: epoch e runs at rate · decay^e
        opt = model.optimizer
        print(f"{'; '.join(changed)}: epoch {model.epoch + 1} runs at learning rate {opt.learning_rate:g} × "
              f"{opt.epoch_decay:g}^{model.epoch} = {opt.learning_rate * opt.epoch_decay ** model.epoch:.3g}.",
              flush=True)
    # A resumed run keeps the data and batching it was started with (_check_resume_options
    # refuses others), so that it continues exactly where the interrupted run would have gone.
    dataset = args.dataset or saved.get("dataset") or preset["dataset"]
    batch_size = args.batch_size or saved.get("batch_size") or preset["batch_size"]
    train_size = args.train_size or saved.get("train_size") or _default(preset["train_size"])
    test_size = args.test_size or saved.get("test_size") or _default(preset["test_size"])
    ds = load_dataset(dataset, args.data_dir, progress=not args.quiet)
    x, y = _split(ds.x_train, ds.y_train, train_size, "--train-size", preset["task"])
    xt, yt = _split(ds.x_test, ds.y_test, test_size, "--test-size", preset["task"])
    if comm is not None:
        comm.check_same(model.epoch, "the epoch to start from (each rank reads --checkpoint itself)")
        model.comm = comm
        comm.broadcast_parameters([layer for layer in model.layers if layer.params])
    if not args.quiet:
        model.summary()

    extra = {"preset": preset_name, "dataset": dataset, "task": preset["task"], "batch_size": batch_size,
             "train_size": len(x), "test_size": len(xt)}
    metrics = MetricsFile(args.metrics_out, keep_until_epoch=model.epoch)
    plots = Path(args.plots) if args.plots else None
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        _plot_filters(model, plots / "filters_before.png",
                      "before training" if model.epoch == 0 else f"at epoch {model.epoch} (resumed)")

    def after_epoch(model, epoch, logs):
        if args.checkpoint and main_rank:  # first: a metrics file that cannot be written costs no epoch
            model.save(args.checkpoint, extra=extra)
        with reported_after_save("--metrics-out", args.metrics_out, args.checkpoint, epoch + 1):
            metrics.write({"epoch": epoch + 1, "train_loss": logs["loss"], "train_accuracy": logs["accuracy"],
                           "test_loss": logs.get("val_loss"), "test_accuracy": logs.get("val_accuracy"),
                           "seconds": logs["seconds"], "images_per_second": logs["images_per_second"],
                           "device": str(model.backend)})

    start = time.perf_counter()
    if model.epoch >= epochs:  # said even with --quiet: the run did nothing
        if main_rank:
            print(f"{model.checkpoint_path} already holds {model.epoch} epochs and --epochs {epochs} is the total "
                  f"to reach: nothing to train. Give --epochs {model.epoch + 1} or more to go on.", flush=True)
    else:
        try:  # --epochs is the total to reach: epochs model.epoch+1 .. epochs
            model.fit(x, y, batch_size=batch_size, epochs=epochs, initial_epoch=model.epoch,
                      validation_data=(xt, yt), seed=model.seed, verbose=0 if args.quiet else 1,
                      callbacks=[after_epoch])
        except KeyboardInterrupt:
            if main_rank:
                print(f"\nInterrupted in epoch {model.epoch + 1}. " + (
                    f"{args.checkpoint} holds epoch {model.epoch}: continue with the same command and --resume."
                    if args.checkpoint and model.epoch else "No epoch was saved."), file=sys.stderr, flush=True)
            raise
    total = time.perf_counter() - start
    if plots is not None:
        with reported_after_save("--plots", plots, args.checkpoint, model.epoch):
            _plots_after(model, plots, xt, CLASS_NAMES[dataset] if preset["task"] == "classes" else ("<= 4", "> 4"))
    h = model.history
    acc = h.get("val_accuracy", [float("nan")])[-1] if h else float("nan")
    train_acc = h.get("accuracy", [float("nan")])[-1] if h else float("nan")
    if not main_rank:
        return 0
    where = f"checkpoint: {args.checkpoint}" if args.checkpoint else "no checkpoint (use --checkpoint PATH)"
    if comm is not None:
        where += f"; {comm.size} processes"
    print(f"xpcnn train: preset {preset_name}, {model.epoch} epoch{'s' if model.epoch != 1 else ''} on "
          f"{model.backend}: train accuracy "
          f"{train_acc:.4f}, test accuracy {acc:.4f}, {total:.1f} s; {where}", flush=True)
    return 0


def _optimizer_name(optimizer):
    config = optimizer.get_config()
    if config["class"] == "Adam":
        return "adam"
    return "momentum" if config.get("momentum") else "sgd"


def _check_outputs(args, found):
    """Every output can be written and nothing saved is lost, before any data are read or any
    epoch is trained. ``found``: the checkpoint files there already (PATH, PATH.prev)."""
    check_train_outputs(args)  # no FIFO, device or folder; no two outputs on one file
    for path, what in ((args.checkpoint, "checkpoint"), (args.metrics_out, "metrics")):
        if path:
            writable_file(path, what)
    if found and not args.resume and not args.overwrite:
        raise InputError(_existing_checkpoint_message(found[0]))
    # An earlier run's metrics are kept unless this run continues them (a checkpoint was found
    # to resume) or --overwrite says so.
    if args.metrics_out and not args.overwrite and not (args.resume and found) and (
            refusal := metrics_refusal(args.metrics_out)):
        raise InputError(refusal)
    if args.plots:  # a picture folder that cannot be made fails now, not after training
        folder = Path(args.plots)  # (a Path: "pics/" names the folder, as it should here)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--plots {args.plots} is a file; expected a folder (it is created if missing).")
        writable_file(folder / "history.png" if folder.is_dir() else folder, "plots")  # made later if missing
        from .plots import require_matplotlib

        require_matplotlib()  # a missing 'plots' extra is a clear error before the folder is made


def _check_resume_options(args, model, saved):
    """--resume continues the saved run: an option that would change it is refused, not ignored.
    Returns the preset's name (the checkpoint's own when --preset is not given)."""
    keep = " --resume continues the saved run: drop the option, or start a new run (--overwrite or another " \
           "--checkpoint)."
    where = model.checkpoint_path
    if args.optimizer and args.optimizer != _optimizer_name(model.optimizer):
        raise InputError(f"{where} was trained with --optimizer {_optimizer_name(model.optimizer)}; "
                         f"received --optimizer {args.optimizer}.{keep}")
    if args.seed is not None and args.seed != model.seed:
        raise InputError(f"{where} was trained with --seed {model.seed}; received --seed {args.seed} (the data "
                         f"order and dropout come from the seed).{keep}")
    for flag, given, key in (("--preset", args.preset, "preset"), ("--dataset", args.dataset, "dataset"),
                             ("--batch-size", args.batch_size, "batch_size"),
                             ("--train-size", args.train_size, "train_size"),
                             ("--test-size", args.test_size, "test_size")):
        if given is not None and saved.get(key) is not None and given != saved[key]:
            raise InputError(f"{where} was trained with {flag} {saved[key]}; received {flag} {given}.{keep}")
    return args.preset or saved.get("preset") or "lenet"


def _existing_checkpoint_message(path):
    try:
        read_header(path)
    except CheckpointError:
        return (f"{path} exists and is not a readable xpcnn checkpoint. Choose another --checkpoint path "
                "(or --overwrite to replace that file).")
    return (f"{path} holds a checkpoint already. Add --resume to continue it, or --overwrite to train a new "
            "model in its place (the old one is kept as .prev for one more epoch).")


def _plot_filters(model, path, title):
    from .layers import Conv2D
    from .plots import plot_filters

    conv = next((layer for layer in model.layers if isinstance(layer, Conv2D)), None)
    if conv is not None:
        plot_filters(conv.get_weights()[0], path, title=f"{conv.name} filters {title}")


def _plots_after(model, folder, xt, class_names):
    from .plots import plot_feature_maps, plot_history

    plot_history(model.history, folder / "history.png", val_label="test")
    _plot_filters(model, folder / "filters_after.png", "after training")
    plot_feature_maps(model, xt[:1], folder / "feature_maps.png", class_names=class_names)
    print(f"Pictures written to {folder}/ (history.png, filters_before.png, filters_after.png, feature_maps.png)")


# ----------------------------------------------------------------------- evaluate, predict
def evaluate(args):
    model = load_model(args.checkpoint, device=args.device)
    extra = model.checkpoint_header.get("extra", {})
    dataset = args.dataset or extra.get("dataset", "mnist")
    if extra.get("dataset") not in (None, dataset):  # allowed (transfer), but not by accident
        print(f"note: {args.checkpoint} was trained on {extra['dataset']}; evaluating on {dataset}.",
              file=sys.stderr)
    ds = load_dataset(dataset, args.data_dir, progress=False)
    xt, yt = _split(ds.x_test, ds.y_test, args.test_size, "--test-size", extra.get("task", "classes"))
    result = model.evaluate(xt, yt, batch_size=args.batch_size)
    print(f"{args.checkpoint}: {dataset} test set ({len(xt)} images) on {model.backend}: "
          f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")
    return 0


def predict(args):
    from .images import load_images

    model = load_model(args.checkpoint, device=args.device)
    extra = model.checkpoint_header.get("extra", {})
    # Digits are cropped and centred by their centre of mass, as MNIST was made; Fashion-MNIST
    # pictures fill their frame, so they are only resized.
    dataset = extra.get("dataset", "mnist")
    names = CLASS_NAMES.get(dataset, ())
    centre = dataset == "mnist"
    x = load_images(args.images, tuple(model.input_shape), dtype=model.dtype, center=centre)
    for path, image in zip(args.images, x):
        if not image.any():  # the loader found a uniform picture: it gives an empty field
            print(f"note: {path} looks blank (no contrast); its prediction means nothing.", file=sys.stderr)
    batch = 256
    if any(type(layer).__name__ == "BatchStandardize" for layer in model.layers):
        batch = len(x)  # one batch: every image is standardized with all the others given
        print(f"note: this network standardizes over the batch (as the tutorial's code does), so each "
              f"image's result depends on the other {len(x) - 1} given with it"
              + (" — with one image the output is always 0.5." if len(x) == 1 else "."), file=sys.stderr)
    out = model.predict(x, batch_size=batch).astype(np.float64)  # host array: the rest is presentation
    if model.loss == "softmax_cross_entropy":  # the model outputs logits
        out = np.asarray(F.softmax(out))
    task = extra.get("task", "classes")
    for path, row in zip(args.images, out):
        if task == "greater_than_4":
            p = float(row[0])
            print(f"{path}: digit {'> 4' if p > 0.5 else '<= 4'} (p(> 4) = {p:.3f})")
            continue
        top = int(np.argmax(row))
        listing = " ".join(f"{k}:{v:.3f}" for k, v in enumerate(row))
        name = "" if dataset == "mnist" or len(names) != len(row) else f" {names[top]!r}"
        print(f"{path}: class {top}{name} (p = {row[top]:.3f})  [{listing}]")
    return 0


# ---------------------------------------------------------------------------- inspection
def summary(args):
    if args.preset:
        model = build_model(get_preset(args.preset), device="cpu")
        model.summary()
        return 0
    from .checkpoint import load_checkpoint
    from .io import model_from_header

    header = load_checkpoint(args.checkpoint)[0]  # the digest too: a flipped byte is not summarized
    model_from_header(header, "cpu", args.checkpoint).summary()
    hist = header.get("history") or {}
    acc = (hist.get("val_accuracy") or [None])[-1]
    print(f"Trained {header.get('epoch', 0)} epochs on {header.get('device')}; loss {header.get('loss')}; "
          f"optimizer {(header.get('optimizer') or {}).get('config')}; last test accuracy {acc}")
    return 0


def gradcheck(args):
    from .gradcheck import format_rows
    from .gradcheck import gradcheck as run_gradcheck

    preset = get_preset(args.preset)
    model = build_model(preset, device=args.device, dtype="float64", seed=args.seed)
    model.compile("sgd", loss=preset["loss"])
    rng = np.random.default_rng(args.seed)
    n = args.batch_size
    x = model.backend.asarray(rng.random((n, *preset["input_shape"])), "float64")
    y = targets(rng.integers(0, 10, n), preset["task"])
    y = model.backend.asarray(y, "int64" if y.dtype.kind == "i" else "float64")
    rows = run_gradcheck(model, x, y, entries=args.entries, seed=args.seed)
    print(f"Gradient check of preset {args.preset} on {model.backend} (float64, batch {n}, central differences)")
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print("all gradients within bounds" if not failed else f"{len(failed)} parameter(s) out of bounds")
    return 1 if failed else 0


def check(args):
    from .parity import format_report, parity

    report = parity(args.preset, args.devices, steps=args.steps, batch_size=args.batch_size, dtype=args.dtype,
                    seed=args.seed, rtol=args.rtol)
    print(format_report(report))
    return 0 if report["ok"] else 1


def selftest(args):
    from argparse import Namespace

    problem = gpu_problem()  # probed once: each probe runs a kernel on a GPU
    device = "cpu" if problem else "gpu"
    code = gradcheck(Namespace(preset="lenet", device=device, batch_size=2, entries=4, seed=0))
    if problem is None:
        code |= check(Namespace(preset="lenet", devices=["cpu", "gpu"], steps=20, batch_size=32, dtype="float32",
                                seed=0, rtol=None))
    else:
        print(f"parity check skipped: only one device here ({problem})")
    from .presets import PRESETS

    model = build_model(PRESETS["lenet"], device=device, seed=0).compile("adam", loss="softmax_cross_entropy")
    rng = np.random.default_rng(0)
    x = rng.random((256, 1, 28, 28), dtype=np.float32)
    y = (x[:, 0, :14].mean(axis=(1, 2)) > x[:, 0, 14:].mean(axis=(1, 2))).astype(np.int64)
    hist = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    ok = hist["loss"][-1] < hist["loss"][0]
    print(f"tiny training on {model.backend}: loss {hist['loss'][0]:.4f} -> {hist['loss'][-1]:.4f} "
          f"({'decreasing' if ok else 'NOT decreasing'})")
    return code | (0 if ok else 1)


def info(args):
    import array_api_compat

    print(f"xpcnn {__version__}")
    print(f"Python {platform.python_version()} ({sys.executable})")
    print(f"NumPy {np.__version__}; array-api-compat {array_api_compat.__version__}")
    print(cupy_versions())
    problem = gpu_problem()
    print("Devices: cpu" + (f", gpu:0 ({gpu_name(0)})" if problem is None else ""))
    if problem:
        print(f"GPU: not usable: {problem}")
    env_device = os.environ.get("XPCNN_DEVICE")
    flag = "" if env_device is None or default_device() in DEVICES else \
        "  <- not a device: expected cpu, gpu or auto"
    print(f"Default device (XPCNN_DEVICE): {env_device if env_device is not None else 'cpu (unset)'}{flag}")
    from .data import keras_cache_dir

    print(f"Data directory (XPCNN_DATA_DIR): {os.environ.get('XPCNN_DATA_DIR', '(unset)')}; "
          f"Keras cache: {keras_cache_dir()}")
    for extra, module in (("plots", "matplotlib"), ("images", "PIL")):
        try:
            __import__(module)
            state = "installed"
        except ImportError:
            state = f"missing (pip install 'xpcnn[{extra}]')"
        print(f"Extra '{extra}': {state}")
    return 0
