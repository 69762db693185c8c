"""Every kernel: namespace/device/dtype/shape, forward vs a naive float64 loop, backward vs
central differences in float64 (relative error <= 1e-6), on every backend of ``case``."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from oracles import check_gradients, naive_conv2d, naive_pool

import xpcnn.functional as F
from xpcnn.functional.conv import resolve_padding

CONV_CASES = [
    # (N, C, H, W), (F, KH, KW), strides, padding, dilation
    ((2, 3, 7, 7), (4, 3, 3), 1, "valid", 1),
    ((2, 1, 8, 8), (3, 5, 5), 1, "same", 1),
    ((1, 2, 9, 7), (2, 3, 2), (2, 1), "valid", 1),
    ((2, 2, 8, 9), (3, 3, 3), 2, "same", 1),
    ((1, 3, 6, 6), (2, 2, 2), 1, 1, 1),
    ((2, 2, 7, 8), (2, 3, 3), (1, 2), (2, 1), 1),
    ((1, 2, 9, 9), (2, 3, 3), 1, "valid", 2),
    ((2, 1, 10, 9), (2, 3, 2), 2, "same", (2, 3)),
    ((3, 1, 5, 5), (1, 5, 5), 1, "valid", 1),
    ((1, 4, 6, 5), (3, 1, 1), 1, 0, 1),
]


def _expected_pads(padding, hw, khw, strides, dilation):
    if padding == "same":  # TensorFlow's rule, written out independently
        pads = []
        for size, k, s, d in zip(hw, khw, strides, dilation):
            out = int(np.ceil(size / s))
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if padding == "valid":
        return (0, 0), (0, 0)
    p = (padding, padding) if isinstance(padding, int) else padding
    return (p[0], p[0]), (p[1], p[1])


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("xshape,kshape,strides,padding,dilation", CONV_CASES)
def test_conv2d_forward_matches_naive_loops(case, rng, xshape, kshape, strides, padding, dilation):
    x = rng.standard_normal(xshape)
    k = rng.standard_normal((kshape[0], xshape[1], kshape[1], kshape[2]))
    b = rng.standard_normal(kshape[0])
    y, _ = F.conv2d_forward(case.asarray(x), case.asarray(k), case.asarray(b), strides=strides, padding=padding,
                            dilation=dilation)
    pads = _expected_pads(padding, xshape[2:], kshape[1:], _pair(strides), _pair(dilation))
    want = naive_conv2d(x, k, b, _pair(strides), pads, _pair(dilation))
    got = case.check(y, want.shape)
    np.testing.assert_allclose(got, want, rtol=case.rtol(), atol=case.rtol() * 10)
    if padding == "same":
        assert want.shape[2:] == tuple(-(-s // t) for s, t in zip(xshape[2:], _pair(strides)))


@pytest.mark.parametrize("xshape,kshape,strides,padding,dilation", CONV_CASES)
def test_conv2d_backward_matches_finite_differences(case, rng, xshape, kshape, strides, padding, dilation):
    x = rng.standard_normal(xshape)
    k = rng.standard_normal((kshape[0], xshape[1], kshape[1], kshape[2]))
    b = rng.standard_normal(kshape[0])

    def fwd(x, k, b):
        return F.conv2d_forward(x, k, b, strides=strides, padding=padding, dilation=dilation)

    check_gradients(case, fwd, F.conv2d_backward, [x, k, b], rng)


# im2col (stride 2 in height) in chunks of one image, and of several images with a short last one
@pytest.mark.parametrize("chunk_bytes", [1, 5000])
def test_conv2d_in_chunks_matches_the_whole_batch(case, rng, chunk_bytes):
    x, k, b = rng.standard_normal((5, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)

    def fwd(x, k, b, chunk_bytes=chunk_bytes):
        return F.conv2d_forward(x, k, b, strides=(2, 1), padding="same", chunk_bytes=chunk_bytes)

    whole, _ = fwd(case.asarray(x), case.asarray(k), case.asarray(b), None)
    y, cache = fwd(case.asarray(x), case.asarray(k), case.asarray(b))
    assert not cache.shifted and len(cache.cols) == -(-5 // cache.chunk) > 1
    np.testing.assert_allclose(case.check(y, whole.shape), case.check(whole, whole.shape), rtol=case.rtol())
    _, cache = fwd(*(case.asarray(a, "float64") for a in (x, k, b)))
    assert len(cache.cols) == -(-5 // cache.chunk) > 1
    # col2im in chunks of whole images too (one image, or two, per chunk)
    check_gradients(case, fwd, functools.partial(F.conv2d_backward, dx_chunk_bytes=chunk_bytes // 2), [x, k, b], rng)


def test_conv2d_backward_can_skip_dx_and_bias(case, rng):
    x = case.asarray(rng.standard_normal((2, 1, 6, 6)), "float64")
    k = case.asarray(rng.standard_normal((3, 1, 3, 3)), "float64")
    y, cache = F.conv2d_forward(x, k)
    dx, dk, db = F.conv2d_backward(y, cache, need_dx=False)
    assert dx is None and db is None
    case.check(dk, (3, 1, 3, 3), "float64")


def test_conv2d_does_not_mutate_inputs(case, rng):
    x0, k0 = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((2, 2, 3, 3))
    x, k = case.asarray(x0), case.asarray(k0)
    y, cache = F.conv2d_forward(x, k, padding="same")
    F.conv2d_backward(y, cache)
    np.testing.assert_array_equal(case.check(x, x0.shape), x0.astype(case.dtype))
    np.testing.assert_array_equal(case.check(k, k0.shape), k0.astype(case.dtype))


POOL_CASES = [((2, 3, 6, 6), 2, None), ((1, 2, 7, 5), (3, 2), (2, 1)), ((2, 1, 5, 5), 3, 1),
              ((1, 2, 4, 6), (1, 3), None),
              ((1, 2, 5, 5), 2, None)]  # windows that tile but leave the last row and column out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape,pool,strides", POOL_CASES)
def test_pooling_forward_and_backward(case, rng, kind, shape, pool, strides):
    fwd, bwd = {
        "max": (F.max_pool2d_forward, F.max_pool2d_backward),
        "avg": (F.avg_pool2d_forward, F.avg_pool2d_backward),
    }[kind]
    x = rng.standard_normal(shape)
    y, _ = fwd(case.asarray(x), pool, strides)
    reduce = np.max if kind == "max" else np.mean
    want = naive_pool(x, _pair(pool), _pair(strides if strides is not None else pool), reduce)
    np.testing.assert_allclose(case.check(y, want.shape), want, rtol=case.rtol(), atol=case.rtol())
    check_gradients(case, lambda v: fwd(v, pool, strides), bwd, [x], rng)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradient_is_exactly_zero_outside_every_window(case, rng, kind):
    # 5x5 in 2x2 windows of stride 2: row 4 and column 4 are in no window, so they get exactly 0
    # (not whatever memory a reused buffer held).
    fwd, bwd = {"max": (F.max_pool2d_forward, F.max_pool2d_backward),
                "avg": (F.avg_pool2d_forward, F.avg_pool2d_backward)}[kind]
    y, cache = fwd(case.asarray(rng.standard_normal((1, 2, 5, 5))), 2)
    dx = case.check(bwd(case.xp.ones_like(y), cache), (1, 2, 5, 5))
    assert np.all(dx[:, :, 4, :] == 0) and np.all(dx[:, :, :, 4] == 0)
    assert dx.sum() == 8.0  # each of the 2x2x2 outputs hands back exactly its 1


def test_max_pool_ties_go_to_one_position(case):
    x = case.asarray(np.ones((1, 1, 2, 2)))
    y, cache = F.max_pool2d_forward(x)
    dx = case.check(F.max_pool2d_backward(case.xp.ones_like(y), cache), (1, 1, 2, 2))
    assert dx.sum() == 1.0 and dx[0, 0, 0, 0] == 1.0


@pytest.mark.parametrize("name", sorted(F.ACTIVATIONS))
def test_activations(case, rng, name):
    fwd, bwd = F.ACTIVATIONS[name]
    x = rng.standard_normal((4, 5)) * 3
    ref = {
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "relu": lambda v: np.maximum(v, 0),
        "tanh": np.tanh,
        "softmax": lambda v: np.exp(v) / np.exp(v).sum(-1, keepdims=True),
    }[name]
    y, _ = fwd(case.asarray(x))
    np.testing.assert_allclose(case.check(y, x.shape), ref(x), rtol=case.rtol(), atol=case.rtol())
    check_gradients(case, fwd, bwd, [x], rng)


def test_sigmoid_and_softmax_do_not_overflow(case):
    big = case.asarray(np.array([[-1000.0, 0.0, 1000.0]]))
    with np.errstate(over="raise"):  # NumPy cases: an overflowing exp raises (pytest ignores the warning)
        s = case.check(F.sigmoid(big), (1, 3))
        sm = case.check(F.softmax(big), (1, 3))
    np.testing.assert_allclose(s, [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(sm, [[0.0, 0.0, 1.0]])


def test_dense(case, rng):
    x, k, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    y, _ = F.dense_forward(case.asarray(x), case.asarray(k), case.asarray(b))
    want = np.array([[sum(x[n, i] * k[i, u] for i in range(4)) + b[u] for u in range(3)] for n in range(5)])
    np.testing.assert_allclose(case.check(y, (5, 3)), want, rtol=case.rtol(), atol=case.rtol())
    check_gradients(case, F.dense_forward, F.dense_backward, [x, k, b], rng)


def test_flatten_and_dropout(case, rng):
    x = rng.standard_normal((2, 3, 2, 2))
    y, shape = F.flatten_forward(case.asarray(x))
    np.testing.assert_array_equal(case.check(y, (2, 12)), x.reshape(2, 12).astype(case.dtype))
    check_gradients(case, F.flatten_forward, F.flatten_backward, [x], rng)
    mask = (rng.random((2, 12)) > 0.5).astype(np.float64)
    y, _ = F.dropout_forward(case.asarray(x.reshape(2, 12)), case.asarray(mask), 0.5)
    np.testing.assert_allclose(case.check(y, (2, 12)), x.reshape(2, 12) * mask * 2, rtol=case.rtol())
    check_gradients(case, lambda v: F.dropout_forward(v, case.backend.asarray(mask, "float64"), 0.5),
                    F.dropout_backward, [x.reshape(2, 12)], rng)


def _naive_loss(name, o, t):
    n = o.shape[0]
    if name == "squared_error":
        return ((t - o) ** 2 / 2).sum() / n
    if name == "binary_cross_entropy":
        return -(t * np.log(o) + (1 - t) * np.log(1 - o)).sum() / n
    if name == "binary_cross_entropy_with_logits":
        p = 1 / (1 + np.exp(-o))
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum() / n
    z = o - o.max(1, keepdims=True)
    return -(z[np.arange(n), t] - np.log(np.exp(z).sum(1))).sum() / n


@pytest.mark.parametrize("name", sorted(F.LOSSES))
def test_losses(case, rng, name):
    fwd, bwd, _ = F.LOSSES[name]
    if name == "softmax_cross_entropy":
        o, t = rng.standard_normal((6, 4)) * 2, rng.integers(0, 4, 6)
        target = case.backend.asarray(t, dtype="int64")
    else:
        o = rng.random((6, 1)) * 0.9 + 0.05 if name == "binary_cross_entropy" else rng.standard_normal((6, 1))
        t = (rng.random((6, 1)) > 0.5).astype(np.float64)
        target = case.asarray(t, "float64")
    loss, _ = fwd(case.asarray(o), target if name == "softmax_cross_entropy" else case.asarray(t))
    assert case.check(loss, ()) == pytest.approx(_naive_loss(name, o, t), rel=case.rtol() * 10)
    check_gradients(case, lambda v: fwd(v, target), lambda dy, c: bwd(c) * dy, [o], rng)


def test_stable_losses_survive_extreme_logits(case):
    z = case.asarray(np.array([[1000.0, -1000.0, 0.0]]))
    loss, _ = F.LOSSES["softmax_cross_entropy"][0](z, case.backend.asarray(np.array([1]), "int64"))
    assert case.check(loss, ()) == pytest.approx(2000.0)
    zb = case.asarray(np.array([[800.0], [-800.0]]))
    loss, _ = F.LOSSES["binary_cross_entropy_with_logits"][0](zb, case.asarray(np.array([[0.0], [1.0]])))
    assert case.check(loss, ()) == pytest.approx(800.0)


def test_accuracy(case):
    logits = case.asarray(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]))
    labels = case.backend.asarray(np.array([1, 1, 1]), "int64")
    assert float(case.check(F.accuracy(logits, labels), ())) == pytest.approx(2 / 3)
    probs = case.asarray(np.array([[0.9], [0.2]]))
    assert float(case.check(F.accuracy(probs, case.asarray(np.array([[1.0], [1.0]]))), ())) == 0.5
    # one-hot targets: the arg-max of each row; a probability at the threshold is not above it
    onehot = case.asarray(np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    assert float(case.check(F.accuracy(logits, onehot), ())) == pytest.approx(1 / 3)
    assert float(case.check(F.accuracy(case.asarray(np.array([[0.5]])), case.asarray(np.array([[0.0]]))), ())) == 1
    # logits: the class is 1 above 0, not above 0.5
    logit = case.asarray(np.array([[0.3]]))
    assert float(case.check(F.accuracy(logit, case.asarray(np.array([[1.0]])), threshold=0.0), ())) == 1


def test_binary_cross_entropy_is_finite_at_probabilities_0_and_1(case):
    fwd, bwd, _ = F.LOSSES["binary_cross_entropy"]
    sure = case.asarray(np.array([[1.0], [0.0]]))
    loss, cache = fwd(sure, sure)
    assert 0 <= float(case.check(loss, ())) < 1e-6  # -log(1 - eps): the clip keeps log(0) out
    assert np.all(np.isfinite(case.check(bwd(cache), (2, 1))))


def test_labels_out_of_range_are_refused(case):
    fwd = F.LOSSES["softmax_cross_entropy"][0]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        fwd(case.asarray(np.zeros((2, 2))), case.backend.asarray(np.array([0, 5]), "int64"), check_range=True)


def _ones(c, *shape):
    return c.asarray(np.ones(shape))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: F.conv2d_forward(_ones(c, 2, 3, 5), _ones(c, 1, 3, 3, 3)), "rank 4"),
        (lambda c: F.conv2d_forward(_ones(c, 1, 2, 5, 5), _ones(c, 1, 3, 3, 3)), "3 input channels but x has 2"),
        (lambda c: F.conv2d_forward(_ones(c, 1, 1, 2, 2), _ones(c, 1, 1, 3, 3)), "larger than the padded input"),
        (lambda c: F.conv2d_forward(_ones(c, 1, 1, 5, 5), _ones(c, 1, 1, 3, 3), strides=0), "strides"),
        (lambda c: F.conv2d_forward(_ones(c, 1, 1, 5, 5), _ones(c, 1, 1, 3, 3), padding="full"), "padding"),
        (lambda c: F.max_pool2d_forward(_ones(c, 1, 1, 2, 2), 3), "larger than the input"),
        (lambda c: F.dense_forward(_ones(c, 2, 3), _ones(c, 4, 2)), "expects 4 input features but x has 3"),
    ],
)
def test_bad_shapes_give_clear_value_errors(case, call, match):
    with pytest.raises(ValueError, match=match):
        call(case)


def test_integer_input_is_a_type_error(case):
    with pytest.raises(TypeError, match="floating-point"):
        F.conv2d_forward(case.backend.asarray(np.ones((1, 1, 5, 5)), "int64"), case.asarray(np.ones((1, 1, 3, 3))))


def test_mixed_namespaces_are_a_type_error(case):
    import array_api_strict as xps

    other = xps.asarray(np.ones((1, 1, 3, 3)), device=xps.Device("device2"))
    with pytest.raises(TypeError, match="one (array library|device)"):
        F.conv2d_forward(case.asarray(np.ones((1, 1, 5, 5))), other)


def test_same_padding_rule():
    assert resolve_padding("same", (28, 28), (5, 5), (1, 1), (1, 1)) == ((2, 2), (2, 2))
    assert resolve_padding("same", (7, 7), (2, 2), (2, 2), (1, 1)) == ((0, 1), (0, 1))


@pytest.mark.parametrize(
    "window, strides, expected",
    [
        ([[1.0, 2.0], [2.0, 0.0]], None, [[0.0, 1.0], [0.0, 0.0]]),  # partial tie: the first max wins
        ([[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]], 1, [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]),  # overlapping windows
    ],
)
def test_max_pool_tie_routing(case, window, strides, expected):
    x = case.asarray(np.array(window)[None, None])
    y, cache = F.max_pool2d_forward(x, 2, strides)
    dx = case.check(F.max_pool2d_backward(case.xp.ones_like(y), cache), x.shape)
    np.testing.assert_array_equal(dx[0, 0], np.array(expected))


def test_kernel_caches_are_named_tuples(case, rng):
    # the backward unpacks its cache by name; a reader (or a debugger) sees what each field is
    x4, x2 = case.asarray(rng.standard_normal((2, 1, 6, 6))), case.asarray(rng.standard_normal((3, 4)))
    labels = case.backend.asarray(np.array([0, 2, 1]), "int64")
    caches = {
        "ConvCache": F.conv2d_forward(x4, case.asarray(rng.standard_normal((2, 1, 3, 3))))[1],
        "MaxPoolCache": F.max_pool2d_forward(x4)[1],
        "AvgPoolCache": F.avg_pool2d_forward(x4)[1],
        "DenseCache": F.dense_forward(x2, case.asarray(rng.standard_normal((4, 2))))[1],
        "LogitCache": F.LOSSES["softmax_cross_entropy"][0](x2, labels)[1],
        "ProbabilityCache": F.LOSSES["binary_cross_entropy"][0](case.asarray([[0.3]]), case.asarray([[1.0]]))[1],
    }
    for name, cache in caches.items():
        assert type(cache).__name__ == name and isinstance(cache, tuple) and cache._fields
