"""``xpcnn train``'s steps, each on its own and without training: outputs checked, a run opened
or resumed, its data chosen, and rank-0-only output decided in one place."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn.cli import build_parser
from xpcnn.cli.train import Outputs, load_data, open_run
from xpcnn.errors import InputError
from xpcnn.parallel import LOCAL, LocalCommunicator


def parse(*argv):
    return build_parser().parse_args(["train", *map(str, argv)])


class OtherRank(LocalCommunicator):
    """Rank 1 of 2 whose collectives see only itself (enough for what is decided locally)."""

    rank, size = 1, 2


def test_a_new_run_takes_the_presets_settings_and_the_flags(tmp_path):
    args = parse("--preset", "tutorial", "--learning-rate", 0.5, "--seed", 4, "--batch-size", 50, "--threads", 1)
    run = open_run(args, LOCAL, Outputs.open(args, LOCAL))
    assert (run.preset_name, run.epochs, run.batch_size, run.threads) == ("tutorial", 300, 50, 1)
    assert run.model.seed == 4 and run.model.optimizer.learning_rate == 0.5 and run.model.epoch == 0
    assert run.model.loss == "squared_error"


def test_resuming_opens_the_saved_run_and_says_a_changed_rate(tmp_path, capsys):
    ckpt = tmp_path / "run.npz"
    first = parse("--preset", "tutorial", "--checkpoint", ckpt, "--batch-size", 20, "--train-size", 100)
    run = open_run(first, LOCAL, Outputs.open(first, LOCAL))
    run.model.epoch = 3
    run.model.save(ckpt, extra={"preset": "tutorial", "dataset": "mnist", "batch_size": 20, "train_size": 100})
    again = parse("--checkpoint", ckpt, "--resume", "--learning-rate", 0.1, "--quiet")
    resumed = open_run(again, LOCAL, Outputs.open(again, LOCAL))
    out = capsys.readouterr().out
    assert (resumed.preset_name, resumed.batch_size, resumed.train_size) == ("tutorial", 20, 100)
    assert resumed.model.epoch == 3
    assert "Resuming from" in out and "--learning-rate 0.1 replaces the saved 0.3" in out
    assert resumed.model.optimizer.learning_rate == 0.1
    with pytest.raises(InputError, match="trained with --batch-size 20; received --batch-size 64"):
        bad = parse("--checkpoint", ckpt, "--resume", "--batch-size", 64)
        open_run(bad, LOCAL, Outputs.open(bad, LOCAL))


def test_outputs_are_refused_before_any_run_is_opened(tmp_path):
    ckpt = tmp_path / "run.npz"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable xpcnn checkpoint"):
        Outputs.open(parse("--checkpoint", ckpt), LOCAL)
    with pytest.raises(InputError, match="needs --checkpoint"):
        from xpcnn.cli.train import communicator

        communicator(parse("--resume"))


def test_only_rank_0_speaks_and_writes(tmp_path, capsys):
    args = parse("--metrics-out", tmp_path / "m.jsonl", "--plots", tmp_path / "pics", "--checkpoint", tmp_path / "c")
    main, other = Outputs.open(args, LOCAL), Outputs.open(args, OtherRank())
    assert main.metrics_path is not None and main.plots is not None and not main.quiet
    assert other.metrics_path is None and other.plots is None and other.quiet
    other.say("from rank 1", always=True)
    main.say("from rank 0")
    assert capsys.readouterr().out == "from rank 0\n"


def test_data_sizes_the_user_gives_must_fit_and_a_presets_are_capped(tiny_data_dir):
    args = parse("--preset", "tutorial", "--data-dir", tiny_data_dir, "--quiet")
    run = open_run(args, LOCAL, Outputs.open(args, LOCAL))
    data = load_data(args, run)
    assert len(data.x_train) == 200 and len(data.x_test) == 400  # the preset's 1,000 test images: capped at 400
    assert data.y_train.shape == (200, 1) and set(np.unique(data.y_train)) <= {0.0, 1.0}
    assert run.extra == {"preset": "tutorial", "dataset": "mnist", "task": "greater_than_4", "batch_size": 200,
                         "train_size": 200, "test_size": 400}
    big = parse("--preset", "tutorial", "--data-dir", tiny_data_dir, "--train-size", 5000, "--quiet")
    with pytest.raises(InputError, match="--train-size 5000 is larger than the 2000 images available"):
        load_data(big, open_run(big, LOCAL, Outputs.open(big, LOCAL)))


def test_ranks_above_0_do_not_check_the_outputs_only_rank_0_writes(tmp_path):
    args = parse("--metrics-out", tmp_path / "no-such-folder" / "m.jsonl", "--plots", tmp_path / "pics")
    Outputs.open(args, OtherRank())  # rank 1 writes neither: nothing to refuse there
    with pytest.raises(InputError, match="metrics folder does not exist"):
        Outputs.open(args, LOCAL)


def test_a_checkpoint_without_optimizer_cannot_be_resumed_and_threads_must_fit_the_batch(tmp_path):
    import xpcnn

    ckpt = tmp_path / "bare.npz"
    xpcnn.Sequential([xpcnn.layers.Flatten(), xpcnn.layers.Dense(10)], input_shape=(1, 28, 28)).save(ckpt)
    args = parse("--checkpoint", ckpt, "--resume")
    with pytest.raises(InputError, match="without a loss and optimizer"):
        open_run(args, LOCAL, Outputs.open(args, LOCAL))
    args = parse("--preset", "tutorial", "--batch-size", 3, "--threads", 4)
    with pytest.raises(InputError, match="--batch-size 3 is smaller than the 4 ranks"):
        open_run(args, LOCAL, Outputs.open(args, LOCAL))


def test_a_batch_coupled_preset_is_refused_under_several_processes():
    args = parse("--preset", "tutorial-faithful")
    with pytest.raises(InputError, match="--distributed splits every batch .* 'batchstandardize'"):
        open_run(args, OtherRank(), Outputs.open(args, OtherRank()))
