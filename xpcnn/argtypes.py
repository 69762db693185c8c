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
