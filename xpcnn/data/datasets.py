"""Datasets as host NumPy arrays: MNIST and Fashion-MNIST, read without importing Keras.

:func:`load_dataset` looks, in order, in

1. ``data_dir`` (or the ``XPCNN_DATA_DIR`` environment variable): the four original IDX files
   (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
   ``t10k-labels-idx1-ubyte.gz``, gzip-compressed or not) or a Keras-format ``mnist.npz`` /
   ``fashion-mnist.npz``; for Fashion-MNIST also a ``fashion-mnist/`` subfolder;
2. the Keras cache, ``$KERAS_HOME/datasets`` or ``~/.keras/datasets`` (``mnist.npz``,
   ``fashion-mnist/*.gz``);
3. for Fashion-MNIST, where Debian's ``dataset-fashion-mnist`` package installs it
   (``/usr/share/datasets/fashion-mnist``; its gzip headers are rewritten, the data are the
   originals);
4. the public origin Keras downloads from (override with ``XPCNN_DATA_ORIGIN``), checking the
   SHA-256 Keras publishes and writing atomically into the Keras cache.

Every file is checked before it is trusted: IDX headers are compared with the real data length
before anything is allocated, so a truncated file, trailing bytes or a header claiming 10**12
images is refused with a :class:`~xpcnn.errors.DataError` that names the file and both sizes.

Examples
--------
>>> import numpy as np
>>> from xpcnn.data import prepare_images, read_idx
>>> labels = read_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 5, 0, 4]), expected_magic=0x801)
>>> labels.tolist()
[5, 0, 4]
>>> prepare_images(np.full((2, 28, 28), 255, dtype=np.uint8)).shape
(2, 1, 28, 28)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import tempfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ARCHIVE_READ_ERRORS, DataError, InputError, channels_last_order
from ..paths import open_regular
from ..saving.npy import read_npy_header

DATASETS = ("mnist", "fashion-mnist")
DEFAULT_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# SHA-256 that Keras publishes (keras/src/datasets/mnist.py, fashion_mnist.py), keyed by the
# path inside the Keras cache; the file name is also the name under the origin URL.
SHA256 = {
    "mnist": {"mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"},
    "fashion-mnist": {
        "fashion-mnist/train-labels-idx1-ubyte.gz":
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "fashion-mnist/train-images-idx3-ubyte.gz":
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "fashion-mnist/t10k-labels-idx1-ubyte.gz":
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "fashion-mnist/t10k-images-idx3-ubyte.gz":
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    },
}
# What the class indices mean (Fashion-MNIST: Zalando's labels, in their order).
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
# The two datasets share file names, so a folder could hold either: the SHA-256 of the training
# labels (as little-endian int64) tells the real ones apart (a copy holding other data is used as is).
KNOWN_TRAIN_LABELS = {
    "e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c": "mnist",
    "e3245b63f7c40d1c8b652835f19744d970c1613b40ddac6bcfc87b9c46e16a0b": "fashion-mnist",
}
# Where system packages install a dataset (Debian/Ubuntu: apt-get install dataset-fashion-mnist).
SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist", "Debian package dataset-fashion-mnist")}
IDX_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MAX_RANK = 32
_MAX_ITEMS = 1_000_000
# Deflate can expand ~1032:1, but real image data compresses 2:1 to 6:1 (MNIST, Fashion-MNIST):
# a compressed file or entry may hold at most 64 times its size (at least 16 MiB), so a
# 762 KB gzip cannot make the reader take 1.6 GB.
_PLAUSIBLE_RATIO = 64
_SMALL_ENOUGH = 1 << 24
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Dataset:
    """Train and test splits: images ``(N, 28, 28)`` uint8, labels ``(N,)`` int64 in 0..9."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.y_train)}, "
                f"test={len(self.y_test)}, source={self.source!r})")


def read_idx(source, *, expected_magic=None, expected_shape_tail=None, max_items=None):
    """Read one IDX file (raw or gzip, detected by its first bytes) into a new NumPy array.

    Parameters
    ----------
    source : path-like or bytes
        The file, or its bytes.
    expected_magic : int, optional
        E.g. ``0x00000803`` (uint8, rank 3: images) or ``0x00000801`` (uint8, rank 1: labels).
    expected_shape_tail : tuple of int, optional
        The trailing dimensions required, e.g. ``(28, 28)``.
    max_items : int, optional
        The most entries allowed along the first dimension.

    Returns
    -------
    numpy.ndarray
        A writable, native-byte-order copy of shape ``dims`` from the header.

    Raises
    ------
    DataError
        Whenever the file cannot be read or does not hold exactly what its header claims.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = "<bytes>" if is_bytes else os.fspath(source)
    try:
        if is_bytes:
            source = bytes(source)
            return _parse_idx(io.BytesIO(source), len(source), label, expected_magic,
                              expected_shape_tail, max_items)
        with open_regular(source, f"Cannot read IDX file {label}", error=DataError) as f:  # never a FIFO
            return _parse_idx(f, os.fstat(f.fileno()).st_size, label, expected_magic,
                              expected_shape_tail, max_items)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"Could not read IDX file {label}: {type(exc).__name__}: {exc}. "
                        "Expected an IDX file, raw or gzip-compressed.") from None


def _parse_idx(f, size, label, expected_magic, expected_shape_tail, max_items):
    compressed = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    stream = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
    capacity = _decompressed_limit(size) if compressed else size
    head = stream.read(4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
        raise DataError(f"{label} is not an IDX file: it starts with bytes {head.hex(' ')!r}; "
                        "expected 00 00, a type code (08 09 0b 0c 0d 0e) and a rank.")
    magic, ndim = int.from_bytes(head, "big"), head[3]
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{label} has IDX magic number 0x{magic:08x} (type 0x{head[2]:02x}, "
                        f"rank {ndim}); expected 0x{expected_magic:08x}.")
    if not 1 <= ndim <= _MAX_RANK:
        raise DataError(f"{label} has IDX rank {ndim}; expected 1 to {_MAX_RANK}.")
    raw_dims = stream.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{label} ends inside its header: expected {4 * ndim} bytes of "
                        f"dimensions for rank {ndim}, found {len(raw_dims)}.")
    dims = tuple(int.from_bytes(raw_dims[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
    tail = tuple(expected_shape_tail or ())
    if tail and dims[-len(tail):] != tail:
        raise DataError(f"{label} holds shape {dims}; expected (..., {', '.join(map(str, tail))}).")
    if max_items is not None and dims[0] > max_items:
        raise DataError(f"{label} claims {dims[0]} items; expected at most {max_items}.")
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    claimed, header_len = math.prod(dims) * dtype.itemsize, 4 + 4 * ndim
    # Compare the claim with what the file can hold before reading or allocating anything.
    if compressed and claimed + header_len > capacity:
        _wrong_size(label, dims, claimed, header_len,
                    f"xpcnn reads at most {capacity} bytes from a {size}-byte gzip file (real "
                    f"datasets compress less than 6:1; this would be {claimed / max(size, 1):.0f}:1)")
    if not compressed and size - header_len != claimed:
        _wrong_size(label, dims, claimed, header_len, f"the file has {size - header_len}")
    body = _read_at_most(stream, claimed + 1)
    if len(body) != claimed:  # only gzip gets here: its true length shows up while reading
        _wrong_size(label, dims, claimed, header_len, "the gzip data holds " + (
            "more" if len(body) > claimed else str(len(body))))
    try:
        array = np.frombuffer(body, dtype=dtype).reshape(dims)
    except ValueError as exc:
        raise DataError(f"{label} header shape {dims} cannot be represented: {exc}") from None
    return array.astype(dtype.newbyteorder("="), copy=True)


def _decompressed_limit(compressed_bytes):
    """The most bytes a compressed file or entry of ``compressed_bytes`` may expand to."""
    return max(compressed_bytes * _PLAUSIBLE_RATIO, _SMALL_ENOUGH) + 1024


def _wrong_size(label, dims, claimed, header_len, found):
    raise DataError(f"{label}: header claims shape {dims}, i.e. exactly {claimed} bytes after "
                    f"the {header_len}-byte header, but {found}.")


def _read_at_most(stream, limit):
    # Chunked, so a lying size never turns into one huge up-front allocation.
    chunks, total = [], 0
    while total < limit:
        chunk = stream.read(min(_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def load_npz_dataset(path, *, name=None) -> Dataset:
    """Read a Keras-format ``.npz`` (keys x_train, y_train, x_test, y_test), never unpickling."""
    path = Path(path)
    arrays = {}
    try:
        with open_regular(path, f"Cannot read {path}", error=DataError) as f, zipfile.ZipFile(f) as zf:
            for key in IDX_FILES:
                arrays[key] = _read_npz_member(zf, key, path)
    except ARCHIVE_READ_ERRORS as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"Could not read {path} as an .npz archive: {type(exc).__name__}: {exc}. "
                        "Expected a zip of x_train, y_train, x_test, y_test arrays.") from None
    return _make_dataset(name or path.name.removesuffix(".npz"), arrays,
                         {key: f"{path}[{key}]" for key in arrays}, str(path))


def _read_npz_member(zf, key, path):
    try:
        info = zf.getinfo(f"{key}.npy")
    except KeyError:
        found = sorted(n.removesuffix(".npy") for n in zf.namelist())
        raise DataError(f"{path} has no array {key!r}; found keys {found}, expected "
                        f"{list(IDX_FILES)}.") from None
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
        raise DataError(f"{path}[{key}] is stored with zip compression method {info.compress_type}"
                        f"{' and encrypted' if info.flag_bits & 0x1 else ''}; expected a plain stored or "
                        "deflated entry, as NumPy writes them.")
    with zf.open(info) as f:
        version, shape, dtype = read_npy_header(f)
        if dtype is None:
            raise DataError(f"{path}[{key}] uses .npy format version {version}; "
                            "expected 1.0 or 2.0.")
        if dtype.hasobject:
            raise DataError(f"{path}[{key}] holds Python objects (dtype {dtype}), which only pickle "
                            "can load; refusing. Expected an integer array.")
        limit = info.file_size if info.compress_type == zipfile.ZIP_STORED else min(
            info.file_size, _decompressed_limit(info.compress_size))
        if math.prod(shape) * dtype.itemsize > limit:
            raise DataError(f"{path}[{key}] header claims shape {shape} of {dtype}, more than its "
                            f"{info.compress_size}-byte zip entry can hold.")
        f.seek(0)  # the header checked, read the array from the same open entry
        return np.lib.format.read_array(f, allow_pickle=False)


def _make_dataset(name, arrays, where, source) -> Dataset:
    """Check both splits (shapes, dtypes, value ranges, matching lengths); return a Dataset."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        xw, yw = where[f"x_{split}"], where[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"Images {xw} have shape {x.shape} and dtype {x.dtype}; expected "
                            "shape (N, 28, 28) of uint8 (or integers in 0..255).")
        if x.dtype != np.uint8 and x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"Images {xw} hold values in {x.min()}..{x.max()}; expected 0..255.")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"Labels {yw} have shape {y.shape} and dtype {y.dtype}; expected "
                            "shape (N,) of integers.")
        if len(x) != len(y):
            raise DataError(f"{xw} holds {len(x)} images but {yw} holds {len(y)} labels; "
                            "expected the same count.")
        if len(x) == 0:
            raise DataError(f"{xw} holds no images; expected at least one.")
        bad = int(np.count_nonzero((y < 0) | (y > 9)))
        if bad:
            raise DataError(f"Labels {yw} hold {bad} values outside 0..9 (range "
                            f"{y.min()}..{y.max()}); expected class indices 0..9.")
        out[f"x_{split}"] = np.ascontiguousarray(x, dtype=np.uint8)
        out[f"y_{split}"] = np.ascontiguousarray(y, dtype=np.int64)
    return Dataset(name=name, source=source, **out)


def _idx_paths(folder):
    """Map each key to its IDX file in ``folder`` (``.gz`` preferred); list missing names."""
    paths, missing = {}, []
    for key, stem in IDX_FILES.items():
        found = [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(f"{stem}[.gz]")
    return paths, missing


def load_idx_dataset(folder, *, name="mnist") -> Dataset:
    """Read the four IDX files (``.gz`` or raw) in ``folder`` and check them as a dataset."""
    folder = Path(folder)
    paths, missing = _idx_paths(folder)
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}; expected all four IDX files.")
    arrays = {key: read_idx(p, expected_magic=0x803 if key[0] == "x" else 0x801,
                            expected_shape_tail=(28, 28) if key[0] == "x" else None,
                            max_items=_MAX_ITEMS) for key, p in paths.items()}
    return _make_dataset(name, arrays, {k: str(p) for k, p in paths.items()}, str(folder))


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/datasets``, else ``~/.keras/datasets`` (where Keras keeps its downloads)."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home) if home else Path.home() / ".keras") / "datasets"


def _find(name, folder, *, cache):
    """Try each place ``folder`` may hold ``name``; return (Dataset or None, what was missing)."""
    if cache:
        places = [folder / "mnist.npz"] if name == "mnist" else [folder / "fashion-mnist"]
    elif folder.suffix == ".npz":
        places = [folder]
    elif name == "fashion-mnist":  # the specific places first: the folder itself may hold MNIST
        places = [folder / "fashion-mnist", folder / "fashion-mnist.npz", folder]
    else:
        places = [folder, folder / f"{name}.npz"]
    if not folder.exists():
        return None, "does not exist"
    if folder.is_file() and folder.suffix != ".npz":
        return None, "is a file; expected a folder (or a .npz file)"
    notes = []
    for place in places:
        where = "" if place == folder else f" in {place.name}{'' if place.suffix == '.npz' else '/'}"
        if place.suffix == ".npz":
            if not place.is_file():
                notes.append(f"no {place.name}")
                continue
            dataset = load_npz_dataset(place, name=name)
        else:
            paths, missing = _idx_paths(place) if place.is_dir() else ({}, list(IDX_FILES.values()))
            if missing:
                notes.append(f"no IDX files{where}" if not paths
                             else f"incomplete IDX files{where} (missing {', '.join(missing)})")
                continue
            dataset = load_idx_dataset(place, name=name)
        actually = KNOWN_TRAIN_LABELS.get(hashlib.sha256(dataset.y_train.astype("<i8").tobytes()).hexdigest())
        if actually not in (None, name):
            notes.append(f"the files{where or ' there'} are {actually}, not {name}")
            continue
        return dataset, ""
    return None, "; ".join(notes)


def _download(name, cache, origin, progress):
    origin += "" if origin.endswith("/") else "/"
    for rel, sha256 in SHA256[name].items():
        target = cache / rel
        if target.is_file():
            continue
        url = origin + target.name
        made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # deepest first
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                          disable=not progress) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise DataError(f"Downloaded {url} has SHA-256 {digest.hexdigest()}; expected "
                                f"{sha256}. It was discarded; nothing was written to {cache}.")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
            if not target.exists():  # a failed download leaves no empty cache folders behind
                for folder in made:
                    try:
                        folder.rmdir()
                    except OSError:
                        break


def load_dataset(name="mnist", data_dir=None, *, download=True, progress=True) -> Dataset:
    """Load MNIST or Fashion-MNIST as host NumPy arrays (see the module docstring for where).

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : path-like, optional
        A folder with the IDX files or ``<name>.npz``; defaults to ``$XPCNN_DATA_DIR``.
    download : bool
        Whether to fetch the files into the Keras cache when found nowhere else.
    progress : bool
        Whether to show a download progress bar.
    """
    if name not in DATASETS:
        raise InputError(f"The `name` argument must be one of {DATASETS}. Received name={name!r}")
    looked = []
    env_dir = os.environ.get("XPCNN_DATA_DIR")
    system_dir, system_why = SYSTEM_DIRS.get(name, (None, ""))
    for folder, why, cache in ((data_dir, "data_dir argument", False),
                               (env_dir if data_dir is None else None, "XPCNN_DATA_DIR", False),
                               (keras_cache_dir(), "Keras cache", True),
                               (system_dir, system_why, False)):
        if folder is None or folder == "":
            continue
        dataset, missing = _find(name, Path(folder), cache=cache)
        if dataset is not None:
            return dataset
        if why == "data_dir argument":  # a folder the user named is final: no silent fallback
            raise DataError(f"Could not find the {name} dataset in {folder}: {missing}. Expected the four "
                            f"IDX files ({', '.join(s + '.gz' for s in IDX_FILES.values())}) or {name}.npz "
                            f"there{' (or in a fashion-mnist/ subfolder)' if name == 'fashion-mnist' else ''}.")
        looked.append(f"  - {folder} ({why}): {missing}")
    cache = keras_cache_dir()
    origin = os.environ.get("XPCNN_DATA_ORIGIN") or DEFAULT_ORIGIN
    if download:
        try:
            _download(name, cache, origin, progress)
            dataset, missing = _find(name, cache, cache=True)
            if dataset is not None:
                return dataset
            looked.append(f"  - {cache} after downloading: {missing}")
        except (OSError, ValueError) as exc:
            if isinstance(exc, DataError):
                raise
            looked.append(f"  - download from {origin} into {cache}: {type(exc).__name__}: {exc}")
    else:
        looked.append(f"  - download from {origin}: skipped (download=False)")
    keras_form = "mnist.npz" if name == "mnist" else "fashion-mnist/<the 4 .gz files>"
    raise DataError(
        f"Could not find the {name} dataset. Looked in:\n" + "\n".join(looked) + "\n"
        f"Put the four IDX files ({', '.join(s + '.gz' for s in IDX_FILES.values())}) or "
        f"{name}.npz (keys {', '.join(IDX_FILES)}) in a folder and pass it with --data-dir DIR "
        f"or XPCNN_DATA_DIR=DIR, or place {keras_form} in {cache}.")


def prepare_images(x, dtype="float32") -> np.ndarray:
    """Turn images ``(N, H, W)`` or ``(N, C, H, W)`` into C-contiguous ``(N, C, H, W)`` floats.

    Integer pixels (0..255) are divided by 255; float pixels are kept as they are, after a check
    that all are finite.
    """
    if str(dtype) not in ("float32", "float64") and dtype not in (np.float32, np.float64):
        raise InputError(f"The `dtype` argument must be 'float32' or 'float64'. Received {dtype!r}")
    x = np.asarray(x)
    if x.ndim not in (3, 4):
        raise DataError(f"Images have shape {x.shape}; expected (N, H, W) or (N, C, H, W).")
    if x.ndim == 4 and channels_last_order(x.shape[1:]):  # (N, H, W, C), as Keras keeps them
        raise DataError(f"Images have shape {x.shape}, channels last; expected channels first (N, C, H, W): "
                        f"pass x.transpose(0, 3, 1, 2).")
    x = x[:, None] if x.ndim == 3 else x
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype != np.uint8 and x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"Integer images hold values in {x.min()}..{x.max()}; expected 0..255.")
        out = x.astype(dtype)
        out /= 255
    elif np.issubdtype(x.dtype, np.floating):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(f"Images hold {bad} NaN or infinite values out of {x.size}; "
                            "expected finite pixels.")
        out = x.astype(dtype)
    else:
        raise DataError(f"Images have dtype {x.dtype}; expected uint8 or a float dtype.")
    return np.ascontiguousarray(out)
