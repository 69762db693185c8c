"""Checkpoints: exact round trips, atomic saves, a clear CheckpointError for every bad file."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import zipfile
from datetime import datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutate

import xpcnn
from xpcnn.errors import CheckpointError
from xpcnn.saving.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    load_checkpoint,
    load_latest_good,
    previous_path,
    read_header,
    save_checkpoint,
)

ARCH = [{"layer": "Conv2D", "filters": 4, "kernel_size": [3, 3]}, {"layer": "Dense", "units": 10}]


def make_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "0.kernel": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "0.bias": rng.standard_normal(4),  # float64
        "steps": rng.integers(-(2**40), 2**40, size=(3, 2), dtype=np.int64),
        "scalar": np.float64(rng.standard_normal()),  # 0-d
        "empty": np.zeros((0, 3), dtype=np.float32),
        "mask": rng.random(5) > 0.5,
        "z": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "strided": rng.standard_normal((6, 6))[::2, 1::3],
        "big_endian": rng.standard_normal(4).astype(">f8"),
    }


def assert_same_arrays(got, want):
    assert list(got) == list(want)
    for name, w in want.items():
        w = np.asarray(w)
        g = got[name]
        assert isinstance(g, np.ndarray), name
        assert g.dtype == w.dtype and g.dtype.str == w.dtype.str, name
        assert g.shape == w.shape, name
        assert np.ascontiguousarray(g).tobytes() == np.ascontiguousarray(w).tobytes(), name


def members(path):
    """The entries of an .npz as {name: array}, read the way xpcnn does (no pickle)."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as fp:
                out[info.filename[: -len(".npy")]] = np.lib.format.read_array(fp, allow_pickle=True)
    return out


def write_npz(path, entries):
    """Write a well-formed zip of .npy entries; a dict value under __header__ becomes JSON bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, value in entries.items():
            if name == "__header__" and not isinstance(value, np.ndarray):
                value = value if isinstance(value, bytes) else json.dumps(value).encode()
                value = np.frombuffer(value, dtype=np.uint8)
            with zf.open(name + ".npy", "w") as fp:
                np.lib.format.write_array(fp, np.asarray(value), allow_pickle=True)
    return path


def rewrite(path, edit_header=None, **replace):
    """Rebuild a valid checkpoint with an edited header and/or replaced entries (None drops one)."""
    entries = members(path)
    header = json.loads(bytes(entries["__header__"]))
    if edit_header is not None:
        edit_header(header)
    entries["__header__"] = header
    for name, value in replace.items():
        if value is None:
            del entries[name]
        else:
            entries[name] = value
    return write_npz(path, entries)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.npz"
    arrays = make_arrays()
    save_checkpoint(path, {"arch": ARCH, "epoch": 3}, arrays)
    return path, arrays


def error_of(path, **kwargs):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------- round trips
def test_round_trip_is_bit_exact(tmp_path):
    arrays = make_arrays(1)
    header = {"arch": [], "note": "", "options": {}, "nothing": None, "ünïcode": "✓"}
    path = save_checkpoint(str(tmp_path / "a.npz"), header, arrays)
    assert path == tmp_path / "a.npz"

    got_header, got = load_checkpoint(path)

    assert_same_arrays(got, {k: np.asarray(v) for k, v in arrays.items()})
    for key, value in header.items():
        assert got_header[key] == value
    assert got_header["format"] == FORMAT and got_header["format_version"] == FORMAT_VERSION
    assert got_header["xpcnn_version"] == xpcnn.__version__
    assert datetime.fromisoformat(got_header["created"]).utcoffset().total_seconds() == 0
    assert got_header["arrays"]["0.kernel"] == {"dtype": "<f4", "shape": [4, 1, 3, 3]}
    assert got_header["arrays"]["scalar"] == {"dtype": "<f8", "shape": []}
    assert read_header(path) == got_header


def test_numpy_alone_reads_the_documented_format(saved):
    path, arrays = saved
    z = np.load(path, allow_pickle=False)
    header = json.loads(bytes(z["__header__"]))
    h = hashlib.sha256()
    for name in sorted(header["arrays"]):
        a = np.ascontiguousarray(z[name])
        line = json.dumps([name, a.dtype.str, list(a.shape)], separators=(",", ":"))
        h.update(line.encode() + b"\n")
        h.update(a.tobytes())
    assert h.hexdigest() == header["sha256"]
    assert set(z.files) == {"__header__", *arrays}
    assert header["arch"] == ARCH


def test_names_numpy_savez_would_misread_round_trip(tmp_path):
    arrays = {"file": np.arange(3.0), "allow_pickle": np.ones(2), "a/b.npy": np.zeros(1),
              "ü": np.ones(1)}
    _, got = load_checkpoint(save_checkpoint(tmp_path / "k.npz", {}, arrays))
    assert_same_arrays(got, arrays)


@pytest.mark.parametrize(
    "header, arrays, match",
    [
        ({}, {"__header__": np.zeros(2)}, "reserved"),
        ({}, {"w": np.array([{"a": 1}], dtype=object)}, "numeric"),
        ({}, {"w": np.array(["text"])}, "numeric"),
        ({}, {"w": [1.0, 2.0]}, "not a NumPy array"),
        ({}, {"": np.zeros(1)}, "non-empty"),
        ({"loss": float("nan")}, {}, "strict JSON"),
        ({"fn": print}, {}, "strict JSON"),
        ([("arch", 1)], {}, "must be a dict"),
    ],
)
def test_save_refuses_bad_inputs_before_writing(tmp_path, header, arrays, match):
    with pytest.raises(CheckpointError, match=match):
        save_checkpoint(tmp_path / "bad.npz", header, arrays)
    assert list(tmp_path.iterdir()) == []


def test_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "m.npz"
    save_checkpoint(path, {"epoch": 1}, make_arrays(1))
    first = path.read_bytes()
    save_checkpoint(path, {"epoch": 2}, make_arrays(2))

    assert previous_path(path).read_bytes() == first
    assert load_checkpoint(path)[0]["epoch"] == 2
    assert load_checkpoint(previous_path(path))[0]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.npz.prev"]

    second = path.read_bytes()
    save_checkpoint(path, {"epoch": 3}, make_arrays(3), keep_previous=False)
    assert previous_path(path).read_bytes() == first  # untouched
    assert path.read_bytes() != second


def test_saved_file_mode_is_not_mkstemps_private_mode(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", {}, {})
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# --------------------------------------------------------------------------- failed saves
def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def _fail_write(monkeypatch):
    real = np.lib.format.write_array

    def write_array(fp, array, **kwargs):
        if array.size > 10:  # after part of the file is out
            fp.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fp, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)


def _fail_rename_of_temp(monkeypatch):
    real = os.replace

    def replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _fail_any_rename(monkeypatch):
    def replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("fail", [_fail_fsync, _fail_write, _fail_rename_of_temp, _fail_any_rename])
def test_failed_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch, fail):
    path = tmp_path / "m.npz"
    save_checkpoint(path, {"epoch": 1}, make_arrays(1))
    before = path.read_bytes()
    fail(monkeypatch)

    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, {"epoch": 2}, make_arrays(2))

    message = str(info.value)
    assert str(path) in message
    assert "No space left on device" in message or "Permission denied" in message
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_save_into_a_missing_directory_or_onto_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="No such file"):
        save_checkpoint(tmp_path / "nope" / "m.npz", {}, {})
    with pytest.raises(CheckpointError, match="directory"):
        save_checkpoint(tmp_path, {}, {})


# --------------------------------------------------------------------------- damaged files
def test_missing_file_and_directory_name_the_path(tmp_path):
    assert "no such file" in error_of(tmp_path / "absent.npz")
    assert str(tmp_path / "absent.npz") in error_of(tmp_path / "absent.npz")
    assert "directory" in error_of(tmp_path)


@pytest.mark.parametrize("keep", [0, 1, 4, 30, 0.25, 0.5, 0.9, 0.999])
def test_truncated_file(saved, keep):
    path, _ = saved
    data = path.read_bytes()
    cut = keep if isinstance(keep, int) else int(len(data) * keep)
    path.write_bytes(data[:cut])
    message = error_of(path)
    if cut == 0:
        assert "empty" in message


def test_flipped_byte_in_array_data(saved):
    path, _ = saved
    big = np.random.default_rng(5).standard_normal(20_000)
    save_checkpoint(path, {}, {"big": big})
    data = bytearray(path.read_bytes())
    start = data.find(big.tobytes())
    assert start > 0
    data[start + big.nbytes // 2] ^= 0x40
    path.write_bytes(bytes(data))
    error_of(path)  # the zip CRC or the SHA-256 catches it, whichever is checked first


def test_modified_array_with_a_consistent_zip_fails_the_digest(saved):
    path, arrays = saved
    rewrite(path, **{"0.bias": arrays["0.bias"] + 1e-12})
    assert "file is corrupt or was modified: SHA-256" in error_of(path)


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 99])  # the first unsupported one too
def test_newer_format_version(saved, version):
    path, _ = saved
    rewrite(path, lambda h: h.update(format_version=version))
    message = error_of(path)
    assert f"newer xpcnn (format {version})" in message
    assert "this xpcnn reads format <= 1; upgrade xpcnn" in message
    with pytest.raises(CheckpointError, match="newer"):
        read_header(path)


@pytest.mark.parametrize(
    "header, match",
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b'{"format": "\xff"}', "not valid UTF-8 JSON"),
        ([1, 2], "not an object"),
        ({"format": "something-else"}, "not an xpcnn checkpoint"),
        ({"format": FORMAT, "format_version": "1"}, "format_version"),
        ({"format": FORMAT, "format_version": 1, "sha256": "x", "arrays": {}}, "sha256"),
    ],
)
def test_bad_header(tmp_path, header, match):
    path = write_npz(tmp_path / "h.npz", {"__header__": header})
    assert match in error_of(path)


def test_header_entries_must_match_the_file(saved):
    path, arrays = saved
    good = path.read_bytes()
    rewrite(path, **{"0.bias": None})
    assert "missing from the file" in error_of(path)
    path.write_bytes(good)
    rewrite(path, extra=np.zeros(2))
    assert "does not list" in error_of(path)
    path.write_bytes(good)
    rewrite(path, **{"0.bias": arrays["0.bias"].astype(np.float32)})
    assert "'0.bias' is <f4 [4] in the file but <f8 [4] in the header" in error_of(path)
    path.write_bytes(good)
    rewrite(path, **{"0.bias": np.zeros(5)})
    assert "in the header" in error_of(path)
    path.write_bytes(good)
    rewrite(path, **{"__header__": None})
    assert "no __header__ entry" in error_of(path)


def test_huge_claims_are_refused_before_reading(saved):
    path, _ = saved
    rewrite(path, lambda h: h["arrays"]["0.bias"].update(shape=[2**40]))
    assert "more than" in error_of(path)


def test_other_architecture(saved):
    path, _ = saved
    other = [ARCH[0], {"layer": "Dense", "units": 7}]
    message = error_of(path, expected_arch=other)
    assert "arch[1]['units'] is 10 in the checkpoint but 7 in the model" in message
    assert "length of arch" in error_of(path, expected_arch=ARCH[:1])
    # JSON has no tuples: an arch spelled with tuples is the same architecture
    same = [dict(ARCH[0], kernel_size=(3, 3)), ARCH[1]]
    assert load_checkpoint(path, expected_arch=same)[0]["arch"] == ARCH


def test_object_arrays_are_refused_as_pickles(tmp_path, saved):
    bare = tmp_path / "objects.npz"
    np.savez(bare, x=np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert "pickle" in error_of(bare)
    path, _ = saved
    rewrite(path, evil=np.array([1, "two"], dtype=object))
    assert "pickle" in error_of(path)


def test_pickle_and_other_files_renamed_npz(tmp_path):
    path = tmp_path / "p.npz"
    path.write_bytes(pickle.dumps({"0.kernel": np.ones(3)}))
    assert "pickle" in error_of(path)
    buf = io.BytesIO()
    np.save(buf, np.ones(3))
    path.write_bytes(buf.getvalue())
    assert ".npy" in error_of(path)
    path.write_bytes(b"hello, world\n" * 10)
    assert "not a .npz" in error_of(path)


# -------------------------------------------------------------------------- latest good one
def test_load_latest_good_falls_back_to_prev(tmp_path):
    path = tmp_path / "m.npz"
    save_checkpoint(path, {"arch": ARCH, "epoch": 1}, make_arrays(1))
    save_checkpoint(path, {"arch": ARCH, "epoch": 2}, make_arrays(2))

    header, _, used = load_latest_good(path)
    assert (header["epoch"], used) == (2, path)

    path.write_bytes(path.read_bytes()[:100])
    header, arrays, used = load_latest_good(path, expected_arch=ARCH)
    assert (header["epoch"], used) == (1, previous_path(path))
    assert_same_arrays(arrays, {k: np.asarray(v) for k, v in make_arrays(1).items()})

    path.unlink()  # a crash between the two renames of a save
    assert load_latest_good(path)[2] == previous_path(path)

    previous_path(path).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no such file") as info:
        load_latest_good(path)
    assert str(path) + "'" in str(info.value)


def test_load_latest_good_does_not_hide_an_architecture_change(tmp_path):
    path = tmp_path / "m.npz"
    save_checkpoint(path, {"arch": ARCH}, {})
    save_checkpoint(path, {"arch": ARCH}, {})
    with pytest.raises(CheckpointError, match="another architecture"):
        load_latest_good(path, expected_arch=[])


# ------------------------------------------------------------------------------------ fuzz
@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "m.npz"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float64(0.5)}
    save_checkpoint(path, {"arch": ARCH}, arrays)
    return path, path.read_bytes(), arrays


def _load_or_checkpoint_error(path, arrays):
    try:
        _, got = load_checkpoint(path)
    except CheckpointError:
        return
    assert_same_arrays(got, arrays)  # whatever loads passed the digest, so it is the original


FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b)))
def test_fuzz_random_bytes(fuzz_file, data):
    path, _, arrays = fuzz_file
    path.write_bytes(data)
    _load_or_checkpoint_error(path, arrays)


@FUZZ
@given(st.data())
def test_fuzz_mutated_checkpoint(fuzz_file, data):
    path, good, arrays = fuzz_file
    blob = mutate(data, good)
    path.write_bytes(blob)
    _load_or_checkpoint_error(path, arrays)
