"""Fuzzing the checkpoint header and the dataset readers: whatever a header says and whatever bytes
a file holds, only CheckpointError (checkpoints) or DataError (IDX, npz) come out, and the memory
taken stays below a small multiple of the file's size (tracemalloc sees NumPy's allocations)."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutate

import xpcnn
from xpcnn.data import load_npz_dataset, read_idx
from xpcnn.errors import CheckpointError, DataError

FIELDS = ["arch", "dtype", "seed", "loss", "optimizer", "epoch", "history", "device", "extra", "arrays",
          "format_version", "sha256", "arch.input_shape", "arch.input_shape.1", "arch.layers", "arch.layers.0",
          "arch.layers.3", "arch.layers.3.units", "arch.layers.3.use_bias", "arch.layers.3.activation",
          "arch.layers.3.class", "arch.layers.2.class", "arch.layers.3.name", "arch.layers.0.kernel_size",
          "arch.layers.0.strides", "arch.layers.0.padding", "arch.layers.0.dilation_rate", "arch.layers.0.filters",
          "arch.layers.0.class", "arch.layers.1.pool_size", "arch.layers.1.strides", "arch.layers.1.class",
          "optimizer.config", "optimizer.config.learning_rate", "optimizer.config.class", "optimizer.iterations",
          "extra.batch_size", "history.loss"]
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12) | st.sampled_from([2_000_000, 10**12, "float32", "Dense", "Conv2D", "SGD",
                                                         "same", "MaxPool2D", "Flatten", [2, 2], [1, 2000000]]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=12)
# XPCNN_FUZZ_EXAMPLES=2000 HYPOTHESIS_PROFILE=explore: a longer hunt than CI's replay
FUZZ = settings(max_examples=int(os.environ.get("XPCNN_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _checkpoint_parts():
    model = xpcnn.Sequential([xpcnn.layers.Conv2D(2, 3), xpcnn.layers.MaxPool2D(), xpcnn.layers.Flatten(),
                              xpcnn.layers.Dense(3)], input_shape=(1, 6, 6), device="cpu")
    model.compile("adam")
    model.fit(np.random.default_rng(0).random((6, 1, 6, 6)), np.arange(6) % 3, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = model.save(Path(folder) / "good.npz")
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        return path.read_bytes(), json.loads(bytes(arrays.pop("__header__"))), arrays


GOOD, HEADER, ARRAYS = _checkpoint_parts()


def _archive(header, arrays):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in {"__header__": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
    return buf.getvalue()


def _set(header, field, value):
    *parents, last = field.split(".")
    node = header
    for key in parents:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict) and key in node:
            node = node[key]
        else:
            return
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value


def _bounded(call, size, allowed):
    """Run ``call``; only ``allowed`` may be raised; peak memory below 50 x ``size`` + 2 MiB."""
    tracemalloc.start()
    try:
        call()
    except allowed:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 * size + 2**21, f"{peak} bytes taken for a {size}-byte file"


@pytest.fixture
def ckpt_path(tmp_path):
    xpcnn.load(_tmp_write(tmp_path / "warm.npz", GOOD))  # imports and caches outside the measurement
    return tmp_path / "m.npz"


def _tmp_write(path, blob):
    path.write_bytes(blob)
    return path


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=3))
def test_a_lying_header_raises_only_checkpoint_error(ckpt_path, edits):
    header = json.loads(json.dumps(HEADER))
    for field, value in edits:
        _set(header, field, value)
    blob = _archive(header, ARRAYS)  # the digest of the arrays stays right: only the header lies
    _tmp_write(ckpt_path, blob)
    _bounded(lambda: xpcnn.load(ckpt_path), len(blob), CheckpointError)


@FUZZ
@given(st.data())
def test_a_mutated_checkpoint_raises_only_checkpoint_error(ckpt_path, data):
    blob = mutate(data, GOOD)
    _tmp_write(ckpt_path, blob)
    _bounded(lambda: xpcnn.load(ckpt_path), len(blob), CheckpointError)


def _idx(array, compress):
    raw = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    return gzip.compress(raw, mtime=0) if compress else raw


IDX_IMAGES = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)


@FUZZ
@given(st.data(), st.booleans())
def test_a_mutated_idx_raises_only_data_error(data, compress):
    blob = mutate(data, _idx(IDX_IMAGES, compress))
    # the 16 MiB a small compressed file may always expand to is the floor of the bound
    _bounded(lambda: read_idx(blob, expected_shape_tail=(28, 28), max_items=1_000_000),
             max(len(blob), (1 << 24) // 50), DataError)


def _npz():
    rng = np.random.default_rng(2)
    buf = io.BytesIO()
    np.savez_compressed(buf, x_train=rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), y_train=np.arange(4),
                        x_test=rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), y_test=np.arange(2))
    return buf.getvalue()


NPZ = _npz()


@FUZZ
@given(st.data())
def test_a_mutated_compressed_npz_raises_only_data_error_in_bounded_memory(tmp_path, data):
    blob = mutate(data, NPZ)
    path = _tmp_write(tmp_path / "d.npz", blob)
    _bounded(lambda: load_npz_dataset(path), max(len(blob), (1 << 24) // 50), DataError)
