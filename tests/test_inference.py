"""infer and score over a supervised split: predictions in order, restart skips finished
shards, scores equal the model's own log-likelihood, metrics in training's eval rows."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import MICRO_MODEL
from t5x_like import inference, inputs, trainer
from t5x_like.config import (DataConfig, InferConfig, ObjectiveConfig, OptimizerConfig,
                             RunConfig, TaskConfig, TrainConfig)
from t5x_like.generate import Generator
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder

WORDS = "alpha beta gamma delta open close read write".split()


def _task(tmp_path):
    rng = np.random.default_rng(0)
    lines = [json.dumps({"q": " ".join(rng.choice(WORDS, int(rng.integers(1, 12)))),
                         "a": " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))})
             for _ in range(13)]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return TaskConfig(name="qa", train_source=str(path), eval_source=str(path),
                      inputs_field="q", targets_field="a", metrics=("exact_match", "accuracy"))


def _cfg(stdlib_data, tmp_path, architecture="decoder", **infer):
    model = dataclasses.replace(MICRO_MODEL, vocab_size=2048, architecture=architecture,
                                num_encoder_layers=2 if architecture == "encoder_decoder" else 0)
    return RunConfig(
        model=model, objective=ObjectiveConfig(name="supervised"),
        optimizer=OptimizerConfig(warmup_steps=1),
        data=DataConfig(data_dir=str(stdlib_data.data_dir), tasks=(_task(tmp_path),),
                        mixture_or_task_name="qa",
                        task_feature_lengths={"inputs": 24, "targets": 12}),
        train=TrainConfig(model_dir=str(tmp_path / "run"), batch_size=8, train_steps=2,
                          eval_every=0, checkpoint_every=2, log_every=1),
        infer=InferConfig(batch_size=4, shard_size=5, max_new_tokens=5, **infer))


def _model(cfg):
    cls = EncoderDecoder if cfg.model.architecture == "encoder_decoder" else Decoder
    model = cls(cfg.model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return model, graphdef, nnx.to_pure_dict(params)


@pytest.fixture
def setup(stdlib_data, tmp_path):
    cfg = _cfg(stdlib_data, tmp_path)
    task = cfg.data.tasks[0]
    _, graphdef, params = _model(cfg)
    generator = Generator(params, graphdef, eos_id=stdlib_data.tokenizer.eos_id, prefix_lm=True)
    return cfg, task, inputs.supervised_examples(cfg, task, "eval"), generator


def test_predictions_are_in_split_order_and_restart_skips_finished_shards(setup, stdlib_data,
                                                                           tmp_path,
                                                                           monkeypatch):
    cfg, task, examples, generator = setup
    tok, out = stdlib_data.tokenizer, tmp_path / "out"
    summary = inference.predict(cfg, examples, generator, tok, out, task=task, step=7,
                                progress=False)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(13)) and summary["examples"] == 13
    assert sorted(p.name for p in out.glob("predictions-*")) == [
        f"predictions-0000{s}-of-00003.jsonl" for s in range(3)]
    prompts = [inference.prompt_of(examples[i][0], False) for i in range(13)]
    direct = generator.generate(prompts, max_new_tokens=5, prompt_length=25)
    assert [r["prediction"] for r in rows] == [tok.decode(d.tokens) for d in direct]
    assert [r["score"] for r in rows] == pytest.approx([d.score for d in direct], abs=1e-5)
    assert (rows[0]["inputs"], rows[0]["targets"]) == examples.text(0)
    hits = sum(r["prediction"].strip() == r["targets"].strip() for r in rows)
    assert summary["exact_match"] == pytest.approx(100 * hits / 13)
    assert json.loads((out / "metrics.json").read_text()) == summary

    # A killed run: the last shard and the merged file are missing. Only that shard is redone.
    (out / "predictions-00002-of-00003.jsonl").unlink()
    (out / "predictions.jsonl").unlink()
    calls = []
    original = Generator.generate
    monkeypatch.setattr(Generator, "generate",
                        lambda self, p, **kw: calls.append(len(p)) or original(self, p, **kw))
    assert inference.predict(cfg, examples, generator, tok, out, task=task, step=7,
                             progress=False) == summary
    assert calls == [3]  # examples 10..12
    assert [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()] \
        == rows

    other = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, num_beams=2))
    with pytest.raises(ValueError, match=r"other settings \(differing: \['num_beams'\]\)"):
        inference.predict(other, examples, generator, tok, out, task=task, step=7,
                          progress=False)


@pytest.mark.parametrize("architecture", ["decoder", "encoder_decoder"])
def test_scores_are_the_log_likelihood_of_the_targets(stdlib_data, tmp_path, architecture):
    cfg = _cfg(stdlib_data, tmp_path, architecture)
    task = cfg.data.tasks[0]
    examples = inputs.supervised_examples(cfg, task, "eval")
    model, graphdef, params = _model(cfg)
    summary = inference.score(cfg, examples, inference.Scorer(params, graphdef),
                              tmp_path / "scores", task=task, step=0,
                              encoder_decoder=architecture == "encoder_decoder",
                              progress=False)
    rows = [json.loads(line) for line in (tmp_path / "scores" / "scores.jsonl").read_text()
            .splitlines()]
    for i in (0, 5, 12):
        ids_in, ids_tg = examples[i]
        if architecture == "encoder_decoder":
            logits = model(ids_in[None], np.concatenate([[0], ids_tg[:-1]])[None])[0]
        else:
            seq = np.concatenate([[0], ids_in, ids_tg[:-1]])[None].astype(np.int32)
            prefix = (np.arange(seq.shape[1]) <= len(ids_in))[None].astype(np.int32)
            logits = model(seq, np.ones_like(seq), np.arange(seq.shape[1])[None],
                           prefix)[0, len(ids_in):]
        log_probs = np.asarray(jax.nn.log_softmax(logits, -1))
        want = sum(log_probs[j, t] for j, t in enumerate(ids_tg))
        assert rows[i]["score"] == pytest.approx(want, abs=1e-4)
        assert rows[i]["target_tokens"] == len(ids_tg)
    assert summary["target_tokens"] == sum(r["target_tokens"] for r in rows)


def test_training_eval_rows_carry_the_task_metrics(stdlib_data, tmp_path):
    cfg = _cfg(stdlib_data, tmp_path, train_eval_examples=6)
    _, built = inputs.build_inputs(cfg)
    rows = trainer.train(cfg, built)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2]
    for r in evals:
        assert 0 <= r["eval_exact_match/qa"] <= 100 and 0 <= r["eval_accuracy/qa"] <= 100
        assert 0 <= r["eval_accuracy"] <= 1  # the token accuracy of the loss metrics
        lines = (tmp_path / "run" / "eval_predictions" / f"qa_step{r['step']}" /
                 "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 6


def test_the_cli_scores_and_evaluates_a_fine_tuned_run(stdlib_data, tmp_path, capsys):
    """train -> score -> eval through `t5x-like`: eval adds the task's exact match to its
    losses over the whole eval split."""
    from t5x_like import cli
    task = _task(tmp_path)
    gin = tmp_path / "qa.gin"
    gin.write_text(f"""include 'runs/pretrain.gin'
MODEL_DIR = '{tmp_path / "run"}'
TRAIN_STEPS = 2
MIXTURE_OR_TASK_NAME = 'qa'
TASK_FEATURE_LENGTHS = {{'inputs': 24, 'targets': 12}}
DataConfig.data_dir = '{stdlib_data.data_dir}'
DataConfig.tasks = [@qa/TaskConfig()]
qa/TaskConfig.name = 'qa'
qa/TaskConfig.train_source = '{task.train_source}'
qa/TaskConfig.eval_source = '{task.eval_source}'
qa/TaskConfig.inputs_field = 'q'
qa/TaskConfig.targets_field = 'a'
qa/TaskConfig.metrics = ('exact_match',)
ObjectiveConfig.name = 'supervised'
ModelConfig.num_layers = 1
ModelConfig.d_model = 32
ModelConfig.mlp_dim = 64
OptimizerConfig.warmup_steps = 1
InferConfig.max_new_tokens = 4
""")
    assert cli.main(["train", f"--gin_file={gin}"]) == 0
    capsys.readouterr()
    assert cli.main(["score", f"--gin_file={gin}"]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scored["examples"] == 13 and scored["log_likelihood"] < 0
    rows = (tmp_path / "run" / "inference" / "qa_eval_step2_scores" / "scores.jsonl")
    assert len(rows.read_text().splitlines()) == 13
    assert cli.main(["eval", f"--gin_file={gin}"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["step"] == 2 and 0 <= metrics["eval_exact_match/qa"] <= 100
    # The whole split: every target token that score counted.
    assert metrics["eval_tokens"] == scored["target_tokens"]
