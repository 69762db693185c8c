"""Exception types shared by the whole package.

Every error a user can cause derives from :class:`XpcnnError` and from the builtin type a Python
user expects (``ValueError``, ``TypeError``, ``RuntimeError``), so ``except ValueError`` keeps
working and the command line can map them all to exit code 2 with one clear message.
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
import zlib


class XpcnnError(Exception):
    """Base class of every error raised on purpose by xpcnn."""


class InputError(XpcnnError, ValueError):
    """A value, shape, flag or file given by the user is not what was expected."""


class ShapeError(InputError):
    """An array has the wrong rank, channel count or size for a layer or model."""


class DataError(InputError):
    """A dataset file is missing, truncated, corrupt or has unexpected contents."""


class CheckpointError(InputError):
    """A checkpoint file is missing, corrupt, tampered with, or from another architecture."""


class DeviceError(XpcnnError, RuntimeError):
    """The requested device cannot be used (CuPy missing, no CUDA device, out of memory)."""


def type_name(value) -> str:
    """How messages name what they received: ``numpy.ndarray``, ``cupy.ndarray``, ``list``, ``None``."""
    if value is None:
        return "None"
    return f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")


def channels_last_order(shape):
    """For a per-sample image shape that looks like Keras' (H, W, C) — 1, 3 or 4 channels last and
    not first — the (C, H, W) order xpcnn uses; else None."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return shape[2], shape[0], shape[1]
    return None


# What a damaged or hostile .npz/zip archive can make zipfile, zlib and numpy.lib.format raise
# (found by fuzzing): NumPy parses a .npy header with ast.literal_eval (SyntaxError,
# tokenize.TokenError, RecursionError); zipfile raises NotImplementedError (a RuntimeError) for an
# unknown compression method and RuntimeError for an entry flagged as encrypted.
ARCHIVE_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError, MemoryError,
                       RuntimeError, RecursionError, SyntaxError, tokenize.TokenError, struct.error,
                       zipfile.BadZipFile, zlib.error)
