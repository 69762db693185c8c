"""The benchmark's plumbing (not its speed): worker processes, the table, the JSON file."""

from __future__ import annotations

import json

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
