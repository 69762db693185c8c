#!/usr/bin/env bash
# The GPU check: run on a machine with a CUDA GPU and CuPy. Writes OUTDIR/summary.json and
# OUTDIR/gpu_check_logs.tgz (every step's log, the training metrics, the benchmark JSON).
#
#   scripts/gpu_check.sh OUTDIR
#
# It runs, most telling first: `xpcnn info`, `xpcnn gradcheck --device gpu`, `xpcnn check`
# (CPU/GPU parity after 100 SGD steps of lenet, float32 and float64), the test suite's cupy cases
# (-ra, so any skip shows; XPCNN_REQUIRE_GPU=1 turns "cupy unusable" into failures, not skips), a
# short `xpcnn train --preset lenet --device gpu`, the GPU benchmarks (P3, P4), then the rest of
# the test suite. Each step has its own time limit (490 s in all), so the check ends within the
# device tool's 600 s a command even if a step hangs; summary.json and the log archive are
# rewritten after every step, so even a run stopped from outside leaves what finished.
#
# The single-process GPU steps run first so that CuPy's on-disk kernel cache (CUPY_CACHE_DIR) is
# warm when the test workers start. TF32 is pinned off (CuPy's default, stated here so that an
# image setting CUPY_TF32 cannot loosen the float32 numbers: the test and parity bounds assume
# full FP32 products). Real MNIST comes from XPCNN_DATA_DIR (default:
# .data/mnist in the repository, git-ignored, or ../shared/data/mnist). Python packages missing
# on that machine come as wheels in .whl/.
#
# Preparing a run with the device tool (its H200 image, Python 3.12, has CuPy 14, NumPy, pytest,
# pytest-xdist, hypothesis, Pillow, matplotlib, tqdm and PyTorch, but not array-api-compat/-strict): here, in
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
    # On failure the steps still run (and show the ImportError): the summary then says what broke.
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl >"$logs/wheels.log" 2>&1; then
        export PYTHONPATH=/tmp/site
    else
        echo "gpu_check: installing the wheels in .whl/ failed (see wheels.log in the archive)" >&2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CUPY_CACHE_DIR=/tmp/cupy_kernel_cache CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0 XPCNN_REQUIRE_GPU=1
if [ -z "${XPCNN_DATA_DIR:-}" ]; then
    for d in .data/mnist ../shared/data/mnist; do
        [ -f "$d/train-images-idx3-ubyte.gz" ] && export XPCNN_DATA_DIR=$PWD/$d && break
    done
fi

summarize() {  # summary.json next to one archive of all logs (the tool returns <= 8 files); "print": show it
    python3 - "$logs" "$out" "${1:-}" <<'PY'
import json, pathlib, re, sys
logs, out = map(pathlib.Path, sys.argv[1:3])
def text(name):
    p = logs / name
    return p.read_text(errors="replace") if p.exists() else ""
def last_line(name):
    lines = text(name).strip().splitlines()
    return lines[-1] if lines else None
steps = [json.loads(line) for line in text("steps.jsonl").splitlines()]
summary = {"steps": steps, "gpu": text("nvidia-smi.txt").splitlines()[:12],
           "environment": text("env.txt").splitlines()}
for name in ("tests_gpu", "tests_rest"):  # pytest's last line: counts, errors, or where it stopped
    summary[name] = last_line(f"{name}.log")
    summary[name + "_problems"] = re.findall(r"^(?:FAILED|ERROR|SKIPPED) .*", text(f"{name}.log"), re.M)[:40]
for name in ("info", "gradcheck", "gradcheck_tutorial", "parity_float32", "parity_float64", "train", "bench"):
    lines = text(f"{name}.log").splitlines()
    summary[name] = lines[-40 if name == "bench" else -8:] if lines else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
if sys.argv[3] == "print":
    print(json.dumps({k: summary[k] for k in ("steps", "tests_gpu", "tests_rest")}, indent=2))
PY
    tar czf "$out/gpu_check_logs.tgz" -C "$logs" .
}
trap 'summarize print' EXIT

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record the exit code and seconds
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout --kill-after=5 "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo " (time limit $limit s)")"
    tail -n 3 "$logs/$name.log"
    [ $rc -eq 0 ] || status=1
    printf '{"step": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' "$name" "$rc" "$((SECONDS - start))" \
        "$limit" >>"$logs/steps.jsonl"
    summarize
}

nvidia-smi >"$logs/nvidia-smi.txt" 2>&1 || true
env | grep -E '^(CUPY_|NVIDIA_|CUDA_|XPCNN_|PYTHONPATH=)' | sort >"$logs/env.txt"
parallel=()
python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)  # pytest-xdist: the cases need not run in turn
# Eight test processes on 16 cores: two BLAS threads each, not sixteen.
blas2=(env OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 MKL_NUM_THREADS=2)
# The console-script test needs an installed `xpcnn` next to python3; here the package is on
# PYTHONPATH only (CI covers that test).
skip_console=(--deselect tests/test_cli.py::test_console_script_and_module_entry_points)

step info 20 python3 -m xpcnn info
step gradcheck 40 python3 -m xpcnn gradcheck --preset lenet --device gpu
step gradcheck_tutorial 30 python3 -m xpcnn gradcheck --preset tutorial-faithful --device gpu
step parity_float32 40 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float32
step parity_float64 40 python3 -m xpcnn check --preset lenet --devices cpu gpu --steps 100 --dtype float64
step tests_gpu 120 "${blas2[@]}" python3 -m pytest -ra -q -p no:cacheprovider "${parallel[@]}" -m gpu tests \
    "${skip_console[@]}"
step train 50 python3 -m xpcnn train --preset lenet --device gpu --epochs 2 --quiet \
    --metrics-out "$logs/train_metrics.jsonl" --checkpoint "$logs/lenet_gpu.npz"
rm -f "$logs/lenet_gpu.npz" "$logs/lenet_gpu.npz.prev"
step bench 90 python3 scripts/bench.py --device gpu --workloads P3,P4 --repeats 3 --crossover-sizes 32,128,512 \
    --p4-max-epochs 5 --json-out "$logs/bench-gpu.json"
# What CI also runs on its CPU: last, and only in parallel (in turn it would not fit).
if [ ${#parallel[@]} -gt 0 ]; then
    step tests_rest 60 "${blas2[@]}" python3 -m pytest -ra -q -p no:cacheprovider "${parallel[@]}" -m "not gpu" \
        tests xpcnn "${skip_console[@]}"
fi
exit $status
