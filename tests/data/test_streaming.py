"""Tests for streaming (windowed, on-the-fly) packing and its O(1) exact resume."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_like.data.streaming import StreamingPackedIterator

LENGTH = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["a", "bb", "ccc", "x = 1", "def", "\n"]
    d = tmp_path_factory.mktemp("stream")
    for f in range(2):
        with open(d / f"part{f}.jsonl", "w") as out:
            for n in rng.integers(1, 120, size=40):
                out.write(json.dumps({"text": " ".join(rng.choice(words, size=int(n)))}) + "\n")
            out.write("{broken\n")
    return str(d / "*.jsonl")


def _iterator(source, tok, **kw):
    return StreamingPackedIterator(source, tok, length=LENGTH, window=kw.pop("window", 16),
                                   batch_size=4, seed=1, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_one_epoch_holds_every_document_once(source, stdlib_data):
    tok = stdlib_data.tokenizer
    it = _iterator(source, tok)
    batches = _take(it, 60)
    tgt = np.concatenate([b["decoder_target_tokens"] for b in batches])
    seg = np.concatenate([b["decoder_segment_ids"] for b in batches])
    assert ((tgt == tok.eos_id) & (seg > 0)).sum() >= 80  # 80 docs per epoch, > 1 epoch taken
    assert it.stats.skipped["malformed_json"] >= 2
    assert np.mean(seg > 0) > 0.85
    assert json.loads(it.get_state())["epoch"] >= 1


@pytest.mark.parametrize("skip", [1, 5, 17])
def test_resume_mid_window_is_exact(source, stdlib_data, skip, tmp_path):
    tok = stdlib_data.tokenizer
    it = _iterator(source, tok)
    _take(it, skip)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(skip, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 6)
    fresh = _iterator(source, tok)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(skip, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    for a, b in zip(_take(fresh, 6), expected):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_processes_take_whole_shards(source, stdlib_data):
    tok = stdlib_data.tokenizer
    firsts = [next(_iterator(source, tok, process_index=p, process_count=2)) for p in range(2)]
    assert not np.array_equal(firsts[0]["decoder_input_tokens"], firsts[1]["decoder_input_tokens"])
    with pytest.raises(ValueError, match="has 2 shards for 3 processes"):
        _iterator(source, tok, process_index=0, process_count=3)


def test_windows_count_only_pieces_shorter_than_a_row(source, stdlib_data):
    tok = stdlib_data.tokenizer
    it = _iterator(source, tok, window=5)
    tokens, count = it._read_window(0, 0)
    n_D = np.array([len(t) + 1 for t in tokens])  # + BOS: the positions a causal row counts
    assert count == len(tokens) and (n_D % LENGTH != 0).sum() == 5
    assert (n_D > LENGTH).any()  # a long document's full piece rode along uncounted
