#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU and CuPy. Writes logs and summary.json to OUTDIR.
#
#   scripts/gpu_check.sh OUTDIR
#
# It runs: the whole test suite with the cupy backend (-ra, so any skip shows), `xpcnn info`,
# `xpcnn gradcheck --device gpu`, `xpcnn check` (CPU/GPU parity after 100 SGD steps of lenet),
# a short `xpcnn train --preset lenet --device gpu`, and the GPU part of the benchmarks.
# Real MNIST comes from XPCNN_DATA_DIR (default: .data/mnist in the repository, git-ignored,
# or ../shared/data/mnist). Python packages missing on that machine can come as wheels in .whl/.
#
# Preparing a run with the device tool (the GPU machine has CuPy, NumPy, pytest, tqdm, PyTorch but
# not array-api-compat/-extra/-strict, hypothesis, Pillow, matplotlib, mpi4py): here, in the repo,
#   mkdir -p .data && cp -r ../shared/data/mnist .data/          # .data/ is git-ignored
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl array-api-compat array-api-extra array-api-strict hypothesis sortedcontainers attrs \
#       pillow matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six
# then run it with carry [".whl", ".data"] and: bash scripts/gpu_check.sh "$OUT"
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${XPCNN_DATA_DIR:-}" ]; then
    for d in .data/mnist ../shared/data/mnist; do
        [ -f "$d/train-images-idx3-ubyte.gz" ] && export XPCNN_DATA_DIR=$PWD/$d && break
    done
fi

status=0
step() {  # step NAME COMMAND...: run, log to OUTDIR/NAME.log, record the exit code and seconds
    local name=$1; shift
    local start=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$out/steps.txt"
    tail -n 3 "$out/$name.log"
    [ $rc -eq 0 ] || status=1
    printf '{"step": "%s", "rc": %d, "seconds": %d}\n' "$name" "$rc" "$((SECONDS - start))" >>"$out/steps.jsonl"
}

nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
step info python3 -m xpcnn info
step tests python3 -m pytest -ra -q -p no:cacheprovider tests xpcnn
step gradcheck python3 -m xpcnn gradcheck --preset lenet --device gpu
step gradcheck_tutorial python3 -m xpcnn gradcheck --preset tutorial-faithful --device gpu
step parity_float32 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float32
step parity_float64 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float64
step train python3 -m xpcnn train --preset lenet --device gpu --epochs 2 --quiet \
    --metrics-out "$out/train_metrics.jsonl" --checkpoint "$out/lenet_gpu.npz"
step bench python3 scripts/bench.py --device gpu --json-out "$out/bench-gpu.json"

python3 - "$out" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
tests = (out / "tests.log").read_text() if (out / "tests.log").exists() else ""
summary = {"steps": steps, "tests": (re.findall(r"=+ (.*) in [\d.]+s", tests) or [""])[-1],
           "gpu": (out / "nvidia-smi.txt").read_text().splitlines()[:12]}
for name in ("info", "parity_float32", "parity_float64", "gradcheck"):
    p = out / f"{name}.log"
    summary[name] = p.read_text().splitlines()[-3:] if p.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
exit $status
