"""Argument checks shared by the kernels: clear messages instead of failures deep in a library."""

from __future__ import annotations

from array_api_compat import array_namespace
from array_api_compat import device as device_of

from ..errors import InputError, ShapeError


def pair(value, name, *, minimum=1):
    """``value`` as a pair of ints >= ``minimum`` (an int is repeated), else a ValueError."""
    if isinstance(value, bool):
        raise InputError(f"The `{name}` argument must be an int or a pair of ints. Received {name}={value!r}")
    try:
        out = (value, value) if isinstance(value, int) else tuple(value)
    except TypeError:
        out = ()
    if len(out) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in out):
        kind = "positive" if minimum >= 1 else "non-negative"
        raise InputError(
            f"The `{name}` argument must be a {kind} int or a pair of {kind} ints. Received {name}={value!r}"
        )
    return out


def check_same_backend(op, *arrays):
    """The common namespace of ``arrays``; TypeError when they mix namespaces or devices."""
    try:
        xp = array_namespace(*arrays)
    except TypeError as exc:
        kinds = ", ".join(type(a).__module__ + "." + type(a).__name__ for a in arrays)
        raise TypeError(f"{op}: all arrays must come from one array library. Received {kinds}. ({exc})") from None
    devices = [device_of(a) for a in arrays]
    if any(d != devices[0] for d in devices[1:]):
        raise TypeError(
            f"{op}: all arrays must be on one device. Received devices {devices}; move them with "
            "xpcnn.backend.move(x, backend) first."
        )
    return xp


def check_float_array(op, name, x, *, ndim=None):
    """ShapeError for the wrong rank, TypeError for integer or boolean arrays."""
    xp = array_namespace(x)
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{op}: `{name}` must have rank {ndim}. Received {name}.shape={tuple(x.shape)}.")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{op}: `{name}` must be a floating-point array (float32 or float64). Received dtype {x.dtype}."
        )
