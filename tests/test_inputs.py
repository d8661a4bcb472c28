"""The config -> data bridge: JSONL tasks, and clear errors for unusable data."""

import dataclasses
import json

import pytest

from t5x_like import inputs
from t5x_like.config import DataConfig, RunConfig, TrainConfig


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
    with pytest.raises(ValueError, match="set DataConfig.eval_files"):
        inputs.build_inputs(cfg)


def test_a_corpus_of_only_bad_records_names_the_files(stdlib_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\nnot json\n{"title": "no text"}\n')
    cfg = _cfg(stdlib_data, mixture_or_task_name=str(bad), eval_files=str(bad))
    with pytest.raises(ValueError, match="no usable document in .*bad.jsonl"):
        inputs.build_inputs(cfg)


def test_missing_files_and_small_vocab_are_clear_errors(stdlib_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        inputs.build_inputs(_cfg(stdlib_data, mixture_or_task_name=str(tmp_path / "*.jsonl"),
                                 eval_files="x"))
    cfg = _cfg(stdlib_data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=100))
    with pytest.raises(ValueError, match="ModelConfig.vocab_size = 100"):
        inputs.build_inputs(cfg)
