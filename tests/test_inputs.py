"""The config -> data bridge: JSONL tasks, and clear errors for unusable data."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest

from t5x_like import inputs
from t5x_like.config import (ConfigError, DataConfig, ObjectiveConfig, RunConfig, TaskConfig,
                             TrainConfig)


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


def _meco_ul2_cfg(stdlib_data, architecture, **objective):
    from t5x_like.config import ModelConfig, ObjectiveConfig, OptimizerConfig
    return RunConfig(
        data=DataConfig(data_dir=str(stdlib_data.data_dir),
                        task_feature_lengths={"inputs": 48, "targets": 32}),
        train=TrainConfig(batch_size=4, eval_batches=2, train_steps=10),
        model=ModelConfig(architecture=architecture), optimizer=OptimizerConfig(warmup_steps=2),
        objective=ObjectiveConfig(**{"name": "ul2", "metadata_field": "module",
                                     "metadata_kind": "value", "cooldown_fraction": 0.5,
                                     "metadata_template": "Module: {value}\n\n"} | objective))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("architecture", ["encoder_decoder", "decoder"])
def test_meco_ul2_switches_to_the_plain_rows_at_the_cooldown_step_and_resumes(stdlib_data,
                                                                              architecture):
    cfg = _meco_ul2_cfg(stdlib_data, architecture)
    tok, built = inputs.build_inputs(cfg)
    states = {0: built.train_iter.get_state()}
    reference = []
    for step in range(1, 11):
        reference.append(next(built.train_iter))
        states[step] = built.train_iter.get_state()
    plain_cfg = dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective,
                                                                       metadata_field=""))
    plain = _take(inputs.build_inputs(plain_cfg)[1].train_iter, 10)
    # Where the inputs are: the encoder's, or the front of each decoder-only segment.
    side = "encoder" if architecture == "encoder_decoder" else "decoder"
    tokens_key = "encoder_input_tokens" if side == "encoder" else "decoder_target_tokens"
    prefix = tok.encode("Module: ")[:2]  # the template's first ids, right after the mode token
    for step, batch in enumerate(reference, start=1):
        seg = batch[f"{side}_segment_ids"]
        starts = [(r, c) for r, c in np.argwhere(batch[f"{side}_positions"] == 0) if seg[r, c] > 0]
        heads = [batch[tokens_key][r, c + 1:c + 3].tolist() == prefix for r, c in starts]
        if step < 5:  # cooldown_step(10, 0.5) = 5: every piece behind its module path
            assert all(heads)
        else:  # from the switch on, the same source continues: exactly the batch a run
            # without metadata draws at this step, so zero metadata tokens
            assert not any(heads) and _same(batch, plain[step - 1])
    for stop in (3, 4, 5, 7):  # resume before, just before, at and after the switch
        fresh = inputs.build_inputs(cfg)[1].train_iter
        fresh.set_state(states[stop])
        assert all(_same(a, b) for a, b in zip(_take(fresh, 10 - stop), reference[stop:]))


def test_a_separate_cooldown_source_feeds_the_batches_after_the_switch(stdlib_data, tmp_path):
    from t5x_like.config import ObjectiveConfig
    path = _write(tmp_path / "cool.jsonl", [{"text": "zzz cooldown zzz " * (1 + i % 5)}
                                            for i in range(30)])
    base = _cfg(stdlib_data, tasks=(TaskConfig(name="cool", train_source=path),))
    cfg = dataclasses.replace(
        base, data=dataclasses.replace(base.data, cooldown_mixture_or_task_name="cool"),
        train=dataclasses.replace(base.train, train_steps=6),
        optimizer=dataclasses.replace(base.optimizer, warmup_steps=1),
        objective=ObjectiveConfig(metadata_field="module", metadata_kind="value",
                                  cooldown_fraction=0.5))
    tok, built = inputs.build_inputs(cfg)
    batches = _take(built.train_iter, 6)
    texts = [tok.decode(b["decoder_target_tokens"][0].tolist()) for b in batches]
    assert all("cooldown" not in t for t in texts[:2])  # cooldown_step(6, 0.5) = 3
    assert all("cooldown" in t and "URL:" not in t for t in texts[2:])
    # Per-task metrics name the cooldown source as a task of its own.
    assert built.task_names == ("stdlib", "cool")
    assert [set(b["_source"].tolist()) for b in batches] == [{0}] * 2 + [{1}] * 4
    with pytest.raises(ValueError, match="DataConfig.cooldown_mixture_or_task_name = 'nope'"):
        inputs.build_inputs(dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, cooldown_mixture_or_task_name="nope")))
    with pytest.raises(ConfigError, match="metadata_field is empty"):
        dataclasses.replace(cfg, objective=ObjectiveConfig())


def test_meco_stage1_rows_honour_score_sampling(stdlib_data, tmp_path):
    from t5x_like.config import ObjectiveConfig
    from t5x_like.data import rows as rows_lib
    docs = [{"text": f"def f{i}():\n    return {i}\n" * (1 + i % 4), "quality": float(i % 2),
             "url": f"https://site{i % 2}.org/x"} for i in range(60)]
    path = _write(tmp_path / "scored.jsonl", docs)
    task = TaskConfig(name="scored", train_source=path, eval_source=path, score_field="quality",
                      score_temperature=0.25)
    cfg = dataclasses.replace(_cfg(stdlib_data, tasks=(task,), mixture_or_task_name="scored"),
                              objective=ObjectiveConfig(metadata_field="url"))
    tok = stdlib_data.tokenizer
    rows = inputs.task_rows(cfg, rows_lib.objective_for(cfg, tok), task, "train", tok, "true")
    firsts = rows.plan.piece_doc_P[rows.plan.piece_start_P == 0]
    assert (firsts % 2 == 1).mean() > 0.9  # softmax(quality / 0.25) draws the good half
    batch = rows(np.arange(rows.num_rows))
    for r, c in np.argwhere((batch["decoder_positions"] == 0) & (batch["decoder_segment_ids"] > 0)):
        text = tok.decode(batch["decoder_input_tokens"][r, c + 1:c + 8].tolist())
        assert text.startswith("URL: site")  # each piece behind a prefix, high-scoring or not


def test_prepare_builds_exactly_the_plans_training_reads(stdlib_data):
    from t5x_like.config import ObjectiveConfig
    cfg = dataclasses.replace(_cfg(stdlib_data), objective=ObjectiveConfig(
        metadata_field="module", metadata_kind="value"))
    summaries = inputs.prepare_all(cfg, progress=False)
    assert [(s["task"], s["split"], s["metadata"]) for s in summaries] == [
        ("stdlib", "train", "true"), ("stdlib", "train", "none"), ("stdlib", "eval", "none")]
    meta = summaries[0]["metadata_summary"]  # every stdlib module has its path: nothing lost
    assert meta["documents"] == meta["with_metadata"] == summaries[0]["documents"]
    assert meta["without_metadata"] == meta["continuations_without_prefix"] == 0
    for s in summaries:
        assert s["rows"] >= s["lower_bound_rows"] > 0 and 0 < s["fill_pct"] <= 100
    plans = {p for s in summaries for p in (pathlib.Path(s["path"]) / "plans").iterdir()}
    inputs.build_inputs(cfg)
    assert {p for s in summaries for p in (pathlib.Path(s["path"]) / "plans").iterdir()} == plans


def test_prepare_reports_both_budgets_of_an_encoder_decoder(stdlib_data):
    cfg = dataclasses.replace(_meco_ul2_cfg(stdlib_data, "encoder_decoder"),
                              objective=ObjectiveConfig(name="ul2"))
    summaries = inputs.prepare_all(cfg, progress=False)
    assert [(s["split"], s["metadata"]) for s in summaries] == [("train", "none"), ("eval", "none")]
    for s in summaries:
        assert 0 < s["targets_fill_pct"] < s["inputs_fill_pct"] <= 100
        assert s["fill_pct"] == pytest.approx((48 * s["inputs_fill_pct"]
                                               + 32 * s["targets_fill_pct"]) / 80, abs=1e-3)


def _process_shares(cfg, process_count, monkeypatch, steps):
    """Each of `process_count` processes' first `steps` train batches, as the CLI builds them."""
    shares = []
    for p in range(process_count):
        monkeypatch.setattr(inputs, "_shard_args", lambda c, p=p: dict(
            global_batch_size=c.train.batch_size, process_index=p, process_count=process_count))
        shares.append(_take(inputs.build_inputs(cfg)[1].train_iter, steps))
    return shares


@pytest.mark.parametrize("objective", ["causal-mixture", "ul2", "meco-ul2"])
def test_global_batch_s_does_not_depend_on_the_process_count(stdlib_data, tmp_path, monkeypatch,
                                                              objective):
    """The processes' batches at step s, concatenated in process order, are the batch one
    process trains on at step s, token for token (past MeCo's cooldown switch at step 5)."""
    if objective == "causal-mixture":
        prose = [{"text": "the cat sat on the mat " * (1 + i % 7)} for i in range(60)]
        path = _write(tmp_path / "prose.jsonl", prose)
        cfg = _cfg(stdlib_data, tasks=(TaskConfig(name="prose", train_source=path,
                                                  eval_source=path),),
                   mixtures={"mix": {"stdlib": 3.0, "prose": 1.0}}, mixture_or_task_name="mix")
    else:
        cfg = _meco_ul2_cfg(stdlib_data, "encoder_decoder",
                            **({} if objective == "meco-ul2" else {"metadata_field": ""}))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8))
    (reference,) = _process_shares(cfg, 1, monkeypatch, 8)
    for process_count in (2, 4):
        shares = _process_shares(cfg, process_count, monkeypatch, 8)
        for step, want in enumerate(reference):
            for key, value in want.items():
                got = np.concatenate([share[step][key] for share in shares])
                assert np.array_equal(got, value), (process_count, step, key)
