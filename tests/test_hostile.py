"""Hostile inputs of GitHub issue #14: one regression test per defect found (each failed before the
fix). Outputs that are no plain files or collide, checkpoints whose header lies, and inputs that
are missing, malformed or not finite: every one is exit 2 (an InputError) with one line naming the
path or argument, never a hang, a traceback or a lost epoch."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import xpcnn
from xpcnn.cli import main
from xpcnn.data import load_npz_dataset, read_idx
from xpcnn.errors import CheckpointError, DataError, InputError
from xpcnn.presets import build_model, get_preset
from xpcnn.saving.checkpoint import load_checkpoint, previous_path

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and devices are POSIX")


@pytest.fixture(autouse=True)
def no_hang(monkeypatch):
    """A blocking open() becomes a failure after 20 s instead of a hung test run."""
    monkeypatch.delenv("XPCNN_DEVICE", raising=False)

    def hung(signum, frame):
        raise AssertionError("the command blocked (hang) on a path")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def train(data_dir, *extra, epochs=1):
    return ["train", "--preset", "lenet", "--data-dir", data_dir, "--train-size", 64, "--test-size", 32,
            "--epochs", epochs, "--batch-size", 32, "--quiet", *extra]


def lenet_checkpoint(path):
    model = build_model(get_preset("lenet"), device="cpu").compile("sgd", loss="softmax_cross_entropy")
    return model.save(path, extra={"preset": "lenet", "dataset": "mnist", "task": "classes"})


def small_checkpoint(path, units=10):
    model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(units)], input_shape=(1, 28, 28))
    return model.compile("adam").save(path)


def rewrite(path, change=None, *, compression=zipfile.ZIP_STORED):
    """Write the checkpoint at ``path`` again with ``change(header)`` applied (the digest of the arrays
    stays right: only the header lies)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    header = json.loads(bytes(arrays.pop("__header__")))
    if change is not None:
        change(header)
    arrays = {"__header__": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, a, allow_pickle=False)
    return path


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


# ----------------------------------------------------------- outputs that are no plain files
@pytest.mark.parametrize("command", ["evaluate", "predict", "summary", "resume"])
def test_1_a_fifo_checkpoint_is_refused_not_waited_on(command, fifo, tmp_path, tiny_data_dir, capsys):
    argv = {"evaluate": ["evaluate", "--checkpoint", fifo, "--data-dir", tiny_data_dir],
            "predict": ["predict", "--checkpoint", fifo, tmp_path / "x.png"],
            "summary": ["summary", "--checkpoint", fifo],
            "resume": train(tiny_data_dir, "--checkpoint", fifo, "--resume")}[command]
    code, _, err = run(argv, capsys)
    assert code == 2 and "FIFO" in err and str(fifo) in err


def test_1_a_fifo_metrics_out_is_refused_before_training(fifo, tiny_data_dir, capsys):
    code, _, err = run(train(tiny_data_dir, "--metrics-out", fifo), capsys)
    assert code == 2 and f"--metrics-out {fifo} is a FIFO" in err


def test_2_a_device_is_never_replaced_and_never_offered_overwrite(tmp_path, tiny_data_dir, capsys):
    code, _, err = run(train(tiny_data_dir, "--checkpoint", "/dev/null"), capsys)
    assert code == 2 and "/dev/null is a character device" in err and "--overwrite" not in err
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("mknod of a character device needs root")
    code, _, err = run(train(tiny_data_dir, "--checkpoint", device, "--overwrite"), capsys)
    assert code == 2 and "character device" in err
    assert stat.S_ISCHR(os.lstat(device).st_mode) and not previous_path(device).exists()


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_3_metrics_out_on_a_device_is_refused_before_training(device, tmp_path, tiny_data_dir, capsys):
    if not os.path.exists(device):
        pytest.skip(f"no {device} here")
    code, _, err = run(train(tiny_data_dir, "--checkpoint", tmp_path / "m.npz", "--metrics-out", device), capsys)
    assert code == 2 and f"--metrics-out {device} is a character device" in err
    assert not (tmp_path / "m.npz").exists()


def test_3_the_checkpoint_is_saved_before_metrics_and_a_metrics_failure_says_so(
        tmp_path, tiny_data_dir, capsys, monkeypatch):
    from xpcnn.cli import train as commands

    def disk_full(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(commands.MetricsFile, "write", disk_full)
    ckpt = tmp_path / "m.npz"
    code, _, err = run(train(tiny_data_dir, "--checkpoint", ckpt, "--metrics-out", tmp_path / "m.jsonl"), capsys)
    assert code == 2 and "No space left" in err and f"epoch 1 is saved in {ckpt}" in err
    assert load_checkpoint(ckpt)[0]["epoch"] == 1


def test_3_a_plots_failure_after_training_keeps_the_checkpoint(tmp_path, tiny_data_dir, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from xpcnn.cli import train as commands

    def unwritable(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(commands, "_plots_after", unwritable)
    ckpt = tmp_path / "m.npz"
    code, _, err = run(train(tiny_data_dir, "--checkpoint", ckpt, "--plots", tmp_path / "pics"), capsys)
    assert code == 2 and "--plots" in err and f"epoch 1 is saved in {ckpt}" in err
    assert load_checkpoint(ckpt)[0]["epoch"] == 1


@pytest.mark.parametrize("same", ["path", "prev", "symlink", "hardlink"])
def test_4_two_outputs_on_one_file_are_refused(same, tmp_path, tiny_data_dir, capsys):
    ckpt = tmp_path / "m.npz"
    metrics = {"path": ckpt, "prev": previous_path(ckpt), "symlink": tmp_path / "link",
               "hardlink": tmp_path / "hard"}[same]
    if same == "symlink":
        metrics.symlink_to(ckpt)
    if same == "hardlink":
        ckpt.write_text("")
        os.link(ckpt, metrics)
    code, _, err = run(train(tiny_data_dir, "--checkpoint", ckpt, "--metrics-out", metrics, "--overwrite"), capsys)
    assert code == 2 and "are the same file" in err and "--metrics-out" in err


def test_5_a_damaged_checkpoint_never_replaces_an_earlier_damaged_one(tmp_path, tiny_data_dir, capsys):
    ckpt = tmp_path / "m.npz"
    assert run(train(tiny_data_dir, "--checkpoint", ckpt), capsys)[0] == 0
    assert run(train(tiny_data_dir, "--checkpoint", ckpt, "--resume", epochs=2), capsys)[0] == 0
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # damaged; its .prev (epoch 1) is intact
    earlier = ckpt.with_name("m.npz.damaged")
    earlier.write_bytes(b"kept from an earlier crash")
    code, out, _ = run(train(tiny_data_dir, "--checkpoint", ckpt, "--resume", epochs=2), capsys)
    assert code == 0 and "kept as m.npz.damaged.1" in out
    assert earlier.read_bytes() == b"kept from an earlier crash"
    assert ckpt.with_name("m.npz.damaged.1").stat().st_size == 100


def test_6_a_symlinked_checkpoint_stays_a_link_and_its_target_is_written(tmp_path, tiny_data_dir, capsys):
    (tmp_path / "store").mkdir()
    target, link = tmp_path / "store" / "m.npz", tmp_path / "m.npz"
    link.symlink_to(target)  # dangling: the first save creates the target
    assert run(train(tiny_data_dir, "--checkpoint", link), capsys)[0] == 0
    assert link.is_symlink() and load_checkpoint(target)[0]["epoch"] == 1
    assert run(train(tiny_data_dir, "--checkpoint", link, "--resume", epochs=2), capsys)[0] == 0
    assert link.is_symlink() and load_checkpoint(target)[0]["epoch"] == 2
    assert load_checkpoint(previous_path(link))[0]["epoch"] == 1 and previous_path(link).parent == target.parent


def test_7_a_file_without_metrics_is_not_said_to_hold_metrics(tmp_path, tiny_data_dir, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not metrics\n")
    code, _, err = run(train(tiny_data_dir, "--metrics-out", notes), capsys)
    assert code == 2 and "holds no xpcnn metrics" in err and "earlier run" not in err
    assert notes.read_text() == "my notes, not metrics\n"


# ------------------------------------------------------------ checkpoints whose header lies
@pytest.mark.parametrize("field, value", [("epoch", "one"), ("epoch", -1), ("seed", "x"),
                                          ("loss", 3), ("history", [1]), ("optimizer", {"config": {"class": "X"}}),
                                          ("extra", {"batch_size": "big"})])
def test_8_a_header_field_of_the_wrong_type_names_the_file_and_field(field, value, tmp_path, tiny_data_dir, capsys):
    ckpt = rewrite(lenet_checkpoint(tmp_path / "m.npz"), lambda h: h.update({field: value}))
    with pytest.raises(CheckpointError, match=f"m.npz.*`{field}"):
        xpcnn.load(ckpt)
    for argv in (["evaluate", "--checkpoint", ckpt, "--data-dir", tiny_data_dir],
                 train(tiny_data_dir, "--checkpoint", ckpt, "--resume")):
        code, _, err = run(argv, capsys)
        assert code == 2 and str(ckpt) in err and field in err


def test_9_a_header_claiming_a_huge_layer_is_refused_before_anything_is_built(tmp_path):
    ckpt = rewrite(small_checkpoint(tmp_path / "m.npz"),
                   lambda h: h["arch"]["layers"][1].update(units=100_000))  # 784 x 100,000 floats: 314 MB
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"m.npz.*`arch`.*\[784, 100000\]"):
            xpcnn.load(ckpt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * ckpt.stat().st_size + 2**21


def test_10_a_deflated_member_is_refused(tmp_path):
    ckpt = rewrite(small_checkpoint(tmp_path / "m.npz"), compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match="compressed"):
        load_checkpoint(ckpt)


def test_11_summary_verifies_the_digest(tmp_path, capsys):
    ckpt = lenet_checkpoint(tmp_path / "m.npz")
    blob = bytearray(ckpt.read_bytes())
    with np.load(ckpt) as z:  # the middle of the largest array: reading its header never reaches the CRC
        data = max((z[name] for name in z.files), key=np.size).tobytes()
    blob[blob.find(data) + len(data) // 2] ^= 0x10
    ckpt.write_bytes(bytes(blob))
    code, _, err = run(["summary", "--checkpoint", ckpt], capsys)
    assert code == 2 and ("corrupt" in err or "damaged" in err) and "m.npz" in err


def test_a_fifo_in_the_data_folder_is_refused_not_waited_on(tmp_path, tiny_data_dir, capsys):
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        target = tmp_path / "data" / name
        target.parent.mkdir(exist_ok=True)
        if name.startswith("train-images"):
            os.mkfifo(target)
        else:
            target.symlink_to(tiny_data_dir / name)
    code, _, err = run(train(tmp_path / "data"), capsys)
    assert code == 2 and "train-images-idx3-ubyte.gz" in err  # not found as a file: exit 2, no hang
    with pytest.raises(DataError, match="FIFO"):
        read_idx(tmp_path / "data" / "train-images-idx3-ubyte.gz")
    os.mkfifo(tmp_path / "mnist.npz")
    with pytest.raises(DataError, match="FIFO"):
        load_npz_dataset(tmp_path / "mnist.npz")


def test_plots_and_checkpoint_on_one_path_are_refused(tmp_path, tiny_data_dir, capsys):
    pytest.importorskip("matplotlib")
    code, _, err = run(train(tiny_data_dir, "--checkpoint", tmp_path / "out", "--plots", tmp_path / "out"), capsys)
    assert code == 2 and "same file" in err


def test_inputs_that_are_devices_or_folders_are_refused(tmp_path, capsys):
    for path, kind in (("/dev/zero", "character device"), (tmp_path, "directory")):
        code, _, err = run(["summary", "--checkpoint", path], capsys)
        assert code == 2 and kind in err and str(path) in err


# --------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_12_predict_on_a_float_tiff_with_nan_or_inf(bad, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    picture = np.zeros((28, 28), np.float32)
    picture[10:18, 12:16] = 1.0
    picture[0, 0] = bad
    Image.fromarray(picture, mode="F").save(tmp_path / "x.tiff")
    ckpt = lenet_checkpoint(tmp_path / "m.npz")
    code, _, err = run(["predict", "--checkpoint", ckpt, tmp_path / "x.tiff"], capsys)
    assert code == 2 and "x.tiff" in err and "NaN or infinite" in err


def test_13_fit_and_evaluate_without_y_name_y():
    model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 4, 4)).compile("sgd")
    x = np.random.default_rng(0).random((8, 1, 4, 4))
    for call in (lambda: model.fit(x, None, verbose=0), lambda: model.evaluate(x, None)):
        with pytest.raises(InputError, match="`y` argument is missing"):
            call()
    with pytest.raises(InputError, match="batch_size"):
        model.predict(x, batch_size=0)


def test_14_set_weights_refuses_nan_and_non_lists():
    model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 2, 2))
    weights = model.get_weights()
    weights[1][0] = np.nan
    with pytest.raises(InputError, match=r"weights\[1\] holds 1 NaN"):
        model.set_weights(weights)
    with pytest.raises(InputError, match="`weights` argument"):
        model.set_weights(None)


@pytest.mark.parametrize("flag, value", [("--epochs", 10**23), ("--batch-size", 10**9), ("--train-size", 10**8)])
def test_14_absurd_sizes_are_refused_quoting_the_value(flag, value, tiny_data_dir, capsys):
    code, _, err = run([*train(tiny_data_dir), flag, value], capsys)
    assert code == 2 and f"'{value}'" in err and "at most" in err


def test_14_a_small_idx_gzip_cannot_expand_to_gigabytes():
    dims = (30_000, 28, 28)  # 23.5 MB of zeros, within the 1M-image limit, in a ~23 KB gzip
    blob = gzip.compress(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", *dims) + bytes(np.prod(dims)))
    with pytest.raises(DataError, match="gzip"):
        read_idx(blob, expected_magic=0x803, max_items=1_000_000)


def test_library_save_follows_a_symlink_and_refuses_a_fifo(tmp_path, fifo):
    target, link = tmp_path / "t.npz", tmp_path / "l.npz"
    link.symlink_to(target)
    model = xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(2)], input_shape=(1, 2, 2))
    model.save(link)
    model.save(link)
    assert link.is_symlink() and target.is_file() and previous_path(link) == tmp_path / "t.npz.prev"
    with pytest.raises(CheckpointError, match="FIFO"):
        model.save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_np_savez_compressed_archive_is_refused(tmp_path):
    with np.load(small_checkpoint(tmp_path / "m.npz")) as z:
        arrays = {name: z[name] for name in z.files}
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **arrays)  # a valid checkpoint, but deflated
    with pytest.raises(CheckpointError, match=r"c.npz.*compressed \(zip method 8\)"):
        load_checkpoint(path)


def test_a_metrics_file_swapped_for_a_fifo_after_the_checks_is_refused_not_waited_on(tmp_path):
    from xpcnn.cli.train import MetricsFile

    path = tmp_path / "m.jsonl"
    metrics = MetricsFile(path)
    path.unlink()
    os.mkfifo(path)  # between the checks before training and an epoch's write
    with pytest.raises((InputError, OSError)):  # OSError: ENXIO, a FIFO without a reader; never a hang
        metrics.write({"epoch": 1})
    assert stat.S_ISFIFO(os.stat(path).st_mode)
