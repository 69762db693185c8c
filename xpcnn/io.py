"""Saving and loading whole models: :mod:`xpcnn.checkpoint` files (``.npz`` + JSON header).

The header holds what is needed to rebuild and resume: ``arch`` (input shape and layer
configs), ``dtype``, ``seed``, ``loss``, ``optimizer`` (config and iteration count), ``epoch``
(completed), ``history``, the device it was trained on, and any ``extra`` the caller adds (the CLI
stores its options there). Arrays: ``weights/<layer index>/<name>`` and
``optimizer/<slot>/<layer index>/<name>``. A model trained on a GPU loads on a CPU-only machine:
everything in the file is host NumPy data.

>>> import tempfile, pathlib, numpy as np, xpcnn
>>> m = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 2, 2))
>>> p = m.save(pathlib.Path(tempfile.mkdtemp()) / "m.npz")
>>> m2 = xpcnn.load(p)
>>> all(np.array_equal(a, b) for a, b in zip(m.get_weights(), m2.get_weights()))
True
"""

from __future__ import annotations

from .checkpoint import load_checkpoint, load_latest_good, save_checkpoint
from .errors import CheckpointError


def model_arrays(model):
    arrays = {}
    for i, layer in enumerate(model.layers):
        for name, w in zip(layer.params, layer.get_weights()):
            arrays[f"weights/{i}/{name}"] = w
    meta = None
    if model.optimizer is not None:
        meta, state = model.optimizer.get_state()
        arrays.update({f"optimizer/{k}": v for k, v in state.items()})
    return arrays, meta


def save_model(model, path, extra=None):
    """Write ``model`` to ``path`` atomically (the previous file is kept as ``<path>.prev``)."""
    if not model.built:
        raise CheckpointError("Cannot save a model that is not built: give input_shape or train it first.")
    arrays, opt_meta = model_arrays(model)
    header = {
        "arch": model.get_config(),
        "dtype": model.dtype,
        "seed": model.seed,
        "loss": model.loss,
        "optimizer": None if model.optimizer is None else {"config": model.optimizer.get_config(), **opt_meta},
        "epoch": model.epoch,
        "history": model.history,
        "device": str(model.backend),
        "extra": extra or {},
    }
    return save_checkpoint(path, header, arrays)


def model_from_header(header, device=None, where="checkpoint"):
    """The architecture a checkpoint header describes, freshly built (no weights)."""
    from .model import Sequential

    try:
        return Sequential.from_config(header["arch"], device=device, dtype=header["dtype"],
                                      seed=int(header.get("seed", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: the header does not describe an xpcnn model ({exc}).") from None


def model_from_checkpoint(header, arrays, device=None, where="checkpoint"):
    from . import optimizers

    model = model_from_header(header, device, where)
    weights = []
    for i, layer in enumerate(model.layers):
        for name in layer.params:
            key = f"weights/{i}/{name}"
            if key not in arrays:
                raise CheckpointError(f"{where}: array {key!r} is missing for layer '{layer.name}'.")
            weights.append(arrays[key])
    try:
        model.set_weights(weights)
    except ValueError as exc:
        raise CheckpointError(f"{where}: weights do not fit the architecture: {exc}") from None
    opt = header.get("optimizer")
    if header.get("loss"):
        model.compile(optimizer=optimizers.get(opt["config"]) if opt else "sgd", loss=header["loss"])
        if opt:
            state = {k[len("optimizer/"):]: v for k, v in arrays.items() if k.startswith("optimizer/")}
            model.optimizer.set_state(opt, state, model.backend, model.dtype)
    model.epoch = int(header.get("epoch", 0))
    model.history = dict(header.get("history") or {})
    return model


def load_model(path, device=None, *, fallback=False, expected_arch=None):
    """Rebuild a saved model on ``device``. ``fallback=True`` uses ``<path>.prev`` when ``path``
    is damaged (what resuming after a crash wants). Returns the model; its header is at
    ``model.checkpoint_header``."""
    if fallback:
        header, arrays, used = load_latest_good(path, expected_arch=expected_arch)
    else:
        header, arrays = load_checkpoint(path, expected_arch=expected_arch)
        used = path
    model = model_from_checkpoint(header, arrays, device=device, where=str(used))
    model.checkpoint_header = header
    model.checkpoint_path = used
    return model
