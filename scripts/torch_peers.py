"""PyTorch peer networks for the benchmarks: the same architectures, trained the same way.

Benchmark helper, not library code: xpcnn never imports it. PyTorch is optional (the ``bench``
extra); every function imports it on call, so importing this module always works.

* ``torch_lenet()``          LeNet-5 style net for 1x28x28 inputs, 10 logits;
* ``torch_tutorial_net()``   the loop tutorial's net: 3 filters 5x5, sigmoid, 1728 -> 1, sigmoid;
* ``torch_train_step_fn()``  one SGD-with-momentum step on a batch;
* ``time_torch_lenet()``     LeNet training throughput in images/s after a warm-up;
* ``keras_lenet_available()`` whether a Keras peer can run here (Keras is never installed).

Run ``python scripts/torch_peers.py --threads 2`` for a table of LeNet images/s at batch
32/128/512.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def torch_lenet():
    """LeNet-5 style network (ReLU, max pooling) for (N, 1, 28, 28) inputs, 10 logits.

    Examples
    --------
    >>> import torch
    >>> torch_lenet()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # 6x28x28 -> 6x14x14
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),             # 16x10x10 -> 16x5x5
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def torch_tutorial_net():
    """The loop tutorial's network: Conv2d(1, 3, 5), sigmoid, flatten 1728, dense 1, sigmoid.

    PyTorch adds biases the tutorial does not have; they do not change the cost.

    Examples
    --------
    >>> import torch
    >>> torch_tutorial_net()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 1])
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 3, 5), nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(1728, 1), nn.Sigmoid(),
    )


def torch_train_step_fn(model, lr, momentum):
    """Return ``step(x, y) -> loss``: one SGD-with-momentum update of ``model`` on a batch.

    The loss is cross-entropy: softmax cross-entropy on integer labels for a model with
    several outputs, binary cross-entropy on 0/1 targets for a one-output sigmoid model
    (``torch_tutorial_net``). ``x`` and ``y`` may be tensors or NumPy arrays. The returned
    loss is a detached 0-d tensor: call ``float()`` on it only when logging.

    Examples
    --------
    >>> import torch
    >>> step = torch_train_step_fn(torch_lenet(), lr=0.01, momentum=0.9)
    >>> loss = step(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    >>> loss.shape
    torch.Size([])
    """
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step(x, y):
        x = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(y)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        if out.shape[-1] == 1:
            loss = F.binary_cross_entropy(out.reshape(-1), y.reshape(-1).to(out.dtype))
        else:
            loss = F.cross_entropy(out, y.long())
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def time_torch_lenet(batch_size, steps, threads, *, warmup=3, lr=0.01, momentum=0.9,
                     seed=0):
    """Training throughput of ``torch_lenet`` in images/s, measured after ``warmup`` steps.

    Uses one fixed random batch (throughput, not accuracy, is measured) and
    ``torch.set_num_threads(threads)``; the previous thread count is restored afterwards.

    Examples
    --------
    >>> time_torch_lenet(8, steps=2, threads=1, warmup=1) > 0
    True
    """
    import torch

    if batch_size < 1 or steps < 1 or threads < 1:
        raise ValueError("time_torch_lenet: `batch_size`, `steps` and `threads` must be "
                         f"positive. Received {batch_size=}, {steps=}, {threads=}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        x = torch.rand(batch_size, 1, 28, 28, generator=gen)
        y = torch.randint(0, 10, (batch_size,), generator=gen)
        step = torch_train_step_fn(torch_lenet(), lr, momentum)
        for _ in range(warmup):
            step(x, y)
        start = time.perf_counter()
        for _ in range(steps):
            step(x, y)
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return batch_size * steps / elapsed


def keras_lenet_available():
    """Return ``(available, reason)`` for a Keras 3 LeNet peer on the PyTorch backend.

    Examples
    --------
    >>> ok, reason = keras_lenet_available()
    >>> isinstance(ok, bool) and isinstance(reason, str)
    True
    """
    os.environ.setdefault("KERAS_BACKEND", "torch")  # not TensorFlow/JAX: PyTorch is what is installed
    try:
        import keras
    except Exception as exc:  # ImportError, or a broken backend raising on import
        return False, f"keras is not importable ({type(exc).__name__}: {exc})"
    return True, f"keras {getattr(keras, '__version__', '?')} is importable"


def main(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch LeNet training throughput (CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's current setting)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch

    threads = args.threads or torch.get_num_threads()
    rows = []
    print(f"torch {torch.__version__}, LeNet-5 training (SGD momentum 0.9, cross-entropy), "
          f"{threads} thread(s)")
    print(f"{'batch':>6} {'steps':>6} {'images/s':>10}")
    for bs in args.batch_sizes:
        ips = time_torch_lenet(bs, args.steps, threads, warmup=args.warmup)
        rows.append({"batch_size": bs, "steps": args.steps, "images_per_s": ips})
        print(f"{bs:>6} {args.steps:>6} {ips:>10.0f}")
    ok, reason = keras_lenet_available()
    print(f"keras peer: {reason}")
    result = {"torch": torch.__version__, "threads": threads, "lenet": rows,
              "keras_available": ok, "keras_reason": reason}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
