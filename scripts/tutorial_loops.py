"""THE BASELINE for benchmarks -- the classic loop tutorial, re-implemented. NOT library code.

This script re-implements, loop for loop, the algorithm of the classic "CNN maths from scratch
with NumPy" tutorial (Analytics Vidhya, "Demystifying the Mathematics Behind Convolutional Neural
Networks", 2020) so that benchmarks have an honest "before" to compare xpcnn against. Nothing in
``xpcnn/`` imports it. It was written from a reading of the tutorial's algorithm; no code was
copied.

The tutorial's network and data
-------------------------------
* the first 200 MNIST training images, pixels / 255; target t = 1 if the digit > 4 else 0;
* 3 filters 5x5, no bias, "valid" correlation: 28x28 -> 3 maps of 24x24, then sigmoid;
* flatten to 3·24·24 = 1728 features A1, one dense unit Z2 = Wᵀ·A1 (no bias), sigmoid O;
* squared error E = (t - O)² / 2; plain full-batch gradient descent; filters and W drawn
  uniform on [0, 1).

Its loop structure, reproduced here because the loop COST is the point of the baseline
-------------------------------------------------------------------------------------
1. patches: Python loops over images × rows × columns, one 5x5 slice appended per position
   (N·OH·OW = 200·576 = 115,200 slices);
2. convolution: Python loops over images × filters × patches, one ``(patch * filter).sum()``
   each (N·F·OH·OW = 345,600 small NumPy calls);
3. dense layer and its gradient: one ``np.dot`` each (the tutorial vectorises these);
4. filter gradient: Python loops over filters × kernel rows × kernel columns × images, one
   24x24 slice-multiply-sum each (F·KH·KW·N = 15,000 calls).

Where the tutorial's maths is wrong (kept, and marked ``TUTORIAL-BUG`` below)
---------------------------------------------------------------------------
a. It updates W first and then back-propagates through the *updated* W.
b. It averages the conv-output error over the images *before* correlating it with the
   inputs, so the filter step is corr(mean image, mean error) instead of
   Σ_n corr(image_n, error_n): a product of averages, not an average of products.
c. It ``np.resize``-s the averaged (F·OH·OW,) error, laid out filter-major, into an
   (OH, OW, F) array, so each filter receives a scrambled mix of all filters' errors at
   unrelated positions.
d. Its code standardises ``Z2`` over the batch, (Z2 - mean) / std, a step its maths leaves
   out and its backprop ignores. ``standardize=True`` reproduces it; the default follows
   the written maths Z2 = Wᵀ·A1.
e. Orientation: it transposes the whole (N, 28, 28) stack (``x_train.T``) and the filters
   alike; that only permutes the features, so here images and filters keep their natural
   orientation.

Run ``python scripts/tutorial_loops.py`` to time it on the 200 images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def load_mnist_subset(n_images=200, data_dir=None):
    """Return the tutorial's data: the first ``n_images`` training images and binary targets.

    Returns
    -------
    images : ndarray, float64, shape (n_images, 28, 28), values in [0, 1]
    targets : ndarray, float64, shape (n_images,), 1.0 where the digit is > 4 else 0.0

    The files are read by xpcnn's checked loader (``data_dir``, else XPCNN_DATA_DIR, else the
    Keras cache); only the loops below are the tutorial's.
    """
    from xpcnn.data import load_dataset

    ds = load_dataset("mnist", data_dir, download=False, progress=False)
    images = ds.x_train[:n_images].astype(np.float64) / 255.0
    targets = (ds.y_train[:n_images] > 4).astype(np.float64)
    return images, targets


def init_params(n_filters=3, kernel_size=5, image_size=28, seed=0):
    """The tutorial's initialisation: filters and dense weights uniform on [0, 1).

    Returns ``filters`` (F, K, K) and ``weights`` (F·OH·OW, 1).
    """
    rng = np.random.default_rng(seed)
    out = image_size - kernel_size + 1
    filters = rng.uniform(size=(n_filters, kernel_size, kernel_size))
    weights = rng.uniform(size=(n_filters * out * out, 1))
    return filters, weights


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def extract_patches(images, kernel_size):
    """Step 1: one KxK slice per image and position, gathered by Python loops.

    Returns an array (N, OH·OW, K, K); positions are row-major.
    """
    n, h, w = images.shape
    oh, ow = h - kernel_size + 1, w - kernel_size + 1
    patches = []
    for k in range(n):
        for i in range(oh):
            for j in range(ow):
                patches.append(images[k, i:i + kernel_size, j:j + kernel_size])
    return np.array(patches).reshape(n, oh * ow, kernel_size, kernel_size)


def tutorial_forward(images, filters, weights, *, standardize=False, patches=None):
    """Forward pass, the loop way: conv -> sigmoid -> flatten -> dense -> sigmoid.

    Parameters
    ----------
    images : (N, H, W) float array
    filters : (F, K, K) float array
    weights : (F·OH·OW, 1) float array, features ordered (filter, row, column)
    standardize : reproduce the tutorial code's batch standardisation of Z2 (see d.)
    patches : optional output of ``extract_patches`` to reuse

    Returns
    -------
    a1 : (N, F·OH·OW) conv activations, flattened filter-major
    z2 : (N,) dense pre-activation
    out : (N,) sigmoid output O

    Examples
    --------
    >>> f, w = init_params(seed=0)
    >>> a1, z2, out = tutorial_forward(np.zeros((2, 28, 28)), f, w)
    >>> a1.shape, out.shape
    ((2, 1728), (2,))
    """
    n_filters, kernel_size, _ = filters.shape
    if patches is None:
        patches = extract_patches(images, kernel_size)
    n, n_pos = patches.shape[:2]
    if weights.shape != (n_filters * n_pos, 1):
        raise ValueError(
            f"tutorial_forward: weights must have shape {(n_filters * n_pos, 1)} for "
            f"{n_filters} filters on {n_pos} positions. Received shape {weights.shape}")
    # Step 2: the tutorial's triple loop, one multiply-sum per (image, filter, patch).
    conv = []
    for i in range(n):
        for f in range(n_filters):
            for p in range(n_pos):
                conv.append((patches[i, p] * filters[f]).sum())
    a1 = sigmoid(np.array(conv).reshape(n, n_filters * n_pos))
    # Step 3: dense layer, vectorised as in the tutorial: Z2 = Wᵀ·A1 with A1 as (1728, N).
    z2 = np.dot(weights.T, a1.T)[0]
    if standardize:
        z2 = (z2 - z2.mean()) / z2.std()
    return a1, z2, sigmoid(z2)


def tutorial_iteration(images, targets, filters, weights, lr, *, standardize=False,
                       patches=None):
    """One full-batch iteration, the tutorial's way: forward, backward, update.

    Parameters
    ----------
    images : (N, H, W) float array (the tutorial uses N = 200, H = W = 28)
    targets : (N,) array of 0/1 targets
    filters : (F, K, K) float array
    weights : (F·OH·OW, 1) float array
    lr : learning rate
    standardize, patches : as in ``tutorial_forward``. By default the patches are rebuilt
        with loops on every call, which is what a call from raw images costs; the tutorial
        itself builds them once before its epoch loop (pass ``patches`` to match that).

    Returns
    -------
    filters, weights : new arrays (the inputs are not modified)
    loss : float, mean over images of E = (t - O)² / 2, before the update

    Examples
    --------
    >>> f, w = init_params(seed=0)
    >>> x = np.random.default_rng(0).uniform(size=(2, 28, 28))
    >>> f2, w2, loss = tutorial_iteration(x, np.array([0.0, 1.0]), f, w, 0.1)
    >>> f2.shape, w2.shape, bool(np.isfinite(loss))
    ((3, 5, 5), (1728, 1), True)
    """
    images = np.asarray(images, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if images.ndim != 3 or targets.shape != images.shape[:1]:
        raise ValueError(
            "tutorial_iteration: `images` must be (N, H, W) and `targets` (N,). "
            f"Received images.shape={images.shape}, targets.shape={targets.shape}")
    n, h, w = images.shape
    n_filters, kernel_size, _ = filters.shape
    oh, ow = h - kernel_size + 1, w - kernel_size + 1

    a1, _, out = tutorial_forward(images, filters, weights, standardize=standardize,
                                  patches=patches)
    loss = float(np.mean((targets - out) ** 2 / 2))

    # Output unit: dE/dZ2 = -(t - O) · O(1 - O); dE/dW = A1 · dE/dZ2 summed over images
    # (exact unless standardize=True, whose Jacobian the tutorial leaves out: TUTORIAL-BUG d).
    delta_out = -(targets - out) * out * (1.0 - out)                  # (N,)
    a1_t = a1.T                                                       # (F·OH·OW, N)
    new_weights = weights - lr * np.dot(a1_t, delta_out[:, None])

    # TUTORIAL-BUG a: back-propagates through the already updated weights.
    delta_a1 = np.dot(new_weights, delta_out[None, :]) * a1_t * (1.0 - a1_t)
    # TUTORIAL-BUG b: averages the error over images before it meets the inputs.
    delta_mean = np.average(delta_a1, axis=1)
    # TUTORIAL-BUG c: a filter-major (F, OH, OW) vector read as (OH, OW, F).
    delta_map = np.resize(delta_mean, (oh, ow, n_filters))

    # Step 4: the tutorial's filter-gradient loops: filters × kernel rows × kernel columns ×
    # images, one (OH, OW) slice-multiply-sum each, then divided by the number of images.
    grad = []
    for f in range(n_filters):
        for r in range(kernel_size):
            for c in range(kernel_size):
                temp = 0.0
                for i in range(n):
                    temp = temp + (images[i, r:r + oh, c:c + ow] * delta_map[:, :, f]).sum()
                grad.append(temp / n)
    grad = np.resize(np.array(grad), filters.shape)
    new_filters = filters.copy()
    for f in range(n_filters):
        new_filters[f] = new_filters[f] - lr * grad[f]
    return new_filters, new_weights, loss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="training images (200)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (3)")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--standardize", action="store_true",
                        help="reproduce the tutorial code's batch standardisation of Z2")
    parser.add_argument("--data-dir", default=None, help="MNIST folder (default: XPCNN_DATA_DIR, then the Keras cache)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    images, targets = load_mnist_subset(args.images, args.data_dir)
    filters, weights = init_params(seed=args.seed)

    t0 = time.perf_counter()
    extract_patches(images, filters.shape[1])  # timed alone: the tutorial builds patches once
    patch_s = time.perf_counter() - t0

    times, losses = [], []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        filters, weights, loss = tutorial_iteration(images, targets, filters, weights,
                                                    args.lr, standardize=args.standardize)
        times.append(time.perf_counter() - t0)
        losses.append(loss)

    result = {
        "images": args.images,
        "iterations": args.iterations,
        "seconds_per_iteration_median": float(np.median(times)),
        "seconds_per_iteration": times,
        "seconds_patch_extraction": patch_s,
        "losses": losses,
        "standardize": args.standardize,
    }
    print(f"tutorial loop baseline, {args.images} images, one full-batch iteration "
          "(patches + forward + backward + update)")
    print(f"{'iteration':>9} {'seconds':>9} {'loss':>12}")
    for k, (t, loss) in enumerate(zip(times, losses)):
        print(f"{k:>9} {t:>9.3f} {loss:>12.6f}")
    print(f"median s/iteration: {result['seconds_per_iteration_median']:.3f}  "
          f"(of which patch extraction ~{patch_s:.3f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
