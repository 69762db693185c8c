"""``xpcnn train``: open or resume a run, check its outputs, load its data, run its epochs.

Each step is a function of its own, testable without training:

    communicator(args)            one process, or this rank of an MPI job (--distributed)
    Outputs.open(args, comm)      every output checked before any work; rank 0 alone writes
    open_run(args, comm, out)     a new model from a preset, or the saved run resumed
    load_data(args, run)          the training and test images the run uses
    run_epochs(run, data, out)    fit, with a checkpoint and a metrics line after every epoch

Rank-0-only output is decided once, in :class:`Outputs`: on other ranks it prints nothing and
writes nothing.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import optimizers
from ..argtypes import writable_file
from ..backend import get_backend
from ..data import CLASS_NAMES, load_dataset
from ..diagnostics.plots import plot_feature_maps, plot_filters, plot_history, require_matplotlib
from ..errors import CheckpointError, InputError
from ..model import Sequential
from ..parallel import LOCAL, mpi
from ..paths import check_train_outputs, metrics_refusal, open_regular, reported_after_save, set_aside
from ..presets import build_model, get_preset, targets
from ..saving.checkpoint import check_arch, previous_path, read_header
from ..training import check_shares, resolve_threads


def train(args):
    comm = communicator(args)
    out = Outputs.open(args, comm)
    run = open_run(args, comm, out)
    data = load_data(args, run, quiet=out.quiet)
    seconds = run_epochs(run, data, out, comm)
    out.finish(run, data, seconds, comm)
    return 0


def communicator(args):
    """LOCAL, or this rank of the MPI job (--distributed), joined before any check that can fail
    on one host only: a rank that stops after joining stops the others at once."""
    if args.resume and not args.checkpoint:
        raise InputError("--resume needs --checkpoint PATH (the file to continue from).")
    if not args.distributed:
        return LOCAL
    # mpi4py (an optional extra) is imported here, when asked for; on GPUs this makes the rank's own
    # GPU current before anything else.
    return mpi.init(args.device)


# ------------------------------------------------------------------------------------ outputs
class Outputs:
    """What a run writes (checkpoint, metrics, pictures, messages), checked before any work.

    On every rank but 0 it says nothing and writes nothing: the one place that decides it.
    """

    def __init__(self, args, main):
        self.main = main
        self.quiet = args.quiet or not main
        self.checkpoint = args.checkpoint
        self.metrics_path = Path(args.metrics_out) if args.metrics_out and main else None
        self.plots = Path(args.plots) if args.plots and main else None
        # PATH.prev alone is what a crash between the two renames of a save leaves: resume from it.
        self.found = [p for p in (Path(args.checkpoint), previous_path(args.checkpoint)) if p.exists()] \
            if args.checkpoint else []

    @classmethod
    def open(cls, args, comm):
        """Check every output (all ranks agree on the outcome) before any data are read."""
        out = cls(args, comm.is_main)
        comm.check_same(len(out.found), "how many of --checkpoint and its .prev exist")
        # Each rank checks what it writes: the checkpoint path (every rank reads it on --resume),
        # metrics and pictures only on rank 0.
        mine = args if out.main else copy.copy(args)
        if not out.main:
            mine.metrics_out = mine.plots = None
        try:
            check_outputs(mine, out.found)
            refused = None
        except InputError as exc:
            refused = exc
        refused = comm.agree(refused)  # one rank's refusal stops every rank (exit 2)
        if refused is not None:
            raise refused
        return out

    def say(self, text, *, always=False):
        """A line on stdout from rank 0; ``always``: even with --quiet (what must not pass unseen)."""
        if self.main and (always or not self.quiet):
            print(text, flush=True)

    def start(self, run):
        """Truncate or continue the metrics file; draw the filters before training."""
        if self.metrics_path is not None:
            self.metrics = MetricsFile(self.metrics_path, keep_until_epoch=run.model.epoch)
        if self.plots is not None:
            self.plots.mkdir(parents=True, exist_ok=True)
            _plot_filters(run.model, self.plots / "filters_before.png",
                          "before training" if run.model.epoch == 0 else f"at epoch {run.model.epoch} (resumed)")

    def after_epoch(self, run):
        """The callback fit calls after each epoch: the checkpoint, then a metrics line."""

        def write(model, epoch, logs):
            if self.checkpoint and self.main:  # first: a metrics file that cannot be written loses no epoch
                model.save(self.checkpoint, extra=run.extra)
            if self.metrics_path is not None:
                with reported_after_save("--metrics-out", self.metrics_path, self.checkpoint, epoch + 1):
                    self.metrics.write({
                        "epoch": epoch + 1, "train_loss": logs["loss"], "train_accuracy": logs["accuracy"],
                        "test_loss": logs.get("val_loss"), "test_accuracy": logs.get("val_accuracy"),
                        "seconds": logs["seconds"], "images_per_second": logs["images_per_second"],
                        "device": str(model.backend), "threads": run.threads})

        return write

    def finish(self, run, data, seconds, comm):
        if self.plots is not None:
            with reported_after_save("--plots", self.plots, self.checkpoint, run.model.epoch):
                _plots_after(run.model, self.plots, data.x_test, data.class_names)
        h, model = run.model.history, run.model
        acc = h.get("val_accuracy", [float("nan")])[-1] if h else float("nan")
        train_acc = h.get("accuracy", [float("nan")])[-1] if h else float("nan")
        where = f"checkpoint: {self.checkpoint}" if self.checkpoint else "no checkpoint (use --checkpoint PATH)"
        if comm.size > 1:
            where += f"; {comm.size} processes"
        self.say(f"xpcnn train: preset {run.preset_name}, {model.epoch} epoch{'s' if model.epoch != 1 else ''} on "
                 f"{model.backend}: train accuracy {train_acc:.4f}, test accuracy {acc:.4f}, {seconds:.1f} s; "
                 f"{where}", always=True)


def check_outputs(args, found):
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
        require_matplotlib()  # a missing 'plots' extra is a clear error before the folder is made


class MetricsFile:
    """One JSON object per epoch; on resume, lines of epochs after the checkpoint are dropped."""

    def __init__(self, path, keep_until_epoch=0):
        self.path = Path(path)
        kept = []
        if keep_until_epoch and self.path.exists():
            try:
                with open_regular(self.path, f"--metrics-out {self.path}", error=InputError) as f:
                    text = f.read().decode("utf-8")
            except (UnicodeDecodeError, OSError) as exc:
                raise InputError(f"Cannot continue the metrics file {self.path}: {type(exc).__name__}: {exc}. "
                                 "Expected the JSON-lines file an earlier run wrote (or a new path).") from None
            for line in text.splitlines():
                try:
                    if json.loads(line).get("epoch", 10**9) <= keep_until_epoch:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        self._open("wb", "".join(line + "\n" for line in kept))

    def write(self, record):
        self._open("ab", json.dumps(record) + "\n")

    def _open(self, mode, text):
        # Never a plain open(): a path swapped for a FIFO since the checks would block it.
        with open_regular(self.path, f"--metrics-out {self.path}", error=InputError, mode=mode) as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """A model with the settings it trains under (all resolved: preset, saved run, flags)."""

    model: Sequential
    preset_name: str
    preset: dict
    epochs: int
    dataset: str
    batch_size: int
    train_size: int | None  # None: all the images there are
    test_size: int | None
    threads: int | None = None
    extra: dict = field(default_factory=dict)  # what the checkpoint header keeps of the run


def open_run(args, comm, out):
    """The run to train: the saved one when --resume finds a checkpoint, else a new one."""
    backend = comm.backend or get_backend(args.device)  # an MPI rank's own GPU, when it has one
    resume = args.resume and out.found
    if args.resume and not out.found:  # said even with --quiet: a mistyped path must not pass unseen
        out.say(f"No checkpoint at {args.checkpoint} yet: starting from scratch.", always=True)
    run = resume_run(args, backend, out) if resume else new_run(args, backend)
    comm.check_same(run.model.epoch, "the epoch to start from (each rank reads --checkpoint itself)")
    comm.broadcast_parameters([layer for layer in run.model.layers if layer.params])
    coupled = next((layer for layer in run.model.layers if layer.couples_batch), None)
    if comm.size > 1 and coupled is not None:
        raise InputError(f"--distributed splits every batch over the ranks, but layer '{coupled.name}' "
                         f"({type(coupled).__name__}) of preset {run.preset_name} computes statistics over the "
                         "whole batch: run it in one process.")
    run.threads = resolve_threads(args.threads, run.model, run.batch_size, comm)
    check_shares(run.batch_size, comm, run.threads, "--batch-size")  # now, before anything is written
    if run.model.epoch >= run.epochs:  # said even with --quiet: the run does nothing
        out.say(f"{run.model.checkpoint_path} already holds {run.model.epoch} epochs and --epochs {run.epochs} is the "
                f"total to reach: nothing to train. Give --epochs {run.model.epoch + 1} or more to go on.",
                always=True)
    return run


def new_run(args, backend):
    preset_name = args.preset or "lenet"
    preset = get_preset(preset_name)
    model = build_model(preset, device=backend, dtype=args.dtype or "float32", seed=args.seed or 0)
    model.compile(optimizers.get(args.optimizer or preset["optimizer"], args.learning_rate or preset["learning_rate"],
                                 args.lr_decay or preset.get("lr_decay", 1.0)), loss=preset["loss"])
    # A preset's sizes are capped at what the dataset has; the user's must fit (load_data).
    return Run(model, preset_name, preset, args.epochs or preset["epochs"], args.dataset or preset["dataset"],
               args.batch_size or preset["batch_size"], args.train_size, args.test_size)


def resume_run(args, backend, out):
    """The saved run, continued exactly: options that would change it are refused, a changed
    learning rate or decay is said aloud."""
    model = Sequential.load(args.checkpoint, device=backend, fallback=True)
    if not model.checkpoint_header.get("loss") or not model.checkpoint_header.get("optimizer"):
        raise InputError(f"{model.checkpoint_path} holds a model without a loss and optimizer (saved before "
                         "compile, or imported): there is no training run to resume. Start a new run "
                         "(--overwrite or another --checkpoint).")
    saved = model.checkpoint_header.get("extra", {})
    preset_name = check_resume_options(args, model, saved)
    preset = get_preset(preset_name)
    try:
        check_arch(model.checkpoint_path, model.checkpoint_header,
                   build_model(preset, device="cpu", dtype=model.dtype).get_config())
    except CheckpointError as exc:
        given = "" if args.preset else " (the default)" if not saved.get("preset") else " (as its header says)"
        raise InputError(f"{exc}. It was not trained with --preset {preset_name}{given}: give the --preset "
                         "it was trained with, or start a new run (--overwrite or another --checkpoint).") from None
    if args.dtype is not None and model.dtype != args.dtype:  # else: the checkpoint's dtype
        raise InputError(f"The checkpoint was trained in {model.dtype}; received --dtype {args.dtype}.")
    run = Run(model, preset_name, preset, args.epochs or preset["epochs"],
              args.dataset or saved.get("dataset") or preset["dataset"],
              args.batch_size or saved.get("batch_size") or preset["batch_size"],
              args.train_size or saved.get("train_size"), args.test_size or saved.get("test_size"))
    out.say(f"Resuming from {model.checkpoint_path} after epoch {model.epoch}{_set_aside(args, model, out)}.",
            always=True)
    changed = _changed_rates(args, model.optimizer)
    if changed and run.epochs > model.epoch:  # the schedule goes on: epoch e runs at rate · decay^e
        opt = model.optimizer
        out.say(f"{'; '.join(changed)}: epoch {model.epoch + 1} runs at learning rate {opt.learning_rate:g} × "
                f"{opt.epoch_decay:g}^{model.epoch} = {opt.learning_rate * opt.epoch_decay ** model.epoch:.3g}.",
                always=True)
    return run


def _set_aside(args, model, out):
    """Why the run resumes from PATH.prev (and, on rank 0, a damaged PATH moved aside, or the next
    save would move it over the good .prev); "" when PATH itself was read."""
    if Path(model.checkpoint_path) != previous_path(args.checkpoint):
        return ""
    if not Path(args.checkpoint).exists():
        return f" ({args.checkpoint} is missing; its previous version is intact)"
    if not out.main:
        return ""
    damaged = set_aside(args.checkpoint, ".damaged")  # a fresh name: never over an earlier one
    return f" ({args.checkpoint} is damaged, kept as {damaged.name}; its previous version is intact)"


def _changed_rates(args, opt):
    """Apply a deliberately changed --learning-rate / --lr-decay; returns what changed, in words."""
    changed = []
    for flag, value, attr in (("--learning-rate", args.learning_rate, "learning_rate"),
                              ("--lr-decay", args.lr_decay, "epoch_decay")):
        if value and value != getattr(opt, attr):
            changed.append(f"{flag} {value} replaces the saved {getattr(opt, attr)}")
            setattr(opt, attr, value)
    return changed


def check_resume_options(args, model, saved):
    """--resume continues the saved run: an option that would change it is refused, not ignored.
    Returns the preset's name (the checkpoint's own when --preset is not given)."""
    keep = " --resume continues the saved run: drop the option, or start a new run (--overwrite or another " \
           "--checkpoint)."
    where = model.checkpoint_path
    if args.optimizer and args.optimizer != optimizer_name(model.optimizer):
        raise InputError(f"{where} was trained with --optimizer {optimizer_name(model.optimizer)}; "
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


def optimizer_name(optimizer):
    """The --optimizer name of an optimizer: "sgd", "momentum" or "adam"."""
    config = optimizer.get_config()
    if config["class"] == "Adam":
        return "adam"
    return "momentum" if config.get("momentum") else "sgd"


# --------------------------------------------------------------------------------------- data
@dataclass
class Data:
    x_train: object
    y_train: object
    x_test: object
    y_test: object
    class_names: tuple


def load_data(args, run, quiet=None):
    """The run's images (uint8, as loaded: the model scales each batch on the device) and targets;
    ``quiet``: no download progress (default ``args.quiet``)."""
    ds = load_dataset(run.dataset, args.data_dir, progress=not (args.quiet if quiet is None else quiet))
    task = run.preset["task"]
    x, y = _first(ds.x_train, ds.y_train, run.train_size, run.preset["train_size"], "--train-size", task)
    xt, yt = _first(ds.x_test, ds.y_test, run.test_size, run.preset["test_size"], "--test-size", task)
    # A resumed run keeps the data and batching it was started with (check_resume_options refuses
    # others), so that it continues exactly where the interrupted run would have gone.
    run.extra = {"preset": run.preset_name, "dataset": run.dataset, "task": task, "batch_size": run.batch_size,
                 "train_size": len(x), "test_size": len(xt)}
    names = CLASS_NAMES[run.dataset] if task == "classes" else ("<= 4", "> 4")
    return Data(x, y, xt, yt, names)


def _first(images, labels, wanted, preset_default, flag, task):
    """The first ``wanted`` images: the user's number must fit, a preset's is capped silently."""
    if wanted is not None and wanted > len(images):
        raise InputError(f"{flag} {wanted} is larger than the {len(images)} images available.")
    n = wanted if wanted is not None else min(preset_default or len(images), len(images))
    return images[:n], targets(labels[:n], task)


# ------------------------------------------------------------------------------------- epochs
def run_epochs(run, data, out, comm):
    """Train up to ``run.epochs`` (the total to reach); returns the seconds it took."""
    model = run.model
    if not out.quiet:
        model.summary()
    out.start(run)
    start = time.perf_counter()
    if model.epoch < run.epochs:
        ranks = f"{comm.size} processes × " if comm.size > 1 else ""
        out.say(f"Training {run.preset_name} on {model.backend}: epochs {model.epoch + 1}-{run.epochs}, batch "
                f"{run.batch_size}, {ranks}{run.threads} thread{'s' if run.threads > 1 else ''}")
        try:
            model.fit(data.x_train, data.y_train, batch_size=run.batch_size, epochs=run.epochs,
                      initial_epoch=model.epoch, validation_data=(data.x_test, data.y_test), seed=model.seed,
                      verbose=0 if out.quiet else 1, callbacks=[out.after_epoch(run)], comm=comm,
                      threads=run.threads)
        except KeyboardInterrupt:
            if out.main:
                print(f"\nInterrupted in epoch {model.epoch + 1}. " + (
                    f"{out.checkpoint} holds epoch {model.epoch}: continue with the same command and --resume."
                    if out.checkpoint and model.epoch else "No epoch was saved."), file=sys.stderr, flush=True)
            raise
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ helpers
def _existing_checkpoint_message(path):
    try:
        read_header(path)
    except CheckpointError:
        return (f"{path} exists and is not a readable xpcnn checkpoint. Choose another --checkpoint path "
                "(or --overwrite to replace that file).")
    return (f"{path} holds a checkpoint already. Add --resume to continue it, or --overwrite to train a new "
            "model in its place (the old one is kept as .prev for one more epoch).")


def _plot_filters(model, path, title):
    conv = next((layer for layer in model.layers if type(layer).__name__ == "Conv2D"), None)
    if conv is not None:
        plot_filters(conv.get_weights()[0], path, title=f"{conv.name} filters {title}")


def _plots_after(model, folder, xt, class_names):
    plot_history(model.history, folder / "history.png", val_label="test")
    _plot_filters(model, folder / "filters_after.png", "after training")
    plot_feature_maps(model, xt[:1], folder / "feature_maps.png", class_names=class_names)
    print(f"Pictures written to {folder}/ (history.png, filters_before.png, filters_after.png, feature_maps.png)")
