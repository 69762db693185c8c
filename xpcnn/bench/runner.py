"""The orchestrator: starts the workers, alternates the sides, builds the table and the JSON."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..argtypes import path_arg, positive_float, positive_int, positive_int_list, writable_file
from ..backend import gpu_problem
from ..backend.hostmem import keep_freed_host_memory
from ..errors import InputError
from .common import BLAS_ENV, CPU_WORKLOADS, GPU_WORKLOADS, REPO, _note, _row
from .machine import format_header, machine_info, usable_cores
from .workers import WORKERS


class _Server:
    """A :func:`worker_p2` child process: ``run(bs, steps)`` -> seconds."""

    def __init__(self, params, threads):
        self.proc = subprocess.Popen(_worker_cmd("p2", params), env=_worker_env(threads), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise _worker_failed("P2 worker exited", self.proc.stderr.read())
        return json.loads(line)

    def run(self, bs, steps):
        self.proc.stdin.write(f"run {bs} {steps}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def run_p2(params, threads):
    """xpcnn vs torch LeNet training at ``threads`` threads: warm-up, then A B / B A blocks."""
    tag, rows = f"t={threads}", []
    mode = None
    sides = {"xpcnn": _Server(dict(params, side="xpcnn", threads=threads), threads)}
    why = {}
    for peer in ("torch", "keras"):
        try:
            sides[peer] = _Server(dict(params, side=peer, threads=threads), threads)
        except RuntimeError as exc:
            why[peer] = str(exc)
    try:
        flops, ceiling = sides["xpcnn"].info["flops_per_image"], sides["xpcnn"].info["sgemm_gflops"]
        mode = sides["xpcnn"].info["thread_mode"]
        for bs in params["batch_sizes"]:
            steps = max(2, params["images_per_block"] // bs)
            for side in sides.values():
                side.run(bs, steps)  # warm-up
            rates = {k: [] for k in sides}
            for r in range(params["repeats"]):
                for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                    rates[k].append(bs * steps / sides[k].run(bs, steps))
            achieved = statistics.median(rates["xpcnn"]) * flops / 1e9
            ratio = ""
            if "torch" in rates:
                ratio = f"{statistics.median(rates['xpcnn']) / statistics.median(rates['torch']):.2f}x torch; "
            ratio += f"{achieved:.1f} GFLOP/s = {100 * achieved / ceiling:.0f}% of sgemm"
            rows.append(_row("P2", f"xpcnn numpy  b={bs} {tag} ({mode})", rates["xpcnn"], "img/s", ratio, batch=bs,
                             threads=threads, thread_mode=mode, gflops=achieved, sgemm_fraction=achieved / ceiling))
            for peer, label in (("torch", "torch cpu   "), ("keras", "keras/torch ")):
                if peer in rates:
                    vs = statistics.median(rates["xpcnn"]) / statistics.median(rates[peer])
                    rows.append(_row("P2", f"{label} b={bs} {tag}", rates[peer], "img/s",
                                     f"xpcnn = {vs:.2f}x this", batch=bs, threads=threads))
                else:
                    rows.append(_note("P2", f"{label} b={bs} {tag}", f"unavailable: {why[peer]}"))
    finally:
        for side in sides.values():
            side.close()
    rows.append(_row("P2", f"sgemm ceiling (numpy, 2048^3) {tag}", [ceiling], "GFLOP/s",
                     f"LeNet training step = {flops / 1e6:.2f} MFLOP/img", flops_per_image=flops))
    return rows




def _worker_env(threads):
    env = dict(os.environ)
    for key in BLAS_ENV:
        env[key] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _worker_cmd(kind, params):
    return [sys.executable, "-m", "xpcnn.bench", "--worker", kind, "--params", json.dumps(params)]


def _run_worker(kind, params, threads):
    """Run ``WORKERS[kind](params)`` in a fresh interpreter with ``threads`` BLAS/OpenMP threads."""
    proc = subprocess.run(_worker_cmd(kind, params), env=_worker_env(threads), capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise _worker_failed(f"{kind} worker failed (exit {proc.returncode})", proc.stderr or proc.stdout)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker_failed(what, output):
    """A worker's failure as one line: a missing peer framework by name, else the output's end."""
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", output)
    if missing:
        return RuntimeError(f"{missing.group(1).split('.')[0]} is not installed (the 'bench' extra installs the "
                            "peers: pip install -e '.[bench]')")
    return RuntimeError(f"{what}: " + " | ".join(output.strip().splitlines()[-5:]))


def run_p5(params, repeats, threads):
    peaks = {"xpcnn": [], "torch": []}
    base = {"xpcnn": [], "torch": []}
    pools = []
    rows = []
    for r in range(repeats):
        for fw in (("xpcnn", "torch") if r % 2 == 0 else ("torch", "xpcnn")):
            if peaks[fw] is None:  # failed once (no torch): not started again
                continue
            try:
                out = _run_worker("p5", dict(params, framework=fw), threads)
            except RuntimeError as exc:
                if fw == "torch":
                    peaks["torch"] = None
                    rows.append(_note("P5", "torch peak RSS", f"unavailable: {exc}"))
                    continue
                raise
            if peaks[fw] is not None:
                peaks[fw].append(out["peak_mb"])
                base[fw].append(out["after_data_mb"])
            if "gpu_pool_mb" in out:
                pools.append(out["gpu_pool_mb"])
    ratio = ""
    if peaks["torch"]:
        ratio = f"{statistics.median(peaks['xpcnn']) / statistics.median(peaks['torch']):.2f}x torch (target <= 0.5x)"
    job = f"{params['steps']} steps b={params['batch_size']}"
    rows.insert(0, _row("P5", f"xpcnn peak RSS ({params['device']}, {job})", peaks["xpcnn"], "MB", ratio,
                        after_data_mb=statistics.median(base["xpcnn"])))
    if peaks["torch"]:
        rows.insert(1, _row("P5", f"torch peak RSS (cpu, {job})", peaks["torch"], "MB", "",
                            after_data_mb=statistics.median(base["torch"])))
    for row in rows:
        if row.get("after_data_mb"):
            row["ratio"] = (row["ratio"] + "; " if row["ratio"] else "") + \
                f"after imports + uint8 MNIST train set {row['after_data_mb']:.0f} MB"
    if params["device"] == "gpu" and pools:
        rows.append(_row("P5", "xpcnn GPU memory pool high-water mark", pools, "MB",
                         "CuPy pool bytes held after the job"))
    return rows


def format_table(rows):
    def num(v):
        if v is None:
            return ""
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 0.1:
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return f"{v:.3g}"

    lines = [f"{'workload':<8}  {'name':<46}  {'median':>10}  {'min–max':>21}  {'unit':<7}  ratio"]
    for r in rows:
        span = f"{num(r['min'])}–{num(r['max'])}" if r.get("min") is not None else ""
        tail = r.get("note") or r.get("ratio", "")
        lines.append(f"{r['workload']:<8}  {r['name']:<46}  {num(r.get('median')):>10}  {span:>21}  "
                     f"{r['unit']:<7}  {tail}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(prog="xpcnn bench", description="xpcnn benchmarks (see BENCHMARKS.md)")
    p.add_argument("--workloads", help="comma-separated subset of P1,P2,P3,P4,P5 "
                   "(default: P1,P2,P4,P5 on --device cpu, P3,P4,P5 on --device gpu)")
    p.add_argument("--repeats", type=positive_int, default=7, help="measured blocks per comparison (default 7)")
    p.add_argument("--json-out", type=path_arg, default="bench-results.json", help="where to write the JSON results")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="device for P4/P5 (P2 is CPU, P3 GPU)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats, one batch size, short P4")
    p.add_argument("--threads", type=positive_int_list, default=None,
                   help="comma-separated thread counts for P2 (default: '1,2,<usable cores>'); P5 uses the last")
    p.add_argument("--batch-sizes", type=positive_int_list, default=None,
                   help="comma-separated P2 batch sizes (default 32,128,512)")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="MNIST folder (default: $XPCNN_DATA_DIR, then the Keras cache)")
    p.add_argument("--crossover-sizes", type=positive_int_list, default=None,
                   help="comma-separated batch sizes of P3's GPU-vs-CPU sweep (default 16,32,...,1024; "
                        "none with --quick)")
    p.add_argument("--p4-lr", type=positive_float, default=4e-3, help="P4 Adam learning rate of epoch 1 (default 4e-3)")
    p.add_argument("--p4-decay", type=positive_float, default=0.4,
                   help="P4 learning-rate factor per epoch (default 0.4)")
    p.add_argument("--p4-batch-size", type=positive_int, default=128, help="P4 batch size (default 128)")
    p.add_argument("--p4-max-epochs", type=positive_int, default=10, help="P4 epoch limit (default 10)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `xpcnn bench -- --quick`: the CLI hands over everything after "bench"
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.worker:  # child process: one measurement, one JSON line on stdout
        # Every worker, xpcnn's and PyTorch's alike, runs with the malloc policy Sequential.fit
        # sets (freed memory kept for reuse, xpcnn.backend.hostmem): same allocator for both sides.
        keep_freed_host_memory()
        result = WORKERS[args.worker](json.loads(args.params))
        if result is not None:
            print(json.dumps(result))
        return 0
    cores = usable_cores()
    default = CPU_WORKLOADS if args.device == "cpu" else GPU_WORKLOADS
    workloads = [w.strip().upper() for w in args.workloads.split(",")] if args.workloads else list(default)
    unknown = sorted(set(workloads) - {"P1", "P2", "P3", "P4", "P5"})
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; expected a subset of P1,P2,P3,P4,P5")
    try:
        writable_file(args.json_out, "--json-out")
    except InputError as exc:
        parser.error(f"--json-out {args.json_out}: expected a file in an existing, writable folder ({exc})")
    threads = args.threads or sorted({1, min(2, cores), cores})
    repeats = 3 if args.quick else args.repeats
    data_dir = args.data_dir  # None: the workers' load_dataset looks in XPCNN_DATA_DIR, then the Keras cache
    notes = []
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        notes.append("OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set: NumPy's BLAS may not use this CPU's own kernels")
    rows = []
    started = time.perf_counter()

    def write_json():  # after every workload too: a run stopped by a time limit keeps what finished
        result = {"machine": machine, "args": vars(args), "workloads": workloads, "threads": threads,
                  "seconds": time.perf_counter() - started, "notes": notes, "rows": rows}
        Path(args.json_out).write_text(json.dumps(result, indent=2, default=str))

    machine = machine_info()
    print(format_header(machine), flush=True)
    for w in workloads:
        t0 = time.perf_counter()
        print(f"[bench] {w} ...", file=sys.stderr, flush=True)
        try:
            if w == "P1":
                p1 = {"data_dir": data_dir, "repeats": 2 if args.quick else min(repeats, 5), "inner": 20,
                      "threads": cores}
                rows += _run_worker("p1", p1, cores)["rows"]
                if rows[-1]["name"].startswith("xpcnn"):
                    try:
                        theirs = _run_worker("p1t", p1, cores)["seconds"]
                        base = rows[-2]["median"]
                        rows.append(_row("P1", "torch cpu, same net (context; own process)", theirs, "s/iter",
                                         f"{base / statistics.median(theirs):,.0f}x faster than the baseline"))
                    except RuntimeError as exc:
                        rows.append(_note("P1", "torch cpu, same net (context)", f"unavailable: {exc}"))
            elif w == "P2":
                sizes = args.batch_sizes if args.batch_sizes else \
                    ([128] if args.quick else [32, 128, 512])
                for t in ([threads[-1]] if args.quick else threads):
                    rows += run_p2({"data_dir": data_dir, "repeats": repeats, "batch_sizes": sizes,
                                    "images_per_block": 4096}, t)
            elif w == "P3":
                out = _run_worker("p3", {"data_dir": data_dir, "repeats": repeats,
                                         "batch_sizes": [256] if args.quick else [64, 256, 1024],
                                         "crossover_sizes": args.crossover_sizes or
                                         ([] if args.quick else [16, 32, 64, 128, 256, 512, 1024]),
                                         "images_per_block": 8192}, cores)
                rows += out["rows"]
            elif w == "P4":
                out = _run_worker("p4", {"data_dir": data_dir, "device": args.device, "lr": args.p4_lr,
                                         "decay": args.p4_decay,
                                         "batch_size": args.p4_batch_size, "target": 0.99, "quick": args.quick,
                                         "max_epochs": 1 if args.quick else args.p4_max_epochs}, cores)
                rows += out["rows"]
            elif w == "P5":
                rows += run_p5({"data_dir": data_dir, "device": args.device, "steps": 20 if args.quick else 50,
                                "batch_size": 128, "threads": threads[-1]}, 1 if args.quick else 3, threads[-1])
        except Exception as exc:  # one broken workload must not hide the others
            rows.append(_note(w, "error", f"not measured: {type(exc).__name__}: {exc}"))
        print(f"[bench] {w} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        write_json()
    if "P3" not in workloads and not args.workloads:  # the full CPU run says why P3 is missing

        problem = gpu_problem()
        rows.append(_note("P3", "xpcnn cupy vs torch cuda", f"not yet measured: no usable GPU ({problem})"
                          if problem else "not measured: not requested (run with --device gpu)"))
    print(format_table(rows))
    for n in notes:
        print("note:", n)
    write_json()
    print(f"wrote {args.json_out}")
    failed = [r["workload"] for r in rows if r["name"] == "error"]
    if failed:
        print(f"xpcnn bench: {', '.join(failed)} failed (see the table)", file=sys.stderr)
    return 1 if failed else 0
