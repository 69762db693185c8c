"""Tests of xpcnn.data: IDX/npz readers, dataset discovery, downloads, and image preparation.

The real-MNIST tests read ``$XPCNN_DATA_DIR`` and are skipped when it is unset. Everything else
uses small files generated in ``tmp_path``; no test touches the network or the user's
``~/.keras``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpcnn.data import DATASETS, Dataset, load_dataset, load_npz_dataset, prepare_images, read_idx
from xpcnn.data import datasets as data
from xpcnn.errors import DataError, InputError

REAL_DIR = os.environ.get("XPCNN_DATA_DIR")  # read before the autouse fixture clears it


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test sees the user's data dir, Keras cache, or the real download origin."""
    monkeypatch.delenv("XPCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("XPCNN_DATA_ORIGIN", (tmp_path / "no_such_origin").as_uri())
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "system"), "system package")})


def idx_bytes(array, code=0x08):
    """Encode ``array`` as IDX (big-endian) with the given type code."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.asarray(array, dtype=dtype).tobytes()


def small_split(rng, n):
    return (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, size=n, dtype=np.uint8))


def write_idx_folder(folder, rng, *, n_train=12, n_test=5, compress=True):
    """Write the four LeCun-named IDX files; return the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = small_split(rng, n_train), small_split(rng, n_test)
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte}
    for key, stem in data.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        name, payload = (f"{stem}.gz", gzip.compress(raw)) if compress else (stem, raw)
        (folder / name).write_bytes(payload)
    return arrays


def write_npz(path, rng, **override):
    (xtr, ytr), (xte, yte) = small_split(rng, 12), small_split(rng, 5)
    arrays = {"x_train": xtr, "y_train": ytr, "x_test": xte, "y_test": yte, **override}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def assert_dataset(ds, arrays):
    assert isinstance(ds, Dataset)
    for key, expected in arrays.items():
        got = getattr(ds, key)
        assert got.dtype == (np.uint8 if key[0] == "x" else np.int64)
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


# --- real MNIST ------------------------------------------------------------------------------

@pytest.mark.skipif(not REAL_DIR or not Path(REAL_DIR).is_dir(),
                    reason="set XPCNN_DATA_DIR to a folder with the four MNIST IDX files")
def test_real_mnist():
    ds = load_dataset("mnist", REAL_DIR, download=False)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_train, minlength=10).sum() == 60000
    assert np.bincount(ds.y_test, minlength=10).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.y_train[:5].tolist() == [5, 0, 4, 1, 9]
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert REAL_DIR in ds.source


# --- read_idx --------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, code, compress):
    rng = np.random.default_rng(code)
    dtype = np.dtype(read_idx.__globals__["_IDX_DTYPES"][code]).newbyteorder("=")
    array = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    raw = idx_bytes(array, code)
    path = tmp_path / "a.idx"  # gzip is detected by content, not by name
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = read_idx(path, expected_magic=(code << 8) | 3, expected_shape_tail=(4, 5))
    assert got.dtype == dtype and got.dtype.isnative and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, array)
    got[0] = 0  # a writable copy
    np.testing.assert_array_equal(read_idx(raw), array)


@pytest.mark.parametrize("mutate, match", [
    (lambda b: b"\x01" + b[1:], "not an IDX file"),
    (lambda b: b[:2] + b"\x07" + b[3:], "not an IDX file"),
    (lambda b: b[:-1], r"exactly 60 bytes after the 16-byte header, but .* (has|holds) 59"),
    (lambda b: b + b"\0\0", r"exactly 60 bytes .* but .* (has 62|holds more)"),  # which: see below
    (lambda b: b[:6], "ends inside its header"),
    (lambda b: b"", "not an IDX file"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_refuses_bad_files(tmp_path, mutate, match, compress):
    raw = mutate(idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5)))
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    if "has 62" in match:  # trailing bytes: a plain file counts them, gzip data only knows there are more
        assert ("holds more" if compress else "has 62") in str(info.value)


def test_read_idx_checks_magic_rank_and_shape():
    labels = idx_bytes(np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError, match=r"0x00000801.*expected 0x00000803"):
        read_idx(labels, expected_magic=0x803)
    with pytest.raises(DataError, match=r"shape \(4,\); expected \(\.\.\., 28, 28\)"):
        read_idx(labels, expected_shape_tail=(28, 28))
    with pytest.raises(DataError, match="claims 4 items; expected at most 3"):
        read_idx(labels, max_items=3)
    with pytest.raises(DataError, match="rank 0"):
        read_idx(bytes([0, 0, 8, 0]))


def test_read_idx_gzip_garbage_and_missing_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((100, 28, 28), np.uint8)))
    broken = good[:12] + bytes(b ^ 0x5A for b in good[12:40]) + good[40:]
    for payload in (b"\x1f\x8b" + b"garbage" * 10, good[: len(good) // 2], broken):
        path = tmp_path / "x.gz"
        path.write_bytes(payload)
        with pytest.raises(DataError, match=str(path)):
            read_idx(path)
    with pytest.raises(DataError, match="No such file"):
        read_idx(tmp_path / "missing.gz")


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_refuses_absurd_header_before_allocating(compress):
    # 10**6 x 10**6 = 10**12 items claimed, 10 bytes present; also 4e9 images of 28x28.
    headers = [bytes([0, 0, 8, 2]) + (10**6).to_bytes(4, "big") * 2,
               bytes([0, 0, 8, 3]) + (4 * 10**9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2]
    for header in headers:
        payload = header + bytes(10)
        payload = gzip.compress(payload) if compress else payload
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(DataError, match="header claims shape"):
            read_idx(payload)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 0.5 and peak < 2**20


def test_read_idx_gzip_bomb_is_read_with_a_bound():
    # A valid header for 10 bytes followed by 50 MB of zeros: refused without inflating it all.
    bomb = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(50_000_000), compresslevel=9)
    tracemalloc.start()
    with pytest.raises(DataError, match=r"exactly 10 bytes .* holds more"):
        read_idx(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2**20


def _valid_idx(draw):
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]))
    return idx_bytes(np.zeros(shape), code)


@st.composite
def idx_like(draw):
    raw = _valid_idx(draw)
    kind = draw(st.sampled_from(["bytes", "mutate", "truncate"]))
    if kind == "bytes":
        raw = draw(st.binary(max_size=64))
    elif kind == "mutate":
        buf = bytearray(raw)
        for pos, value in draw(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 255)),
                                        min_size=1, max_size=4)):
            if pos < len(buf):
                buf[pos] = value
        raw = bytes(buf)
    else:
        raw = raw[: draw(st.integers(0, len(raw)))]
    if draw(st.booleans()):
        raw = gzip.compress(raw)
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(idx_like())
def test_read_idx_fuzz_raises_only_data_error(payload):
    try:
        array = read_idx(payload)
    except DataError:
        return
    assert isinstance(array, np.ndarray)


# --- npz -------------------------------------------------------------------------------------

def test_npz_good_and_bad(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "mnist.npz"
    arrays = write_npz(good, rng)
    assert_dataset(load_npz_dataset(good), arrays)
    cases = [
        ({"y_test": None}, r"no array 'y_test'; found keys \['x_test', 'x_train', 'y_train'\]"),
        ({"x_train": np.array([None, 1], dtype=object)}, r"x_train\] holds Python objects"),
        ({"x_train": np.zeros((12, 28, 28), np.float32)}, r"dtype float32; expected shape"),
        ({"x_train": np.zeros((12, 28, 27), np.uint8)}, r"shape \(12, 28, 27\)"),
        ({"x_train": np.full((12, 28, 28), 256, np.int32)}, r"values in 256..256"),
        ({"y_train": np.zeros(11, np.uint8)}, "holds 12 images but .* holds 11 labels"),
        ({"y_test": np.full(5, 10, np.int64)}, r"5 values outside 0..9"),
    ]
    for i, (override, match) in enumerate(cases):
        path = tmp_path / f"bad{i}.npz"
        write_npz(path, rng, **override)
        with pytest.raises(DataError, match=match) as info:
            load_npz_dataset(path)
        assert str(path) in str(info.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"as an .npz archive"):
        load_npz_dataset(tmp_path / "junk.npz")


def test_npz_header_claiming_more_than_stored_is_refused(tmp_path):
    path = tmp_path / "lie.npz"
    write_npz(path, np.random.default_rng(1))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**6)})
    with zipfile.ZipFile(path, "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("x_test.npy", buf.getvalue() + bytes(16))
    with pytest.raises(DataError, match="more than its"):
        load_npz_dataset(path)


# --- IDX datasets and discovery --------------------------------------------------------------

@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_via_argument_and_env(tmp_path, monkeypatch, compress):
    arrays = write_idx_folder(tmp_path / "d", np.random.default_rng(2), compress=compress)
    assert_dataset(load_dataset("mnist", tmp_path / "d", download=False), arrays)
    monkeypatch.setenv("XPCNN_DATA_DIR", str(tmp_path / "d"))
    ds = load_dataset(download=False)
    assert_dataset(ds, arrays)
    assert ds.source == str(tmp_path / "d") and "train=12" in repr(ds)


def test_idx_pair_mismatch_and_bad_labels(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "d"
    write_idx_folder(folder, rng)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(DataError, match=r"holds 5 images but .* holds 4 labels"):
        load_dataset("mnist", folder, download=False)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.array([1, 2, 11, 3, 4], np.uint8))))
    with pytest.raises(DataError, match=r"1 values outside 0..9 \(range 1..11\)"):
        load_dataset("mnist", folder, download=False)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(
        (folder / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match=r"0x00000801.*expected 0x00000803"):
        load_dataset("mnist", folder, download=False)


def test_fashion_subfolder_and_npz_in_data_dir(tmp_path):
    rng = np.random.default_rng(4)
    arrays = write_idx_folder(tmp_path / "d" / "fashion-mnist", rng)
    assert_dataset(load_dataset("fashion-mnist", tmp_path / "d", download=False), arrays)
    npz_arrays = write_npz(tmp_path / "e" / "fashion-mnist.npz", rng)
    ds = load_dataset("fashion-mnist", tmp_path / "e", download=False)
    assert_dataset(ds, npz_arrays)
    assert ds.name == "fashion-mnist"


def test_keras_cache_discovery(tmp_path):
    rng = np.random.default_rng(5)
    cache = tmp_path / "keras_home" / "datasets"
    mnist = write_npz(cache / "mnist.npz", rng)
    fashion = write_idx_folder(cache / "fashion-mnist", rng)
    assert_dataset(load_dataset("mnist", download=False), mnist)
    assert_dataset(load_dataset("fashion-mnist", download=False), fashion)


def test_a_named_folder_is_final_the_environment_falls_back(tmp_path, monkeypatch):
    """--data-dir with a typo must not quietly train on other data; XPCNN_DATA_DIR (set once for
    every dataset) falls back to the Keras cache."""
    rng = np.random.default_rng(5)
    mnist = write_npz(tmp_path / "keras_home" / "datasets" / "mnist.npz", rng)
    (tmp_path / "empty").mkdir()
    for folder, why in ((tmp_path / "empty", "no IDX files; no mnist.npz"), (tmp_path / "typo", "does not exist")):
        with pytest.raises(DataError, match=f"in {folder}: {why}"):
            load_dataset("mnist", folder, download=False)
    monkeypatch.setenv("XPCNN_DATA_DIR", str(tmp_path / "empty"))
    assert_dataset(load_dataset("mnist", download=False), mnist)


def test_fashion_mnist_never_takes_mnist_files(tmp_path, monkeypatch):
    """Both datasets use the same four file names: real MNIST files are recognised (by their labels)
    and skipped for fashion-mnist, and the fashion-mnist/ subfolder comes before the folder itself."""
    real = REAL_DIR
    if not real or not (Path(real) / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip("needs real MNIST (XPCNN_DATA_DIR) to recognise")
    rng = np.random.default_rng(6)
    top = tmp_path / "data"
    top.mkdir()
    for f in Path(real).resolve().glob("*-ubyte.gz"):  # CI gives a relative path
        (top / f.name).symlink_to(f)
    with pytest.raises(DataError, match="the files there are mnist, not fashion-mnist"):
        load_dataset("fashion-mnist", top, download=False)
    fashion = write_idx_folder(top / "fashion-mnist", rng)
    assert_dataset(load_dataset("fashion-mnist", top, download=False), fashion)
    assert load_dataset("mnist", top, download=False).y_train.shape == (60000,)
    monkeypatch.setenv("XPCNN_DATA_DIR", str(top))  # as README's test setup has it
    (top / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="are mnist, not fashion-mnist"):
        load_dataset("fashion-mnist", download=False)


def test_corrupt_file_in_data_dir_is_reported_not_skipped(tmp_path):
    rng = np.random.default_rng(11)
    write_npz(tmp_path / "keras_home" / "datasets" / "mnist.npz", rng)
    write_idx_folder(tmp_path / "d", rng)
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=str(path)):
        load_dataset("mnist", tmp_path / "d", download=False)


def test_unknown_name_is_refused():
    with pytest.raises(InputError, match=r"one of .*Received name='cifar'"):
        load_dataset("cifar")
    assert DATASETS == ("mnist", "fashion-mnist")


# --- downloads -------------------------------------------------------------------------------

def serve(tmp_path, monkeypatch, files):
    origin = tmp_path / "origin"
    origin.mkdir()
    for name, payload in files.items():
        (origin / name).write_bytes(payload)
    monkeypatch.setenv("XPCNN_DATA_ORIGIN", origin.as_uri())
    return origin


def test_download_mnist_verifies_and_caches(tmp_path, monkeypatch):
    src = tmp_path / "src.npz"
    arrays = write_npz(src, np.random.default_rng(6))
    payload = src.read_bytes()
    serve(tmp_path, monkeypatch, {"mnist.npz": payload})
    monkeypatch.setitem(data.SHA256, "mnist", {"mnist.npz": hashlib.sha256(payload).hexdigest()})
    ds = load_dataset("mnist", progress=False)
    assert_dataset(ds, arrays)
    cache = tmp_path / "keras_home" / "datasets"
    assert sorted(os.listdir(cache)) == ["mnist.npz"] and ds.source == str(cache / "mnist.npz")


def test_download_fashion_gz_files(tmp_path, monkeypatch):
    folder = tmp_path / "gen"
    arrays = write_idx_folder(folder, np.random.default_rng(7))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    serve(tmp_path, monkeypatch, files)
    monkeypatch.setitem(data.SHA256, "fashion-mnist", {
        f"fashion-mnist/{n}": hashlib.sha256(b).hexdigest() for n, b in files.items()})
    assert_dataset(load_dataset("fashion-mnist", progress=False), arrays)
    cached = tmp_path / "keras_home" / "datasets" / "fashion-mnist"
    assert sorted(os.listdir(cached)) == sorted(files)


def test_download_over_loopback_http_with_progress(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src.npz"
    arrays = write_npz(src, np.random.default_rng(10))
    origin = serve(tmp_path, monkeypatch, {"mnist.npz": src.read_bytes()})
    monkeypatch.setitem(data.SHA256, "mnist",
                        {"mnist.npz": hashlib.sha256(src.read_bytes()).hexdigest()})

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(origin))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv("XPCNN_DATA_ORIGIN", f"http://127.0.0.1:{server.server_port}")
        try:
            assert_dataset(load_dataset("mnist", progress=True), arrays)
        finally:
            server.shutdown()
    assert "mnist.npz" in capsys.readouterr().err  # the tqdm bar


def test_download_with_wrong_sha256_leaves_nothing(tmp_path, monkeypatch):
    serve(tmp_path, monkeypatch, {"mnist.npz": b"tampered"})
    monkeypatch.setitem(data.SHA256, "mnist", {"mnist.npz": "0" * 64})
    with pytest.raises(DataError, match=r"SHA-256 .*expected 0000"):
        load_dataset("mnist", progress=False)
    assert not (tmp_path / "keras_home").exists()  # not even the cache folders it would have made


def test_a_failed_download_keeps_folders_that_were_there(tmp_path, monkeypatch):
    (tmp_path / "keras_home" / "datasets").mkdir(parents=True)
    with pytest.raises(DataError, match="download from"):
        load_dataset("fashion-mnist", progress=False)  # the origin in the autouse fixture does not exist
    assert os.listdir(tmp_path / "keras_home" / "datasets") == []


def test_no_data_error_lists_every_place(tmp_path, monkeypatch):
    explicit = tmp_path / "mine"
    explicit.mkdir()
    monkeypatch.setenv("XPCNN_DATA_DIR", str(explicit))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", progress=False)
    message = str(info.value)
    cache = str(tmp_path / "keras_home" / "datasets")
    assert message.index(str(explicit)) < message.index(cache)
    for needle in ("XPCNN_DATA_DIR)", "Keras cache", "no_such_origin", "--data-dir",
                   "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "mnist.npz"):
        assert needle in message
    monkeypatch.setenv("XPCNN_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"does not exist[\s\S]*skipped \(download=False\)"):
        load_dataset("fashion-mnist", download=False)


def test_partial_idx_folder_is_reported(tmp_path):
    folder = tmp_path / "d"
    write_idx_folder(folder, np.random.default_rng(8))
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"incomplete IDX files \(missing t10k-images"):
        load_dataset("mnist", folder, download=False)


# --- prepare_images --------------------------------------------------------------------------

def test_prepare_images():
    x = np.random.default_rng(9).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    out = prepare_images(x)
    assert out.dtype == np.float32 and out.shape == (3, 1, 28, 28) and out.flags.c_contiguous
    np.testing.assert_allclose(out[:, 0], x / 255, rtol=1e-6)
    assert prepare_images(x, "float64").dtype == np.float64
    assert prepare_images(np.ones((2, 3, 4, 4)), "float32").shape == (2, 3, 4, 4)
    bad = np.zeros((2, 4, 4))
    bad[0, 0, :3] = np.nan
    bad[1, 1, 1] = np.inf
    with pytest.raises(DataError, match="4 NaN or infinite values out of 32"):
        prepare_images(bad)
    with pytest.raises(DataError, match=r"shape \(28, 28\)"):
        prepare_images(x[0])
    with pytest.raises(DataError, match=r"values in -1..255"):
        prepare_images(np.array([[[-1, 255]]]))
    with pytest.raises(InputError, match="float32"):
        prepare_images(x, "int8")
    with pytest.raises(DataError, match=r"shape \(3, 28, 28, 1\), channels last.*x.transpose\(0, 3, 1, 2\)"):
        prepare_images(x[..., None])  # Keras' (N, H, W, C)
    assert prepare_images(np.ones((2, 3, 5, 3))).shape == (2, 3, 5, 3)  # 3 channels of 5x3: channels first


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("method", 99, "compression method 99"), ("flags", 0x1, "encrypted")])
def test_npz_entries_zipfile_cannot_open_are_data_errors(tmp_path, rng, field, value, expected):
    """Found by fuzzing: an unknown compression method made zipfile raise NotImplementedError and
    an 'encrypted' flag RuntimeError; both must be one DataError naming the entry."""
    path = tmp_path / "mnist.npz"
    write_npz(path, rng)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")  # the central directory's first entry (x_train.npy)
    offset = {"flags": 8, "method": 10}[field]  # central directory header: flags at +8, method at +10
    raw[at + offset : at + offset + 2] = value.to_bytes(2, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=expected):
        load_npz_dataset(path)


def test_fashion_mnist_from_the_system_package_folder(tmp_path, rng, monkeypatch):
    """After the Keras cache: where Debian's dataset-fashion-mnist installs the files."""
    arrays = write_idx_folder(tmp_path / "system", rng)
    assert_dataset(load_dataset("fashion-mnist", download=False), arrays)
    with pytest.raises(DataError, match=r"system package\): does not exist"):
        monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "gone"), "system package")})
        load_dataset("fashion-mnist", download=False)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", download=False)
    assert "system package" not in str(err.value)  # MNIST has no such package


def test_an_empty_split_names_its_file(tmp_path, rng):
    write_npz(tmp_path / "mnist.npz", rng, x_test=np.zeros((0, 28, 28), np.uint8), y_test=np.zeros(0, np.uint8))
    with pytest.raises(DataError, match=r"mnist.npz\[x_test\] holds no images; expected at least one"):
        load_npz_dataset(tmp_path / "mnist.npz")
