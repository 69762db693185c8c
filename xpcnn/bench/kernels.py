"""Per-kernel times of one LeNet-5 training step, xpcnn (NumPy) next to PyTorch CPU on the same shapes.

    python -m xpcnn.bench.kernels [--batch-sizes 32,128,512] [--rounds 15] [--json-out kernels.json]

Each kernel is timed alternately with its PyTorch counterpart (A B A B ..., ``--rounds`` rounds,
median). PyTorch's backward ops are called directly (``aten.convolution_backward``,
``aten.max_pool2d_with_indices_backward``), so neither side pays autograd's bookkeeping. The
thread count is whatever the environment gives both (set OPENBLAS_NUM_THREADS=1 and
OMP_NUM_THREADS=1 for one thread; ``torch.set_num_threads`` follows OMP_NUM_THREADS). The
process runs with the malloc policy ``Sequential.fit`` sets (:mod:`xpcnn.backend.hostmem`), as training does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from ..backend.hostmem import keep_freed_host_memory


def _median_pair(ours, theirs, rounds):
    ours(), theirs()  # warm-up: allocator, BLAS buffers, oneDNN primitives
    a, b = [], []
    for _ in range(rounds):
        for fn, out in ((ours, a), (theirs, b)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def kernel_cases(bs, seed=0):
    """(name, xpcnn thunk, torch thunk) for every kernel call of a LeNet-5 training step."""
    import array_api_compat.numpy as xp
    import numpy as np
    import torch

    import xpcnn.functional as F
    from xpcnn.functional.activations import relu_backward, relu_forward

    aten = torch.ops.aten
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return xp.asarray(rng.standard_normal(shape, dtype=np.float32))

    def t(a):
        return torch.from_numpy(np.asarray(a))

    cases = []
    # conv1: 1 -> 6, 5x5 "same" on 28x28; conv2: 6 -> 16, 5x5 valid on 14x14
    for tag, (c, f, hw, pad, tpad, need_dx) in {"conv1 1→6 same": (1, 6, 28, "same", 2, False),
                                                  "conv2 6→16 valid": (6, 16, 14, "valid", 0, True)}.items():
        x, k, b = arr(bs, c, hw, hw), arr(f, c, 5, 5), arr(f)
        tx, tk, tb = t(x), t(k), t(b)
        y, cache = F.conv2d_forward(x, k, b, padding=pad)
        dy = arr(*y.shape)
        tdy = t(dy)
        cases.append((f"{tag} forward", lambda x=x, k=k, b=b, pad=pad: F.conv2d_forward(x, k, b, padding=pad),
                      lambda tx=tx, tk=tk, tb=tb, tpad=tpad: torch.nn.functional.conv2d(tx, tk, tb, padding=tpad)))
        cases.append((f"{tag} backward{'' if need_dx else ' (no dx)'}",
                      lambda dy=dy, cache=cache, nd=need_dx: F.conv2d_backward(dy, cache, need_dx=nd),
                      lambda tdy=tdy, tx=tx, tk=tk, tpad=tpad, nd=need_dx: aten.convolution_backward(
                          tdy, tx, tk, [tk.shape[0]], [1, 1], [tpad, tpad], [1, 1], False, [0, 0], 1,
                          [nd, True, True])))
    for tag, (c, hw) in {"relu+pool1 6x28x28": (6, 28), "relu+pool2 16x10x10": (16, 10)}.items():
        z = arr(bs, c, hw, hw)
        tz = t(z)

        def ours_fwd(z=z):
            a, _ = relu_forward(z)
            return F.max_pool2d_forward(a, 2)

        def theirs_fwd(tz=tz):
            return aten.max_pool2d_with_indices(torch.relu(tz), [2, 2], [2, 2])

        a, rcache = relu_forward(z)
        y, pcache = F.max_pool2d_forward(a, 2)
        dy = arr(*y.shape)
        ta = torch.relu(tz)
        ty, idx = aten.max_pool2d_with_indices(ta, [2, 2], [2, 2])
        tdy = t(dy)
        cases.append((f"{tag} forward", ours_fwd, theirs_fwd))
        cases.append((f"{tag} backward",
                      lambda dy=dy, pc=pcache, rc=rcache: relu_backward(F.max_pool2d_backward(dy, pc), rc),
                      lambda tdy=tdy, ta=ta, idx=idx: aten.threshold_backward(
                          aten.max_pool2d_with_indices_backward(tdy, ta, [2, 2], [2, 2], [0, 0], [1, 1], False, idx),
                          ta, 0)))
    for i, u in ((400, 120), (120, 84), (84, 10)):
        x, k, b = arr(bs, i), arr(i, u), arr(u)
        tx, tk, tb = t(x), t(k), t(b)
        _, cache = F.dense_forward(x, k, b)
        dy = arr(bs, u)
        tdy = t(dy)
        cases.append((f"dense {i}→{u} forward", lambda x=x, k=k, b=b: F.dense_forward(x, k, b),
                      lambda tx=tx, tk=tk, tb=tb: torch.addmm(tb, tx, tk)))
        cases.append((f"dense {i}→{u} backward", lambda dy=dy, c=cache: F.dense_backward(dy, c),
                      lambda tdy=tdy, tx=tx, tk=tk: (tdy @ tk.T, tx.T @ tdy, tdy.sum(0))))
    logits = arr(bs, 10)
    labels = xp.asarray(rng.integers(0, 10, bs))
    tl, tlab = t(logits), t(labels)
    fwd, bwd, _ = F.LOSSES["softmax_cross_entropy"]

    def ours_loss():
        loss, cache = fwd(logits, labels)
        return bwd(cache)

    def theirs_loss():
        lsm = aten._log_softmax(tl, 1, False)
        loss, tw = aten.nll_loss_forward(lsm, tlab, None, 1, -100)
        g = aten.nll_loss_backward(torch.ones(()), lsm, tlab, None, 1, -100, tw)
        return aten._log_softmax_backward_data(g, lsm, 1, torch.float32)

    cases.append(("softmax cross-entropy forward+backward", ours_loss, theirs_loss))
    return cases


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="32,128,512")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--only", default="", help="run only the kernels whose name contains this")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    import torch


    keep_freed_host_memory()

    rows = []
    print(f"torch threads {torch.get_num_threads()}; times in ms (median of {args.rounds}, alternating)")
    print(f"{'batch':>5}  {'kernel':<42} {'xpcnn':>8} {'torch':>8} {'ratio':>6}")
    for bs in (int(s) for s in args.batch_sizes.split(",")):
        total = [0.0, 0.0]
        for name, ours, theirs in kernel_cases(bs):
            if args.only not in name:
                continue
            a, b = _median_pair(ours, theirs, args.rounds)
            total[0] += a
            total[1] += b
            rows.append({"batch": bs, "kernel": name, "xpcnn_ms": 1e3 * a, "torch_ms": 1e3 * b})
            print(f"{bs:>5}  {name:<42} {1e3 * a:8.3f} {1e3 * b:8.3f} {a / b:6.2f}", flush=True)
        print(f"{bs:>5}  {'sum':<42} {1e3 * total[0]:8.3f} {1e3 * total[1]:8.3f} {total[0] / total[1]:6.2f}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
