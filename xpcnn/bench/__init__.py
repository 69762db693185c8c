"""Benchmarks: ``python scripts/bench.py`` (or ``xpcnn bench``) prints a table and writes JSON.

Workloads (see BENCHMARKS.md for the latest tables and what they mean)

P1  one full-batch gradient-descent iteration of the tutorial network (Conv2D(3, 5) sigmoid,
    Flatten, Dense(1) sigmoid, squared error, SGD, float32) on the first 200 MNIST images, vs the
    tutorial's loop algorithm re-implemented in ``scripts/tutorial_loops.py``;
P2  LeNet-5 training step (SGD momentum 0.9, softmax cross-entropy, float32), images/s at batch
    32/128/512: xpcnn on NumPy vs PyTorch CPU (``scripts/torch_peers.py``) at the same thread
    count, plus the fraction of this machine's sgemm ceiling that xpcnn reaches;
P3  the same on a CUDA GPU (xpcnn on CuPy vs PyTorch CUDA eager), batch 64/256/1024, and the
    batch size from which xpcnn's GPU beats its CPU;
P4  wall time for the ``lenet`` preset to reach 99.0% MNIST test accuracy;
P5  peak resident memory of a P2-like job (whole MNIST train set loaded as uint8 pixels, 50 steps
    at batch 128 on float32 batches made from it), xpcnn vs PyTorch, each in its own process.

Every worker process (xpcnn and PyTorch alike) runs with the glibc malloc thresholds that
``Sequential.fit`` sets (:mod:`xpcnn.backend.hostmem`). Every comparison is measured side by side in one
run: warm-up first, then A B A B ... blocks, median and min–max reported. Each workload runs in
a child process so that the BLAS/OpenMP thread count is set before NumPy or PyTorch start
(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, ``torch.set_num_threads``) and memory peaks never mix.

Examples
--------
>>> rows = [{"workload": "P2", "name": "xpcnn b=128", "median": 8000.0, "min": 7900.0,
...          "max": 8100.0, "unit": "img/s", "ratio": "1.02x torch"}]
>>> print(format_table(rows).splitlines()[0].split())
['workload', 'name', 'median', 'min–max', 'unit', 'ratio']
"""

from .runner import format_table, main

__all__ = ["format_table", "main"]
