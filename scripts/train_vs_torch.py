"""The README's main command against a PyTorch script training the same network: images/s.

Runs, alternately (A B A B ..., each in its own process, all cores of this machine):

  A  ``xpcnn train --preset lenet --device cpu --epochs 1`` (full MNIST, batch 128, Adam), read
     from its ``--metrics-out`` line (training images/s of the epoch, evaluation excluded);
  B  a PyTorch script: the same LeNet-5 (scripts/torch_peers.py), Adam, batch 128, one epoch over
     the same 60,000 shuffled uint8 images made float per batch, ``torch.set_num_threads(cores)``.

Prints a table with the medians and writes JSON (``--json-out``).

    env -u OPENBLAS_CORETYPE XPCNN_DATA_DIR=/path/to/mnist python scripts/train_vs_torch.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

TORCH = r"""
import os, sys, time, json
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from torch_peers import torch_lenet
from xpcnn.data import load_dataset
torch.set_num_threads(len(os.sched_getaffinity(0)))
torch.manual_seed(0)
ds = load_dataset("mnist", os.environ.get("XPCNN_DATA_DIR"), download=False, progress=False)
x, y = torch.from_numpy(ds.x_train[:, None]), torch.from_numpy(ds.y_train.astype(np.int64))
net = torch_lenet()
opt = torch.optim.Adam(net.parameters(), lr=4e-3)
loss_fn = torch.nn.CrossEntropyLoss()
order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
start = time.perf_counter()
for i in range(0, len(y), 128):
    idx = order[i:i + 128]
    xb, yb = x[idx].float().div_(255), y[idx]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(xb), yb)
    loss.backward()
    opt.step()
print(json.dumps({"images_per_second": len(y) / (time.perf_counter() - start)}))
"""


def xpcnn_run(tmp):
    metrics = Path(tmp) / "m.jsonl"
    metrics.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xpcnn", "train", "--preset", "lenet", "--device", "cpu", "--epochs", "1",
           "--quiet", "--metrics-out", str(metrics)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    line = json.loads(metrics.read_text().splitlines()[-1])
    return line["images_per_second"], line["threads"]


def torch_run():
    done = subprocess.run([sys.executable, "-c", TORCH, str(HERE)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.splitlines()[-1])["images_per_second"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", default="train-vs-torch.json")
    args = parser.parse_args(argv)
    if not os.environ.get("XPCNN_DATA_DIR"):
        raise SystemExit("set XPCNN_DATA_DIR to the MNIST folder")
    ours, theirs, threads = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            ips, threads = xpcnn_run(tmp)
            ours.append(ips)
            theirs.append(torch_run())
    a, b = statistics.median(ours), statistics.median(theirs)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    print(f"# {cpu}, {len(os.sched_getaffinity(0))} usable cores; {args.rounds} rounds A B A B, medians")
    print(f"xpcnn train --preset lenet (batch 128, {threads} threads)  {a:10,.0f} img/s   "
          f"({', '.join(f'{v:,.0f}' for v in ours)})")
    print(f"PyTorch LeNet script (batch 128, Adam)            {b:10,.0f} img/s   "
          f"({', '.join(f'{v:,.0f}' for v in theirs)})")
    print(f"ratio xpcnn / PyTorch: {a / b:.2f}x")
    Path(args.json_out).write_text(json.dumps({"cpu": cpu, "xpcnn": ours, "torch": theirs, "threads": threads,
                                               "ratio": a / b}, indent=1))


if __name__ == "__main__":
    main()
