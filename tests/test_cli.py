"""The `t5x-like` command line on the real embedded corpus: train, grow a run, eval, generate."""

import json

import numpy as np
import pytest

from t5x_like import cli
from t5x_like.metrics import read_metrics


def _flags(stdlib_data, model_dir, steps):
    return [f"--gin.MODEL_DIR={model_dir}", f"--gin.TRAIN_STEPS={steps}",
            "--gin.SCHEDULE_STEPS=20", "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
            "--gin.ModelConfig.num_layers=2", "--gin.ModelConfig.d_model=64",
            "--gin.ModelConfig.mlp_dim=128", "--gin.OptimizerConfig.warmup_steps=5",
            "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_every=10",
            f"--gin.DataConfig.data_dir={stdlib_data.data_dir}"]


@pytest.fixture(scope="module")
def runs(stdlib_data, tmp_path_factory):
    """One 20-step run, and one grown from 10 to 20 steps by re-running with TRAIN_STEPS=20."""
    single, grown = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("grown")
    assert cli.main(["train", *_flags(stdlib_data, single, 20)]) == 0
    assert cli.main(["train", *_flags(stdlib_data, grown, 10)]) == 0
    assert cli.main(["train", *_flags(stdlib_data, grown, 20)]) == 0
    return single, grown


def test_growing_a_run_ends_with_exactly_the_single_runs_losses(runs):
    single, grown = (read_metrics(str(d)) for d in runs)
    losses = [{r["step"]: r["loss"] for r in rows if "loss" in r} for rows in (single, grown)]
    assert losses[0] == losses[1] and sorted(losses[0]) == list(range(1, 21))
    assert [r for r in single if "eval_loss" in r] == [r for r in grown if "eval_loss" in r]


def test_metrics_rows_have_the_documented_fields(runs):
    rows = read_metrics(str(runs[0]))
    train_row = next(r for r in rows if "loss" in r)
    for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "mfu"):
        assert key in train_row
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0]
    assert (runs[0] / "config.gin").read_text().count("ModelConfig.num_layers = 2") == 1


def test_eval_and_generate_read_the_checkpoint(runs, capsys):
    assert cli.main(["eval", f"--gin_file={runs[0] / 'config.gin'}"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 20 and result["eval_loss"] > 0
    assert cli.main(["generate", f"--model_dir={runs[0]}", "def main(", "--max_new_tokens=8",
                     "--temperature=0.8", "--top_k=20"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("def main(") and len(text) > len("def main(")


def test_bad_flag_exits_2_with_the_key_named(capsys):
    assert cli.main(["train", "--gin.TRAIN_STEPZ=3"]) == 2
    assert "TRAIN_STEPZ" in capsys.readouterr().err


def test_a_model_dir_that_is_a_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "run").write_text("not a directory")
    assert cli.main(["train", f"--gin.MODEL_DIR='{tmp_path / 'run'}'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"MODEL_DIR = '{tmp_path / 'run'}' is a file" in err


@pytest.mark.parametrize("gin_file", ["runs/ul2_tiny.gin", "runs/ul2_decoder_tiny.gin"])
def test_ul2_trains_on_both_architectures_and_generates_with_a_mode(stdlib_data, tmp_path,
                                                                     gin_file, capsys):
    flags = [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={tmp_path}", "--gin.TRAIN_STEPS=40",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 64}",
             "--gin.ModelConfig.d_model=64", "--gin.ModelConfig.mlp_dim=128",
             "--gin.ModelConfig.num_layers=2", "--gin.OptimizerConfig.warmup_steps=5",
             "--gin.TrainConfig.eval_every=40", "--gin.TrainConfig.log_every=10",
             f"--gin.DataConfig.data_dir={stdlib_data.data_dir}"]
    assert cli.main(["train", *flags]) == 0
    evals = [r["eval_loss"] for r in read_metrics(str(tmp_path)) if "eval_loss" in r]
    assert evals[-1] < 0.8 * evals[0]
    capsys.readouterr()
    assert cli.main(["generate", f"--model_dir={tmp_path}", "--mode=S2S", "def main(",
                     "--max_new_tokens=4"]) == 0


def test_meco_run_trains_and_generates_with_metadata(stdlib_data, tmp_path, capsys):
    single, grown = tmp_path / "single", tmp_path / "grown"
    flags = ["--gin_file=runs/meco_tiny.gin", "--gin.SCHEDULE_STEPS=20",
             "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
             "--gin.ModelConfig.d_model=64", "--gin.ModelConfig.mlp_dim=128",
             "--gin.ModelConfig.num_layers=2", "--gin.OptimizerConfig.warmup_steps=5",
             "--gin.TrainConfig.eval_every=20", "--gin.TrainConfig.checkpoint_every=10",
             "--gin.TrainConfig.log_every=1", f"--gin.DataConfig.data_dir={stdlib_data.data_dir}"]
    assert cli.main(["train", *flags, f"--gin.MODEL_DIR={single}", "--gin.TRAIN_STEPS=20"]) == 0
    # Resumed at step 10, before the cooldown switch (step 18): the same losses, the same switch.
    assert cli.main(["train", *flags, f"--gin.MODEL_DIR={grown}", "--gin.TRAIN_STEPS=10"]) == 0
    assert cli.main(["train", *flags, f"--gin.MODEL_DIR={grown}", "--gin.TRAIN_STEPS=20"]) == 0
    runs = [read_metrics(str(d)) for d in (single, grown)]
    losses = [{r["step"]: r["loss"] for r in rows if "loss" in r} for rows in runs]
    assert losses[0] == losses[1] and sorted(losses[0]) == list(range(1, 21))
    evals = [r["eval_loss"] for r in runs[0] if "eval_loss" in r]
    assert evals[-1] < evals[0]
    capsys.readouterr()
    for condition in ("none", "true", "wrong"):
        assert cli.main(["eval", f"--gin_file={single / 'config.gin'}",
                         f"--metadata={condition}"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["step"] == 20 and np.isfinite(result["eval_loss"])
    assert cli.main(["generate", f"--model_dir={single}", "--metadata=json.decoder",
                     "def ", "--max_new_tokens=4"]) == 0
    assert capsys.readouterr().out.startswith("def ")


MICRO_FLAGS = ["--gin.ModelConfig.d_model=32", "--gin.ModelConfig.mlp_dim=64",
               "--gin.ModelConfig.num_layers=2", "--gin.ModelConfig.head_dim=8"]


@pytest.mark.parametrize("gin_file,extra", [
    ("runs/meco_ul2_tiny.gin", []),
    ("runs/meco_ul2_decoder_tiny.gin", []),
    ("runs/meco_ul2_decoder_tiny.gin", ["--gin.ObjectiveConfig.name='prefix_lm'"]),
], ids=["ul2_encoder_decoder", "ul2_decoder_only", "prefix_lm_decoder_only"])
def test_meco_denoising_runs_train_resume_eval_and_generate_with_metadata(
        stdlib_data, tmp_path, capsys, gin_file, extra):
    flags = [f"--gin_file={gin_file}", *extra, *MICRO_FLAGS, "--gin.SCHEDULE_STEPS=8",
             "--gin.TASK_FEATURE_LENGTHS={'inputs': 48, 'targets': 32}",
             # Whole pieces: a third of 48 + 32 cannot hold the module-path prefix.
             "--gin.ObjectiveConfig.pieces_per_row=1",
             "--gin.OptimizerConfig.warmup_steps=2", "--gin.TrainConfig.eval_every=8",
             "--gin.TrainConfig.checkpoint_every=6", "--gin.TrainConfig.log_every=1",
             f"--gin.DataConfig.data_dir={stdlib_data.data_dir}"]
    single, grown = tmp_path / "single", tmp_path / "grown"
    assert cli.main(["train", *flags, f"--gin.MODEL_DIR={single}", "--gin.TRAIN_STEPS=8"]) == 0
    losses = {r["step"]: r["loss"] for r in read_metrics(str(single)) if "loss" in r}
    assert sorted(losses) == list(range(1, 9)) and np.isfinite(list(losses.values())).all()
    assert losses[8] < losses[1]
    if gin_file == "runs/meco_ul2_tiny.gin":
        # Stopped at step 6 and resumed: step 7 = floor(0.9 * 8) is the first cooldown step.
        assert cli.main(["train", *flags, f"--gin.MODEL_DIR={grown}", "--gin.TRAIN_STEPS=6"]) == 0
        assert cli.main(["train", *flags, f"--gin.MODEL_DIR={grown}", "--gin.TRAIN_STEPS=8"]) == 0
        assert {r["step"]: r["loss"] for r in read_metrics(str(grown)) if "loss" in r} == losses
    capsys.readouterr()
    results = {}
    # The eval paths differ by architecture only in the rows; all three once, 'true' for the rest.
    conditions = ("none", "true", "wrong") if gin_file == "runs/meco_ul2_tiny.gin" else ("true",)
    for condition in conditions:
        assert cli.main(["eval", f"--gin_file={single / 'config.gin'}",
                         f"--metadata={condition}"]) == 0
        results[condition] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert results[condition]["step"] == 8 and np.isfinite(results[condition]["eval_loss"])
    assert len(conditions) == 1 or results["true"] != results["none"]  # other rows, other loss
    assert cli.main(["generate", f"--model_dir={single}", "--mode=S2S", "--metadata=json.decoder",
                     "def ", "--max_new_tokens=4"]) == 0
