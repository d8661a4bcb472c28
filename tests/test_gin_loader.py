"""Gin composition, --gin.KEY=VALUE overrides and the errors for bad bindings."""

import pytest

from t5x_like import gin_loader
from t5x_like.config import ConfigError


def test_default_run_composes_model_and_macros():
    cfg = gin_loader.load_run_config([gin_loader.DEFAULT_GIN_FILE])
    assert cfg.model.d_model == 256 and cfg.train.train_steps == 300
    assert cfg.data.mixture_or_task_name == "stdlib" and cfg.data.seq_len == 256


def test_flags_override_macros_and_fields():
    cfg = gin_loader.load_run_config(["runs/pretrain.gin"], {
        "TRAIN_STEPS": "100", "MODEL_DIR": "/tmp/some run", "ModelConfig.num_layers": "2",
        "TASK_FEATURE_LENGTHS": "{'targets': 64}"})
    assert cfg.train.train_steps == 100 and cfg.train.model_dir == "/tmp/some run"
    assert cfg.model.num_layers == 2 and cfg.data.seq_len == 64


@pytest.mark.parametrize("flags, message", [
    ({"ModelConfig.d_modle": "3"}, "Did you mean d_model"),
    ({"ModelConfg.d_model": "3"}, "Did you mean ModelConfig"),
    ({"TRAIN_STEP": "3"}, "no gin file reads macro %TRAIN_STEP"),
    ({"ModelConfig.num_layers": "'four'"}, "ModelConfig.num_layers = 'four'"),
    ({"BATCH_SIZE": "0"}, "TrainConfig.batch_size = 0: must be positive"),
])
def test_bad_bindings_fail_naming_the_key(flags, message):
    with pytest.raises(ConfigError, match=message):
        gin_loader.load_run_config(["runs/pretrain.gin"], flags)


def test_missing_gin_file_lists_the_available_ones():
    with pytest.raises(ConfigError, match="models/tiny.gin"):
        gin_loader.load_run_config(["runs/nope.gin"])


@pytest.mark.parametrize("name", gin_loader.available_gin_files())
def test_every_shipped_gin_file_loads(name):
    # Objectives are fragments: they set the objective and its lengths on top of a run.
    files = ["runs/pretrain.gin", name] if name.startswith("objectives/") else [name]
    gin_loader.load_run_config(files)


def test_operative_config_round_trips(tmp_path):
    cfg = gin_loader.load_run_config(["runs/pretrain.gin"], {"ModelConfig.num_layers": "3",
                                                             "MODEL_DIR": str(tmp_path)})
    gin_loader.write_operative_config(str(tmp_path))
    again = gin_loader.load_model_dir_config(str(tmp_path))
    assert again == cfg


def test_mixture_config_declares_tasks_and_rates():
    cfg = gin_loader.load_run_config(["runs/mixture.gin"])
    assert [t.name for t in cfg.data.tasks] == ["code", "code_tfds"]
    assert cfg.data.tasks[0].metadata_fields == ("module", "url")
    assert cfg.data.tasks[1].eval_source == "tfds:t5x_like_stdlib:validation"
    assert cfg.data.mixtures == {"code_mixture": {"code": 0.75, "code_tfds": 0.25}}
    assert cfg.data.mixture_or_task_name == "code_mixture" and cfg.data.packer == "best_fit"


def test_includes_resolve_with_a_runs_directory_in_the_working_directory(tmp_path, monkeypatch):
    # `t5x-like train` creates runs/default; gin used to crash on 'runs/...' includes after that.
    (tmp_path / "runs" / "default").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert gin_loader.load_run_config(["runs/eval.gin"]).train.eval_batches == 64


def test_auto_targets_is_resolved_at_load_and_refused_in_python():
    import dataclasses
    from t5x_like.config import ConfigError, RunConfig
    cfg = gin_loader.load_run_config(["runs/ul2_tiny.gin"], {})
    assert cfg.data.task_feature_lengths == {"inputs": 128, "targets": 64}
    data = dataclasses.replace(cfg.data, task_feature_lengths={"inputs": 128, "targets": "auto"})
    with pytest.raises(ConfigError, match="'auto' is resolved when gin files load"):
        RunConfig(data=data, objective=cfg.objective, model=cfg.model)


def test_lengths_too_small_for_a_piece_per_row_share_are_refused_at_load():
    from t5x_like.config import ConfigError
    flags = {"TASK_FEATURE_LENGTHS": "{'inputs': 6, 'targets': 3}"}  # 3 a row: 2 + 1 each
    with pytest.raises(ConfigError, match=r"pieces_per_row = 3 leaves each piece 2 \+ 1: R.*"
                                          r"do not fit even a one-token piece.*lower pieces_per_row"):
        gin_loader.load_run_config(["runs/ul2_tiny.gin"], flags)
    one = gin_loader.load_run_config(["runs/ul2_tiny.gin"], flags | {"ObjectiveConfig.pieces_per_row": "1"})
    assert one.objective.pieces_per_row == 1
