"""Checks of the public API's arguments (fit, evaluate, predict, set_weights): a missing or
malformed argument is an :class:`~xpcnn.errors.InputError` that names it, never an
AttributeError from deep inside.

>>> require_given(None, "y", "the targets")
Traceback (most recent call last):
...
xpcnn.errors.InputError: The `y` argument is missing (None); expected the targets.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace, is_array_api_obj

from .errors import InputError, type_name

TARGETS = "the targets: integer class labels (N,), or an array shaped like the model's output"


def require_given(value, name, expected):
    if value is None:
        raise InputError(f"The `{name}` argument is missing (None); expected {expected}.")
    return value


def require_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"The `{name}` argument must be a positive int. Received {name}={value!r}")
    return int(value)


def checked_weights(weights) -> list:
    """``weights`` as a list, each entry numeric and finite (NaN or infinity refused, naming it)."""
    if weights is None or isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
        raise InputError(f"The `weights` argument must be a list of arrays (as get_weights returns). "
                         f"Received {type_name(weights)}.")
    weights = list(weights)
    for i, w in enumerate(weights):
        if is_array_api_obj(w) and not isinstance(w, np.ndarray):  # on its device: no host copy
            xp = array_namespace(w)
            bad = 0 if not xp.isdtype(w.dtype, "real floating") else int(xp.sum(xp.astype(~xp.isfinite(w), xp.int64)))
        else:
            try:
                a = np.asarray(w)
            except (TypeError, ValueError) as exc:
                raise InputError(f"weights[{i}] is not an array of numbers ({exc}).") from None
            if a.dtype.kind not in "biuf":
                raise InputError(f"weights[{i}] must hold numbers. Received dtype {a.dtype}.")
            bad = int(a.size - np.count_nonzero(np.isfinite(a))) if a.dtype.kind == "f" else 0
        if bad:
            raise InputError(f"weights[{i}] holds {bad} NaN or infinite values; expected finite numbers.")
    return weights
