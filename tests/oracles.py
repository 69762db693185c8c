"""Independent oracles: naive float64 loops for forwards; for backwards, central differences
through the library's one finite-difference checker (:mod:`xpcnn.diagnostics.gradcheck`), which uses no kernel."""

from __future__ import annotations

import numpy as np

from xpcnn.backend import to_numpy
from xpcnn.diagnostics.gradcheck import compare


def check_gradients(case, forward, backward, inputs, rng, *, wrt=None, tol=1e-6):
    """Check ``backward`` against central differences in float64 on ``case``'s device.

    ``forward(*arrays) -> (y, cache)``; ``backward(dy, cache) -> tuple of grads`` in the order
    of ``inputs`` (None allowed for inputs not differentiated). The scalar is Σ y·R for a fixed
    random R, so ∂/∂y = R.
    """
    be = case.backend
    dev = [be.asarray(a, dtype="float64") for a in inputs]
    y, cache = forward(*dev)
    r = rng.standard_normal(tuple(y.shape))
    grads = backward(be.asarray(r, dtype="float64"), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    errors = {}
    for i in wrt if wrt is not None else range(len(inputs)):

        def scalar(v, i=i):
            args = list(dev)
            args[i] = be.asarray(v, dtype="float64")
            return float(np.sum(to_numpy(forward(*args)[0]) * r))

        assert grads[i] is not None, f"gradient {i} missing"
        assert be.owns(grads[i]), "gradient escaped the device"
        assert tuple(grads[i].shape) == tuple(np.shape(inputs[i]))
        errors[i], _ = compare(to_numpy(grads[i]), scalar, inputs[i], bound=tol)
        assert errors[i] <= tol, f"input {i}: relative error {errors[i]:.2e} > {tol}"
    return errors


def naive_conv2d(x, k, b, strides, pads, dilation):
    """Direct loops over every output pixel (float64)."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    f, _, kh, kw = k.shape
    sh, sw = strides
    dh, dw = dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (w - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, f, oh, ow))
    for a in range(oh):
        for bb in range(ow):
            win = xp[:, :, a * sh : a * sh + dh * (kh - 1) + 1 : dh, bb * sw : bb * sw + dw * (kw - 1) + 1 : dw]
            y[:, :, a, bb] = np.einsum("ncij,fcij->nf", win, k)
    if b is not None:
        y += np.asarray(b)[None, :, None, None]
    return y


def naive_pool(x, pool, strides, reduce):
    n, c, h, w = x.shape
    ph, pw = pool
    sh, sw = strides
    oh, ow = (h - ph) // sh + 1, (w - pw) // sw + 1
    y = np.zeros((n, c, oh, ow))
    for a in range(oh):
        for b in range(ow):
            y[:, :, a, b] = reduce(x[:, :, a * sh : a * sh + ph, b * sw : b * sw + pw], axis=(2, 3))
    return y
