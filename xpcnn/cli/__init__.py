"""The ``xpcnn`` command: train, evaluate, predict, summary, gradcheck, check, info, bench.

Exit codes: 0 success; 2 bad usage or bad input (one clear message, no traceback); 1 any other
failure (training diverged, out of memory, a bug). Set ``XPCNN_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from .._version import __version__
from ..argtypes import batch_size_arg, epochs_arg, images_arg, path_arg, positive_float, positive_int, seed_arg
from ..backend import DEVICES, DTYPES, default_device, is_out_of_memory
from ..bench import main as bench_main
from ..data import DATASETS
from ..errors import XpcnnError
from ..functional import LOSSES
from ..presets import PRESETS
from ..training import NonFiniteLossError
from . import commands
from .interop import COMMANDS as INTEROP_COMMANDS


def _device_arg(p):
    p.add_argument("--device", choices=DEVICES, default=None,
                   help=f"cpu (NumPy), gpu (CuPy) or auto; default XPCNN_DEVICE, else cpu (now: {default_device()})")


def _data_args(p):
    p.add_argument("--dataset", choices=DATASETS, default=None, help="default: the preset's (mnist)")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="folder with the four gzip IDX files or a Keras .npz (default: XPCNN_DATA_DIR, "
                        "then the Keras cache, then download)")


COMMANDS = {**{name: getattr(commands, name) for name in commands.__all__}, **INTEROP_COMMANDS}


def build_parser():
    parser = argparse.ArgumentParser(prog="xpcnn", description="A CNN written by hand on the Array API: NumPy or CuPy.")
    parser.add_argument("--version", action="version", version=f"xpcnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a preset network on MNIST / Fashion-MNIST")
    _device_arg(t)
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default lenet; with --resume, the checkpoint's")
    _data_args(t)
    t.add_argument("--epochs", type=epochs_arg,
                   help="the total to reach (a resumed run goes on from its saved epoch); default: the preset's")
    t.add_argument("--batch-size", type=batch_size_arg, help="default: the preset's")
    t.add_argument("--learning-rate", type=positive_float, help="default: the preset's")
    t.add_argument("--optimizer", choices=("sgd", "momentum", "adam"), help="default: the preset's")
    t.add_argument("--lr-decay", type=positive_float, help="learning-rate factor per epoch (default: the preset's, "
                   "1 = constant)")
    t.add_argument("--seed", type=seed_arg, default=None, help="default 0 (a resumed run keeps its own)")
    t.add_argument("--train-size", type=images_arg, help="use the first N training images")
    t.add_argument("--test-size", type=images_arg, help="use the first N test images")
    t.add_argument("--dtype", choices=DTYPES, default=None, help="default float32; with --resume, the checkpoint's")
    t.add_argument("--checkpoint", type=path_arg, default=None,
                   help="checkpoint file, saved atomically after every epoch")
    again = t.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue --checkpoint (its epoch, weights, optimizer)")
    again.add_argument("--overwrite", action="store_true", help="start a new run even though --checkpoint exists")
    t.add_argument("--metrics-out", type=path_arg, default=None, help="JSON lines file: one object per epoch")
    t.add_argument("--plots", type=path_arg, default=None, metavar="DIR",
                   help="write curves, filters and feature maps here")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="training threads on the CPU (default: one per usable core, each with a shard of 25M "
                        "multiply-adds or more: 61 images of lenet; 1 with --distributed)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks (run under mpirun -n K; needs the 'mpi' extra)")

    e = sub.add_parser("evaluate", help="loss and accuracy of a checkpoint on the test set")
    e.add_argument("--checkpoint", type=path_arg, required=True)
    _device_arg(e)
    _data_args(e)
    e.add_argument("--test-size", type=images_arg)
    e.add_argument("--batch-size", type=batch_size_arg, default=256)

    pr = sub.add_parser("predict", help="classify your own PNG/JPEG images")
    pr.add_argument("--checkpoint", type=path_arg, required=True)
    _device_arg(pr)
    pr.add_argument("images", nargs="+", metavar="IMAGE")

    s = sub.add_parser("summary", help="the layer table of a preset or checkpoint")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=sorted(PRESETS))
    g.add_argument("--checkpoint", type=path_arg)

    gc = sub.add_parser("gradcheck", help="finite-difference check of every layer's gradients")
    gc.add_argument("--preset", choices=sorted(PRESETS), default="lenet")
    _device_arg(gc)
    gc.add_argument("--batch-size", type=positive_int, default=8)
    gc.add_argument("--entries", type=positive_int, default=12, help="entries checked per parameter array")
    gc.add_argument("--seed", type=seed_arg, default=0)

    ck = sub.add_parser("check", help="CPU/GPU parity: the same steps on two devices, compared")
    ck.add_argument("--preset", choices=sorted(PRESETS), default="lenet")
    ck.add_argument("--devices", nargs=2, default=["cpu", "gpu"], metavar=("A", "B"))
    ck.add_argument("--steps", type=positive_int, default=100)
    ck.add_argument("--batch-size", type=positive_int, default=32)
    ck.add_argument("--dtype", choices=DTYPES, default="float32")
    ck.add_argument("--seed", type=seed_arg, default=0)
    ck.add_argument("--rtol", type=positive_float, default=None, help="default: the dtype's stated bound")

    _interop_parsers(sub)
    sub.add_parser("selftest", help="gradcheck + parity + a tiny training run (what the container runs)")
    sub.add_parser("info", help="versions, devices, data directory")
    sub.add_parser("bench", help="benchmarks: xpcnn bench --help (see BENCHMARKS.md)", add_help=False)
    parser.commands = sub.choices  # name -> subcommand parser, for errors in the subcommand's words
    return parser


def _interop_parsers(sub):
    """``export`` and ``import``: the ONNX / Keras bridges (xpcnn/interop/commands.py)."""
    ex = sub.add_parser("export", help="write a checkpoint's network as ONNX or Keras (extras 'onnx', 'keras')")
    ex.add_argument("--checkpoint", type=path_arg, required=True, help="the xpcnn checkpoint to export")
    ex.add_argument("--format", choices=("onnx", "keras"), default=None, help="default: from the output's suffix")
    ex.add_argument("output", type=path_arg, metavar="OUTPUT", help="model.onnx or model.keras")
    ex.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    im = sub.add_parser("import", help="a Keras .keras model -> an xpcnn checkpoint (extra 'keras')")
    im.add_argument("model", type=path_arg, metavar="MODEL.keras")
    im.add_argument("--checkpoint", type=path_arg, required=True, help="the checkpoint to write")
    im.add_argument("--loss", choices=sorted(LOSSES), default=None, help="store a loss, for `xpcnn evaluate`")
    im.add_argument("--overwrite", action="store_true", help="replace --checkpoint if it exists")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark has its own options: hand them over untouched
        return bench_main(argv[1:])
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the subcommand's usage line, not the top-level one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    def one_line(message, category, filename, lineno, line=None):  # no source path, no code line
        return f"xpcnn {args.command}: warning: {message}\n"

    # Python's own showwarning still writes it (and copes with a closed or broken stderr); only
    # the wording changes, and only while the command runs (main runs in-process in tests too).
    formatwarning, warnings.formatwarning = warnings.formatwarning, one_line
    try:
        with warnings.catch_warnings():
            # NaN/inf is reported once, clearly, by the training loop; NumPy's warnings would repeat it.
            warnings.filterwarnings("ignore", message="(overflow|invalid value|divide by zero) encountered",
                                    category=RuntimeWarning)
            return _run(COMMANDS[args.command], args)
    finally:
        warnings.formatwarning = formatwarning


def _run(command, args):
    try:
        return command(args) or 0
    except KeyboardInterrupt:
        print("xpcnn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `xpcnn info | head`: the reader left; nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # one clear line, never a traceback (unless XPCNN_DEBUG)
        if os.environ.get("XPCNN_DEBUG"):
            raise
        code, text = describe(exc, args)
        print(f"xpcnn {args.command}: error: {text}", file=sys.stderr)
        return code


def describe(exc, args):
    """(exit code, message) for an exception reaching the command line."""
    if isinstance(exc, NonFiniteLossError):
        return 1, str(exc)
    if is_out_of_memory(exc):
        hint = f" Try a smaller --batch-size (now {args.batch_size})." if getattr(args, "batch_size", None) else ""
        return 1, f"out of memory on the device ({type(exc).__name__}: {exc}).{hint}"
    if isinstance(exc, XpcnnError):
        return 2, str(exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"{exc.strerror or exc}: {exc.filename}"
    return 1, f"unexpected {type(exc).__name__}: {exc} (set XPCNN_DEBUG=1 for a traceback; please report it)"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
