"""The header of a ``.npy`` member of an ``.npz`` archive, read without touching its data (shared
by the dataset and checkpoint readers, which each check it against what they expect)."""

from __future__ import annotations

import numpy as np

_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_npy_header(fp):
    """``(version, shape, dtype)`` from the open file ``fp``; shape and dtype are None when the
    format version is neither 1.0 nor 2.0 (the caller names it in its error)."""
    version = np.lib.format.read_magic(fp)
    if version not in _READERS:
        return version, None, None
    shape, _, dtype = _READERS[version](fp)
    return version, tuple(shape), dtype
