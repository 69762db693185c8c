"""The benchmark's plumbing (not its speed): worker processes, the table, the JSON file."""

from __future__ import annotations

import json

import pytest

from xpcnn.bench import main


def test_quick_p5_runs_workers_and_writes_table_and_json(mnist_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--workloads", "P5", "--quick", "--data-dir", str(mnist_dir), "--json-out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "xpcnn peak RSS (cpu, 20 steps b=128)" in table and f"wrote {out}" in table
    result = json.loads(out.read_text())
    row = next(r for r in result["rows"] if r["name"].startswith("xpcnn peak RSS"))
    assert 50 < row["median"] < 2000 and row["unit"] == "MB"  # a real measurement of a real process
    assert "worker_malloc" in result["machine"] and result["workloads"] == ["P5"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--threads", "abc"], "--threads: expected a positive integer, received 'abc'"),
    (["--batch-sizes", "0"], "--batch-sizes: expected a positive integer, received '0'"),
    (["--repeats", "-3"], "--repeats: expected a positive integer"),
    (["--p4-lr", "nan"], "--p4-lr: expected a finite positive number"),
    (["--workloads", "P9"], "--workloads: unknown P9"),
    (["--json-out", "/proc/no/such.json"], "--json-out /proc/no/such.json: expected a file in an existing"),
])
def test_bad_options_are_usage_errors_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_a_failed_workload_is_a_row_and_a_non_zero_exit(tmp_path, capsys):
    (tmp_path / "empty").mkdir()  # a data folder without MNIST: the P4 worker fails
    code = main(["--workloads", "P4", "--quick", "--data-dir", str(tmp_path / "empty"),
                 "--json-out", str(tmp_path / "b.json")])
    out, err = capsys.readouterr()
    assert code == 1 and "P4        error" in out and "P4 failed" in err


def test_a_missing_peer_framework_is_named_not_dumped():
    from xpcnn.bench.runner import _worker_failed

    output = ('Traceback (most recent call last):\n  File "workers.py", line 68, in worker_p1_torch\n'
              "    import torch\nModuleNotFoundError: No module named 'torch'\n")
    assert str(_worker_failed("p1t worker failed (exit 1)", output)) == \
        "torch is not installed (the 'bench' extra installs the peers: pip install -e '.[bench]')"
    assert str(_worker_failed("p4 worker failed (exit 1)", "a\nb\nDataError: no MNIST\n")) == \
        "p4 worker failed (exit 1): a | b | DataError: no MNIST"


def test_the_json_is_written_after_each_workload(tmp_path, capsys, monkeypatch):
    # A run stopped from outside (a time limit) keeps the workloads that finished.
    import xpcnn.bench.runner as runner

    out = tmp_path / "b.json"
    seen = []

    def fake_p4(kind, params, threads):
        return {"rows": [runner._row("P4", "fake", [1.0], "s", "")]}

    def fake_p5(params, repeats, threads):
        seen.append(json.loads(out.read_text())["rows"])  # what a reader sees while P5 runs
        return []

    monkeypatch.setattr(runner, "_run_worker", fake_p4)
    monkeypatch.setattr(runner, "run_p5", fake_p5)
    assert main(["--workloads", "P4,P5", "--quick", "--json-out", str(out)]) == 0
    assert [r["name"] for r in seen[0]] == ["fake"]


def test_the_header_names_cpu_usable_cores_blas_and_how_threads_are_given(tmp_path, capsys, monkeypatch):
    import inspect
    import os

    import xpcnn.bench.runner as runner
    from xpcnn import Sequential

    monkeypatch.setattr(runner, "_run_worker", lambda kind, params, threads: {"rows": []})
    out = tmp_path / "b.json"
    assert main(["--workloads", "P4", "--quick", "--json-out", str(out)]) == 0
    header = capsys.readouterr().out.split("workload")[0]
    machine = json.loads(out.read_text())["machine"]
    assert machine["usable_cores"] == len(os.sched_getaffinity(0)) and "BLAS: " + machine["blas_build"] in header
    assert f"usable cores {machine['usable_cores']} of" in header and machine["cpu_model"] in header
    mode = "fit" if "threads" in inspect.signature(Sequential.fit).parameters else "blas"
    assert machine["xpcnn_threads"] == mode and ("fit(threads=N)" if mode == "fit" else "BLAS threads") in header


def test_count_ops_measures_the_launch_budget_of_a_step(tmp_path, capsys):
    # scripts/count_ops.py: the array operations (kernel launches on a GPU) of one LeNet step
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "count_ops.py"
    out = tmp_path / "ops.json"
    assert runpy.run_path(str(script))["main"](["--batch-size", "4", "--json-out", str(out)]) == 0
    rows = {(r["optimizer"], r["phase"]): r for r in json.loads(out.read_text())["rows"]}
    # Adam's update runs once on one flat vector: about a dozen operations plus one subtraction
    # per parameter array (LeNet has 10), not a dozen per array (120)
    assert 11 + 10 <= rows["adam", "optimizer"]["kernels"] <= 25
    assert rows["sgd", "optimizer"]["kernels"] == 20  # lr·g and p -= ..., per array
    parts = sum(rows["adam", p]["kernels"] for p in ("forward", "loss", "backward", "optimizer"))
    assert parts <= rows["adam", "whole train_step"]["kernels"] <= parts + 10  # + the step's accuracy
    # 2 convs: one matmul per kernel row (5 each, see im2col.shifted_columns); 3 dense: one each
    assert rows["adam", "forward"]["by_name"]["matmul"] == 13
    # the launch budget of a small-batch step (BENCHMARKS.md): more array calls is a GPU regression
    assert rows["adam", "whole train_step"]["kernels"] <= 237
    assert "LeNet-5" in capsys.readouterr().out


def test_per_kernel_comparison_runs_every_lenet_kernel_against_torch(tmp_path, capsys):
    pytest.importorskip("torch", reason="the per-kernel comparison needs PyTorch (an optional peer)")
    from xpcnn.bench import kernels

    out = tmp_path / "k.json"
    assert kernels.main(["--batch-sizes", "4", "--rounds", "1", "--json-out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 15 and all(r["xpcnn_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
    assert "conv2 6→16 valid backward" in capsys.readouterr().out
