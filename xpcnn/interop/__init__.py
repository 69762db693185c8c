"""Use an xpcnn model elsewhere: ONNX export (:mod:`xpcnn.interop.onnx`) and a Keras 3 bridge
(:mod:`xpcnn.interop.keras`), both optional extras imported only when used.

Nothing in the core package imports this one; ``Sequential.to_onnx``, ``xpcnn.from_keras`` and
the ``xpcnn export`` / ``xpcnn import`` commands import it lazily.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from ..errors import InputError


def require(module, extra):
    """``import module``, or an InputError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"This needs the `{module}` package ({exc}). Install it with: pip install 'xpcnn[{extra}]'"
                         ) from None


def layer_error(layer, where, why):
    """The one message for a layer that cannot be mapped: which layer, what it is, why."""
    return InputError(f"Layer '{layer.name}' ({type(layer).__name__}) cannot be {where}: {why}")


def write_atomically(path, write):
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``:
    a failed export leaves no half-written file (and any earlier file at ``path`` untouched)."""
    path = Path(path)
    # Keras insists on the .keras suffix, so the temporary name keeps the real one.
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
