"""``Sequential``: a stack of layers with forward, backward, fit / evaluate / predict, save / load.

Data handed to ``fit``, ``evaluate`` and ``predict`` are host NumPy arrays. They move to the
model's device once (the whole set when it fits under ``device_data_bytes``, else one batch at a
time) — never one transfer per sample. Inside a training step nothing returns to the host: the
loss and accuracy are summed on the device and read only when the progress bar is refreshed.

Determinism: the data order of epoch ``e`` comes from ``default_rng([seed, e])`` and the
dropout masks of step ``s`` from ``default_rng([seed, e, s, layer])``, so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.

Examples
--------
>>> import numpy as np
>>> from xpcnn import Sequential, layers
>>> model = Sequential([layers.Conv2D(4, 3, activation="relu"), layers.Flatten(), layers.Dense(2)],
...                    input_shape=(1, 8, 8), seed=0)
>>> _ = model.compile(optimizer="adam", loss="softmax_cross_entropy")
>>> x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
>>> y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int64)
>>> history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
>>> sorted(history)
['accuracy', 'images_per_second', 'loss', 'seconds']
>>> model.predict(x[:3]).shape
(3, 2)
"""

from __future__ import annotations

import warnings
import weakref

import numpy as np

from . import functional as F
from . import optimizers
from .argcheck import checked_weights
from .backend import DTYPES, Backend, get_backend
from .errors import CheckpointError, InputError, ShapeError, channels_last_order, type_name
from .interop import onnx as onnx_export
from .layers import Dropout, Layer, from_config
from .parallel import LOCAL
from .saving.checkpoint import load_checkpoint, load_latest_good, save_checkpoint
from .training import NonFiniteLossError, run_evaluate, run_fit, run_predict

__all__ = ["NonFiniteLossError", "Sequential"]


class Sequential:
    """Layers applied one after another.

    Parameters
    ----------
    layers : list of Layer
    input_shape : tuple, optional
        Per-sample shape, e.g. ``(1, 28, 28)``; when given the model is built at once,
        otherwise at the first ``forward``/``fit``.
    device : "cpu", "gpu", "auto", None (``XPCNN_DEVICE``) or a :class:`~xpcnn.backend.Backend`
    dtype : "float32" (default) or "float64"
    seed : int
        Seeds the initial weights (drawn on the host: identical on every device), the data
        order and the dropout masks.
    """

    def __init__(self, layers, *, input_shape=None, device=None, dtype="float32", seed=0, name="sequential"):
        self.layers = _check_layers(layers)
        _unique_names(self.layers)
        if dtype not in DTYPES:
            raise InputError(f"The `dtype` argument must be 'float32' or 'float64'. Received dtype={dtype!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"The `seed` argument must be a non-negative int. Received seed={seed!r}")
        self.backend: Backend = get_backend(device)
        self.dtype, self.seed, self.name = dtype, seed, name
        self.input_shape = None
        self.optimizer, self.loss = None, None
        self.epoch = 0  # epochs completed (what resume continues from)
        self.history = {}
        #: The header of the checkpoint this model was loaded from (:meth:`load`), else None.
        self.checkpoint_header = None
        #: The file it was loaded from: the path given, or its ``.prev`` when that was damaged.
        self.checkpoint_path = None
        if input_shape is not None:
            self.build(input_shape)
        for layer in self.layers:  # claimed only once the model exists: a failed attempt can be retried
            layer._owner = weakref.ref(self)

    def build(self, input_shape):
        """Create every layer's weights for per-sample ``input_shape`` from the model's seed."""
        try:
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            shape = ()
        if not shape or min(shape) < 1:
            raise ShapeError(f"input_shape must be a tuple of positive ints, per sample (e.g. (1, 28, 28)). "
                             f"Received {input_shape!r}.")
        requested = shape
        seeds = np.random.SeedSequence(self.seed).spawn(len(self.layers))
        for i, (layer, ss) in enumerate(zip(self.layers, seeds)):
            try:
                shape = layer.build(shape, self.backend, self.dtype, np.random.default_rng(ss))
            except ValueError as exc:
                raise ShapeError(f"Cannot build layer {i} ('{layer.name}') on input {shape}: {exc}"
                                 f"{_channels_last_hint(requested)}") from None
            layer.need_input_grad = i > 0
        self.input_shape = requested
        self.output_shape = shape
        return self

    @property
    def built(self):
        """True once the layers have weights (``input_shape`` given, or after the first batch)."""
        return self.input_shape is not None

    def count_params(self):
        """The number of trainable values (weights and biases) of all layers."""
        return sum(layer.count_params() for layer in self.layers)

    def multiply_adds(self):
        """Multiply-adds of one sample's forward pass (matrix products only), e.g. 416,520 for LeNet-5."""
        if not self.built:
            raise InputError("The model is not built yet: pass input_shape=... or call build() / fit() first.")
        total, shape = 0, self.input_shape
        for layer in self.layers:
            total += layer.multiply_adds(shape)
            shape = layer.output_shape(shape)
        return total

    def summary(self, print_fn=print):
        """The layer table (name, output shape, parameters); printed, and returned as text."""
        if not self.built:
            raise InputError("The model is not built yet: pass input_shape=... or call build() / fit() first.")
        rows, shape = [("Layer (type)", "Output shape", "Params")], self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
            rows.append((f"{layer.name} ({type(layer).__name__})", str((None, *shape)), f"{layer.count_params():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 4)
        fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}"
        body = [fmt.format(*rows[0]), line] + [fmt.format(*r) for r in rows[1:]]
        text = "\n".join(
            [f'Model "{self.name}" on {self.backend}, {self.dtype}, input {(None, *self.input_shape)}', line]
            + body + [line, f"Total params: {self.count_params():,}"]
        )
        if print_fn is not None:
            print_fn(text)
        return text

    def forward(self, x, training=True):
        """Outputs of the model for a device batch ``x`` (an array of the model's backend and dtype).

        Builds the model on ``x.shape[1:]`` when it is not built yet. ``training=True`` applies
        dropout and keeps each layer's activations for :meth:`backward`; ``training=False`` keeps
        none. For host NumPy data use :meth:`predict`.
        """
        if not self.built:
            self.build(tuple(x.shape[1:]))
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy):
        """Back-propagate ``dy`` = ∂E/∂output of the last ``forward(training=True)``.

        Fills every layer's ``grads`` (same keys as ``params``) and frees its activations;
        returns ∂E/∂input (None: the first layer computes no input gradient).
        """
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parameters(self):
        """``[(layer, name, array)]`` for every trainable array."""
        return [(layer, k, p) for layer in self.layers for k, p in layer.params.items()]

    def compile(self, optimizer="sgd", loss="softmax_cross_entropy", metrics=("accuracy",), learning_rate=None):
        """Choose the optimizer and the loss; returns the model (``model.compile(...).fit(...)``).

        Parameters
        ----------
        optimizer : str, dict or Optimizer
            ``"sgd"`` (SGD, learning rate 0.01), ``"momentum"`` (SGD with momentum 0.9, 0.01),
            ``"adam"`` (Adam, 0.001), an optimizer object (``xpcnn.SGD(...)``, ``xpcnn.Adam(...)``)
            or its ``get_config()`` dict.
        loss : str
            ``"softmax_cross_entropy"`` (logits (N, K), integer labels (N,)),
            ``"binary_cross_entropy"`` (probabilities, e.g. a sigmoid output; targets in [0, 1]),
            ``"binary_cross_entropy_with_logits"`` (logits; targets in [0, 1]) or
            ``"squared_error"`` (targets shaped like the output). See :mod:`xpcnn.functional.losses`.
        metrics : sequence of str
            Only ``"accuracy"`` (Keras's argument); accuracy is always reported.
        learning_rate : float, optional
            Overrides the default learning rate of a named optimizer.
        """
        if loss not in F.LOSSES:
            raise InputError(f"Unknown loss {loss!r}. Expected one of {sorted(F.LOSSES)}.")
        unknown = [m for m in metrics if m != "accuracy"]  # Keras's argument; accuracy is always reported
        if unknown:
            raise InputError(f"Unknown metrics {unknown}. Expected a subset of ['accuracy'].")
        self.optimizer = optimizers.get(optimizer, learning_rate)
        self.loss = loss
        twice = {"softmax_cross_entropy": "softmax", "binary_cross_entropy_with_logits": "sigmoid"}.get(loss)
        last = self.layers[-1]
        if twice is not None and getattr(last, "activation", None) == twice:
            warnings.warn(f"{loss} takes logits and applies its own {twice}, but the last layer '{last.name}' "
                          f"already ends in a {twice}: it would be applied twice. Drop the output activation"
                          f"{' (or use binary_cross_entropy)' if twice == 'sigmoid' else ''}.", UserWarning,
                          stacklevel=2)
        return self

    @property
    def loss_function(self):
        """The compiled loss as a :class:`xpcnn.functional.Loss` record (forward, backward, threshold)."""
        if self.loss is None:
            raise InputError("Call model.compile(optimizer=..., loss=...) before fit/evaluate.")
        return F.LOSSES[self.loss]

    def train_step(self, xb, yb, comm=LOCAL, global_batch=None):
        """One gradient step on a device batch; returns (loss, accuracy) as device 0-d arrays.

        ``xb`` is this rank's shard of a batch of ``global_batch`` samples (default: all of it);
        the gradient of the shard's mean loss, weighted by shard/global size and summed over the
        ranks of ``comm`` (the identity for one rank), is the gradient of the global batch's mean
        loss (see :mod:`xpcnn.parallel`).
        """
        loss_fn = self.loss_function
        weighted = [layer for layer in self.layers if layer.params]
        if xb.shape[0] == 0:  # an empty shard still joins the allreduce, with zero gradients
            for layer in weighted:
                layer.grads = {k: self.backend.xp.zeros_like(p) for k, p in layer.params.items()}
            zero = self.backend.xp.zeros((), dtype=self.backend.dtype(self.dtype), device=self.backend.device)
            loss = acc = zero
        else:
            out = self.forward(xb, training=True)
            loss, cache = loss_fn.forward(out, yb)
            self.backward(loss_fn.backward(cache))
            acc = F.accuracy(out, yb, threshold=loss_fn.threshold)
        comm.allreduce_gradients(weighted, xb.shape[0] / (global_batch or xb.shape[0]))
        self.optimizer.apply(weighted)
        return loss, acc

    def fit(self, x, y, batch_size=32, epochs=1, validation_data=None, shuffle=True, seed=None, verbose=1,
            initial_epoch=None, callbacks=(), device_data_bytes=2**31, threads=None, comm=None):
        """Train on host arrays ``x`` and ``y``; returns this call's history.

        Parameters
        ----------
        x : numpy.ndarray
            Inputs of shape (N, *input_shape); (N, H, W) also fits a model with (1, H, W) inputs.
            Integer images for a model with (C, H, W) inputs are pixels 0..255, divided by 255.
        y : numpy.ndarray or list
            Integer class labels (N,) for ``softmax_cross_entropy``; targets shaped like the
            output, (N, K) (or (N,) for K = 1), for the other losses.
        epochs : int
            How many epochs to train: ``epochs`` MORE epochs, from ``self.epoch`` to
            ``self.epoch + epochs``, when ``initial_epoch`` is None (the default), so that calling
            ``fit(x, y, epochs=1)`` twice trains two epochs and the learning-rate schedule and the
            per-epoch data order continue. With ``initial_epoch`` given, Keras's meaning: the index
            of the last epoch, i.e. train epochs ``initial_epoch`` .. ``epochs - 1``, and nothing
            when ``epochs <= initial_epoch``.
        initial_epoch : int, optional
            The epoch to start from (Keras); ``fit(..., epochs=10, initial_epoch=model.epoch)``
            trains until ``model.epoch == 10``, whatever was trained before.
        validation_data : (x_val, y_val), optional
            Evaluated after every epoch, as ``val_loss`` and ``val_accuracy``.
        shuffle, seed
            The data order of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``; ``seed``
            defaults to the model's.
        callbacks : iterable of callables
            ``cb(model, epoch, logs)`` after each epoch (the CLI saves checkpoints there).
        device_data_bytes : int
            The whole set moves to the device once when it is at most this big, else batch by batch.
        threads : int, optional
            Data parallelism inside this process: each batch is split into ``threads`` shards that
            model replicas (one per thread) run through forward and backward at once, BLAS held
            to one thread each, the gradients summed in a fixed order (bit-identical run to run
            for a given number; equal to one thread's to float rounding). Default: on the CPU,
            one per usable core while each shard holds enough work (``training.auto_threads``);
            elsewhere 1.
        comm : xpcnn.parallel.Communicator, optional
            Train data-parallel as one rank of ``comm`` (e.g. :func:`xpcnn.parallel.mpi.init`):
            this rank takes its shard of every batch and of the validation data; metrics are
            summed over the ranks. Default: one rank.

        Returns
        -------
        dict
            A new dict with one entry per epoch trained by THIS call (Keras's ``History.history``):
            ``loss``, ``accuracy``, ``seconds``, ``images_per_second`` and, with validation data,
            ``val_loss``, ``val_accuracy``. ``model.history`` keeps every epoch trained since the
            model was created, in order, across calls and across save / load / resume.
        """
        return run_fit(self, x, y, batch_size=batch_size, epochs=epochs, validation_data=validation_data,
                       shuffle=shuffle, seed=self.seed if seed is None else seed, verbose=verbose,
                       initial_epoch=initial_epoch, callbacks=callbacks, device_data_bytes=device_data_bytes,
                       threads=threads, comm=LOCAL if comm is None else comm)

    def evaluate(self, x, y, batch_size=256, verbose=0, threads=None):
        """``{"loss": ..., "accuracy": ...}`` over host arrays ``x``, ``y``.

        ``threads``: as in :meth:`fit` (each thread evaluates its shard of the data)."""
        return run_evaluate(self, x, y, comm=LOCAL, batch_size=batch_size, verbose=verbose, threads=threads)

    def predict(self, x, batch_size=256, threads=None):
        """Model outputs for host array ``x``, as a host NumPy array.

        ``threads``: as in :meth:`fit` (each thread predicts a contiguous part of ``x``)."""
        return run_predict(self, x, batch_size=batch_size, threads=threads)

    def replica(self):
        """A copy that trains in step with this model: same layers, weights, optimizer and state,
        loss, epoch and history, on the same device (no arrays shared)."""
        try:
            twin = type(self).from_config(self.get_config(), device=self.backend, dtype=self.dtype, seed=self.seed)
        except InputError as exc:
            raise InputError(f"Training in threads makes a replica of the model from its config, which failed "
                             f"({exc}). Use threads=1, or give your layers get_config/from_config.") from None
        twin.set_weights(self.get_weights())
        if self.optimizer is not None:
            with warnings.catch_warnings():  # compile's warnings were given to this model already
                warnings.simplefilter("ignore")
                twin.compile(optimizers.get(self.optimizer.get_config()), loss=self.loss)
            twin.optimizer.epoch = self.optimizer.epoch
            twin.optimizer.set_state(*self.optimizer.get_state(), self.backend, self.dtype)
        twin.epoch, twin.history = self.epoch, {k: list(v) for k, v in self.history.items()}
        return twin

    def reseed_dropout(self, seed, epoch, step, rows=None):
        """Give every Dropout layer the mask generator of (seed, epoch, step): resumable runs.

        ``rows=(nb, lo, hi)``: this rank's rows lo:hi of a batch of nb (data parallelism): each
        rank draws the whole batch's masks and keeps its rows, so the shards of a batch get the
        masks one process would have drawn for it."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng([seed, epoch, step, i])
                layer.rows = rows

    def get_weights(self):
        """Host NumPy copies of all weights, layer by layer, kernel then bias (as Keras)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights):
        """Replace all weights from a list in the order of :meth:`get_weights` (host or device arrays).

        Raises InputError for a wrong count and ShapeError for a wrong shape.
        """
        weights = checked_weights(weights)  # a list of finite numeric arrays, else InputError naming it
        expected = sum(len(layer.params) for layer in self.layers)
        if len(weights) != expected:
            raise InputError(f"Model has {expected} weight arrays. Received {len(weights)}.")
        for layer in self.layers:
            n = len(layer.params)
            layer.set_weights(weights[:n])
            weights = weights[n:]

    def to(self, device):
        """Move weights and optimizer state to another device (in place); returns self."""
        backend = get_backend(device)
        weights = self.get_weights() if self.built else None
        state = self.optimizer.get_state() if self.optimizer is not None else None
        self.backend = backend
        for layer in self.layers:
            layer.backend = backend
        if weights is not None:
            self.set_weights(weights)
        if state is not None:
            self.optimizer.set_state(*state, backend, self.dtype)
        return self

    def get_config(self):
        """The architecture as plain data (input shape and layer configs); no weights."""
        return {"input_shape": list(self.input_shape) if self.built else None,
                "layers": [layer.get_config() for layer in self.layers]}

    @classmethod
    def from_config(cls, config, **kwargs):
        """A new, freshly initialised model from :meth:`get_config` output."""
        return cls([from_config(c) for c in config["layers"]], input_shape=config.get("input_shape"), **kwargs)

    # -- checkpoints (the file format is xpcnn.saving.checkpoint's) ----------------------------------------
    def save(self, path, extra=None):
        """Write a checkpoint atomically (the previous file is kept as ``<path>.prev``); returns the path.

        The header holds what is needed to rebuild and resume: ``arch`` (:meth:`get_config`),
        ``dtype``, ``seed``, ``loss``, ``optimizer`` (config and iteration count), ``epoch``
        (completed), ``history``, the device it was trained on, and ``extra`` (the CLI stores its
        options there). Arrays: ``weights/<layer index>/<name>`` and
        ``optimizer/<slot>/<layer index>/<name>``, all host NumPy data: a model trained on a GPU
        loads on a CPU-only machine.

        >>> import tempfile, pathlib, numpy as np, xpcnn
        >>> m = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 2, 2))
        >>> p = m.save(pathlib.Path(tempfile.mkdtemp()) / "m.npz")
        >>> all(np.array_equal(a, b) for a, b in zip(m.get_weights(), xpcnn.load(p).get_weights()))
        True
        """
        if not self.built:
            raise CheckpointError("Cannot save a model that is not built: give input_shape or train it first.")
        arrays = {f"weights/{i}/{name}": w for i, layer in enumerate(self.layers)
                  for name, w in zip(layer.params, layer.get_weights())}
        optimizer = None
        if self.optimizer is not None:
            meta, state = self.optimizer.get_state()
            arrays.update({f"optimizer/{k}": v for k, v in state.items()})
            optimizer = {"config": self.optimizer.get_config(), **meta}
        header = {"arch": self.get_config(), "dtype": self.dtype, "seed": self.seed, "loss": self.loss,
                  "optimizer": optimizer, "epoch": self.epoch, "history": self.history, "device": str(self.backend),
                  "extra": extra or {}}
        return save_checkpoint(path, header, arrays)

    @classmethod
    def from_header(cls, header, device=None, where="checkpoint"):
        """The architecture a checkpoint header describes, freshly built (no weights loaded)."""
        try:
            return cls.from_config(header["arch"], device=device, dtype=header["dtype"],
                                   seed=int(header.get("seed", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: the header does not describe an xpcnn model ({exc}).") from None

    @classmethod
    def from_checkpoint(cls, header, arrays, device=None, where="checkpoint"):
        """A model (weights, optimizer state, epoch, history) from what :meth:`save` wrote."""
        model = cls.from_header(header, device, where)
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
        model.checkpoint_header = header
        return model

    @classmethod
    def load(cls, path, device=None, *, fallback=False, expected_arch=None):
        """Rebuild a saved model on ``device``; ``fallback=True`` uses ``<path>.prev`` when ``path``
        is damaged or missing (what resuming after a crash wants). The header read is kept as
        :attr:`checkpoint_header`, the file used as :attr:`checkpoint_path`."""
        if fallback:
            header, arrays, used = load_latest_good(path, expected_arch=expected_arch)
        else:
            (header, arrays), used = load_checkpoint(path, expected_arch=expected_arch), path
        model = cls.from_checkpoint(header, arrays, device=device, where=str(used))
        model.checkpoint_path = used
        return model

    def to_onnx(self, path=None, **kw):
        """The ONNX graph of this model's inference network (``path``: also write it); needs the
        ``onnx`` extra. See :func:`xpcnn.interop.onnx.to_onnx`."""
        return onnx_export.to_onnx(self, path, **kw)


def _channels_last_hint(input_shape):
    """A hint when ``input_shape`` looks like Keras's (H, W, C): xpcnn's images are (C, H, W)."""
    order = channels_last_order(input_shape)
    return "" if order is None else f" xpcnn takes (C, H, W); did you mean input_shape={order}?"


def _check_layers(layers):
    """``layers`` as a list of fresh :class:`Layer` objects, or one InputError saying what is wrong."""
    if isinstance(layers, Layer):
        raise InputError(f"Sequential takes a list of layers. Received a {type(layers).__name__} layer; "
                         "wrap it in a list: Sequential([layer]).")
    if isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise InputError(f"Sequential takes a list of layers. Received {type(layers).__name__}.")
    layers = list(layers)
    if not layers:
        raise InputError("Sequential takes a list of layers. Received an empty list; expected at least one layer.")
    position = {}  # id(layer) -> where it first stands
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise InputError(f"Sequential takes xpcnn layers. Received {type_name(layer)} at position {i}; "
                             "expected a layer from xpcnn.layers.")
        first = position.setdefault(id(layer), i)
        if first != i:
            raise InputError(f"Layer '{layer.name}' is at positions {first} and {i}. A layer holds one set of "
                             f"weights and activations: create a new {type(layer).__name__}(...) for each position.")
        ref = getattr(layer, "_owner", None)
        owner = ref() if ref is not None else None
        if owner is not None:
            raise InputError(f"Layer '{layer.name}' ({type(layer).__name__}, position {i}) already belongs to "
                             f"model '{owner.name}'; building it here would replace that model's weights. "
                             f"Create a new {type(layer).__name__}(...) for this model.")
    return layers


def _unique_names(layers):
    """conv2d, conv2d_1, ...: Keras-style names, so summaries and checkpoints can tell layers apart."""
    seen = {}
    for layer in layers:
        base = layer.name
        count = seen.get(base, 0)
        seen[base] = count + 1
        if count:
            layer.name = f"{base}_{count}"
