"""Data-parallel scaling of ``xpcnn train --distributed`` on one machine: a table and a JSON file.

Trains ``lenet`` with the same global batch as

* 1 process, 1 BLAS thread   (``T1``, the baseline),
* 1 process, 2 BLAS threads  (the same two cores used by threads instead of ranks),
* 2 processes under ``mpiexec -n 2``, 1 BLAS thread each (``T2``),

interleaved (A B C A B C ...), so slow drift of a shared machine hits every configuration alike.
Throughput is rank 0's ``images_per_second`` (global training images / epoch time, validation
excluded), the median over the epochs after the first (warm-up) and then over the repeats.
Efficiency is ``T2 / (2 T1)``, computed inside each repeat from side-by-side runs.

    python scripts/mpi_scaling.py                         # generated digits, 8192 images
    python scripts/mpi_scaling.py --data-dir ~/mnist --batch-sizes 128 256 --json scaling.json

Benchmark script, not library code; needs the ``mpi`` extra (mpi4py and an ``mpiexec``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes x 1 thread", 2, 1)]


def make_data(folder, n_train, n_test, seed=0):
    """Four IDX files of learnable fake digits (class k: a bright bar at row 2k+4)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for k in range(10):
            images[labels == k, 2 * k + 4 : 2 * k + 7, 4:24] = 230
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
            (Path(folder) / f"{split}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes(), mtime=0))


def mpiexec_command(mpiexec, n):
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    flags = []
    if "Open MPI" in version:  # it refuses root without this flag, and more ranks than cores without the other
        flags = ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [mpiexec, *flags, "-n", str(n)]


def run_once(args, procs, threads, batch, folder):
    metrics = Path(folder) / f"m-{procs}-{threads}-{batch}.jsonl"
    metrics.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xpcnn", "train", "--preset", "lenet", "--data-dir", str(args.data_dir),
           "--train-size", str(args.train_size), "--test-size", "256", "--epochs", str(args.epochs),
           "--batch-size", str(batch), "--optimizer", "sgd", "--quiet", "--metrics-out", str(metrics)]
    if procs > 1:
        cmd = [*mpiexec_command(args.mpiexec, procs), *cmd, "--distributed"]
    env = dict(os.environ, XPCNN_DEVICE="cpu", OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    rates = [json.loads(line)["images_per_second"] for line in metrics.read_text().splitlines()]
    return statistics.median(rates[1:] or rates), " ".join(cmd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", help="MNIST IDX files (default: XPCNN_DATA_DIR, else generated digits)")
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeats", type=int, default=3)
    beside_python = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    p.add_argument("--mpiexec", default=shutil.which("mpiexec", path=beside_python))
    p.add_argument("--json", default="mpi_scaling.json")
    args = p.parse_args(argv)
    if args.mpiexec is None:
        sys.exit("no mpiexec found: pip install 'xpcnn[mpi]' (mpi4py and the mpich wheel)")
    with tempfile.TemporaryDirectory() as tmp:
        args.data_dir = args.data_dir or os.environ.get("XPCNN_DATA_DIR")
        if not args.data_dir:
            args.data_dir = tmp
            make_data(tmp, args.train_size, 256)
        load_before = os.getloadavg()
        rows, commands = {}, {}
        for repeat in range(args.repeats):
            for batch in args.batch_sizes:
                for name, procs, threads in CONFIGS:
                    rate, cmd = run_once(args, procs, threads, batch, tmp)
                    rows.setdefault((batch, name), []).append(rate)
                    commands[name] = cmd
                    print(f"repeat {repeat + 1}, batch {batch}, {name}: {rate:,.0f} images/s", file=sys.stderr)
        load_after = os.getloadavg()

    from mpi4py import MPI

    table, results = [], []
    for batch in args.batch_sizes:
        t1 = rows[batch, CONFIGS[0][0]]
        for name, procs, threads in CONFIGS:
            t = rows[batch, name]
            speedup = statistics.median(a / b for a, b in zip(t, t1))
            efficiency = speedup / procs if procs > 1 else None
            results.append({"batch_size": batch, "config": name, "processes": procs, "threads_per_process": threads,
                            "images_per_second": statistics.median(t), "runs": t, "speedup_vs_1x1": speedup,
                            "efficiency": efficiency})
            table.append(f"| {batch:>5} | {name:<24} | {statistics.median(t):>9,.0f} | {speedup:>6.2f}x | "
                         f"{'' if efficiency is None else f'{efficiency:.0%}':>10} |")
    head = ["| batch | configuration            |  images/s | speedup | efficiency |",
            "|------:|--------------------------|----------:|--------:|-----------:|"]
    print("\n".join(head + table))
    report = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "python": platform.python_version(), "numpy": np.__version__,
                          "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                          "load_average_before": load_before, "load_average_after": load_after},
              "train_size": args.train_size, "epochs": args.epochs, "repeats": args.repeats,
              "commands": commands, "results": results, "date": time.strftime("%Y-%m-%d")}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
