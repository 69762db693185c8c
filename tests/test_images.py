"""``xpcnn.data.images``: a user's own digit pictures become MNIST-like inputs, bad files a DataError.

Round trips use real MNIST test digits (skipped without ``$XPCNN_DATA_DIR``); the error cases use
files made here, so they always run.
"""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpcnn.data.images import MAX_PIXELS, load_image, load_images, save_mnist_png
from xpcnn.errors import DataError, InputError

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def digits(mnist_dir):
    from xpcnn.data import load_dataset

    return load_dataset("mnist", mnist_dir, download=False).x_test[:40]


def _corr(a, b, slack=1):
    """Best correlation over shifts of up to ``slack`` pixels: centring by the centre of mass
    rounds to whole pixels, and MNIST's own rounding sometimes went the other way."""
    b = np.asarray(b, dtype=np.float64).ravel()
    return max(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b)[0, 1]
               for dy in range(-slack, slack + 1) for dx in range(-slack, slack + 1))


def _synthetic_digit():
    """A "7"-like light-on-dark 28x28 uint8 digit, MNIST-like (20-px box, centred by its mass),
    for tests that must run without MNIST."""
    d = np.zeros((28, 28), np.uint8)
    d[4:7, 8:22] = 255
    for r in range(7, 24):
        c = 21 - (r - 7) // 2
        d[r, c - 2:c + 1] = 255
    return np.roll(d, (4, -1), (0, 1))  # centre of mass to (14, 14)


# -- round trips -------------------------------------------------------------------------------

def test_mnist_png_round_trip_is_nearly_identical(digits, tmp_path):
    corrs = []
    for i, img in enumerate(digits):
        x = load_image(save_mnist_png(img, tmp_path / f"{i}.png"))
        assert x.shape == (1, 1, 28, 28) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        corrs.append(_corr(x[0, 0], img))
        # unshifted too: MNIST digits are already centred, so nothing moves by more than a pixel
        assert np.corrcoef(x[0, 0].ravel(), img.ravel())[0, 1] > 0.5
    assert min(corrs) > 0.97, corrs
    assert np.mean(corrs) > 0.99


def test_dark_on_light_enlarged_jpeg_loads_light_on_dark(digits, tmp_path):
    corrs = []
    for i, img in enumerate(digits[:20]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(255 - img).resize((140, 140), Image.Resampling.BICUBIC).save(path, quality=90)
        x = load_image(path)[0, 0]
        assert x[0].max() < 0.1 and x[:, 0].max() < 0.1, "background should be dark after inversion"
        corrs.append(_corr(x, img))
    assert min(corrs) > 0.8, corrs
    assert np.mean(corrs) > 0.9


def test_transparent_background_is_composited_onto_white(tmp_path):
    digit = _synthetic_digit()
    rgba = np.zeros((28, 28, 4), np.uint8)  # black everywhere, opaque only where the ink is
    rgba[..., 3] = digit
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    x = load_image(path)[0, 0]
    assert _corr(x, digit) > 0.9


@pytest.mark.parametrize("mode", ["L", "RGB", "P", "LA", "1", "I;16", "CMYK"])
def test_colour_modes_and_bit_depths(mode, tmp_path):
    digit = _synthetic_digit()
    light = Image.fromarray(255 - digit)  # dark ink on light paper
    img = Image.fromarray((255 - digit).astype(np.uint16) * 257) if mode == "I;16" else light.convert(mode)
    path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
    img.save(path)
    x = load_image(path)[0, 0]
    assert _corr(x, digit) > 0.9, mode


def test_exif_orientation_is_applied(tmp_path):
    digit = _synthetic_digit()
    stored = Image.fromarray(255 - digit).transpose(Image.Transpose.ROTATE_90)  # what a sideways camera wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    assert _corr(load_image(path)[0, 0], digit) > 0.85


def test_off_centre_small_digit_is_centred_and_scaled(tmp_path):
    canvas = np.full((200, 300), 230, np.uint8)  # gray paper
    small = np.asarray(Image.fromarray(255 - _synthetic_digit()).resize((40, 40)))
    canvas[10:50, 240:280] = np.minimum(canvas[10:50, 240:280], small)
    path = tmp_path / "corner.png"
    Image.fromarray(canvas).save(path)
    x = load_image(path)[0, 0]
    rows, cols = np.nonzero(x > 0.3)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)  # the 20-px box
    mass = x.sum()
    cy, cx = (x.sum(1) @ np.arange(28)) / mass, (x.sum(0) @ np.arange(28)) / mass
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def _draw_seven(size, width, offset=(0, 0), scale=1.0):
    from PIL import ImageDraw

    img = Image.new("L", size, 255)
    ox, oy = offset
    points = [(ox + scale * x, oy + scale * y) for x, y in ((40, 40), (200, 40), (110, 260))]
    ImageDraw.Draw(img).line(points, fill=0, width=width, joint="curve")
    return img


def test_photo_with_uneven_light_noise_and_a_thin_pen(tmp_path, rng):
    clean = tmp_path / "clean.png"
    _draw_seven((280, 300), 28).save(clean)  # a bold marker drawing: the reference
    photo = np.asarray(_draw_seven((1600, 1200), 9, offset=(900, 500), scale=2.0), dtype=np.float64)
    yy, xx = np.mgrid[0:1200, 0:1600]
    photo = photo * (0.6 + 0.3 * xx / 1600 + 0.1 * yy / 1200) + rng.normal(0, 6, photo.shape)  # shadow, grain
    path = tmp_path / "phone.jpg"
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(path, quality=85)
    x, ref = load_image(path)[0, 0], load_image(clean)[0, 0]
    assert x[:3].max() < 0.05 and x[:, :3].max() < 0.05, "the shadow must not count as ink"
    rows, cols = np.nonzero(x > 0.3)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)
    assert 0.5 * ref.mean() < x.mean() < 2 * ref.mean(), "thin pen strokes are thickened to MNIST's width"
    assert _corr(x, ref, slack=2) > 0.8  # stroke widths differ, so the centre of mass may too


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_image_gives_an_empty_field(value, tmp_path):
    path = save_mnist_png(np.full((50, 40), value, np.uint8), tmp_path / "blank.png")
    x = load_image(path)
    assert x.shape == (1, 1, 28, 28) and np.isfinite(x).all() and x.max() == 0.0


def test_shapes_dtypes_and_stacking(tmp_path):
    p = save_mnist_png(_synthetic_digit(), tmp_path / "d.png")
    assert load_image(p, (1, 32, 20), dtype="float64").shape == (1, 1, 32, 20)
    assert load_image(p, (1, 32, 20), dtype="float64").dtype == np.float64
    rgb = load_image(p, (3, 28, 28))
    assert rgb.shape == (1, 3, 28, 28) and np.array_equal(rgb[0, 0], rgb[0, 2])
    assert load_images([p, p, p]).shape == (3, 1, 28, 28)
    off = np.zeros((60, 40), np.uint8)
    off[5:25, 3:17] = _synthetic_digit()[8:28, 7:21]  # in the top-left corner
    off_path = save_mnist_png(off, tmp_path / "off.png")
    assert not np.array_equal(load_image(off_path, center=False), load_image(off_path))
    dark_on_light = save_mnist_png(255 - _synthetic_digit(), tmp_path / "paper.png")
    assert load_image(dark_on_light, invert=False)[0, 0, 0, 0] == 1.0  # kept as it is: light paper


@pytest.mark.parametrize("kwargs", [{"input_shape": (28, 28)}, {"input_shape": (2, 28, 28)},
                                    {"input_shape": (1, 0, 28)}, {"dtype": "int8"}])
def test_bad_arguments_are_input_errors(kwargs, tmp_path):
    p = save_mnist_png(_synthetic_digit(), tmp_path / "d.png")
    with pytest.raises(InputError, match=next(iter(kwargs))):
        load_image(p, **kwargs)
    with pytest.raises(InputError, match="2-D uint8"):
        save_mnist_png(np.zeros((28, 28)), tmp_path / "f.png")
    with pytest.raises(InputError, match="at least one"):
        load_images([])


def test_missing_pillow_says_how_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")] + ["PIL"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed, even if imported before
    with pytest.raises(InputError, match=r"pip install 'xpcnn\[images\]'"):
        load_image(tmp_path / "x.png")


# -- bad files ---------------------------------------------------------------------------------

def _png(width, height):
    """A PNG signature and a valid IHDR (correct CRC) claiming ``width`` x ``height``, then IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def _truncated_png(path):
    good = path.with_name("good.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(good)  # noise: a long IDAT
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_FILES = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty"),
    "text": (lambda p: p.write_text("this is not a picture\n"), "could not identify image file"),
    "truncated": (_truncated_png, "truncated or corrupt"),
    "directory": (lambda p: p.mkdir(), "directory"),
    "missing": (lambda p: None, "does not exist"),
    "bomb-header": (lambda p: p.write_bytes(_png(100_000, 100_000)), "too large|pixels"),
    "over-our-limit": (lambda p: p.write_bytes(_png(7000, 7000)), f"at most {MAX_PIXELS:,}"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_data_errors_naming_the_path(kind, tmp_path):
    make, what = BAD_FILES[kind]
    path = tmp_path / f"{kind}.png"
    make(path)
    with pytest.raises(DataError, match=what) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "expected" in message and "\n" not in message


_VALID = None


def _valid_png_bytes():
    global _VALID
    if _VALID is None:
        import io

        buf = io.BytesIO()
        Image.fromarray(255 - _synthetic_digit()).save(buf, format="PNG")
        _VALID = buf.getvalue()
    return _VALID


@st.composite
def _damaged_files(draw):
    kind = draw(st.sampled_from(["random", "png-signature", "flipped"]))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=600))
    if kind == "png-signature":
        return b"\x89PNG\r\n\x1a\n" + draw(st.binary(max_size=600))
    data = bytearray(_valid_png_bytes())
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(1, len(data)))])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_damaged_files())
def test_fuzz_damaged_files_raise_only_data_error(data, tmp_path):
    path = tmp_path / "fuzz.png"
    path.write_bytes(data)
    try:
        x = load_image(path)
    except DataError as exc:
        assert str(path) in str(exc)
    else:  # a damaged byte can leave a decodable picture: then it must be a proper input
        assert x.shape == (1, 1, 28, 28) and np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1


def test_frame_filling_pictures_are_only_resized(tmp_path, rng):
    """center=False (Fashion-MNIST): an object touching the border, on a dark background, comes
    back exactly; on a light background, exactly inverted."""
    img = np.zeros((28, 28), dtype=np.uint8)
    img[10:, 3:25] = rng.integers(60, 200, (18, 22))  # a garment standing on the bottom edge
    Image.fromarray(img).save(tmp_path / "dark.png")
    Image.fromarray(255 - img).save(tmp_path / "light.png")
    for name in ("dark", "light"):
        x = load_image(tmp_path / f"{name}.png", (1, 28, 28), dtype="float64", center=False)
        np.testing.assert_array_equal(x[0, 0], img / 255.0)
    # A dim photo: grey paper (180) instead of white. The paper becomes black again and the
    # garment keeps its shading (within the rounding of the stretch).
    Image.fromarray((180 - img.astype(np.int64) * 180 // 255).astype(np.uint8)).save(tmp_path / "dim.png")
    x = load_image(tmp_path / "dim.png", (1, 28, 28), dtype="float64", center=False)[0, 0]
    assert x[img == 0].max() == 0.0
    np.testing.assert_allclose(x, img / 255.0, atol=2 / 255)
