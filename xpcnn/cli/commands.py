"""What each ``xpcnn`` subcommand but ``train`` does (argument parsing lives in :mod:`xpcnn.cli`;
``train`` in :mod:`xpcnn.cli.train`)."""

from __future__ import annotations

import os
import platform
import sys

import array_api_compat
import numpy as np

from .. import functional as F
from .._version import __version__
from ..backend import DEVICES, cupy_versions, default_device, gpu_name, gpu_problem
from ..data import CLASS_NAMES, keras_cache_dir, load_dataset
from ..data.images import load_images
from ..diagnostics.gradcheck import format_rows
from ..diagnostics.gradcheck import gradcheck as gradcheck_model
from ..diagnostics.parity import format_report, parity
from ..model import Sequential
from ..presets import PRESETS, build_model, get_preset, targets
from ..saving.checkpoint import load_checkpoint
from .train import _first, train

__all__ = ["check", "evaluate", "gradcheck", "info", "predict", "selftest", "summary", "train"]


# ----------------------------------------------------------------------- evaluate, predict
def evaluate(args):
    model = Sequential.load(args.checkpoint, device=args.device)
    extra = model.checkpoint_header.get("extra", {})
    dataset = args.dataset or extra.get("dataset", "mnist")
    if extra.get("dataset") not in (None, dataset):  # allowed (transfer), but not by accident
        print(f"note: {args.checkpoint} was trained on {extra['dataset']}; evaluating on {dataset}.",
              file=sys.stderr)
    ds = load_dataset(dataset, args.data_dir, progress=False)
    xt, yt = _first(ds.x_test, ds.y_test, args.test_size, None, "--test-size", extra.get("task", "classes"))
    result = model.evaluate(xt, yt, batch_size=args.batch_size)
    print(f"{args.checkpoint}: {dataset} test set ({len(xt)} images) on {model.backend}: "
          f"loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}")
    return 0


def predict(args):
    model = Sequential.load(args.checkpoint, device=args.device)
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
    header = load_checkpoint(args.checkpoint)[0]  # the digest too: a flipped byte is not summarized
    Sequential.from_header(header, "cpu", args.checkpoint).summary()
    hist = header.get("history") or {}
    acc = (hist.get("val_accuracy") or [None])[-1]
    print(f"Trained {header.get('epoch', 0)} epochs on {header.get('device')}; loss {header.get('loss')}; "
          f"optimizer {(header.get('optimizer') or {}).get('config')}; last test accuracy {acc}")
    return 0


def gradcheck(args):
    return check_gradients(args.preset, args.device, batch_size=args.batch_size, entries=args.entries, seed=args.seed)


def check_gradients(preset_name, device, *, batch_size=8, entries=12, seed=0):
    """Print the finite-difference table of a preset's network; 1 when a gradient is out of bounds."""
    preset = get_preset(preset_name)
    model = build_model(preset, device=device, dtype="float64", seed=seed)
    model.compile("sgd", loss=preset["loss"])
    rng = np.random.default_rng(seed)
    x = model.backend.asarray(rng.random((batch_size, *preset["input_shape"])), "float64")
    y = targets(rng.integers(0, 10, batch_size), preset["task"])
    y = model.backend.asarray(y, "int64" if y.dtype.kind == "i" else "float64")
    rows = gradcheck_model(model, x, y, entries=entries, seed=seed)
    print(f"Gradient check of preset {preset_name} on {model.backend} (float64, batch {batch_size}, "
          "central differences)")
    print(format_rows(rows))
    failed = [r for r in rows if not r.ok]
    print("all gradients within bounds" if not failed else f"{len(failed)} parameter(s) out of bounds")
    return 1 if failed else 0


def check(args):
    return check_parity(args.preset, args.devices, steps=args.steps, batch_size=args.batch_size, dtype=args.dtype,
                        seed=args.seed, rtol=args.rtol)


def check_parity(preset_name, devices, **options):
    """Print the parity report of two devices; 1 when they disagree beyond the bound."""
    report = parity(preset_name, devices, **options)
    print(format_report(report))
    return 0 if report["ok"] else 1


def selftest(args):
    problem = gpu_problem()  # probed once: each probe runs a kernel on a GPU
    device = "cpu" if problem else "gpu"
    code = check_gradients("lenet", device, batch_size=2, entries=4)
    if problem is None:
        code |= check_parity("lenet", ["cpu", "gpu"], steps=20, batch_size=32, dtype="float32", seed=0)
    else:
        print(f"parity check skipped: only one device here ({problem})")
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
