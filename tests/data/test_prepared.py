"""Tests for prepared (tokenized, ArrayRecord-sharded) datasets."""

import json

import numpy as np
import pytest

from t5x_like.data import prepared


def _write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Documents of varied size, one longer than a record chunk, plus bad lines."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "x = 1\n", "def f():\n", "    return 2\n"]
    docs = [{"text": " ".join(rng.choice(words, size=int(n))), "url": f"https://s{i % 3}.org/p",
             "quality": float(i % 5)} for i, n in enumerate(rng.integers(1, 300, size=60))]
    docs[7]["text"] = "".join(chr(0x4E00 + i % 500) for i in range(prepared.CHUNK_TOKENS // 2 + 999))
    lines = [*docs[:30], "{not json", {"text": ""}, {"title": "no text"}, *docs[30:]]
    return _write_jsonl(d / "docs.jsonl", lines), docs


@pytest.fixture(scope="module")
def dataset(corpus, stdlib_data, tmp_path_factory):
    path, _ = corpus
    out = tmp_path_factory.mktemp("prep") / "train"
    opts = prepared.PrepareOptions(metadata_fields=("url",), score_field="quality",
                                   num_workers=1, progress=False)
    prepared.prepare(path, out, stdlib_data.tokenizer, opts)
    return prepared.PreparedDataset(out)


def test_every_record_is_accounted_for(dataset, corpus):
    m = dataset.manifest
    assert m["records_read"] == 63
    assert m["documents"] == 60 and sum(m["skipped"].values()) == 3
    assert m["documents"] + sum(m["skipped"].values()) == m["records_read"]


def test_tokens_metadata_and_chunked_reads(dataset, corpus, stdlib_data):
    _, docs = corpus
    tok = stdlib_data.tokenizer
    ids = tok.encode_batch([d["text"] for d in docs])
    np.testing.assert_array_equal(dataset.lengths_D, [len(i) for i in ids])
    assert dataset.lengths_D[7] > prepared.CHUNK_TOKENS  # stored as two records
    for d in (0, 7, 59):
        (whole,) = dataset.pieces(np.array([d]), np.array([0]), dataset.lengths_D[[d]])
        np.testing.assert_array_equal(whole, ids[d])
        assert dataset.metadata(d) == {"url": docs[d]["url"], "quality": docs[d]["quality"]}
    # A piece straddling the chunk boundary, and many pieces in one batched read.
    start = prepared.CHUNK_TOKENS - 10
    (piece,) = dataset.pieces(np.array([7]), np.array([start]), np.array([25]))
    np.testing.assert_array_equal(piece, ids[7][start:start + 25])
    docs_P = np.array([3, 3, 9, 7])
    starts_P, lens_P = np.array([0, 5, 2, 100]), np.array([5, 4, 3, 2])
    for got, d, s, n in zip(dataset.pieces(docs_P, starts_P, lens_P), docs_P, starts_P, lens_P):
        np.testing.assert_array_equal(got, ids[d][s:s + n])
    # No pieces (a process's empty share of the last eval batch): no read at all.
    empty = np.zeros(0, np.int64)
    assert dataset.pieces(empty, empty, empty) == []
    np.testing.assert_array_equal(dataset.scores(), [d["quality"] for d in docs])


def test_reuse_parallel_identity_and_partial_runs(dataset, corpus, stdlib_data, tmp_path):
    path, _ = corpus
    opts = prepared.PrepareOptions(metadata_fields=("url",), score_field="quality",
                                   num_workers=1, progress=False)
    mtime = (dataset.path / "manifest.json").stat().st_mtime_ns
    prepared.prepare(path, dataset.path, stdlib_data.tokenizer, opts)
    assert (dataset.path / "manifest.json").stat().st_mtime_ns == mtime  # reused
    # Several workers over line-aligned byte ranges give the same documents in the same order.
    import dataclasses
    from t5x_like.data import sources
    many = sources.list_shards(path, target_shard_bytes=4096)
    assert len(many) > 2
    out = tmp_path / "parallel"
    original = prepared._plan_shards
    prepared._plan_shards = lambda spec, n, data_dir: many
    try:
        prepared.prepare(path, out, stdlib_data.tokenizer, dataclasses.replace(opts, num_workers=2))
    finally:
        prepared._plan_shards = original
    par = prepared.PreparedDataset(out)
    np.testing.assert_array_equal(par.lengths_D, dataset.lengths_D)
    assert par.metadata(42) == dataset.metadata(42)
    # A killed run leaves only a .partial directory, which is never read as a dataset.
    (tmp_path / "killed.partial").mkdir()
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        prepared.PreparedDataset(tmp_path / "killed")


def test_a_source_with_no_usable_document_is_a_clear_error(stdlib_data, tmp_path):
    bad = _write_jsonl(tmp_path / "bad.jsonl", ['{"text": ""}', "not json"])
    with pytest.raises(ValueError, match="no usable document among 2 records"):
        prepared.prepare(bad, tmp_path / "out", stdlib_data.tokenizer,
                         prepared.PrepareOptions(num_workers=1, progress=False))
    assert not (tmp_path / "out").exists()
