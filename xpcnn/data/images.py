"""Your own digit pictures (PNG, JPEG, ...) as MNIST-like model inputs, for ``xpcnn predict``.

A photo or a drawing is not an MNIST sample: it is dark ink on light paper, any size, anywhere in
the frame. :func:`load_image` turns it into what the network was trained on, in the order MNIST
itself was made (LeCun et al.: size-normalised into a 20x20 box, then centred by the centre of
mass in a 28x28 field):

1. decode with Pillow, refusing anything that is not an image, is truncated, or claims more than
   :data:`MAX_PIXELS` pixels (checked from the header, before any pixel is decoded);
2. apply the EXIF orientation; composite transparency onto white; convert to grayscale; shrink
   to at most :data:`WORK_SIZE` pixels a side;
3. invert when the border is light (MNIST digits are light on dark); when the border is uneven
   (a photo's shadow), subtract a smooth estimate of the paper's brightness first;
4. stretch so the background is 0 and the brightest ink 1; crop to the ink's bounding box;
5. scale the longer side to 20/28 of the target size, keeping the aspect ratio (a pen stroke
   that would end up much thinner than MNIST's is widened on the way);
6. paste into the target size so the centre of mass sits at the centre.

A uniform picture gives an empty (all-zero) field; one without ink is only resized. Every
failure is a :class:`~xpcnn.errors.DataError` that names the file, what was found and what was
expected.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> digit = np.zeros((28, 28), np.uint8); digit[6:22, 12:16] = 255   # a "1"
>>> path = save_mnist_png(digit, pathlib.Path(tempfile.mkdtemp()) / "one.png")
>>> x = load_image(path)
>>> x.shape, x.dtype, float(x.min()), float(x.max())
((1, 1, 28, 28), dtype('float32'), 0.0, 1.0)
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError

#: Largest picture decoded (width x height). A digit needs a few thousand pixels; a 40 MP limit
#: admits any phone photo and refuses decompression bombs before they are expanded in memory.
MAX_PIXELS = 40_000_000
#: Pictures are shrunk to at most this many pixels a side before any float work (box averaging).
WORK_SIZE = 2000
#: Pillow decoders tried. PNG and JPEG are what people have; the others are common and benign.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
BOX_FRACTION = 20 / 28  # MNIST: the digit's longer side fills 20 of 28 pixels
INK_THRESHOLD = 0.15    # on the 0..1 stretched scale: "a bit above the background"
UNEVEN_BORDER = 24.0    # gray levels between the border's 10th and 90th percentiles that mean "uneven light"
STROKE = 2.5           # MNIST's median stroke width, pixels, in its 20-px box
MID = 4                # big pictures are first shrunk to MID x the result, where strokes are measured
BLANK_CONTRAST = 8.0    # gray levels (of 255) between background and brightest ink below which there is no ink
FRAME_PAPER = 8.0       # gray levels: a frame-filling picture's background above this is pulled down to 0
EXPECTED = "a PNG or JPEG image"


def _pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise InputError("Reading image files needs Pillow: pip install 'xpcnn[images]'") from None
    return Image, ImageOps


def _check_shape(input_shape):
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (shape is None or len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                                 or s < 1 for s in shape) or shape[0] not in (1, 3)):
        raise InputError("The `input_shape` argument must be (channels, height, width) with 1 or 3 channels "
                         f"and positive sizes. Received input_shape={input_shape!r}")
    return tuple(int(s) for s in shape)


def _read_gray(path: Path, Image, ImageOps) -> np.ndarray:
    """Decode ``path`` into a float64 (H, W) array of gray levels 0..255 (transparent = white)."""
    if not path.exists():
        raise DataError(f"Image file {path} does not exist; expected {EXPECTED}.")
    if path.is_dir():
        raise DataError(f"Image path {path} is a directory; expected {EXPECTED} file.")
    if not path.is_file():
        raise DataError(f"Image path {path} is not a regular file; expected {EXPECTED}.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise DataError(f"Image file {path} could not be read ({exc.strerror or exc}); expected {EXPECTED}.") from None
    if size == 0:
        raise DataError(f"Image file {path} is empty (0 bytes); expected {EXPECTED}.")
    found = f"{size:,} bytes starting {head[:8]!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as img:
                w, h = img.size
                if w < 1 or h < 1 or w * h > MAX_PIXELS:
                    raise DataError(f"Image file {path} claims {w}x{h} = {w * h:,} pixels; expected at most "
                                    f"{MAX_PIXELS:,} (refused before decoding: a decompression bomb or a "
                                    "picture far larger than a digit needs). Shrink it first.")
                img.draft("L", (WORK_SIZE, WORK_SIZE))  # JPEG: decode at a fraction of a huge photo's size
                img.load()
                return _to_gray(ImageOps.exif_transpose(img), Image, path)
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"Image file {path} is not {EXPECTED} (could not identify image file; found "
                        f"{found}); expected one of {', '.join(FORMATS)}.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"Image file {path} is too large to decode safely (Pillow refused it as a possible "
                        f"decompression bomb: {type(exc).__name__}); expected at most {MAX_PIXELS:,} pixels. "
                        "Shrink it first.") from None
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"Image file {path} is truncated or corrupt ({type(exc).__name__}: {exc}; found "
                        f"{found}); expected a complete PNG or JPEG image.") from None


def _to_gray(img, Image, path) -> np.ndarray:
    """Any Pillow mode -> float64 gray levels 0..255, at most :data:`WORK_SIZE` pixels on a side."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit PNG, 32-bit int or float TIFF
        a = np.asarray(img, dtype=np.float64)
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:  # a float TIFF can hold NaN or infinity; no gray level means anything then
            raise DataError(f"Image file {path} holds {bad} NaN or infinite pixel values out of {a.size}; "
                            "expected finite gray levels.")
        top = float(a.max(initial=0.0))
        full = 65535.0 if img.mode.startswith("I;16") else (
            1.0 if img.mode == "F" and top <= 1 else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top)
        gray = Image.fromarray(np.clip(a * (255.0 / full), 0.0, 255.0).astype(np.float32))
    else:
        if "A" in img.mode or "a" in img.mode or (img.mode in ("L", "RGB") and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if img.mode not in ("L", "RGB", "RGBA", "1"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, ...
        gray = img.convert("L")
    factor = math.ceil(max(gray.size) / WORK_SIZE)
    return np.asarray(gray.reduce(factor) if factor > 1 else gray, dtype=np.float64)


def mnist_normalize(gray: np.ndarray, size=(28, 28), *, invert=None, center=True) -> np.ndarray:
    """Gray levels (H, W) 0..255, any size -> an MNIST-like (height, width) float64 image in [0, 1].

    ``invert=None`` inverts when the border's median is light (> 127). ``center=False`` is for
    pictures that fill the frame, like Fashion-MNIST: after the inversion a grey background is
    pulled down to black and the picture resized — no lighting correction, contrast stretch, crop
    or centring, which would change a garment that touches the border (a Fashion-MNIST test image
    comes back exactly as it was).
    """
    Image, _ = _pillow()
    g = np.asarray(gray, dtype=np.float64)
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if invert is None:
        invert = bool(np.median(border) > 127)
    if invert:
        g, border = 255.0 - g, 255.0 - border
    if float(g.max() - g.min()) < BLANK_CONTRAST:  # a uniform picture: nothing in it, an empty field
        return np.zeros(size)
    if not center:
        # Paper that is grey after the inversion (a dim photo) becomes black, as the dataset's
        # background is; its darkest border tenth is the paper even where the object touches the
        # frame. A dataset image (black background) is left exactly as it is.
        paper = float(np.percentile(border, 10))
        if paper > FRAME_PAPER:
            g = np.clip((g - paper) * (255.0 / (255.0 - paper)), 0.0, 255.0)
        return np.clip(_resize(g, size, Image), 0.0, 255.0) / 255.0
    if np.percentile(border, 90) - np.percentile(border, 10) > UNEVEN_BORDER:
        g = _flatten_lighting(g, Image)
        border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    background, top = float(np.median(border)), float(g.max())
    if top - background < BLANK_CONTRAST:  # no ink brighter than the paper: nothing to crop or centre
        return np.clip(_resize(g, size, Image), 0, 255) / 255.0
    ink = np.clip((g - background) / (top - background), 0.0, 1.0)
    ink[ink < INK_THRESHOLD / 2] = 0.0  # paper texture and JPEG noise are not ink
    y0, y1, x0, x1 = _ink_box(ink, Image)
    ink = ink[y0:y1, x0:x1]
    box_h, box_w = (max(1, round(s * BOX_FRACTION)) for s in size)
    scale = min(box_h / ink.shape[0], box_w / ink.shape[1])
    if scale < 1 / MID:  # much larger than the result: thin pen strokes would fade away, thicken them first
        ink = _resize(ink, (max(1, round(ink.shape[0] * scale * MID)), max(1, round(ink.shape[1] * scale * MID))),
                      Image, Image.Resampling.BOX)
        ink, scale = _thicken(ink, MID * STROKE * max(box_h, box_w) / 20), 1 / MID
    patch = np.clip(_resize(ink, (max(1, round(ink.shape[0] * scale)), max(1, round(ink.shape[1] * scale))),
                            Image), 0.0, 1.0)
    if patch.max() > 0:
        patch /= patch.max()  # a thin pen stroke shrunk 100x is faint; MNIST ink peaks at 255
    return _paste_centred(patch, size)


def _thicken(ink, target) -> np.ndarray:
    """Widen strokes thinner than ``target`` pixels with a max filter; others are left alone.

    Stroke width is estimated as 2 * area / perimeter of the ink mask (a stroke of length L and
    width w has area L*w and perimeter about 2L).
    """
    mask = ink > 0.5 * ink.max()
    p = np.pad(mask, 1)
    inner = mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]  # its 4 neighbours are ink too
    width = 2 * mask.sum() / max(1, (mask & ~inner).sum())
    if width >= 0.65 * target:  # as thick as nearly all MNIST strokes already
        return ink
    k = max(1, round(target - width)) | 1
    ink = np.where(ink > INK_THRESHOLD * ink.max(), ink, 0.0)  # a max filter would spread the paper's noise
    return np.lib.stride_tricks.sliding_window_view(np.pad(ink, k // 2), (k, k)).max(axis=(-2, -1))


def _ink_box(ink, Image):
    """(top, bottom, left, right) of the ink, found on a copy at most ~300 px wide.

    Shrinking averages the per-pixel noise of a photo away (one noisy pixel in two million would
    otherwise stretch the box to the whole frame); a small picture is used as it is.
    """
    h, w = ink.shape
    f = max(1, max(h, w) // 300)
    small = ink if f == 1 else _resize(ink, (max(1, h // f), max(1, w // f)), Image, Image.Resampling.BOX)
    mask = small > INK_THRESHOLD * small.max()
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    sy, sx = h / small.shape[0], w / small.shape[1]
    return (int(rows[0] * sy), min(h, int(np.ceil((rows[-1] + 1) * sy))),
            int(cols[0] * sx), min(w, int(np.ceil((cols[-1] + 1) * sx))))


def _flatten_lighting(g, Image) -> np.ndarray:
    """Subtract the slowly varying background of a photo (shadows, uneven light) from ``g``.

    The background is a low percentile over windows a quarter of the picture wide, computed on a
    64-px copy: a pen stroke covers little of such a window, so it does not count as background.
    """
    h, w = g.shape
    small = _resize(g, (max(8, round(64 * h / max(h, w))), max(8, round(64 * w / max(h, w)))), Image)
    k = max(3, max(small.shape) // 4 | 1)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(small, k // 2, mode="reflect"), (k, k))
    background = np.percentile(windows, 30, axis=(-2, -1))
    return np.clip(g - _resize(background, (h, w), Image, Image.Resampling.BILINEAR), 0.0, 255.0)


def _resize(a, size, Image, method=None) -> np.ndarray:
    h, w = size
    if a.shape == (h, w):
        return a.copy()
    resized = Image.fromarray(a.astype(np.float32)).resize((w, h), method or Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.float64)


def _paste_centred(patch, size) -> np.ndarray:
    """Place ``patch`` in a zero field so its centre of mass lands at (H/2, W/2), as in MNIST."""
    h, w = size
    ph, pw = patch.shape
    mass = patch.sum()
    if mass <= 0:
        return _resize(patch, size, _pillow()[0])
    cy = (patch.sum(axis=1) @ np.arange(ph)) / mass
    cx = (patch.sum(axis=0) @ np.arange(pw)) / mass
    # keep the whole digit in the field even when its mass sits far off its box's centre
    top = int(np.clip(round(h / 2 - cy), 0, h - ph))
    left = int(np.clip(round(w / 2 - cx), 0, w - pw))
    out = np.zeros(size, dtype=np.float64)
    out[top:top + ph, left:left + pw] = patch
    return out


def load_image(path, input_shape=(1, 28, 28), *, dtype="float32", invert=None, center=True) -> np.ndarray:
    """Read a picture of a digit as a model input ``(1, C, H, W)`` with values in [0, 1].

    Parameters
    ----------
    path : path-like
        A PNG or JPEG file (BMP, GIF, TIFF, WebP, PPM also work).
    input_shape : (C, H, W)
        The model's per-sample input shape; C is 1, or 3 (the gray image repeated).
    dtype : "float32" or "float64"
    invert : bool, optional
        Force (True) or forbid (False) inversion; by default decided from the border.
    center : bool
        MNIST-style crop, 20-px box and centre-of-mass centring (default); False only resizes.

    Raises
    ------
    DataError
        The file is missing, a directory, empty, not an image, truncated, or too large.
    """
    if dtype not in ("float32", "float64"):
        raise InputError(f"The `dtype` argument must be 'float32' or 'float64'. Received dtype={dtype!r}")
    c, h, w = _check_shape(input_shape)
    Image, ImageOps = _pillow()
    gray = _read_gray(Path(path), Image, ImageOps)
    x = mnist_normalize(gray, (h, w), invert=invert, center=center).astype(dtype)
    return np.ascontiguousarray(np.broadcast_to(x, (1, c, h, w)))


def load_images(paths, input_shape=(1, 28, 28), *, dtype="float32", invert=None, center=True) -> np.ndarray:
    """:func:`load_image` for several files, stacked into ``(N, C, H, W)``."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise InputError("The `paths` argument must name at least one image file. Received no paths.")
    return np.concatenate([load_image(p, input_shape, dtype=dtype, invert=invert, center=center) for p in paths])


def save_mnist_png(image, path) -> Path:
    """Write a 2-D uint8 image (e.g. an MNIST sample, 28x28, 0..255) as a grayscale PNG.

    Returns the written :class:`~pathlib.Path`; the parent folder must exist.
    """
    a = np.asarray(image)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise InputError(f"save_mnist_png takes a 2-D uint8 array (H, W) of gray levels 0..255. Received "
                         f"shape {a.shape}, dtype {a.dtype}.")
    Image, _ = _pillow()
    path = Path(path)
    try:
        Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")
    except OSError as exc:
        raise InputError(f"Cannot write PNG {path}: {exc.strerror or exc}.") from None
    return path
