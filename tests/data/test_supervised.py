"""Supervised tasks: (inputs, targets) records prepared, cut, packed for both architectures, read
back unpacked; bad records counted; wrong fields a one-line error."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from t5x_like import inputs
from t5x_like.config import (ConfigError, DataConfig, ModelConfig, ObjectiveConfig, RunConfig,
                             TaskConfig, TrainConfig)
from t5x_like.data import packing, prepared, rows, supervised

INPUTS, TARGETS = 48, 24
WORDS = "alpha beta gamma delta open close read write config path value".split()


def _records(n=40, seed=0):
    """Records of varied sizes: some inputs and targets longer than their budget, some inputs
    empty, a topic for MeCo."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words_in = int(rng.choice([0, 2, 6, 60])) if i else 60
        words_tg = int(rng.choice([1, 2, 3, 30])) if i else 30
        out.append({"question": " ".join(rng.choice(WORDS, words_in)),
                    "answer": f"f{i}(" + ", ".join(rng.choice(WORDS, words_tg)) + ")",
                    "topic": f"t{i % 3}"})
    return out


BAD = [{"question": "no answer"}, {"answer": "no question"}, {"question": "x", "answer": "  "},
       {"question": 3, "answer": "x"}, {"question": "x", "answer": None}]


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def _prepare(spec, out, tok, **options):
    opts = prepared.PrepareOptions(text_field="answer", inputs_field="question", num_workers=1,
                                   progress=False, **options)
    prepared.prepare(spec, out, tok, opts)
    return prepared.PreparedDataset(out)


@pytest.fixture(scope="module")
def records():
    good = _records()
    return good, good[:10] + BAD + ["not json"] + good[10:]


@pytest.fixture(scope="module")
def dataset(records, stdlib_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("supervised")
    return _prepare(_jsonl(d / "qa.jsonl", records[1]), d / "prep", stdlib_data.tokenizer,
                    metadata_fields=("topic",))


def _objective(tok, encoder_decoder, mode_token=""):
    return supervised.Supervised(INPUTS, TARGETS, encoder_decoder, tok.eos_id,
                                 tuple(sorted(tok.mode_tokens.items())), mode_token)


def _expected(tok, good, mode_token="", prefixes=None):
    """(inputs, targets) of every good record as training must lay it out, cuts included."""
    head = [tok.mode_token_id(mode_token)] if mode_token else []
    out = []
    for d, r in enumerate(good):
        prefix = [] if prefixes is None else prefixes(d).tolist()
        room = INPUTS - len(head) - len(prefix) - 1
        ids_in, ids_tg = tok.encode(r["question"]), tok.encode(r["answer"])
        out.append((head + prefix + ids_in[:room] + [tok.eos_id],
                    ids_tg[:TARGETS - 1] + [tok.eos_id]))
    return out


def _unpack(batch, encoder_decoder):
    """(inputs, targets) of every segment of every row, checking the packed features."""
    got = []
    for r in range(len(batch["decoder_target_tokens"])):
        seg = batch["decoder_segment_ids"][r]
        for s in range(1, seg.max() + 1):
            at = seg == s
            tokens = batch["decoder_target_tokens"][r][at]
            weights = batch["decoder_loss_weights"][r][at]
            np.testing.assert_array_equal(batch["decoder_positions"][r][at], np.arange(at.sum()))
            np.testing.assert_array_equal(batch["decoder_input_tokens"][r][at],
                                          np.concatenate([[0], tokens[:-1]]))
            if encoder_decoder:
                enc = batch["encoder_segment_ids"][r] == s
                np.testing.assert_array_equal(batch["encoder_positions"][r][enc],
                                              np.arange(enc.sum()))
                assert weights.all()
                got.append((batch["encoder_input_tokens"][r][enc].tolist(), tokens.tolist()))
            else:
                n_in = int(batch["decoder_causal_attention"][r][at].sum()) - 1
                np.testing.assert_array_equal(weights, np.arange(at.sum()) >= n_in)
                got.append((tokens[:n_in].tolist(), tokens[n_in:].tolist()))
    return got


@pytest.mark.parametrize("encoder_decoder", [True, False])
def test_rows_hold_every_example_once_cut_to_its_budgets(dataset, records, stdlib_data,
                                                         encoder_decoder):
    tok = stdlib_data.tokenizer
    source = rows.open_rows(_objective(tok, encoder_decoder, "[S2S]"), dataset.path, seed=0)
    got = _unpack(source(np.arange(source.num_rows)), encoder_decoder)
    want = _expected(tok, records[0], "[S2S]")
    assert sorted(map(str, got)) == sorted(map(str, want))
    assert want[0][0][0] == tok.mode_token_id("[S2S]") and len(want[0][0]) == INPUTS
    width = source.objective.budgets[-1]  # the decoder: the targets, or the whole row
    assert source.num_rows < len(want) and all(
        v.shape == (source.num_rows, INPUTS if k.startswith("encoder") else width)
        for k, v in source(np.arange(source.num_rows)).items())
    # The cuts the plan flags are exactly the examples longer than their budgets, and counted.
    n_in = np.array([len(tok.encode(r["question"])) for r in records[0]])
    n_tg = np.array([len(tok.encode(r["answer"])) for r in records[0]])
    cuts = rows.summary(source.plan)
    assert cuts["cut_inputs"] == (n_in > INPUTS - 2).sum() > 0
    assert cuts["cut_targets"] == (n_tg > TARGETS - 1).sum() > 0
    assert (n_in == 0).any()  # an empty inputs field is an example too


def test_bad_records_are_skipped_and_counted_by_reason(dataset, records):
    m = dataset.manifest
    assert m["skipped"] == {"missing_targets_field": 1, "missing_inputs_field": 1,
                            "empty_targets": 1, "non_string_inputs": 1, "null_targets": 1,
                            "malformed_json": 1}
    assert m["records_read"] == m["documents"] + sum(m["skipped"].values()) == len(records[1])
    assert m["inputs_tokens"] + m["targets_tokens"] == m["tokens"]
    assert dataset.header(3)["targets"] == records[0][3]["answer"]  # source order kept


def test_jsonl_parquet_and_array_record_prepare_alike(dataset, records, stdlib_data, tmp_path):
    good = records[0]
    parquet = tmp_path / "qa.parquet"
    pq.write_table(pa.table({k: [r[k] for r in good] for k in ("question", "answer", "topic")}),
                   parquet, row_group_size=7)
    array_record = tmp_path / "qa.array_record"
    writer = ArrayRecordWriter(str(array_record), "group_size:4")
    for r in good:
        writer.write(json.dumps(r).encode())
    writer.close()
    for spec in (parquet, array_record):
        other = _prepare(str(spec), tmp_path / spec.suffix[1:], stdlib_data.tokenizer,
                         metadata_fields=("topic",))
        assert other.manifest["format_version"] == prepared.FORMAT_VERSION
        np.testing.assert_array_equal(other.lengths_D, dataset.lengths_D)
        np.testing.assert_array_equal(other.inputs_lengths_D, dataset.inputs_lengths_D)
        assert [other.header(i)["inputs"] for i in range(5)] == [r["question"] for r in good[:5]]
        assert other.metadata(4) == {"topic": good[4]["topic"]}


def test_a_parquet_file_without_the_inputs_column_counts_every_row(stdlib_data, tmp_path):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "answer": ["x", "y"]}), path)
    with pytest.raises(ConfigError, match=r"missing_inputs_field': 2\}.*fields: \['answer', "
                                          r"'prompt'\]"):
        _prepare(str(path), tmp_path / "out", stdlib_data.tokenizer)


def _cfg(stdlib_data, task, **objective):
    return RunConfig(
        model=ModelConfig(vocab_size=2048),
        objective=ObjectiveConfig(name="supervised", **objective),
        data=DataConfig(data_dir=str(stdlib_data.data_dir), tasks=(task,),
                        mixture_or_task_name=task.name,
                        task_feature_lengths={"inputs": INPUTS, "targets": TARGETS}),
        train=TrainConfig(batch_size=4, eval_batches=2))


def test_wrong_field_names_are_one_line_errors_naming_task_file_field_and_counts(
        stdlib_data, tmp_path, records):
    spec = _jsonl(tmp_path / "qa.jsonl", records[0])
    task = TaskConfig(name="qa", train_source=spec, eval_source=spec, inputs_field="prompt",
                      targets_field="answer")
    with pytest.raises(ConfigError) as err:
        inputs.prepare_all(_cfg(stdlib_data, task), progress=False)
    message = str(err.value)
    assert "\n" not in message
    for part in ("task 'qa', train split", "qa.jsonl", "'missing_inputs_field': 40",
                 "inputs_field = 'prompt'", "['answer', 'question', 'topic']"):
        assert part in message


def test_prepare_summary_and_examples_in_source_order(stdlib_data, tmp_path, records):
    good = records[0]
    spec = _jsonl(tmp_path / "qa.jsonl", records[1])
    task = TaskConfig(name="qa", train_source=spec,
                      eval_source=_jsonl(tmp_path / "e.jsonl", good[:3]),
                      inputs_field="question", targets_field="answer", mode_token="[NLG]")
    cfg = _cfg(stdlib_data, task)
    train, evals = inputs.prepare_all(cfg, progress=False)
    assert train["documents"] == len(good) and train["skipped"]["empty_targets"] == 1
    assert train["cut_inputs"] > 0 and train["cut_targets"] > 0 and evals["documents"] == 3
    examples = inputs.supervised_examples(cfg, task, "train")
    want = _expected(stdlib_data.tokenizer, good, "[NLG]")
    assert len(examples) == len(good)
    assert [tuple(x.tolist() for x in examples[i]) for i in range(len(good))] == want
    assert [tuple(x.tolist() for x in e) for e in examples.batch([5, 1])] == [want[5], want[1]]
    assert examples.text(2) == (good[2]["question"], good[2]["answer"])
    assert examples.cut(0) == (True, True) and examples.location(0).endswith("qa.jsonl:1")
    with pytest.raises(IndexError):
        examples[len(good)]


def test_metadata_prefix_goes_after_the_mode_token_without_loss(stdlib_data, tmp_path, records):
    good = records[0]
    spec = _jsonl(tmp_path / "qa.jsonl", good)
    task = TaskConfig(name="qa", train_source=spec, eval_source=spec, inputs_field="question",
                      targets_field="answer", mode_token="[S2S]")
    cfg = _cfg(stdlib_data, task, metadata_field="topic", metadata_kind="value",
               metadata_template="Topic: {value}\n")
    tok = stdlib_data.tokenizer
    objective = rows.objective_for(cfg, tok)
    source = inputs.task_rows(cfg, objective, task, "eval", tok, metadata="true")
    examples = inputs.supervised_examples(cfg, task, "eval")
    want = _expected(tok, good, "[S2S]", examples.prefixes)
    assert sorted(map(str, _unpack(source(np.arange(source.num_rows)), False))) == sorted(
        map(str, want))
    assert tok.decode(want[1][0][1:1 + len(examples.prefixes(1))]) == "Topic: t1\n"
    assert [tuple(x.tolist() for x in examples[i]) for i in range(3)] == want[:3]


def test_objectives_and_splits_of_the_other_kind_are_refused(dataset, stdlib_data):
    from t5x_like.data import causal
    tok = stdlib_data.tokenizer
    with pytest.raises(ValueError, match="holds supervised .* objective 'causal'"):
        rows.open_rows(causal.CausalLM(64, tok.bos_id, tok.eos_id), dataset.path, seed=0)
    with pytest.raises(ConfigError, match="mode_token = '\\[S2S\\]' .* tokenizer has no mode"):
        supervised.Supervised(8, 8, True, 1).for_task(TaskConfig(
            name="qa", inputs_field="q", targets_field="a", mode_token="[S2S]"))
    long_prefix = rows.Documents(np.array([5]), np.array([INPUTS]), inputs_lengths_D=np.array([2]))
    with pytest.raises(ValueError, match="inputs = 48 leaves no room"):
        _objective(tok, True).plan(long_prefix, seed=0, window=0)
    assert packing.CUT_INPUTS | packing.CUT_TARGETS == 3
