"""Byte-level mutations for fuzz tests: flip, set, cut and insert at drawn positions."""

from __future__ import annotations

from hypothesis import strategies as st


def mutate(data, good: bytes) -> bytes:
    """Draw 1-4 edits of ``good`` from the hypothesis ``data`` object and apply them."""
    blob = bytearray(good)
    edits = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert"]), st.integers(0, len(good) - 1),
                               st.integers(0, 255)), min_size=1, max_size=4)
    for kind, at, value in data.draw(edits):
        at = min(at, max(len(blob) - 1, 0))
        if kind == "flip" and blob:
            blob[at] ^= 1 << (value % 8)
        elif kind == "set" and blob:
            blob[at] = value
        elif kind == "cut":
            del blob[at:]
        else:
            blob[at:at] = bytes([value])
    return bytes(blob)
