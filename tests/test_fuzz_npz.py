"""Fuzzing the Keras-format .npz reader: random and mutated archives raise only DataError, fast,
and an archive that claims a huge array is refused before anything that size is allocated."""

from __future__ import annotations

import io
import resource
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutate

from xpcnn.data import load_npz_dataset
from xpcnn.errors import DataError


def _valid_npz():
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), y_train=np.arange(6) % 10,
             x_test=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), y_test=np.arange(3))
    return buf.getvalue()


GOOD = _valid_npz()


@pytest.fixture
def npz_path(tmp_path):
    return tmp_path / "mnist.npz"


def _load_or_data_error(path):
    try:
        ds = load_npz_dataset(path)
    except DataError:
        return
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (28, 28)
    assert ds.y_train.min() >= 0 and ds.y_train.max() <= 9


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_npz_raises_only_data_error(npz_path, data):
    npz_path.write_bytes(mutate(data, GOOD))
    _load_or_data_error(npz_path)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_data_error(npz_path, payload):
    npz_path.write_bytes(payload)
    _load_or_data_error(npz_path)


def test_a_huge_claimed_array_is_refused_before_allocation(npz_path):
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**12, 28, 28)}
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    with zipfile.ZipFile(npz_path, "w") as zf:
        zf.writestr("x_train.npy", member.getvalue() + b"\x00" * 64)
        for key in ("y_train", "x_test", "y_test"):
            buf = io.BytesIO()
            np.save(buf, np.zeros(3, np.uint8))
            zf.writestr(f"{key}.npy", buf.getvalue())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="x_train"):
        load_npz_dataset(npz_path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 10^12 bytes
