"""The loop with an encoder-decoder model on 8 fake CPU devices: the same losses on every mesh."""

import dataclasses

import numpy as np
import pytest

from conftest import losses_of, partitioner_for, random_seq2seq_rows
from t5x_like import trainer
from t5x_like.config import (DataConfig, ModelConfig, ObjectiveConfig, OptimizerConfig,
                             RunConfig, TrainConfig)
from t5x_like.data import pipeline
from t5x_like.inputs import Inputs

MICRO_T5 = ModelConfig(architecture="encoder_decoder", vocab_size=128, d_model=32, num_layers=2,
                       num_encoder_layers=2, num_heads=4, num_kv_heads=4, head_dim=8, mlp_dim=64,
                       mlp_activation="gelu_tanh", relative_attention_num_buckets=8,
                       relative_attention_max_distance=16)
ROWS = random_seq2seq_rows(64, 24, 16, MICRO_T5.vocab_size)


def _cfg(model_dir, **model):
    return RunConfig(
        model=dataclasses.replace(MICRO_T5, **model),
        data=DataConfig(task_feature_lengths={"inputs": 24, "targets": 16}),
        objective=ObjectiveConfig(name="span_corruption"),
        optimizer=OptimizerConfig(warmup_steps=2, learning_rate=3e-3, schedule_steps=5),
        train=TrainConfig(model_dir=str(model_dir), train_steps=5, batch_size=8, log_every=1,
                          eval_every=0, eval_batches=2, checkpoint_every=5, progress_bar=False,
                          async_checkpointing=False))


def _inputs():
    return Inputs(pipeline.make_train_iterator([pipeline.ArrayRows(ROWS)], global_batch_size=8,
                                               seed=0),
                  pipeline.eval_batches(ROWS, global_batch_size=8, max_batches=2))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return losses_of(trainer.train(_cfg(tmp_path_factory.mktemp("ref")), _inputs(),
                                 partitioner=partitioner_for((1, 1, 1))))


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 1, 8), (8, 1, 1)])
def test_same_losses_on_every_mesh(reference, tmp_path, shape):
    got = losses_of(trainer.train(_cfg(tmp_path), _inputs(), partitioner=partitioner_for(shape)))
    assert sorted(got) == sorted(reference) == list(range(1, 6))
    assert got[1] == pytest.approx(reference[1], rel=1e-6)
    np.testing.assert_allclose([got[s] for s in reference], list(reference.values()), rtol=1e-4)
    assert got[5] < got[1]
