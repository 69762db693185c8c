"""Argument types shared by the ``xpcnn`` command and ``xpcnn bench``: a bad value is one argparse
message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import InputError


def _int_at_least(text, minimum, what):
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a {what} integer, received {text!r}")
    return value


def positive_int(text):
    return _int_at_least(text, 1, "positive")


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, received {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite positive number, received {text!r}")
    return value


# Sanity bounds: far beyond any real run, low enough that a typo (an extra zero, 1e23) is caught
# before hours of work or an allocation the machine cannot make.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 20
MAX_IMAGES = 1_000_000  # as many as a dataset file may hold (xpcnn.data)


def _positive_at_most(maximum, name):
    def parse(text):
        value = positive_int(text)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected a positive integer of at most {maximum:,}, received {text!r}")
        return value

    parse.__name__ = name
    return parse


epochs_arg = _positive_at_most(MAX_EPOCHS, "epochs_arg")
batch_size_arg = _positive_at_most(MAX_BATCH_SIZE, "batch_size_arg")
images_arg = _positive_at_most(MAX_IMAGES, "images_arg")


def seed_arg(text):
    return _int_at_least(text, 0, "non-negative")


def path_arg(text):
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, received an empty string")
    return os.path.expanduser(text)


def positive_int_list(text):
    """``"1,2"`` -> [1, 2]: comma-separated positive integers."""
    return [positive_int(part.strip()) for part in text.split(",")]


def writable_file(path, what):
    """An output file ``path`` can be written: its folder exists and is writable, it is no folder."""
    parent = Path(path).expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"The {what} folder does not exist: {parent}. Create it first.")
    if not os.access(parent, os.W_OK):
        raise InputError(f"The {what} folder is not writable: {parent}.")
    if Path(path).is_dir() or str(path).endswith(("/", os.sep)):
        raise InputError(f"The {what} path is a folder, expected a file: {path}.")
