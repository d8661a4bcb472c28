"""Config dataclasses validate types and ranges on construction."""

import dataclasses

import pytest

from t5x_like.config import (ConfigError, DataConfig, MeshConfig, ModelConfig, ObjectiveConfig,
                             OptimizerConfig, RunConfig, TaskConfig, TrainConfig, flops_per_token,
                             num_params)

UL2 = dict(objective=ObjectiveConfig(name="ul2"),
           data=DataConfig(task_feature_lengths={"inputs": 64, "targets": 64}))


@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig(num_heads=4, num_kv_heads=3), "ModelConfig.num_kv_heads = 3"),
    (lambda: ModelConfig(d_model="256"), "expected <class 'int'>"),
    (lambda: ModelConfig(remat_policy="some"), "remat_policy"),
    (lambda: ModelConfig(architecture="encoder_decoder", relative_attention_num_buckets=32,
                         relative_attention_max_distance=16), "must exceed .* = 16"),
    (lambda: ModelConfig(architecture="encoder_decoder", relative_attention_num_buckets=3),
     "relative_attention_num_buckets = 3"),
    (lambda: MeshConfig(ici_data=-1, ici_fsdp=-1), "at most one ici_"),
    (lambda: OptimizerConfig(name="sgd"), "OptimizerConfig.name = 'sgd'"),
    (lambda: TrainConfig(batch_size=8, grad_accum_steps=3), "grad_accum_steps"),
    (lambda: DataConfig(task_feature_lengths={"inputs": 8}), "task_feature_lengths"),
    (lambda: RunConfig(optimizer=OptimizerConfig(warmup_steps=10), train=TrainConfig(
        train_steps=10)), "warmup_steps = 10"),
    # Choices are Literal types: the error lists them.
    (lambda: DataConfig(packer="bfd"), r"packer = 'bfd': choose one of \('best_fit'"),
    (lambda: ObjectiveConfig(metadata_kind="host"), "metadata_kind = 'host': choose one of"),
    (lambda: ObjectiveConfig(denoisers=(("Q", 3.0, 0.15, 1.0, ""),)), "ObjectiveConfig.denoisers"),
    (lambda: ObjectiveConfig(name="ul3"), r"name = 'ul3': choose one of \('causal_lm'"),
    # What an objective cannot honour is refused when the run config loads.
    (lambda: RunConfig(**(UL2 | {"data": dataclasses.replace(UL2["data"], streaming=True,
                                                             pack_window=100)})),
     "streaming = True packs causal_lm rows on the fly; objective 'ul2'"),
    (lambda: RunConfig(**(UL2 | {"data": dataclasses.replace(UL2["data"], packer="concat")})),
     "'concat' cuts rows at fixed positions.*objective 'ul2'"),
    (lambda: RunConfig(objective=ObjectiveConfig(metadata_field="url"),
                       data=DataConfig(packer="concat")), "objective 'causal_lm', with metadata"),
    (lambda: RunConfig(**(UL2 | {"data": dataclasses.replace(UL2["data"], packer="first_fit"),
                                 "model": ModelConfig(architecture="encoder_decoder")})),
     "two budgets .* 2-D best fit only"),
    (lambda: RunConfig(data=DataConfig(streaming=True, pack_window=10, tasks=(
        TaskConfig(name="a"), TaskConfig(name="b")), mixtures={"m": {"a": 1.0, "b": 1.0}},
        mixture_or_task_name="m")), "streaming = True reads one task; 'm' mixes"),
    (lambda: RunConfig(data=DataConfig(streaming=True, pack_window=10, tasks=(
        TaskConfig(name="q", score_field="s"),), mixture_or_task_name="q")),
     "samples by 's', which needs every score up front"),
    # Supervised tasks: both fields or neither, read by the supervised objective only.
    (lambda: TaskConfig(name="qa", inputs_field="question"),
     "TaskConfig.inputs_field = 'question' and TaskConfig.targets_field = '' .*set both"),
    (lambda: DataConfig(targets_field="answer"), "DataConfig.inputs_field = '' and .*set both"),
    (lambda: TaskConfig(mode_token="[S2S]"), "mode_token = '\\[S2S\\]': goes in front of a "
                                             "supervised task's inputs"),
    (lambda: TaskConfig(name="qa", inputs_field="q", targets_field="a", mode_token="S2S"),
     "mode_token = 'S2S': choose one of"),
    (lambda: RunConfig(objective=ObjectiveConfig(name="supervised"), data=DataConfig(
        task_feature_lengths={"inputs": 8, "targets": 8})),
     "'supervised' reads \\(inputs, targets\\) records, but .* 'stdlib' has text tasks"),
    (lambda: RunConfig(data=DataConfig(mixture_or_task_name="stdlib_signatures")),
     "has supervised tasks \\['stdlib_signatures'\\] .*\\(objective 'causal_lm'"),
    (lambda: RunConfig(objective=ObjectiveConfig(name="supervised", pieces_per_row=2),
                       data=DataConfig(mixture_or_task_name="stdlib_signatures",
                                       task_feature_lengths={"inputs": 8, "targets": 8})),
     "a supervised example is one piece"),
    (lambda: TrainConfig(init_step=3), "init_step = 3: picks a step of TrainConfig.init_from"),
])
def test_invalid_values_name_the_field(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_configs_are_frozen_and_lists_become_tuples():
    mesh = MeshConfig(logical_axis_rules=[["batch", ["data", "fsdp"]]])
    assert mesh.logical_axis_rules == (("batch", ("data", "fsdp")),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mesh.ici_data = 2


def test_schedule_steps_default_to_train_steps():
    run = RunConfig(train=TrainConfig(train_steps=77))
    assert run.schedule_steps == 77
    run = RunConfig(train=TrainConfig(train_steps=77),
                    optimizer=OptimizerConfig(schedule_steps=200))
    assert run.schedule_steps == 200


def test_llama3_8b_shapes_count_8b_parameters():
    cfg = ModelConfig(vocab_size=128256, d_model=4096, num_layers=32, num_heads=32,
                      num_kv_heads=8, head_dim=128, mlp_dim=14336)
    assert num_params(cfg) == 8_030_261_248  # Meta-Llama-3-8B
    assert flops_per_token(cfg, 8192) > 6 * 7e9


def test_what_objectives_allow_still_loads():
    RunConfig(**(UL2 | {"data": dataclasses.replace(UL2["data"], packer="first_fit",
                                                    pack_window=500)}))  # decoder-only UL2
    RunConfig(objective=ObjectiveConfig(metadata_field="url"),
              data=DataConfig(streaming=True, pack_window=100))  # MeCo's cooldown streams
