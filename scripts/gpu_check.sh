#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU and CuPy. Writes OUTDIR/summary.json and
# OUTDIR/gpu_check_logs.tgz (every step's log, the training metrics, the benchmark JSON).
#
#   scripts/gpu_check.sh OUTDIR
#
# It runs: the whole test suite with the cupy backend (-ra, so any skip shows), `xpcnn info`,
# `xpcnn gradcheck --device gpu`, `xpcnn check` (CPU/GPU parity after 100 SGD steps of lenet,
# float32 and float64), a short `xpcnn train --preset lenet --device gpu`, and the GPU part of the
# benchmarks (P3, P4, P5). Each step has its own time limit (550 s in all), so the whole check
# ends within the device tool's 600 s a command even if a step hangs, and the summary is written
# on exit whatever happened. Real MNIST comes from XPCNN_DATA_DIR (default:
# .data/mnist in the repository, git-ignored, or ../shared/data/mnist). Python packages missing
# on that machine come as wheels in .whl/.
#
# Preparing a run with the device tool (its H200 image has CuPy 14, NumPy, pytest, pytest-xdist,
# hypothesis, Pillow, matplotlib, tqdm and PyTorch, but not array-api-compat/-strict): here, in
# the repository (.whl/ and .data/ are git-ignored),
#   mkdir -p .data && cp -r ../shared/data/mnist .data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl array-api-compat array-api-strict
# then run it with carry [".whl", ".data"] and: bash scripts/gpu_check.sh "$OUT"
set -uo pipefail
out=$(realpath -m "${1:?usage: scripts/gpu_check.sh OUTDIR}")
mkdir -p "$out"
cd "$(dirname "$0")/.." || exit 1
logs=$(mktemp -d)

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "gpu_check: installing the wheels in .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${XPCNN_DATA_DIR:-}" ]; then
    for d in .data/mnist ../shared/data/mnist; do
        [ -f "$d/train-images-idx3-ubyte.gz" ] && export XPCNN_DATA_DIR=$PWD/$d && break
    done
fi

finish() {  # on any exit: summary.json next to one archive of all logs (the tool returns <= 8 files)
    python3 - "$logs" "$out" <<'PY'
import json, pathlib, re, sys
logs, out = map(pathlib.Path, sys.argv[1:])
steps = [json.loads(line) for line in (logs / "steps.jsonl").read_text().splitlines()] \
    if (logs / "steps.jsonl").exists() else []
tests = (logs / "tests.log").read_text() if (logs / "tests.log").exists() else ""
summary = {"steps": steps,
           "tests": (re.findall(r"^(?:=+ )?(\d+ (?:passed|failed).*?) in [\d.]+s", tests, re.M) or [""])[-1],
           "gpu": (logs / "nvidia-smi.txt").read_text().splitlines()[:12] if (logs / "nvidia-smi.txt").exists() else []}
for name in ("info", "gradcheck", "gradcheck_tutorial", "parity_float32", "parity_float64", "train", "bench"):
    p = logs / f"{name}.log"
    summary[name] = p.read_text().splitlines()[-30 if name == "bench" else -6:] if p.exists() else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: summary[k] for k in ("steps", "tests")}, indent=2))
PY
    tar czf "$out/gpu_check_logs.tgz" -C "$logs" .
}
trap finish EXIT

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record the exit code and seconds
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))$([ $rc -eq 124 ] && echo " (time limit $limit s)")"
    tail -n 3 "$logs/$name.log"
    [ $rc -eq 0 ] || status=1
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' "$name" "$rc" "$((SECONDS - start))" \
        "$limit" >>"$logs/steps.jsonl"
}

nvidia-smi >"$logs/nvidia-smi.txt" 2>&1 || true
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)  # pytest-xdist: the CPU cases need not run in turn
step info 30 python3 -m xpcnn info
# The console-script test needs an installed `xpcnn` next to python3; here the package is on
# PYTHONPATH only (CI covers that test).
step tests 180 python3 -m pytest -ra -q -p no:cacheprovider "${parallel[@]}" tests xpcnn \
    --deselect tests/test_cli.py::test_console_script_and_module_entry_points
step gradcheck 45 python3 -m xpcnn gradcheck --preset lenet --device gpu
step gradcheck_tutorial 45 python3 -m xpcnn gradcheck --preset tutorial-faithful --device gpu
step parity_float32 45 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float32
step parity_float64 45 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float64
step train 60 python3 -m xpcnn train --preset lenet --device gpu --epochs 2 --quiet \
    --metrics-out "$logs/train_metrics.jsonl" --checkpoint "$logs/lenet_gpu.npz"
step bench 100 python3 scripts/bench.py --device gpu --repeats 3 --p4-max-epochs 5 --json-out "$logs/bench-gpu.json"
rm -f "$logs/lenet_gpu.npz" "$logs/lenet_gpu.npz.prev"
exit $status
