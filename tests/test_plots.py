"""``xpcnn.diagnostics.plots``: every picture is written, opens as a PNG of a sensible size and is not blank.

A tiny untrained model keeps the whole file to a few seconds; what the pictures look like for a
trained one is checked by eye (see the module docstring of ``xpcnn.diagnostics.plots``).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from xpcnn import Sequential, layers
from xpcnn.errors import InputError, ShapeError

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")
plots = pytest.importorskip("xpcnn.diagnostics.plots")


@pytest.fixture(scope="module")
def model():
    return Sequential([layers.Conv2D(4, 3, activation="relu"), layers.MaxPool2D(), layers.Conv2D(6, 3), layers.ReLU(),
                       layers.Flatten(), layers.Dense(10)], input_shape=(1, 28, 28), seed=0)


@pytest.fixture
def image(rng):
    x = np.zeros((1, 1, 28, 28), np.float32)
    x[0, 0, 6:22, 12:16] = rng.uniform(0.5, 1.0, (16, 4))  # a "1", not zeros
    return x


def _check_png(path, min_w=250, min_h=150):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        w, h = img.size
        gray = np.asarray(img.convert("L"), dtype=np.float64)
    assert min_w <= w <= 6000 and min_h <= h <= 6000, (w, h)
    assert gray.std() > 0, "blank picture"
    return w, h


HISTORY = {"loss": [1.2, 0.6, 0.4], "accuracy": [0.6, 0.82, 0.9], "val_loss": [0.7, 0.5, 0.45],
           "val_accuracy": [0.78, 0.85, 0.88], "seconds": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize("history", [HISTORY, {"loss": [0.5]}, {"loss": [0.5, 0.4], "accuracy": [0.8, 0.9]}],
                         ids=["train+val", "loss-only-1-epoch", "train-only"])
def test_plot_history(history, tmp_path):
    path = plots.plot_history(history, tmp_path / "sub" / "history.png", val_label="test")
    assert path == tmp_path / "sub" / "history.png"
    w, h = _check_png(path, min_w=400, min_h=300)
    if "accuracy" in history:
        assert w > 1.5 * h  # two panels side by side


@pytest.mark.parametrize("bad", [{}, {"loss": []}, [0.1, 0.2], {"accuracy": [0.5]}])
def test_plot_history_needs_a_loss_list(bad, tmp_path):
    with pytest.raises(InputError, match="'loss'"):
        plots.plot_history(bad, tmp_path / "h.png")


@pytest.mark.parametrize("index", [0, 2], ids=["one-channel", "several-channels"])
def test_plot_filters(model, index, tmp_path):
    kernel = model.layers[index].params["kernel"]  # a backend array: to_numpy'd inside
    _check_png(plots.plot_filters(kernel, tmp_path / "f.png", title=model.layers[index].name), min_h=120)


def test_plot_filters_caps_and_rejects(model, tmp_path):
    kernel = model.layers[2].get_weights()[0]
    _check_png(plots.plot_filters(kernel, tmp_path / "few.png", max_filters=2, max_channels=3), min_w=150, min_h=80)
    _check_png(plots.plot_filters(np.zeros((3, 1, 5, 5)), tmp_path / "zeros.png"), min_w=150, min_h=80)
    with pytest.raises(ShapeError, match=r"\(filters, channels, KH, KW\)"):
        plots.plot_filters(kernel[0], tmp_path / "bad.png")
    with pytest.raises(InputError, match="Cannot write"):
        plots.plot_filters(kernel, tmp_path / "f.not-an-image-format")


def test_plot_before_after_filters(model, rng, tmp_path):
    before = model.layers[0].get_weights()[0].copy()
    after = before + rng.normal(0, 0.05, before.shape).astype(before.dtype)
    w, h = _check_png(plots.plot_before_after_filters(before, after, tmp_path / "ba.png"))
    assert w > 2 * h  # three panels side by side
    with pytest.raises(InputError, match="same array"):
        plots.plot_before_after_filters(after, after, tmp_path / "same.png")
    with pytest.raises(ShapeError, match="same shape"):
        plots.plot_before_after_filters(before, after[:2], tmp_path / "shape.png")


def test_feature_maps_follow_the_model(model, image):
    inp, sections, out = plots.feature_maps(model, image)
    assert inp.shape == (1, 28, 28)
    assert [m.shape for _, m in sections] == [(4, 26, 26), (6, 11, 11)]
    assert sections[0][0] == "conv2d, relu" and "->" in sections[1][0]  # the ReLU after conv2d_1 is shown
    assert all((m >= 0).all() for _, m in sections)
    np.testing.assert_allclose(out, model.predict(image)[0], rtol=1e-5, atol=1e-6)


def test_plot_feature_maps(model, image, tmp_path):
    _check_png(plots.plot_feature_maps(model, image, tmp_path / "maps.png"), min_w=500, min_h=300)
    _check_png(plots.plot_feature_maps(model, image[0], tmp_path / "chw.png", max_maps=2,
                                       class_names=list("abcdefghij")), min_w=300, min_h=200)
    with pytest.raises(ShapeError, match=r"\(1, 1, 28, 28\)"):
        plots.plot_feature_maps(model, np.zeros((2, 1, 28, 28), np.float32), tmp_path / "two.png")


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed, even if imported before
    with pytest.raises(InputError, match=r"pip install 'xpcnn\[plots\]'"):
        plots.plot_history(HISTORY, tmp_path / "h.png")


def test_a_one_unit_output_is_shown_as_two_classes():
    from xpcnn.diagnostics.plots import _probabilities

    np.testing.assert_allclose(_probabilities(np.array([0.8])), [0.2, 0.8])  # a sigmoid's output
    np.testing.assert_allclose(_probabilities(np.array([2.0])), [1 / (1 + np.e**2), 1 / (1 + np.e**-2)])  # a logit
    np.testing.assert_allclose(_probabilities(np.array([1.0, 1.0])), [0.5, 0.5])
