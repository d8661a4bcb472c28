"""The config -> data bridge: JSONL tasks, and clear errors for unusable data."""

import dataclasses
import json

import numpy as np
import pytest

from t5x_like import inputs
from t5x_like.config import ConfigError, DataConfig, RunConfig, TaskConfig, TrainConfig


def _cfg(stdlib_data, **data):
    return RunConfig(data=DataConfig(data_dir=str(stdlib_data.data_dir),
                                     task_feature_lengths={"targets": 64}, **data),
                     train=TrainConfig(batch_size=4, eval_batches=2))


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_jsonl_task_builds_train_and_eval_batches(stdlib_data, tmp_path):
    docs = [{"text": f"def f{i}(x):\n    return x + {i}\n" * 3, "url": "https://a.org/x"}
            for i in range(40)]
    cfg = _cfg(stdlib_data, mixture_or_task_name=_write(tmp_path / "train.jsonl", docs),
               eval_files=_write(tmp_path / "eval.jsonl", docs[:5]))
    tokenizer, built = inputs.build_inputs(cfg)
    batch = next(built.train_iter)
    assert batch["decoder_target_tokens"].shape == (4, 64)
    assert len(built.eval_batches) >= 1 and tokenizer.vocab_size <= cfg.model.vocab_size


def test_jsonl_task_without_eval_files_is_refused(stdlib_data, tmp_path):
    cfg = _cfg(stdlib_data, mixture_or_task_name=_write(tmp_path / "t.jsonl", [{"text": "x"}]))
    with pytest.raises(ValueError, match="has an eval split: set TaskConfig.eval_source"):
        inputs.build_inputs(cfg)


def test_a_corpus_of_only_bad_records_names_the_files(stdlib_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\nnot json\n{"title": "no text"}\n')
    cfg = _cfg(stdlib_data, mixture_or_task_name=str(bad), eval_files=str(bad))
    with pytest.raises(ValueError, match="bad.jsonl.*no usable document among 3 records"):
        inputs.build_inputs(cfg)


def test_missing_files_and_small_vocab_are_clear_errors(stdlib_data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
        inputs.build_inputs(_cfg(stdlib_data, mixture_or_task_name=str(tmp_path / "*.jsonl"),
                                 eval_files="x"))
    cfg = _cfg(stdlib_data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=100))
    with pytest.raises(ValueError, match="ModelConfig.vocab_size = 100"):
        inputs.build_inputs(cfg)


def test_a_named_mixture_trains_on_both_tasks_at_its_rates(stdlib_data, tmp_path):
    prose = [{"text": "the cat sat on the mat " * (1 + i % 7)} for i in range(60)]
    path = _write(tmp_path / "prose.jsonl", prose)
    tasks = (TaskConfig(name="prose", train_source=path, eval_source=path),)
    cfg = _cfg(stdlib_data, tasks=tasks, mixtures={"mix": {"stdlib": 3.0, "prose": 1.0}},
               mixture_or_task_name="mix")
    _, built = inputs.build_inputs(cfg)
    assert built.task_names == ("stdlib", "prose")
    sources = [int(s) for _ in range(10) for s in next(built.train_iter)["_source"]]
    assert sources.count(0) == 30 and sources.count(1) == 10
    assert len(built.eval_batches) == 4  # eval_batches=2 from each task
    # The prepared data and its plan sit next to each other, reused by the next run.
    prepared_dir = stdlib_data.data_dir / "prepared" / "prose" / "train"
    assert (prepared_dir / "manifest.json").is_file() and list((prepared_dir / "plans").iterdir())


def test_unknown_names_are_clear_errors(stdlib_data):
    with pytest.raises(ValueError, match="'nope' is neither a task"):
        inputs.build_inputs(_cfg(stdlib_data, mixture_or_task_name="nope"))
    with pytest.raises(ConfigError, match="mixture 'm' names unknown tasks \\['web'\\]"):
        DataConfig(mixtures={"m": {"web": 1.0}})


def test_meco_prefixes_every_document_until_the_cooldown_step_and_none_after(stdlib_data):
    from t5x_like.config import ObjectiveConfig
    cfg = _cfg(stdlib_data)
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, train_steps=10),
        optimizer=dataclasses.replace(cfg.optimizer, warmup_steps=2),
        objective=ObjectiveConfig(metadata_field="module", metadata_kind="value",
                                  metadata_template="Module: {value}\n\n", cooldown_fraction=0.5))
    tok, built = inputs.build_inputs(cfg)
    for step in range(1, 11):
        batch = next(built.train_iter)
        seg, w = batch["decoder_segment_ids"], batch["decoder_loss_weights"]
        starts = np.argwhere(batch["decoder_positions"] == 0)
        starts = [(r, c) for r, c in starts if seg[r, c] > 0]
        with_prefix = [tok.decode(batch["decoder_input_tokens"][r, c + 1:c + 4]).startswith("Module")
                       for r, c in starts]
        if step < 5:  # cooldown_step(10, 0.5) = 5
            assert all(with_prefix) and ((seg > 0) & (w == 0)).any()
        else:  # no metadata token, and every in-segment token carries loss
            assert not any(with_prefix) and not ((seg > 0) & (w == 0)).any()
