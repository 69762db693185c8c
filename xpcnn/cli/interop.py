"""``xpcnn export`` and ``xpcnn import`` (argument parsing lives in :mod:`xpcnn.cli`)."""

from __future__ import annotations

from pathlib import Path

from .. import functional as F
from ..argtypes import writable_file
from ..errors import InputError
from ..interop.keras import from_keras, to_keras
from ..interop.onnx import OPSET, to_onnx
from ..model import Sequential
from ..paths import refuse_same_file

SUFFIXES = {"onnx": ".onnx", "keras": ".keras"}


def _output(path, overwrite, what, source):
    """Refuse an existing ``path`` (unless ``overwrite``), one that cannot be written, or the file
    read (``source``), before any work."""
    writable_file(path, what)
    refuse_same_file({"the input": source, f"the {what}": path})
    if Path(path).exists() and not overwrite:
        raise InputError(f"{path} exists already. Add --overwrite to replace it, or choose another path.")


def export(args):
    fmt = args.format or next((f for f, s in SUFFIXES.items() if str(args.output).endswith(s)), None)
    if fmt is None:
        raise InputError(f"Cannot tell the format of {args.output}: expected a name ending in .onnx or .keras, "
                         "or --format onnx|keras.")
    if fmt == "keras" and not str(args.output).endswith(".keras"):
        raise InputError(f"Keras saves only to files ending in .keras. Received {args.output}.")
    _output(args.output, args.overwrite, "output", args.checkpoint)
    model = Sequential.load(args.checkpoint, device="cpu")
    shape, out = _shape(model.input_shape), _shape(model.output_shape)
    logits = " (logits: apply a softmax for probabilities)" if model.loss == "softmax_cross_entropy" else ""
    if fmt == "onnx":
        to_onnx(model, args.output)
        print(f"Wrote {args.output}: ONNX opset {OPSET}, float32, input 'input' {shape}, "
              f"output 'output' {out}{logits}; the batch size N is free.")
    else:
        k_model = to_keras(model, args.output)
        print(f"Wrote {args.output}: Keras {_keras_version()} model, float32, input "
              f"{_shape(k_model.input_shape[1:])} (channels_last), output {_shape(k_model.output_shape[1:])}{logits}.")
    return 0


def import_keras(args):
    _output(args.checkpoint, args.overwrite, "checkpoint", args.model)
    model = from_keras(args.model, device="cpu")
    if args.loss:
        model.compile(optimizer="adam", loss=args.loss)
    model.save(args.checkpoint, extra={"imported_from": str(args.model)})
    print(f"Wrote {args.checkpoint}: {len(model.layers)} layers, {model.count_params():,} parameters, "
          f"input "
          f"{_shape(model.input_shape)}, output {_shape(model.output_shape)}.")
    if not args.loss:
        print(f"note: no --loss given ({' / '.join(sorted(F.LOSSES))}): `xpcnn predict` works as it is; "
              "`xpcnn evaluate` needs one.")
    return 0


def _shape(per_sample):
    return f"({', '.join(map(str, ('N', *per_sample)))})"


def _keras_version():
    import keras

    return f"{keras.__version__} ({keras.backend.backend()} backend)"


COMMANDS = {"export": export, "import": import_keras}  # `import` is a keyword: no function has that name
