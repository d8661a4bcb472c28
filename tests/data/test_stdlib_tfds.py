"""Tests for the t5x_like_stdlib TFDS builder and reading TFDS datasets as sources (no TensorFlow)."""

import json
import os
import sys
import time

import pytest

from t5x_like.data import source_formats, sources, stdlib_tfds


def _fake_corpus(source_dir):
    """A tiny stand-in for the stdlib JSONL corpus (same fields), plus one bad line."""
    source_dir.mkdir()
    splits = {
        "train": [{"text": f"def f{i}():\n    return {i}\n", "module": f"pkg.mod{i}",
                   "url": f"https://example.invalid/mod{i}.py"} for i in range(5)],
        "validation": [{"text": "x = 1\n", "module": "val", "url": "https://example.invalid/val.py"}],
    }
    for split, records in splits.items():
        lines = [json.dumps(r) for r in records]
        if split == "train":
            lines.insert(2, "{broken")  # skipped (and logged) by the builder
        (source_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return splits


def test_build_and_read_through_sources(tmp_path):
    splits = _fake_corpus(tmp_path / "src")
    start = time.perf_counter()
    builder = stdlib_tfds.build_stdlib_tfds(tmp_path, source_dir=tmp_path / "src")
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"building the tiny dataset took {elapsed:.1f}s"
    assert builder.data_dir.startswith(str(tmp_path / "tfds" / "t5x_like_stdlib"))
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == {"train": 5, "validation": 1}
    info_file = os.path.join(builder.data_dir, "dataset_info.json")
    mtime = os.stat(info_file).st_mtime_ns
    stdlib_tfds.build_stdlib_tfds(tmp_path, source_dir=tmp_path / "src")  # idempotent: nothing rewritten
    assert os.stat(info_file).st_mtime_ns == mtime

    shards = sources.list_shards("tfds:t5x_like_stdlib:train", data_dir=str(tmp_path), target_shard_rows=2)
    assert [(s.path, s.split, s.start, s.stop) for s in shards] == [
        ("tfds:t5x_like_stdlib", "train", 0, 2), ("tfds:t5x_like_stdlib", "train", 2, 4),
        ("tfds:t5x_like_stdlib", "train", 4, 5)]
    stats = sources.ReadStats()
    docs = [d for s in shards for d in sources.read_documents(
        s, metadata_fields=("module", "url", "nope"), stats=stats, data_dir=str(tmp_path))]
    # File order is kept (shuffling disabled), metadata decoded from bytes to str.
    assert [(d.text, d.metadata) for d in docs] == [
        (r["text"], {"module": r["module"], "url": r["url"]}) for r in splits["train"]]
    assert docs[3].location == "tfds:t5x_like_stdlib:train#3"
    assert stats.as_dict() == {"read": 5, "yielded": 5, "skipped": {}, "total_skipped": 0}

    # Versioned reference, TFDS slicing syntax and another split.
    sliced = sources.list_shards("tfds:t5x_like_stdlib:1.0.0:train[1:3]", data_dir=str(tmp_path))
    assert [d.text for s in sliced for d in sources.read_documents(s, data_dir=str(tmp_path))] == [
        r["text"] for r in splits["train"][1:3]]
    (val,) = sources.list_shards("tfds:t5x_like_stdlib:validation", data_dir=str(tmp_path))
    assert [d.text for d in sources.read_documents(val, data_dir=str(tmp_path))] == ["x = 1\n"]

    with pytest.raises(ValueError, match="no feature 'body'; its features are"):
        list(sources.read_documents(shards[0], text_field="body", data_dir=str(tmp_path)))
    # Supervised records: any two features, as (inputs, targets).
    pairs = [(d.inputs, d.text) for d in sources.read_documents(
        val, text_field="text", inputs_field="module", data_dir=str(tmp_path))]
    assert pairs == [("val", "x = 1\n")]
    with pytest.raises(ValueError, match="no feature 'question'.*as inputs_field"):
        list(sources.read_documents(val, inputs_field="question", data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="'no_such_dataset' not found in"):
        sources.list_shards("tfds:no_such_dataset:train", data_dir=str(tmp_path))
    assert "tensorflow" not in sys.modules


def test_real_stdlib_corpus(stdlib_data):
    """The builder over the real corpus: one example per JSONL document, same order."""
    start = time.perf_counter()
    builder = stdlib_tfds.build_stdlib_tfds(stdlib_data.data_dir)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"building t5x_like_stdlib took {elapsed:.1f}s"
    manifest = json.loads(stdlib_data.paths["manifest"].read_text())
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == manifest["documents"]
    (val,) = sources.list_shards("tfds:t5x_like_stdlib:validation", data_dir=str(stdlib_data.data_dir))
    from_tfds = list(sources.read_documents(val, metadata_fields=("module",), data_dir=str(stdlib_data.data_dir)))
    from_jsonl = [d for s in sources.list_shards(str(stdlib_data.paths["validation"]))
                  for d in sources.read_documents(s, metadata_fields=("module",))]
    assert [(d.text, d.metadata) for d in from_tfds] == [(d.text, d.metadata) for d in from_jsonl]


@pytest.mark.parametrize("spec, parsed", [
    ("tfds:t5x_like_stdlib:train", ("t5x_like_stdlib", "train")),
    ("tfds:wiki/en:1.2.0:train", ("wiki/en:1.2.0", "train")),
    ("tfds:wiki:train[:10%]", ("wiki", "train[:10%]")),
    ("tfds:wiki:1.0.0:train[10:20]+validation", ("wiki:1.0.0", "train[10:20]+validation")),
])
def test_parse_tfds_spec(spec, parsed):
    assert source_formats.parse_tfds_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["tfds:", "tfds:name", "tfds:name:1.0.0", "tfds::train"])
def test_parse_tfds_spec_rejects(spec):
    with pytest.raises(ValueError, match="SPLIT"):
        source_formats.parse_tfds_spec(spec)
