"""Two (or more) xpcnn source trees side by side: LeNet-5 training images/s, A B A B ..., medians.

Each configuration is ``label:tree:batch:fit_threads:blas_threads`` (``fit_threads`` ``-`` for a
tree whose ``fit`` has no ``threads=``). Every measurement is a fresh process that imports xpcnn
from ``tree``, trains one warm-up ``fit`` of 4 batches, then one epoch of 60 batches (24 at batch
> 128) of real MNIST, and reports images/s. Prints a table, writes JSON (``--json-out``).

    git worktree add /tmp/old 6e054a1
    env -u OPENBLAS_CORETYPE XPCNN_DATA_DIR=/path/to/mnist python scripts/compare_trees.py \
        "0.3.0:/tmp/old:128:-:1" "now:.:128:1:1" "now, 2 threads:.:128:2:2"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from xpcnn.data import load_dataset
from xpcnn.presets import PRESETS, build_model
bs, threads = int(sys.argv[2]), sys.argv[3]
ds = load_dataset("mnist", os.environ["XPCNN_DATA_DIR"], progress=False)
n = 60 * bs if bs <= 128 else 24 * bs
x, y = ds.x_train[:n], ds.y_train[:n].astype(np.int64)
m = build_model(PRESETS["lenet"], device="cpu").compile("momentum", loss="softmax_cross_entropy")
kw = {} if threads == "-" else {"threads": int(threads)}
m.fit(x[:4 * bs], y[:4 * bs], batch_size=bs, epochs=1, verbose=0, **kw)
start = time.perf_counter()
m.fit(x, y, batch_size=bs, epochs=1, verbose=0, **kw)
print(json.dumps({"images_per_second": n / (time.perf_counter() - start)}))
'''


def measure(tree, batch, fit_threads, blas_threads):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["OPENBLAS_NUM_THREADS"] = blas_threads
    done = subprocess.run([sys.executable, "-c", CHILD, str(Path(tree).resolve()), batch, fit_threads],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.splitlines()[-1])["images_per_second"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", metavar="LABEL:TREE:BATCH:FIT_THREADS:BLAS_THREADS")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json-out", default="compare-trees.json")
    args = parser.parse_args(argv)
    if not os.environ.get("XPCNN_DATA_DIR"):
        raise SystemExit("set XPCNN_DATA_DIR to the MNIST folder")
    configs = [c.split(":") for c in args.configs]
    if any(len(c) != 5 for c in configs):
        parser.error("each configuration is LABEL:TREE:BATCH:FIT_THREADS:BLAS_THREADS")
    runs = {c[0]: [] for c in configs}
    for _ in range(args.rounds):
        for label, tree, batch, fit_threads, blas in configs:
            runs[label].append(measure(tree, batch, fit_threads, blas))
    print(f"{'configuration':<28} {'batch':>5} {'BLAS':>4} {'fit':>4} {'median img/s':>13}  runs")
    for label, _tree, batch, fit_threads, blas in configs:
        v = runs[label]
        print(f"{label:<28} {batch:>5} {blas:>4} {fit_threads:>4} {statistics.median(v):>13,.0f}  "
              + ", ".join(f"{x:,.0f}" for x in v))
    Path(args.json_out).write_text(json.dumps({"configs": args.configs, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
