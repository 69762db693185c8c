"""The ``xpcnn`` command: every subcommand's success path and its failure paths (exit 2, one
message, no traceback, nothing already saved damaged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xpcnn
from xpcnn.cli import main


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def train_args(data_dir, tmp_path, *extra):
    return ["train", "--preset", "lenet", "--data-dir", data_dir, "--train-size", 600, "--test-size", 200,
            "--epochs", 2, "--batch-size", 64, "--quiet", *extra]


@pytest.fixture(autouse=True)
def _no_env_device(monkeypatch):
    monkeypatch.delenv("XPCNN_DEVICE", raising=False)


# -------------------------------------------------------------------------------- success
def test_info_and_version(capsys):
    code, out, _ = run(["info"], capsys)
    assert code == 0 and f"xpcnn {xpcnn.__version__}" in out and "NumPy" in out and "Devices: cpu" in out
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_summary_of_presets(capsys):
    code, out, _ = run(["summary", "--preset", "lenet"], capsys)
    assert code == 0 and "Total params: 61,706" in out and "(None, 6, 28, 28)" in out
    code, out, _ = run(["summary", "--preset", "tutorial"], capsys)
    assert code == 0 and "(None, 3, 24, 24)" in out and "(None, 1728)" in out


def test_train_evaluate_summary_resume(capsys, tmp_path, tiny_data_dir):
    ckpt, metrics = tmp_path / "lenet.npz", tmp_path / "metrics.jsonl"
    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--metrics-out", metrics), capsys)
    assert code == 0, out
    assert "test accuracy" in out and str(ckpt) in out
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]) == {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds",
                             "images_per_second", "device", "threads"}
    assert lines[-1]["test_accuracy"] > 0.5  # the generated digits are easy

    code, out, err = run(["evaluate", "--checkpoint", ckpt, "--data-dir", tiny_data_dir], capsys)
    assert code == 0 and "accuracy" in out and "400 images" in out and "note" not in err
    fashion = tmp_path / "data" / "fashion-mnist"  # the same files, as Fashion-MNIST: the note says so
    fashion.mkdir(parents=True)
    for f in tiny_data_dir.glob("*.gz"):
        (fashion / f.name).write_bytes(f.read_bytes())
    code, out, err = run(["evaluate", "--checkpoint", ckpt, "--data-dir", fashion.parent, "--dataset",
                          "fashion-mnist"], capsys)
    assert code == 0 and "fashion-mnist test set" in out and "was trained on mnist; evaluating on fashion" in err
    code, out, _ = run(["summary", "--checkpoint", ckpt], capsys)
    assert code == 0 and "Trained 2 epochs" in out

    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--metrics-out", metrics,
                                  "--resume", "--epochs", 3)[:-0 or None], capsys)
    assert code == 0
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_tutorial_presets_run(capsys, tmp_path, tiny_data_dir):
    for preset in ("tutorial", "tutorial-faithful"):
        code, out, _ = run(["train", "--preset", preset, "--data-dir", tiny_data_dir, "--epochs", 5, "--quiet",
                            "--metrics-out", tmp_path / f"{preset}.jsonl"], capsys)
        assert code == 0 and f"preset {preset}, 5 epochs" in out


def test_gradcheck_and_parity_commands(capsys):
    code, out, _ = run(["gradcheck", "--preset", "tutorial-faithful", "--entries", 4], capsys)
    assert code == 0 and "all gradients within bounds" in out and "batchstandardize" not in out
    code, out, _ = run(["gradcheck", "--preset", "lenet", "--entries", 3, "--batch-size", 2], capsys)
    assert code == 0 and out.count("yes") == 10
    code, out, _ = run(["check", "--devices", "cpu", "strict:device1", "--steps", 3], capsys)
    assert code == 0 and "PASS" in out


def test_predict_classifies_a_png_of_a_real_test_digit(capsys, tmp_path, mnist_dir):
    from xpcnn.data import load_dataset
    from xpcnn.data.images import save_mnist_png

    ckpt = tmp_path / "lenet.npz"
    code, out, _ = run(["train", "--preset", "lenet", "--data-dir", mnist_dir, "--train-size", 3000, "--test-size", 500,
                        "--epochs", 2, "--quiet", "--checkpoint", ckpt], capsys)
    assert code == 0
    ds = load_dataset("mnist", mnist_dir, progress=False)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"digit{i}_{ds.y_test[i]}.png")
        save_mnist_png(ds.x_test[i], paths[-1])
    code, out, _ = run(["predict", "--checkpoint", ckpt, *paths], capsys)
    assert code == 0
    for i, line in enumerate(out.strip().splitlines()):
        assert f"class {ds.y_test[i]} " in line, line


def test_console_script_and_module_entry_points(tmp_path):
    for cmd in (["xpcnn", "summary", "--preset", "tutorial"], [sys.executable, "-m", "xpcnn", "info"],
                [sys.executable, str(Path(__file__).parents[1] / "scripts" / "train.py"), "--help"]):
        exe = Path(sys.executable).with_name(cmd[0]) if cmd[0] == "xpcnn" else None
        if exe is not None:
            cmd = [str(exe), *cmd[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


# -------------------------------------------------------------------------------- failure
@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--preset", "resnet"], "invalid choice: 'resnet'"),
        (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["train", "--dataset", "cifar10"], "invalid choice: 'cifar10'"),
        (["train", "--device", "tpu"], "invalid choice: 'tpu'"),
        (["train", "--epochs", "0"], "expected a positive integer, received '0'"),
        (["train", "--batch-size", "-8"], "expected a positive integer, received '-8'"),
        (["train", "--learning-rate", "0"], "expected a finite positive number, received '0'"),
        (["train", "--learning-rate", "nan"], "expected a finite positive number, received 'nan'"),
        (["train", "--train-size", "many"], "expected a positive integer, received 'many'"),
        (["train", "--seed", "-1"], "expected a non-negative integer, received '-1'"),
        (["train", "--resume", "--overwrite"], "not allowed with argument"),
        (["summary"], "one of the arguments --preset --checkpoint is required"),
        (["predict", "--checkpoint", "x.npz"], "the following arguments are required: IMAGE"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_flags_exit_2_with_usage(capsys, argv, needle):
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err


def test_gpu_without_cupy_is_a_clear_error(capsys, tmp_path, tiny_data_dir, monkeypatch):
    import xpcnn.backend as B

    if B.gpu_problem() is None:
        pytest.skip("a GPU is usable here")
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--device", "gpu"), capsys)
    assert code == 2 and ("xpcnn[gpu]" in err or "no CUDA device" in err)
    monkeypatch.setenv("XPCNN_DEVICE", "gpu")
    code, _, err = run(train_args(tiny_data_dir, tmp_path), capsys)
    assert code == 2 and "CuPy" in err


def test_cupy_present_but_no_gpu_is_a_clear_error(capsys, tmp_path, tiny_data_dir, monkeypatch):
    """A pip CuPy imports fine on a machine without a GPU; the message must say so, with CUDA's reason."""
    import types

    fake = types.ModuleType("cupy")

    class CUDARuntimeError(RuntimeError):
        pass

    def no_device():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--device", "gpu"), capsys)
    assert code == 2 and "no CUDA device is usable" in err and "cudaErrorNoDevice" in err


def test_missing_data_says_where_to_put_files(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("XPCNN_DATA_ORIGIN", (tmp_path / "offline").as_uri() + "/")
    (tmp_path / "empty").mkdir()
    code, _, err = run(train_args(tmp_path / "empty", tmp_path), capsys)
    assert code == 2 and "train-images-idx3-ubyte.gz" in err and str(tmp_path / "empty") in err


def test_train_size_larger_than_data(capsys, tmp_path, tiny_data_dir):
    argv = train_args(tiny_data_dir, tmp_path)
    argv[argv.index("--train-size") + 1] = "5000"
    code, _, err = run(argv, capsys)
    assert code == 2 and "--train-size 5000 is larger than the 2000 images available" in err


def test_checkpoint_in_missing_folder_and_resume_without_checkpoint(capsys, tmp_path, tiny_data_dir):
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", tmp_path / "nope" / "c.npz"), capsys)
    assert code == 2 and "folder does not exist" in err
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--resume"), capsys)
    assert code == 2 and "--resume needs --checkpoint" in err


def _saved_checkpoint(tmp_path, data_dir, capsys):
    ckpt = tmp_path / "c.npz"
    assert run(train_args(data_dir, tmp_path, "--checkpoint", ckpt, "--epochs", 1), capsys)[0] == 0
    return ckpt


@pytest.mark.parametrize("damage, needle", [
    (lambda b: b[: len(b) // 2], "checkpoint"),
    (lambda b: b"", "checkpoint"),
    (lambda b: b[:-200] + bytes([b[-200] ^ 0xFF]) + b[-199:], "checkpoint"),
])
def test_damaged_checkpoints_are_refused(capsys, tmp_path, tiny_data_dir, damage, needle):
    ckpt = _saved_checkpoint(tmp_path, tiny_data_dir, capsys)
    ckpt.write_bytes(damage(ckpt.read_bytes()))
    code, _, err = run(["evaluate", "--checkpoint", ckpt, "--data-dir", tiny_data_dir], capsys)
    assert code == 2 and needle in err.lower()


def test_missing_checkpoint(capsys, tmp_path):
    code, _, err = run(["evaluate", "--checkpoint", tmp_path / "none.npz"], capsys)
    assert code == 2 and "none.npz" in err


def test_resume_takes_the_checkpoints_preset_and_refuses_another(capsys, tmp_path, tiny_data_dir):
    ckpt = tmp_path / "t.npz"
    tutorial = ["train", "--data-dir", tiny_data_dir, "--quiet", "--checkpoint", ckpt]
    assert run([*tutorial, "--preset", "tutorial", "--epochs", 2], capsys)[0] == 0
    before = ckpt.read_bytes()
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume"), capsys)
    assert code == 2 and "was trained with --preset tutorial; received --preset lenet" in err
    assert ckpt.read_bytes() == before
    code, out, _ = run([*tutorial, "--resume", "--epochs", 3], capsys)  # no --preset: the checkpoint's
    assert code == 0 and "preset tutorial, 3 epochs" in out and xpcnn.load(ckpt).epoch == 3

    # A model saved from the library records no preset: the architecture itself is compared.
    lib = tmp_path / "lib.npz"
    xpcnn.load(ckpt).save(lib)
    before = lib.read_bytes()
    code, _, err = run(["train", "--data-dir", tiny_data_dir, "--quiet", "--checkpoint", lib, "--resume"], capsys)
    assert code == 2 and "holds another architecture" in err and "--preset lenet (the default)" in err
    assert lib.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"this is not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_predict_refuses_non_images(capsys, tmp_path, tiny_data_dir, content):
    ckpt = _saved_checkpoint(tmp_path, tiny_data_dir, capsys)
    bad = tmp_path / "digit.png"
    bad.write_bytes(content)
    code, _, err = run(["predict", "--checkpoint", ckpt, bad], capsys)
    assert code == 2 and str(bad) in err


def test_exploding_learning_rate_stops_and_keeps_last_checkpoint(capsys, tmp_path, tiny_data_dir):
    ckpt = tmp_path / "t.npz"
    args = train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--optimizer", "sgd")
    assert run(args, capsys)[0] == 0
    before = ckpt.read_bytes()
    code, _, err = run([*args, "--epochs", 6, "--resume", "--learning-rate", "1e30"], capsys)
    assert code == 1 and "loss became nan at epoch 3, step " in err
    assert "RuntimeWarning" not in err
    assert ckpt.read_bytes() == before  # the last finite checkpoint is untouched


def test_unexpected_errors_exit_1_without_traceback(capsys, monkeypatch):
    import xpcnn.cli

    def boom(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(xpcnn.cli.COMMANDS, "info", boom)
    code, _, err = run(["info"], capsys)
    assert code == 1 and "unexpected ZeroDivisionError: a bug" in err and "XPCNN_DEBUG" in err


def test_environment_default_device_is_validated(capsys, monkeypatch):
    monkeypatch.setenv("XPCNN_DEVICE", "quantum")
    code, _, err = run(["gradcheck", "--preset", "tutorial"], capsys)
    assert code == 2 and "Unknown device 'quantum'" in err


def test_subprocess_failure_has_no_traceback(tmp_path):
    env = dict(os.environ, XPCNN_DEVICE="cpu")
    proc = subprocess.run([sys.executable, "-m", "xpcnn", "evaluate", "--checkpoint", str(tmp_path / "x.npz")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "x.npz" in proc.stderr
    assert np.char.count(proc.stderr.strip(), "\n") == 0  # one line


def test_plots_are_written_and_are_real_pictures(capsys, tmp_path, tiny_data_dir):
    from PIL import Image

    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--plots", f"{tmp_path / 'pics'}/", "--epochs", 1),
                       capsys)  # a folder not there yet, named with its trailing slash
    assert code == 0 and "Pictures written" in out
    for name in ("history.png", "filters_before.png", "filters_after.png", "feature_maps.png"):
        with Image.open(tmp_path / "pics" / name) as img:
            pixels = np.asarray(img.convert("L"), dtype=np.float64)
        assert min(pixels.shape) > 100 and pixels.std() > 5, name
    before = np.asarray(Image.open(tmp_path / "pics" / "filters_before.png").convert("L"), dtype=np.float64)
    after = np.asarray(Image.open(tmp_path / "pics" / "filters_after.png").convert("L"), dtype=np.float64)
    assert before.shape != after.shape or np.abs(before - after).mean() > 0.1  # training changed the filters


def test_selftest_passes_on_this_machine(capsys):
    code, out, _ = run(["selftest"], capsys)
    assert code == 0 and "all gradients within bounds" in out and "(decreasing)" in out


def test_out_of_memory_is_a_clear_message(capsys, tmp_path, tiny_data_dir, monkeypatch):
    import xpcnn.model

    def no_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 12.0 GiB")

    monkeypatch.setattr(xpcnn.model.Sequential, "train_step", no_memory)
    code, _, err = run(train_args(tiny_data_dir, tmp_path), capsys)
    assert code == 1 and "out of memory" in err and "smaller --batch-size (now 64)" in err


def test_resume_keeps_the_saved_batch_size_and_data_sizes(capsys, tmp_path, tiny_data_dir):
    from xpcnn.saving.checkpoint import load_checkpoint

    base = ["train", "--preset", "lenet", "--data-dir", tiny_data_dir, "--quiet", "--test-size", 100]
    straight, resumed = tmp_path / "straight.npz", tmp_path / "resumed.npz"
    first = [*base, "--batch-size", 32, "--train-size", 300]
    assert run([*first, "--epochs", 2, "--checkpoint", straight], capsys)[0] == 0
    assert run([*first, "--epochs", 1, "--checkpoint", resumed], capsys)[0] == 0
    code, out, _ = run(["train", "--preset", "lenet", "--data-dir", tiny_data_dir, "--quiet", "--epochs", 2,
                        "--checkpoint", resumed, "--resume"], capsys)
    assert code == 0 and "after epoch 1" in out
    (_, a1), (h2, a2) = load_checkpoint(straight), load_checkpoint(resumed)
    assert h2["extra"]["batch_size"] == 32 and h2["extra"]["train_size"] == 300
    for name in a1:
        np.testing.assert_array_equal(a1[name], a2[name], err_msg=name)


def test_a_saved_checkpoint_is_never_replaced_by_accident(capsys, tmp_path, tiny_data_dir):
    """Without --resume an existing checkpoint is refused (exit 2, file untouched) unless --overwrite;
    PATH.prev alone (a crash between a save's two renames) is resumed, not overwritten."""
    from xpcnn.saving.checkpoint import previous_path

    ckpt = tmp_path / "run.npz"
    base = ["train", "--preset", "tutorial", "--data-dir", tiny_data_dir, "--quiet", "--epochs", 2,
            "--train-size", 50, "--test-size", 20, "--checkpoint", ckpt]
    assert run(base, capsys)[0] == 0
    before = ckpt.read_bytes()
    code, _, err = run(base, capsys)
    assert code == 2 and "holds a checkpoint already" in err and "--resume" in err and "--overwrite" in err
    assert ckpt.read_bytes() == before
    assert run([*base, "--overwrite", "--seed", 3], capsys)[0] == 0 and ckpt.read_bytes() != before

    os.replace(ckpt, previous_path(ckpt))  # only PATH.prev is left
    code, out, _ = run([*base[:-6], "--epochs", 3, "--checkpoint", ckpt, "--resume"], capsys)
    assert code == 0 and "Resuming from" in out and ".prev after epoch 2" in out
    assert xpcnn.load(ckpt).epoch == 3


@pytest.mark.parametrize(("extra", "message"), [
    (["--optimizer", "sgd"], "trained with --optimizer adam; received --optimizer sgd"),
    (["--seed", "7"], "trained with --seed 0; received --seed 7"),
    (["--dataset", "fashion-mnist"], "trained with --dataset mnist; received --dataset fashion-mnist"),
    (["--batch-size", "16"], "trained with --batch-size 64; received --batch-size 16"),
    (["--train-size", "300"], "trained with --train-size 600; received --train-size 300"),
    (["--test-size", "100"], "trained with --test-size 200; received --test-size 100"),
])
def test_resume_refuses_options_that_would_change_the_run(capsys, tmp_path, tiny_data_dir, extra, message):
    ckpt = tmp_path / "run.npz"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", ckpt), capsys)[0] == 0
    before = ckpt.read_bytes()
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume", *extra), capsys)
    assert code == 2 and message in err and ckpt.read_bytes() == before


def test_paths_expand_home_and_an_empty_path_is_refused(capsys, tmp_path, tiny_data_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", "~/c.npz",
                          "--metrics-out", "~/m.jsonl"), capsys)[0] == 0
    assert (tmp_path / "c.npz").is_file() and (tmp_path / "m.jsonl").is_file()
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ""), capsys)
    assert code == 2 and "expected a path" in err


def test_resume_with_an_unreadable_metrics_file_is_a_clear_error(capsys, tmp_path, tiny_data_dir):
    ckpt, metrics = tmp_path / "c.npz", tmp_path / "m.jsonl"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", ckpt), capsys)[0] == 0
    metrics.write_bytes(b"\xff\xfe not text")
    before = ckpt.read_bytes()
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume",
                                  "--metrics-out", metrics), capsys)
    assert code == 2 and str(metrics) in err and "JSON-lines" in err and ckpt.read_bytes() == before


def test_a_bad_plots_folder_fails_before_training(capsys, tmp_path, tiny_data_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started before --plots was checked")

    monkeypatch.setattr(xpcnn.Sequential, "fit", no_training)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for plots, message in ((afile, "is a file; expected a folder"), (tmp_path / "no" / "such", "does not exist")):
        code, _, err = run(train_args(tiny_data_dir, tmp_path, "--plots", plots), capsys)
        assert code == 2 and message in err


def test_resume_names_a_fallback_only_when_there_was_one(capsys, tmp_path, tiny_data_dir, monkeypatch):
    """A healthy PATH given as ./x is not 'damaged'; a damaged PATH is set aside as PATH.damaged, so
    the next save cannot move it over the good PATH.prev."""
    monkeypatch.chdir(tmp_path)
    base = ["train", "--preset", "tutorial", "--data-dir", tiny_data_dir, "--quiet", "--train-size", 50,
            "--test-size", 20, "--checkpoint", "./ck.npz"]
    assert run([*base, "--epochs", 2], capsys)[0] == 0
    code, out, _ = run([*base, "--epochs", 3, "--resume"], capsys)
    assert code == 0 and "Resuming from ck.npz after epoch 2." in out and "damaged" not in out
    good_prev = (tmp_path / "ck.npz.prev").read_bytes()  # epoch 2
    (tmp_path / "ck.npz").write_bytes(b"not a checkpoint")
    code, out, _ = run([*base, "--epochs", 3, "--resume"], capsys)
    assert code == 0 and "ck.npz is damaged, kept as ck.npz.damaged" in out
    assert (tmp_path / "ck.npz.damaged").read_bytes() == b"not a checkpoint"
    assert (tmp_path / "ck.npz.prev").read_bytes() == good_prev and xpcnn.load(tmp_path / "ck.npz").epoch == 3


def test_predict_says_when_an_image_is_blank(capsys, tmp_path, tiny_data_dir):
    from PIL import Image

    ckpt = tmp_path / "c.npz"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", ckpt), capsys)[0] == 0
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "white.png")
    code, out, err = run(["predict", "--checkpoint", ckpt, tmp_path / "white.png"], capsys)
    assert code == 0 and "white.png looks blank" in err and "white.png: class" in out


def test_resume_says_what_it_changes_and_when_there_is_nothing_to_do(capsys, tmp_path, tiny_data_dir):
    ckpt = tmp_path / "run.npz"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", ckpt), capsys)[0] == 0
    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume", "--learning-rate",
                                  "0.0005"), capsys)
    assert code == 0 and ("--learning-rate 0.0005 replaces the saved 0.004: epoch 2 runs at learning rate "
                          "0.0005 × 0.4^1 = 0.0002.") in out
    assert out.index("Resuming from") < out.index("replaces the saved")
    assert xpcnn.load(ckpt).optimizer.learning_rate == 0.0005
    before = ckpt.read_bytes()
    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume"), capsys)  # --quiet
    assert code == 0 and "already holds 2 epochs" in out and "Give --epochs 3 or more" in out
    assert ckpt.read_bytes() == before
    code, out, _ = run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", tmp_path / "typo.npz",
                                  "--resume"), capsys)
    assert code == 0 and "No checkpoint at" in out and "starting from scratch" in out


def test_an_existing_file_that_is_not_a_checkpoint_is_named_as_such(capsys, tmp_path, tiny_data_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("important")
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", notes), capsys)
    assert code == 2 and "exists and is not a readable xpcnn checkpoint" in err
    assert notes.read_text() == "important"


def test_earlier_metrics_are_not_overwritten_by_a_new_run(capsys, tmp_path, tiny_data_dir):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text('{"epoch": 1, "note": "an earlier run"}\n')
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--metrics-out", metrics), capsys)
    assert code == 2 and "holds the metrics of an earlier run" in err
    assert "an earlier run" in metrics.read_text()
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--metrics-out", metrics, "--overwrite"),
               capsys)[0] == 0
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1]


def test_ctrl_c_says_what_is_saved(capsys, tmp_path, tiny_data_dir, monkeypatch):
    ckpt = tmp_path / "run.npz"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--checkpoint", ckpt), capsys)[0] == 0

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(xpcnn.model.Sequential, "train_step", interrupted)
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume"), capsys)
    assert code == 130 and "Interrupted in epoch 2" in err and "holds epoch 1" in err and "--resume" in err
    code, _, err = run(train_args(tiny_data_dir, tmp_path), capsys)
    assert code == 130 and "No epoch was saved" in err


def test_resume_without_a_checkpoint_keeps_another_runs_metrics(capsys, tmp_path, tiny_data_dir):
    metrics = tmp_path / "m.jsonl"
    metrics.write_text('{"epoch": 1, "note": "run A"}\n')
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--checkpoint", tmp_path / "typo.npz", "--resume",
                                  "--metrics-out", metrics), capsys)
    assert code == 2 and "holds the metrics of an earlier run" in err and "run A" in metrics.read_text()


def test_resume_takes_the_checkpoints_dtype(capsys, tmp_path, tiny_data_dir):
    ckpt = tmp_path / "f64.npz"
    assert run(train_args(tiny_data_dir, tmp_path, "--epochs", 1, "--dtype", "float64", "--checkpoint", ckpt),
               capsys)[0] == 0
    assert run(train_args(tiny_data_dir, tmp_path, "--checkpoint", ckpt, "--resume"), capsys)[0] == 0
    assert xpcnn.load(ckpt).dtype == "float64" and xpcnn.load(ckpt).epoch == 2
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--epochs", 3, "--checkpoint", ckpt, "--resume",
                                  "--dtype", "float32"), capsys)
    assert code == 2 and "trained in float64; received --dtype float32" in err


def test_library_warnings_reach_the_command_line_as_one_line(capsys, tmp_path, tiny_data_dir):
    from xpcnn import layers as L

    flat = xpcnn.Sequential([L.Flatten(), L.Dense(10)], input_shape=(28, 28), device="cpu")
    flat.compile("sgd", loss="softmax_cross_entropy")
    flat.save(tmp_path / "flat.npz")  # a (28, 28)-input model: MNIST's uint8 pixels are numbers to it
    done = subprocess.run([sys.executable, "-m", "xpcnn", "evaluate", "--checkpoint", str(tmp_path / "flat.npz"),
                           "--data-dir", str(tiny_data_dir)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONWARNINGS=""))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 1, done.stderr
    assert lines[0].startswith("xpcnn evaluate: warning: x is uint8") and ".py" not in done.stderr
    assert "accuracy" in done.stdout
    with pytest.warns(UserWarning, match="x is uint8"):  # in-process callers still catch it as a warning
        assert run(["evaluate", "--checkpoint", tmp_path / "flat.npz", "--data-dir", tiny_data_dir], capsys)[0] == 0


def test_threads_flag_reaches_fit_and_the_metrics(capsys, tmp_path, tiny_data_dir):
    metrics = tmp_path / "m.jsonl"
    argv = train_args(tiny_data_dir, tmp_path, "--threads", 2, "--metrics-out", metrics, "--epochs", 1)
    argv.remove("--quiet")
    code, out, _ = run(argv, capsys)
    assert code == 0 and "batch 64, 2 threads" in out
    assert json.loads(metrics.read_text().splitlines()[-1])["threads"] == 2
    code, _, err = run(train_args(tiny_data_dir, tmp_path, "--threads", 0), capsys)
    assert code == 2 and "--threads" in err


def test_export_and_import_refuse_to_write_over_the_file_they_read(capsys, tmp_path):
    ckpt = tmp_path / "m.npz"
    xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(3)], input_shape=(1, 4, 4)).save(ckpt)
    before = ckpt.read_bytes()
    code, _, err = run(["export", "--checkpoint", ckpt, "--format", "onnx", ckpt, "--overwrite"], capsys)
    assert code == 2 and "the input and the output are the same file" in err and ckpt.read_bytes() == before
    code, _, err = run(["import", ckpt, "--checkpoint", ckpt, "--overwrite"], capsys)
    assert code == 2 and "the same file" in err and ckpt.read_bytes() == before
