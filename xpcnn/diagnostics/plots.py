"""Pictures a learner wants to see: training curves, learned filters, feature maps (PNG files).

Every function draws on a fresh :class:`matplotlib.figure.Figure` and writes it with
``savefig``: no pyplot, so no GUI backend is chosen, nothing needs a display, and an interactive
session's own backend is left alone. matplotlib is imported only when a picture is drawn. Each
function returns the written :class:`~pathlib.Path`; the format follows its suffix (``.png``,
``.svg``, ``.pdf``), and missing parent folders are created.

Examples
--------
>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp())
>>> plot_history({"loss": [0.9, 0.4, 0.3], "accuracy": [0.7, 0.88, 0.91],
...               "val_loss": [0.5, 0.35, 0.33], "val_accuracy": [0.85, 0.9, 0.9]}, out / "h.png").name
'h.png'
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..data import prepare_images
from ..errors import InputError, ShapeError
from ..functional import sigmoid, softmax
from ..layers import Activation, Conv2D


def require_matplotlib():
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError:
        raise InputError("Drawing pictures needs matplotlib: pip install 'xpcnn[plots]'") from None
    return Figure, MaxNLocator, PercentFormatter


def _save(fig, path, dpi=130) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, facecolor="white", bbox_inches="tight", pad_inches=0.15)
    except (OSError, ValueError) as exc:
        raise InputError(f"Cannot write the picture {path}: {exc}") from None
    return path


def _series(history, key):
    try:
        return [float("nan") if v is None else float(v) for v in history.get(key) or []]
    except (TypeError, ValueError):
        raise InputError(f"history[{key!r}] must be a list of numbers, one per epoch. "
                         f"Received {history[key]!r:.80}") from None


def _positive(**kwargs):
    for name, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"The `{name}` argument must be a positive int. Received {name}={value!r}")


def _scale(*arrays):
    """Half-width of a symmetric colour scale covering the finite values of ``arrays`` (1 if none)."""
    top = max(float(np.abs(a[np.isfinite(a)]).max(initial=0.0)) for a in arrays)
    return top or 1.0


def plot_history(history, path, *, title="Training history", val_label="validation") -> Path:
    """Loss and accuracy per epoch, train and (when present) ``val_*``, side by side.

    Parameters
    ----------
    history : dict of lists
        ``model.history`` or what ``model.fit`` returns: ``loss``, ``accuracy`` and optionally
        ``val_loss``, ``val_accuracy``.
    val_label : str
        Legend name of the ``val_*`` curves (``"test"`` when they come from the test set).
    """
    if not hasattr(history, "get") or not history.get("loss"):
        keys = sorted(history) if hasattr(history, "keys") else type(history).__name__
        raise InputError("plot_history needs a history dict with a non-empty 'loss' list (what model.fit "
                         f"returns). Received {keys}.")
    Figure, MaxNLocator, PercentFormatter = require_matplotlib()
    panels = [("loss", "loss (lower is better)")]
    if history.get("accuracy"):
        panels.append(("accuracy", "accuracy (higher is better)"))
    fig = Figure(figsize=(5.2 * len(panels), 4.0), layout="constrained")
    for ax, (key, ylabel) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        show = (lambda v: f"{100 * v:.1f}%") if key == "accuracy" else (lambda v: f"{v:.4f}")
        for name, label, style in ((key, "train", {"marker": "o", "color": "tab:blue"}),
                                   (f"val_{key}", val_label, {"marker": "s", "ls": "--", "color": "tab:orange"})):
            values = _series(history, name)
            if values:
                ax.plot(range(1, len(values) + 1), values, lw=2, ms=5,
                        label=f"{label} (last {show(values[-1])})", **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(key.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # 1 epoch: one tick, "1"
        if key == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title} ({len(history['loss'])} epoch{'s' * (len(history['loss']) != 1)})",
                 fontsize="large", weight="bold")
    return _save(fig, path)


def _kernel(kernel, name="kernel"):
    k = to_numpy(kernel).astype(np.float64)
    if k.ndim != 4 or 0 in k.shape:
        raise ShapeError(f"`{name}` must be a Conv2D kernel of shape (filters, channels, KH, KW). "
                         f"Received shape {k.shape}.")
    return k


def _mosaic(ax, tiles, ncols, *, vmin, vmax, cmap, tile_labels=None, row_labels=None, col_labels=None):
    """Tiles (K, h, w) as ONE image on ``ax``, framed, with optional labels; returns the AxesImage.

    One image instead of one Axes per tile: a 16x8 kernel grid draws in a fraction of a second
    rather than tens of seconds of layout.
    """
    from matplotlib import colormaps
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    k, h, w = tiles.shape
    gx, gy, oy, shape = _canvas(tiles.shape, ncols, bool(tile_labels))
    canvas = np.full(shape, np.nan)
    corners = [(oy + (i // ncols) * (h + gy), (i % ncols) * (w + gx)) for i in range(k)]
    for tile, (y0, x0) in zip(tiles, corners):
        canvas[y0:y0 + h, x0:x0 + w] = tile
    im = ax.imshow(canvas, cmap=colormaps[cmap].with_extremes(bad="white"), vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    ax.add_collection(PatchCollection([Rectangle((x0 - 0.5, y0 - 0.5), w, h) for y0, x0 in corners],
                                      facecolor="none", edgecolor="0.45", linewidth=0.6, clip_on=False))
    for label, (y0, x0) in zip(tile_labels or [], corners):
        ax.text(x0 + w / 2 - 0.5, y0 - 0.7, label, ha="center", va="bottom", fontsize=7)
    ax.set_yticks([oy + r * (h + gy) + h / 2 - 0.5 for r in range(len(row_labels or []))], row_labels or [],
                  fontsize=7)
    ax.set_xticks([c * (w + gx) + w / 2 - 0.5 for c in range(len(col_labels or []))], col_labels or [], fontsize=7)
    ax.xaxis.tick_top()
    ax.tick_params(length=0)
    if row_labels:
        ax.set_ylabel("filter", fontsize=8)
    if col_labels:
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("input channel", fontsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


def _canvas(tiles_shape, ncols, labelled):
    """Gaps (x, y), top margin and (height, width) in pixels of the mosaic of ``tiles_shape``."""
    k, h, w = tiles_shape
    nrows = math.ceil(k / ncols)
    gx, gy = max(1, math.ceil(0.12 * w)), max(1, math.ceil((0.4 if labelled else 0.12) * h))
    oy = gy if labelled else 0  # room above the first row for its labels
    return gx, gy, oy, (oy + nrows * h + (nrows - 1) * gy, ncols * w + (ncols - 1) * gx)


def _axes_size(tiles_shape, ncols, labelled, width):
    """(width, height) in inches of an axes ``width`` wide holding that mosaic."""
    h, w = _canvas(tiles_shape, ncols, labelled)[3]
    return width, width * h / w


def _layout(k, max_filters, max_channels):
    """How to lay out kernel ``k`` (F, C, KH, KW): (tiles, ncols, nrows, labels dict, note)."""
    f, c = min(len(k), max_filters), min(k.shape[1], max_channels)
    note = "" if (f, c) == k.shape[:2] else f" (showing {f} of {len(k)} filters, {c} of {k.shape[1]} channels)"
    if c == 1:  # one channel: a near-square grid of filters
        ncols = min(f, max(4, math.ceil(math.sqrt(f))))
        return k[:f, 0], ncols, math.ceil(f / ncols), {"tile_labels": [f"#{i}" for i in range(f)]}, note
    # several channels: a row per filter, a column per input channel
    labels = {"row_labels": [f"#{i}" for i in range(f)], "col_labels": [str(j) for j in range(c)]}
    return k[:f, :c].reshape(f * c, *k.shape[2:]), c, f, labels, note


def _cell(nrows, ncols):
    return min(0.62, 11.0 / max(nrows, ncols))  # inches per tile, so big kernels still fit a screen


def plot_filters(kernel, path, title="", *, cmap="gray", max_filters=64, max_channels=16) -> Path:
    """Every channel of every filter of a Conv2D kernel ``(F, C, KH, KW)`` as a small image.

    Zero is mid-gray, positive weights light, negative dark: one symmetric scale for all, with a
    colorbar. One input channel gives a grid of filters; more give a row per filter, a column
    per input channel.
    """
    k = _kernel(kernel)
    _positive(max_filters=max_filters, max_channels=max_channels)
    Figure = require_matplotlib()[0]
    tiles, ncols, nrows, labels, note = _layout(k, max_filters, max_channels)
    vmax = _scale(k)
    aw, ah = _axes_size(tiles.shape, ncols, "tile_labels" in labels, ncols * _cell(nrows, ncols))
    fig = Figure(figsize=(aw + 1.6, ah + 0.8), layout="constrained")
    ax = fig.subplots()
    im = _mosaic(ax, tiles, ncols, vmin=-vmax, vmax=vmax, cmap=cmap, **labels)
    fig.colorbar(im, ax=ax, shrink=min(0.9, 4.0 / ah), label="weight")
    f, c, kh, kw = k.shape
    fig.suptitle(f"{title or 'Conv2D filters'}: {f} filters x {c} channel{'s' * (c != 1)}, {kh}x{kw}{note}",
                 fontsize="medium", weight="bold")
    return _save(fig, path)


def plot_before_after_filters(before, after, path, title="", *, cmap="gray", max_filters=64,
                              max_channels=16) -> Path:
    """The same kernel before and after training (one shared scale), and the change between them."""
    host_before, host_after = to_numpy(before), to_numpy(after)  # one device->host copy each
    if before is after or np.shares_memory(host_before, host_after):
        raise InputError("`before` and `after` are the same array, so nothing changed. Keep a copy of the "
                         "weights before training: before = [w.copy() for w in model.get_weights()].")
    b, a = _kernel(host_before, "before"), _kernel(host_after, "after")
    if b.shape != a.shape:
        raise ShapeError(f"`before` and `after` must have the same shape. Received {b.shape} and {a.shape}.")
    _positive(max_filters=max_filters, max_channels=max_channels)
    Figure = require_matplotlib()[0]
    tiles, ncols, nrows, labels, note = _layout(b, max_filters, max_channels)
    aw, ah = _axes_size(tiles.shape, ncols, "tile_labels" in labels, ncols * _cell(nrows, 3 * ncols))
    fig = Figure(figsize=(3 * (aw + 0.9), ah + 1.2), layout="constrained")
    fig.get_layout_engine().set(wspace=0.06)
    vmax, change = _scale(b, a), a - b
    dmax = _scale(change)
    panels = (("before", b, vmax, cmap), ("after", a, vmax, cmap), ("change (after - before)", change, dmax, "RdBu_r"))
    for ax, (name, k, scale, cm) in zip(fig.subplots(1, 3), panels):
        tiles, ncols, _, labels, _ = _layout(k, max_filters, max_channels)
        im = _mosaic(ax, tiles, ncols, vmin=-scale, vmax=scale, cmap=cm, **labels)
        fig.colorbar(im, ax=ax, shrink=0.8, location="bottom", aspect=25)
        ax.set_title(name, fontsize="medium")
    f, c, kh, kw = b.shape
    fig.suptitle(f"{title or 'Conv2D filters'}: {f} filters x {c} channel{'s' * (c != 1)}, {kh}x{kw}{note}",
                 fontsize="large", weight="bold")
    return _save(fig, path)


def _probabilities(out):
    """Class probabilities from a model output row (softmax unless it already sums to 1; one
    output is p of the second class: a sigmoid's value, or the sigmoid of a logit)."""
    out = np.asarray(out, dtype=np.float64).ravel()
    if out.size == 1:
        p = float(out[0]) if 0.0 <= out[0] <= 1.0 else float(sigmoid(out)[0])
        return np.array([1.0 - p, p])
    if out.min() >= 0 and abs(out.sum() - 1) < 1e-3:
        return out
    return np.asarray(softmax(out))


def feature_maps(model, image):
    """Run one image through ``model`` layer by layer: ``(input, [(label, maps (K, h, w))], output)``.

    A section per Conv2D layer; when an activation layer follows it, its output is shown instead
    (what the next layer sees). Everything is returned as host NumPy arrays.
    """
    x = np.asarray(to_numpy(image))
    x = x[None, None] if x.ndim == 2 else x[None] if x.ndim == 3 else x  # (H, W) or (C, H, W): one image
    if x.ndim != 4 or len(x) != 1 or (model.built and tuple(x.shape[1:]) != tuple(model.input_shape)):
        want = f"(1, {', '.join(map(str, model.input_shape))})" if model.built else "(1, C, H, W)"
        raise ShapeError(f"plot_feature_maps takes one image of shape {want} for model '{model.name}'. "
                         f"Received shape {np.shape(image)}.")
    x = prepare_images(x, model.dtype)  # uint8 pixels -> [0, 1], as in training
    if not model.built:
        model.build(x.shape[1:])
    sections, after_conv = [], False
    y = model.backend.asarray(x, model.dtype)
    for layer in model.layers:
        y = layer.forward(y, training=False)
        if isinstance(layer, Conv2D):
            fused = f", {layer.activation}" if layer.activation else ""
            sections.append([f"{layer.name}{fused}", to_numpy(y)[0]])
        elif after_conv and isinstance(layer, Activation) and layer.activation != "softmax":
            sections[-1] = [f"{sections[-1][0]} -> {layer.name}", to_numpy(y)[0]]
        after_conv = isinstance(layer, Conv2D)
    return x[0], [tuple(s) for s in sections], to_numpy(y)[0]


def plot_feature_maps(model, image, path, *, max_maps=16, cmap="magma", class_names=None) -> Path:
    """The input image, what each Conv2D layer makes of it, and the model's prediction.

    Parameters
    ----------
    model : Sequential
    image : ndarray (1, C, H, W)
        One host image, e.g. from :func:`xpcnn.data.images.load_image` or ``x_test[:1]``.
    max_maps : int
        Feature maps shown per layer (the first ones).
    class_names : list of str, optional
        Names of the output classes (default: their indices). A one-unit output is drawn as two
        classes, p and 1 - p: give two names (e.g. ``["<= 4", "> 4"]``) to show it.
    """
    _positive(max_maps=max_maps)
    inp, sections, out = feature_maps(model, image)
    Figure = require_matplotlib()[0]
    ncols = min(8, max([min(max_maps, len(m)) for _, m in sections] + [1]))
    heights = [_axes_size(m[:max_maps].shape, ncols, True, ncols * 0.95)[1] + 0.35 for _, m in sections]
    fig = Figure(figsize=(3.0 + ncols * 0.95 + 0.9, max(4.6, sum(heights) + 0.5)), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[3.0, ncols * 0.95 + 0.9])
    a_in, a_out = left.subplots(2, 1, height_ratios=[3, 2])
    a_in.imshow(np.moveaxis(inp, 0, -1) if inp.shape[0] == 3 else inp[0], cmap="gray", interpolation="nearest")
    a_in.set_title(f"input {inp.shape[1]}x{inp.shape[2]}")
    a_in.set_xticks([])
    a_in.set_yticks([])
    if out.ndim == 1 and (out.size > 1 or (class_names is not None and len(class_names) == 2)):
        p = _probabilities(out)
        names = class_names or [str(i) for i in range(p.size)]
        best = int(p.argmax())
        a_out.bar(range(p.size), p, color=["tab:orange" if i == best else "tab:blue" for i in range(p.size)])
        long = max(len(n) for n in names) > 4
        a_out.set_xticks(range(p.size), names, fontsize=8, rotation=40 if long else 0, ha="right" if long else "center")
        a_out.set_ylim(0, 1)
        a_out.set_ylabel("probability")
        a_out.set_title(f"prediction: {names[best]} ({100 * p[best]:.1f}%)", fontsize="medium")
    else:
        a_out.set_axis_off()
    if sections:
        axes = np.atleast_1d(right.subplots(len(sections), 1, height_ratios=heights))
        for ax, (label, maps) in zip(axes, sections):
            shown = maps[:max_maps]
            signed, top = bool((shown < 0).any()), _scale(shown)
            im = _mosaic(ax, shown, ncols, vmin=-top if signed else 0.0, vmax=top, cmap="RdBu_r" if signed else cmap,
                         tile_labels=[f"#{i}" for i in range(len(shown))])
            # a colorbar as tall as this section's image, whatever height the row was given
            right.colorbar(im, cax=ax.inset_axes([1.0 + 0.12 / ncols, 0.0, 0.18 / ncols, 1.0]))
            more = "" if len(maps) <= max_maps else f", first {max_maps} of {len(maps)}"
            ax.set_title(f"{label}: {len(maps)} maps {maps.shape[1]}x{maps.shape[2]}{more}", fontsize="medium")
    else:
        right.suptitle("(the model has no Conv2D layer)")
    fig.suptitle(f"Feature maps of '{model.name}'", fontsize="large", weight="bold")
    return _save(fig, path)
