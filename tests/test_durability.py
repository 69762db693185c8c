"""Checkpoints survive kill -9 and full disks; a resumed run is bit-identical to an unbroken one."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from xpcnn.cli import main
from xpcnn.saving.checkpoint import load_checkpoint, previous_path


def _train_cmd(data_dir, ckpt, epochs=4, *extra):
    return [sys.executable, "-m", "xpcnn", "train", "--preset", "lenet", "--data-dir", str(data_dir),
            "--train-size", "2000", "--test-size", "200", "--epochs", str(epochs), "--batch-size", "32",
            "--checkpoint", str(ckpt), "--quiet", *extra]


def _env():
    return dict(os.environ, XPCNN_DEVICE="cpu", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


def _epoch_of(path):
    try:
        return load_checkpoint(path)[0]["epoch"]
    except Exception:
        return 0


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, tiny_data_dir):
    straight = tmp_path / "straight.npz"
    subprocess.run(_train_cmd(tiny_data_dir, straight), check=True, env=_env(), timeout=600)

    broken = tmp_path / "broken.npz"
    proc = subprocess.Popen(_train_cmd(tiny_data_dir, broken), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while _epoch_of(broken) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # well inside epoch 2
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    killed_at = _epoch_of(broken)
    assert 1 <= killed_at < 4, "the run must be killed before it finished"

    resumed = subprocess.run(_train_cmd(tiny_data_dir, broken, 4, "--resume"), env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {broken}" in resumed.stdout or f"after epoch {killed_at}" in resumed.stdout

    h1, a1 = load_checkpoint(straight)
    h2, a2 = load_checkpoint(broken)
    assert h1["epoch"] == h2["epoch"] == 4
    assert sorted(a1) == sorted(a2)
    for name in a1:
        np.testing.assert_array_equal(a1[name], a2[name], err_msg=name)  # weights and Adam state
    assert h1["history"]["loss"] == h2["history"]["loss"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_data_dir, monkeypatch, capsys):
    ckpt = tmp_path / "c.npz"
    argv = ["train", "--preset", "tutorial", "--data-dir", str(tiny_data_dir), "--quiet", "--checkpoint", str(ckpt)]
    assert main([*argv, "--epochs", "2"]) == 0
    before = ckpt.read_bytes()
    capsys.readouterr()

    real_fsync = os.fsync

    def full_disk(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    code = main([*argv, "--epochs", "4", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name not in {"c.npz", previous_path(ckpt).name}]


@pytest.mark.parametrize("damaged", ["truncate", "garbage"])
def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, tiny_data_dir, capsys, damaged):
    ckpt = tmp_path / "c.npz"
    argv = ["train", "--preset", "tutorial", "--data-dir", str(tiny_data_dir), "--quiet", "--checkpoint", str(ckpt)]
    assert main([*argv, "--epochs", "3"]) == 0
    assert previous_path(ckpt).exists()
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3] if damaged == "truncate" else os.urandom(len(data)))
    capsys.readouterr()
    assert main([*argv, "--epochs", "4", "--resume"]) == 0
    out = capsys.readouterr().out
    assert ".prev after epoch 2" in out
    assert load_checkpoint(ckpt)[0]["epoch"] == 4
