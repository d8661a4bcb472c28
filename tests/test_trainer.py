"""The loop end to end on 8 fake CPU devices: mesh invariance, exact resume, restore onto another
mesh, the NaN stop, a checkpoint from another model, and fine-tuning from another run."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from conftest import MICRO_MODEL, losses_of, partitioner_for, random_packed_rows
from t5x_like import optim, state as state_lib, trainer
from t5x_like.checkpointing import CheckpointMismatchError
from t5x_like.config import OptimizerConfig, RunConfig, TrainConfig, DataConfig
from t5x_like.data import pipeline
from t5x_like.inputs import Inputs
from t5x_like.metrics import read_metrics

ROWS = random_packed_rows(96, 32, MICRO_MODEL.vocab_size)


def _cfg(model_dir, steps=6, **train):
    return RunConfig(
        model=MICRO_MODEL, data=DataConfig(task_feature_lengths={"targets": 32}),
        optimizer=OptimizerConfig(warmup_steps=2, learning_rate=3e-3, schedule_steps=6),
        train=TrainConfig(model_dir=str(model_dir), train_steps=steps, batch_size=8, log_every=1,
                          eval_every=0, eval_batches=2, checkpoint_every=3, progress_bar=False,
                          async_checkpointing=False, **train))


def _inputs():
    return Inputs(pipeline.make_train_iterator([pipeline.ArrayRows(ROWS)], global_batch_size=8, seed=0),
                  pipeline.eval_batches(ROWS, global_batch_size=8, max_batches=2))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 6-step run on one device."""
    model_dir = tmp_path_factory.mktemp("reference")
    rows = trainer.train(_cfg(model_dir), _inputs(), partitioner=partitioner_for((1, 1, 1)))
    return model_dir, rows


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_same_losses_on_every_mesh(reference, tmp_path, shape):
    rows = trainer.train(_cfg(tmp_path), _inputs(), partitioner=partitioner_for(shape))
    ref = losses_of(reference[1])
    got = losses_of(rows)
    assert sorted(got) == sorted(ref) == list(range(1, 7))
    # Step 1 sees identical parameters: only the reduction order differs across meshes. Later
    # steps compound float32 noise through Adam's m / sqrt(v), hence the looser bound.
    assert got[1] == pytest.approx(ref[1], rel=1e-6)
    np.testing.assert_allclose([got[s] for s in ref], list(ref.values()), rtol=1e-4)


def test_resume_is_bit_identical(reference, tmp_path):
    trainer.train(_cfg(tmp_path, steps=4), _inputs(), partitioner=partitioner_for((1, 1, 1)))
    trainer.train(_cfg(tmp_path, steps=6), _inputs(), partitioner=partitioner_for((1, 1, 1)))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert losses_of(rows) == losses_of(reference[1])  # exact, not approximate
    # The relaunch from step 4 keeps step 4's rows and writes none of them twice.
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 4, 6]
    ref_rows = [json.loads(line) for line in open(reference[0] / "metrics.jsonl")]
    assert [r["eval_loss"] for r in rows if "eval_loss" in r][-1] == \
        [r["eval_loss"] for r in ref_rows if "eval_loss" in r][-1]


def test_relaunch_before_the_first_checkpoint_logs_each_row_once(tmp_path):
    # What a run killed at step 1, before any checkpoint, leaves behind.
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 9.0}\n'
                                            '{"step": 1, "loss": 9.0}\n')
    rows = trainer.train(_cfg(tmp_path, steps=2), _inputs(), partitioner=partitioner_for((1, 1, 1)))
    assert read_metrics(str(tmp_path)) == rows
    assert [r["step"] for r in rows] == [0, 1, 2, 2]  # eval, train, train, eval


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_checkpoint_restores_onto_another_mesh(reference, shape):
    cfg = _cfg(reference[0])
    params_1, _, step, _ = trainer.load_trained(cfg, partitioner=partitioner_for((1, 1, 1)))
    params_8, _, _, partitioner = trainer.load_trained(cfg, partitioner=partitioner_for(shape))
    assert step == 6
    kernel = params_8["layers"]["mlp"]["gate"]
    assert kernel.sharding.mesh.shape == partitioner.mesh.shape and len(kernel.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8)):
        np.testing.assert_array_equal(jax.device_get(a), jax.device_get(b))


def test_checkpoint_from_another_model_is_refused(reference):
    cfg = _cfg(reference[0])
    other = dataclasses.replace(cfg, model=dataclasses.replace(MICRO_MODEL, num_layers=3))
    with pytest.raises(CheckpointMismatchError, match="num_layers: checkpoint 2 vs config 3"):
        trainer.load_trained(other, partitioner=partitioner_for((1, 1, 1)))


def test_nan_stops_with_a_clear_error_and_no_nan_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, steps=6)
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(
        cfg.optimizer, learning_rate=1e38, grad_clip_norm=0.0, warmup_steps=0),
        train=dataclasses.replace(cfg.train, checkpoint_every=1))
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite loss or gradient at step"):
        trainer.train(cfg, _inputs(), partitioner=partitioner_for((1, 1, 1)))
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    bad_step = max(r["step"] for r in rows) + 1
    assert saved and max(saved) < bad_step
    params, _, _, _ = trainer.load_trained(cfg, partitioner=partitioner_for((1, 1, 1)))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_adafactor_trains_on_a_sharded_mesh(tmp_path):
    cfg = _cfg(tmp_path)
    cfg = dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, name="adafactor",
                                                                 learning_rate=1e-2))
    losses = losses_of(trainer.train(cfg, _inputs(), partitioner=partitioner_for((2, 2, 2))))
    assert losses[6] < losses[1]


def test_a_checkpoint_missing_its_data_iterator_state_says_how_to_go_on(reference, tmp_path):
    import shutil
    model_dir = tmp_path / "copy"
    shutil.copytree(reference[0], model_dir)
    (model_dir / "checkpoints" / "6" / "data_iter" / "process_0-of-1.json").unlink()
    with pytest.raises(CheckpointMismatchError, match=r"checkpoints/6 is incomplete: .*"
                       r"process_0-of-1.json \(this process's data iterator state\) is missing. "
                       r"Delete .*checkpoints/6 to resume from the checkpoint before it"):
        trainer.train(_cfg(model_dir, steps=8), _inputs(), partitioner=partitioner_for((1, 1, 1)))


def test_resume_with_another_process_count_is_refused(reference, tmp_path):
    import shutil
    model_dir = tmp_path / "copy"
    shutil.copytree(reference[0], model_dir)
    for f in model_dir.glob("checkpoints/*/data_iter/process_0-of-1.json"):
        f.rename(f.with_name("process_0-of-2.json"))
    with pytest.raises(CheckpointMismatchError, match="data iterator state of 2 process"):
        trainer.train(_cfg(model_dir, steps=8), _inputs(), partitioner=partitioner_for((1, 1, 1)))


def _fine_tune_start(cfg):
    """The state a fine-tune of `cfg` starts from, on one device."""
    tx, _ = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    partitioner = partitioner_for((1, 1, 1))
    layout = state_lib.state_layout(trainer.default_model_factory(cfg), tx, partitioner)
    return trainer.init_from_checkpoint(cfg, tx, layout, partitioner)


@pytest.mark.parametrize("source, step", [("", 6), ("/checkpoints/3", 3)])
def test_fine_tune_starts_from_the_parameters_with_fresh_optimizer_state(reference, tmp_path,
                                                                         source, step):
    pretrained, _, _, _ = trainer.load_trained(_cfg(reference[0]), step=step,
                                               partitioner=partitioner_for((1, 1, 1)))
    state = _fine_tune_start(_cfg(tmp_path, init_from=f"{reference[0]}{source}"))
    assert int(state["step"]) == 0
    for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(pretrained)):
        np.testing.assert_array_equal(jax.device_get(a), jax.device_get(b))
    moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 0]
    assert moments and not any(np.asarray(x).any() for x in moments)  # Adam's m and v: zeros


def test_fine_tune_trains_from_step_0_then_resumes_its_own_checkpoint(reference, tmp_path):
    ft = tmp_path / "ft"
    rows = trainer.train(_cfg(ft, steps=2, init_from=str(reference[0])), _inputs(),
                         partitioner=partitioner_for((1, 1, 1)))
    ref_evals = [r for r in read_metrics(str(reference[0])) if "eval_loss" in r]
    # Step 0 evaluates the pretrained parameters: exactly the pretraining run's last eval.
    assert rows[0]["step"] == 0 and rows[0]["eval_loss"] == ref_evals[-1]["eval_loss"]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    # Resuming reads the fine-tune's own checkpoint; init_from is not looked at again.
    more = trainer.train(_cfg(ft, steps=3, init_from=str(tmp_path / "gone")), _inputs(),
                         partitioner=partitioner_for((1, 1, 1)))
    assert [r["step"] for r in more if "loss" in r] == [3]


def test_fine_tune_from_another_model_or_no_checkpoint_is_a_one_line_error(reference, tmp_path):
    cfg = _cfg(tmp_path, init_from=str(reference[0]))
    other = dataclasses.replace(cfg, model=dataclasses.replace(MICRO_MODEL, num_layers=3))
    with pytest.raises(CheckpointMismatchError) as err:
        _fine_tune_start(other)
    assert "num_layers: checkpoint 2 vs config 3" in str(err.value)
    assert "TrainConfig.init_from" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointMismatchError, match="no checkpoint under"):
        _fine_tune_start(_cfg(tmp_path, init_from=str(tmp_path)))
    with pytest.raises(CheckpointMismatchError, match=r"no checkpoint of step 4 \(it has \[3, 6\]"):
        _fine_tune_start(_cfg(tmp_path, init_from=str(reference[0]), init_step=4))
