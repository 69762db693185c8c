"""Checkpoint files: one ``.npz`` archive that NumPy alone can read; nothing is ever unpickled.

Format (``FORMAT = "xpcnn-checkpoint"``, ``FORMAT_VERSION = 1``)
---------------------------------------------------------------
A checkpoint is an uncompressed ZIP archive of ``.npy`` entries, the layout ``numpy.savez``
writes:

* ``__header__.npy``: a 1-d ``uint8`` array holding the header, a UTF-8 JSON object;
* ``<name>.npy`` for every array; numeric dtypes only (bool, int, uint, float, complex).

The header is the caller's dict (the model stores ``arch``, the layer configs, there) plus these
fields, which xpcnn fills in and which replace any caller fields of the same name:

=================  ===========================================================================
``format``         ``"xpcnn-checkpoint"``
``format_version`` ``1``; a reader refuses a larger number
``xpcnn_version``  the xpcnn that wrote the file
``created``        ISO 8601 time in UTC, e.g. ``"2025-01-31T12:00:00+00:00"``
``arrays``         ``{name: {"dtype": "<f4", "shape": [3, 3]}}``, dtype as NumPy's ``dtype.str``
``sha256``         hex SHA-256 of the arrays: for each name in code-point order, the ASCII JSON
                   line ``["<name>","<dtype.str>",[d0,d1]]`` without spaces, then ``\\n``, then
                   the array's bytes in C order
=================  ===========================================================================

The header must be strict JSON (no NaN or infinity), so any JSON reader can parse it.
Loading checks every field, the entries against ``arrays``, and the digest; a file that fails
any check raises :class:`~xpcnn.errors.CheckpointError`. Only regular files are opened (a FIFO or
device is refused, never waited on); every entry must be stored uncompressed and hold exactly what
its ``.npy`` header claims, so reading never takes more memory than the file's size. A model
checkpoint's header (an ``arch`` object) is checked against a schema and the weight shapes its
architecture implies before anything is built (:mod:`xpcnn.saving.schema`). Saving is atomic: the
new file is written and fsynced beside the target, the old one becomes ``<path>.prev``, then the new one is
renamed into place, so a crash leaves either the old or the new checkpoint readable
(:func:`load_latest_good` tries both). A symlink is never replaced: its target is written (the temporary
file and ``.prev`` beside the target).

Examples
--------
>>> import json, pathlib, tempfile
>>> import numpy as np
>>> from xpcnn.saving.checkpoint import load_checkpoint, save_checkpoint
>>> p = pathlib.Path(tempfile.mkdtemp()) / "model.npz"
>>> _ = save_checkpoint(p, {"arch": [{"layer": "Dense", "units": 2}]}, {"0.kernel": np.eye(2)})
>>> header, arrays = load_checkpoint(p, expected_arch=[{"layer": "Dense", "units": 2}])
>>> arrays["0.kernel"].tolist()
[[1.0, 0.0], [0.0, 1.0]]

Reading a checkpoint with NumPy alone:

>>> z = np.load(p, allow_pickle=False)
>>> header = json.loads(bytes(z["__header__"]))
>>> weights = {name: z[name] for name in header["arrays"]}
>>> header["format"], list(weights)
('xpcnn-checkpoint', ['0.kernel'])
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._version import __version__
from ..errors import ARCHIVE_READ_ERRORS, CheckpointError
from ..paths import open_regular, path_kind, previous_path, real_target
from .npy import read_npy_header
from .schema import check_model_header, is_model_header

FORMAT = "xpcnn-checkpoint"
FORMAT_VERSION = 1
HEADER_NAME = "__header__"
MAX_ARRAY_BYTES = 2**34  # a header claiming more is refused before any array is read
MAX_HEADER_BYTES = 2**26

_NUMERIC_KINDS = "biufc"
_PICKLE = ("it contains pickled Python objects, which xpcnn refuses to load because unpickling "
           "can run arbitrary code")


def save_checkpoint(path, header, arrays, *, keep_previous=True) -> Path:
    """Write ``header`` and ``arrays`` to ``path`` atomically; return the path.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write, conventionally ``*.npz``. Its directory must exist.
    header : dict
        Strict-JSON-able metadata; the fields listed in the module docstring are added.
    arrays : dict of str to numpy.ndarray
        Host arrays of numeric dtype. Names are free-form except ``"__header__"``.
    keep_previous : bool
        Keep the checkpoint being replaced as ``<path>.prev``.

    Raises
    ------
    CheckpointError
        On a bad name, dtype or header value (before anything is written), or when the file
        cannot be written (the reason from the OS is quoted; an earlier checkpoint is unchanged).
    """
    path = real_target(path)  # a symlink is kept: its target is written, atomically, beside it
    arrays = _checked_arrays(arrays)
    if not isinstance(header, Mapping):
        raise CheckpointError(
            f"The `header` argument must be a dict. Received {type(header).__name__}")
    full = dict(header)
    full.update(
        format=FORMAT, format_version=FORMAT_VERSION, xpcnn_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        arrays={n: {"dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()},
        sha256=_digest(arrays),
    )
    try:
        text = json.dumps(full, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"Cannot save checkpoint {str(path)!r}: the header is not strict JSON ({e})") from e
    kind = path_kind(path)
    if kind not in ("absent", "regular file"):
        raise CheckpointError(f"Cannot save checkpoint {str(path)!r}: it is a {kind}, not a regular file")
    _atomic_write(path, np.frombuffer(text.encode("utf-8"), dtype=np.uint8), arrays, keep_previous)
    return path


def load_checkpoint(path, *, expected_arch=None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and verify a checkpoint; return ``(header, arrays)``.

    ``expected_arch``, when given, must equal ``header["arch"]`` once both are JSON values
    (tuples compare equal to lists). Every problem raises :class:`CheckpointError`.
    """
    path = Path(path)
    header, arrays = _read(path, with_arrays=True)
    if expected_arch is not None:
        check_arch(path, header, expected_arch)
    return header, arrays


def read_header(path) -> dict:
    """Return the validated header of a checkpoint without reading its arrays.

    The entries' dtypes and shapes are checked against the header; the digest is not.
    """
    return _read(Path(path), with_arrays=False)[0]


def load_latest_good(path, *, expected_arch=None) -> tuple[dict, dict[str, np.ndarray], Path]:
    """Load ``path``, or ``<path>.prev`` when ``path`` is missing or damaged.

    Returns ``(header, arrays, used_path)``. When neither loads, raises the error of ``path``.
    The architecture is checked only on the file chosen, so a mismatch never triggers the
    fallback.
    """
    path = Path(path)
    try:
        header, arrays = load_checkpoint(path)
        used = path
    except CheckpointError as newest:
        try:
            header, arrays = load_checkpoint(previous_path(path))
            used = previous_path(path)
        except CheckpointError:
            raise newest from None
    if expected_arch is not None:
        check_arch(used, header, expected_arch)
    return header, arrays, used


# ---------------------------------------------------------------------------------- writing
def _checked_arrays(arrays):
    if not isinstance(arrays, Mapping):
        raise CheckpointError(
            f"The `arrays` argument must be a dict. Received {type(arrays).__name__}")
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name or "\x00" in name:
            raise CheckpointError(f"Array names must be non-empty strings. Received {name!r}")
        if name == HEADER_NAME:
            raise CheckpointError(f"The array name {HEADER_NAME!r} is reserved for the header")
        if not isinstance(a, (np.ndarray, np.generic)):
            raise CheckpointError(
                f"Array {name!r} is a {type(a).__module__}.{type(a).__name__}, not a NumPy array; "
                "move it to the host first (xpcnn.backend.to_numpy)")
        a = np.asarray(a)
        if a.dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(
                f"Array {name!r} has dtype {a.dtype}; checkpoints hold only numeric arrays "
                "(bool, int, uint, float, complex)")
        out[name] = a
    return out


def _atomic_write(path, header_array, arrays, keep_previous):
    prev, tmp, moved_old = previous_path(path), None, False
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            _set_mode(f.fileno(), path)
            # Our own zip writer: np.savez would take an array named "file" or "allow_pickle"
            # for its own keyword arguments.
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name, a in [(HEADER_NAME, header_array), *arrays.items()]:
                    with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                        np.lib.format.write_array(member, a, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file():
            os.replace(path, prev)
            moved_old = True
        os.replace(tmp, path)
        tmp = None
    except BaseException as e:
        if moved_old:
            try:
                os.replace(prev, path)
            except OSError:
                pass
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            kept = ""
            if moved_old and not path.exists():
                kept = f"; the earlier checkpoint is at {str(prev)!r}"
            raise CheckpointError(
                f"Cannot save checkpoint {str(path)!r}: {_reason(e)}{kept}") from e
        raise
    _fsync_dir(path)


def _set_mode(fd, path):
    # mkstemp creates 0o600 files; give the checkpoint the mode of the file it replaces, else the
    # mode open() would give (0o666 less the umask), so it stays as shareable as any other file.
    if not hasattr(os, "fchmod"):
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mask = os.umask(0o022)  # the umask can only be read by setting it
        os.umask(mask)
        mode = 0o666 & ~mask
    os.fchmod(fd, mode)


def _fsync_dir(path):
    if os.name == "nt":  # a directory cannot be opened on Windows; NTFS journals the rename
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # no directory sync here
            return
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was written but its directory could not be flushed to "
            f"disk: {_reason(e)}") from e


def _reason(e):
    code = errno.errorcode.get(e.errno) if e.errno else None
    return f"{e.strerror or e} ({code})" if code else str(e.strerror or e)


# ---------------------------------------------------------------------------------- reading
def _read(path, *, with_arrays):
    where = f"Cannot load checkpoint {str(path)!r}"
    try:
        with open_regular(path, where) as f:  # a FIFO or device is refused, never waited on
            _check_magic(where, f.read(8))
            f.seek(0)
            with zipfile.ZipFile(f) as zf:
                entries = _entries(where, zf, os.fstat(f.fileno()).st_size)
                header, specs = _header(where, zf, entries)
                _match(where, specs, entries)
                if is_model_header(header):  # before any layer is built or array read
                    check_model_header(where, header, specs)
                if not with_arrays:
                    return header, {}
                arrays = {}
                for name in specs:
                    with zf.open(entries[name][0]) as fp:
                        arrays[name] = np.lib.format.read_array(fp, allow_pickle=False)
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{where}: no such file") from e
    except OSError as e:
        raise CheckpointError(f"{where}: {_reason(e)}") from e
    except ARCHIVE_READ_ERRORS as e:
        raise CheckpointError(
            f"{where}: the file is truncated or damaged ({type(e).__name__}: {e})") from e
    digest = _digest(arrays)
    if digest != header["sha256"]:
        raise CheckpointError(f"{where}: file is corrupt or was modified: SHA-256 of its arrays is "
                              f"{digest[:16]}..., the header says {header['sha256'][:16]}...")
    return header, arrays


def _check_magic(where, head):
    if not head:
        raise CheckpointError(f"{where}: the file is empty (0 bytes)")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:
        raise CheckpointError(f"{where}: the file looks like a Python pickle; {_PICKLE}")
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{where}: it is a single .npy array, not an xpcnn checkpoint (.npz)")
    raise CheckpointError(f"{where}: not an xpcnn checkpoint (not a .npz/zip archive)")


def _entries(where, zf, archive_size):
    """name -> (ZipInfo, dtype, shape), from each entry's .npy header; no array data is read.

    Every entry must be stored (not compressed) and hold exactly the bytes its .npy header
    claims, and all of them must fit in the archive: what is read is then bounded by the file's
    size, whatever a header claims."""
    entries, stored_bytes = {}, 0
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            raise CheckpointError(f"{where}: entry {info.filename!r} is compressed (zip method "
                                  f"{info.compress_type}); xpcnn checkpoints store arrays uncompressed")
        stored_bytes += info.file_size
        if stored_bytes > archive_size:
            raise CheckpointError(f"{where}: the archive's directory claims {stored_bytes} bytes of entries, "
                                  f"more than the file's {archive_size}: it is truncated or damaged")
        name = info.filename[:-4]
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{where}: entry {info.filename!r} is not a .npy array")
        if name in entries:
            raise CheckpointError(f"{where}: entry {info.filename!r} appears twice")
        with zf.open(info) as fp:
            version, shape, dtype = read_npy_header(fp)
            header_bytes = fp.tell()
        if dtype is None:
            raise CheckpointError(f"{where}: entry {info.filename!r} has .npy version {version}")
        if dtype.hasobject:
            raise CheckpointError(f"{where}: {_PICKLE} (entry {name!r})")
        claimed = math.prod(shape) * dtype.itemsize
        if header_bytes + claimed != info.file_size:
            raise CheckpointError(f"{where}: entry {info.filename!r} claims shape {list(shape)} of {dtype} "
                                  f"({claimed} bytes) but holds {info.file_size - header_bytes}")
        entries[name] = (info, dtype, shape)
    return entries


def _header(where, zf, entries):
    """Read, parse and validate the JSON header; return it and {name: (dtype, shape)}."""
    if HEADER_NAME not in entries:
        raise CheckpointError(f"{where}: the archive has no {HEADER_NAME} entry, so it is not an "
                              "xpcnn checkpoint")
    info, dtype, shape = entries[HEADER_NAME]
    if dtype != np.uint8 or len(shape) != 1 or not 0 <= shape[0] <= MAX_HEADER_BYTES:
        raise CheckpointError(f"{where}: {HEADER_NAME} must be a 1-d uint8 array of at most "
                              f"{MAX_HEADER_BYTES} bytes; it is {dtype} {shape}")
    with zf.open(info) as fp:
        raw = np.lib.format.read_array(fp, allow_pickle=False).tobytes()
    try:
        h = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{where}: the header is not valid UTF-8 JSON ({e})") from e
    if not isinstance(h, dict):
        raise CheckpointError(f"{where}: the header is a JSON {type(h).__name__}, not an object")
    if h.get("format") != FORMAT:
        raise CheckpointError(
            f"{where}: not an xpcnn checkpoint (format {_short(h.get('format'))})")
    version = h.get("format_version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{where}: invalid format_version {_short(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: written by a newer xpcnn (format {version}); this xpcnn "
                              f"reads format <= {FORMAT_VERSION}; upgrade xpcnn")
    sha = h.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= set("0123456789abcdef")):
        raise CheckpointError(f"{where}: the header's sha256 is not a SHA-256 hex digest")
    if not isinstance(h.get("arrays"), dict):
        raise CheckpointError(f"{where}: the header's `arrays` is not an object")
    specs, total = {}, 0
    for name, spec in h["arrays"].items():
        ok = isinstance(spec, dict) and isinstance(spec.get("dtype"), str)
        shape = spec.get("shape") if ok else None
        if (name == HEADER_NAME or not isinstance(shape, list) or len(shape) > 64
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(
                f"{where}: the header's entry for array {_short(name)} is malformed: "
                f"{_short(spec)}")
        try:
            dtype = np.dtype(spec["dtype"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(
                f"{where}: array {name!r} has an unknown dtype {_short(spec['dtype'])}") from e
        if dtype.kind not in _NUMERIC_KINDS:
            raise CheckpointError(f"{where}: array {name!r} has non-numeric dtype {dtype}")
        specs[name] = (dtype, tuple(shape))
        total += math.prod(shape) * dtype.itemsize
    if total > MAX_ARRAY_BYTES:
        raise CheckpointError(f"{where}: the header claims {total} bytes of arrays, more than the "
                              f"{MAX_ARRAY_BYTES} xpcnn will load")
    return h, specs


def _match(where, specs, entries):
    missing = [n for n in specs if n not in entries]
    extra = sorted(set(entries) - set(specs) - {HEADER_NAME})
    if missing:
        raise CheckpointError(f"{where}: arrays listed in the header are missing from the file: "
                              f"{_short(missing)}")
    if extra:
        raise CheckpointError(
            f"{where}: the file holds arrays the header does not list: {_short(extra)}")
    for name, (dtype, shape) in specs.items():
        _, got_dtype, got_shape = entries[name]
        if got_dtype != dtype or got_shape != shape:
            raise CheckpointError(
                f"{where}: array {name!r} is {got_dtype.str} {list(got_shape)} in the file but "
                f"{dtype.str} {list(shape)} in the header")


def _digest(arrays):
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        line = json.dumps([name, a.dtype.str, list(a.shape)], separators=(",", ":"))
        h.update(line.encode("ascii") + b"\n")
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def check_arch(path, header, expected_arch):
    """Raise CheckpointError naming the first place where ``header["arch"]`` differs from ``expected_arch``."""
    expected = json.loads(json.dumps(expected_arch))  # as stored: tuples become lists
    if "arch" not in header:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} records no architecture (`arch`); the model expects "
            f"{_short(expected)}")
    found = header["arch"]
    if found != expected:
        at, a, b = _first_difference(found, expected, "arch")
        raise CheckpointError(f"Checkpoint {str(path)!r} holds another architecture: {at} is "
                              f"{_short(a)} in the checkpoint but {_short(b)} in the model")


def _first_difference(a, b, at):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if k not in a or k not in b:
                return f"{at}[{k!r}]", a.get(k, _ABSENT), b.get(k, _ABSENT)
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{at}[{k!r}]")
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{at}[{i}]")
        return f"the length of {at}", len(a), len(b)
    return at, a, b


_ABSENT = object()


def _short(value, limit=120):
    if value is _ABSENT:
        return "absent"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
