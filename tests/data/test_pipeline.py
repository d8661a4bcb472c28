"""Tests for the packed-row input pipeline."""

import json
import time

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_like.data import pipeline

LENGTH = 128
NUM_DOCS = 60


@pytest.fixture(scope="module")
def docs(stdlib_data):
    with open(stdlib_data.paths["train"], encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(NUM_DOCS), f)]


@pytest.fixture(scope="module")
def rows(stdlib_data, docs, tmp_path_factory):
    return pipeline.prepare_packed_rows(
        tokenizer=stdlib_data.tokenizer, length=LENGTH, texts=docs, cache_dir=tmp_path_factory.mktemp("cache")
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_features_are_consistent(rows, docs, stdlib_data):
    tok = stdlib_data.tokenizer
    assert set(rows) == set(pipeline.FEATURES)
    inp, tgt = rows["decoder_input_tokens"], rows["decoder_target_tokens"]
    seg, pos, w = rows["decoder_segment_ids"], rows["decoder_positions"], rows["decoder_loss_weights"]
    assert all(v.dtype == np.int32 and v.shape == inp.shape for v in rows.values())
    assert inp.shape[1] == LENGTH
    # Loss weights are 0 exactly on padding; padding is all zeros.
    np.testing.assert_array_equal(w, (seg > 0).astype(np.int32))
    assert not (inp[seg == 0].any() or tgt[seg == 0].any() or pos[seg == 0].any())
    # Within a segment, targets are the inputs shifted by one.
    same_seg = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    np.testing.assert_array_equal(tgt[:, :-1][same_seg], inp[:, 1:][same_seg])
    np.testing.assert_array_equal(pos[:, 1:][same_seg], pos[:, :-1][same_seg] + 1)
    # Every token is trained on once: [bos] + ids + [eos] gives len(ids) + 1 targets.
    assert w.sum() == sum(len(ids) + 1 for ids in tok.encode_batch(docs))
    assert (inp[pos == 0] == tok.bos_id).sum() == len(docs)
    assert (tgt == tok.eos_id).sum() == len(docs)
    # Packing is dense.
    assert w.mean() > 0.95


def test_documents_reassemble(rows, docs, stdlib_data):
    tok = stdlib_data.tokenizer
    # Documents that fit one row appear as a single segment starting with BOS.
    starts = {}
    for r, s in zip(*np.nonzero(rows["decoder_positions"] == 0)):
        seg_mask = rows["decoder_segment_ids"][r] == rows["decoder_segment_ids"][r, s]
        toks = rows["decoder_target_tokens"][r][seg_mask]
        if rows["decoder_input_tokens"][r, s] == tok.bos_id and toks[-1] == tok.eos_id:
            starts[tok.decode(toks)] = True
    short_docs = [d for d in docs if len(tok.encode(d)) + 1 <= LENGTH]
    assert short_docs and all(d in starts for d in short_docs)


def test_cache_roundtrip(rows, stdlib_data, docs, tmp_path):
    kwargs = dict(tokenizer=stdlib_data.tokenizer, length=LENGTH, texts=docs[:20], cache_dir=tmp_path)
    cold = pipeline.prepare_packed_rows(**kwargs)
    (cache_file,) = tmp_path.glob("packed_*.npz")
    assert f"_L{LENGTH}.npz" in cache_file.name
    start = time.perf_counter()
    warm = pipeline.prepare_packed_rows(**kwargs)
    assert time.perf_counter() - start < 1.0
    _assert_batches_equal([cold], [warm])
    # A different length is a different cache entry.
    pipeline.prepare_packed_rows(**(kwargs | {"length": 64}))
    assert len(list(tmp_path.glob("packed_*.npz"))) == 2


def test_jsonl_source_matches_texts(stdlib_data):
    kwargs = dict(tokenizer=stdlib_data.tokenizer, length=LENGTH)
    from_jsonl = pipeline.prepare_packed_rows(jsonl_paths=[stdlib_data.paths["validation"]], **kwargs)
    with open(stdlib_data.paths["validation"], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    _assert_batches_equal([from_jsonl], [pipeline.prepare_packed_rows(texts=texts, **kwargs)])
    with pytest.raises(ValueError, match="exactly one of"):
        pipeline.prepare_packed_rows(**kwargs)


def test_exact_resume(rows):
    it = pipeline.make_train_iterator(rows, global_batch_size=4, seed=3)
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 5)
    fresh = pipeline.make_train_iterator(rows, global_batch_size=4, seed=3)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 5), expected)


def test_orbax_checkpoint_roundtrip(rows, tmp_path):
    it = pipeline.make_train_iterator(rows, global_batch_size=4, seed=5)
    _take(it, 7)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 5)
    fresh = pipeline.make_train_iterator(rows, global_batch_size=4, seed=5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        restored = mngr.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert restored["data_iter"] is fresh
    _assert_batches_equal(_take(fresh, 5), expected)


def _row_ids(num_rows):
    return {"row_id": np.arange(num_rows, dtype=np.int32)[:, None] * np.ones((1, 4), np.int32)}


def test_epochs_visit_every_row_once_and_reshuffle():
    it = pipeline.make_train_iterator(_row_ids(24), global_batch_size=4, seed=0)
    epochs = [np.concatenate([b["row_id"][:, 0] for b in _take(it, 6)]) for _ in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(24))


def test_seeds_and_processes(rows):
    def first(seed, **kw):
        return next(pipeline.make_train_iterator(rows, global_batch_size=4, seed=seed, **kw))
    _assert_batches_equal([first(1)], [first(1)])
    assert not np.array_equal(first(1)["decoder_input_tokens"], first(2)["decoder_input_tokens"])
    # Two processes split an epoch's rows disjointly, half the batch each.
    ids = _row_ids(24)
    seen = []
    for p in range(2):
        it = pipeline.make_train_iterator(ids, global_batch_size=4, seed=0, process_index=p, process_count=2)
        batches = _take(it, 6)
        assert batches[0]["row_id"].shape == (2, 4)
        seen.append(np.concatenate([b["row_id"][:, 0] for b in batches]))
    assert sorted(np.concatenate(seen).tolist()) == list(range(24))
    with pytest.raises(ValueError, match="global_batch_size 5 must be a positive multiple of process_count 2"):
        pipeline.make_train_iterator(rows, global_batch_size=5, seed=0, process_count=2)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_count_every_row_once(process_count):
    rows = _row_ids(23) | {"decoder_loss_weights": np.ones((23, 4), np.int32)}
    per_process = [
        pipeline.eval_batches(rows, global_batch_size=8, process_index=p, process_count=process_count)
        for p in range(process_count)
    ]
    assert {len(b) for b in per_process} == {3}  # ceil(23 / 8), equal on every process
    weights = sum(int(b["decoder_loss_weights"].sum()) for bs in per_process for b in bs)
    assert weights == 23 * 4
    real = [int(r) for bs in per_process for b in bs for r, w in zip(b["row_id"][:, 0], b["decoder_loss_weights"][:, 0]) if w]
    assert sorted(real) == list(range(23))
    assert all(b["row_id"].shape == (8 // process_count, 4) for bs in per_process for b in bs)
    # Deterministic and truncatable.
    _assert_batches_equal(per_process[0], pipeline.eval_batches(rows, global_batch_size=8, process_count=process_count))
    assert len(pipeline.eval_batches(rows, global_batch_size=8, max_batches=2)) == 2


def test_stdlib_datasets_builds_and_caches(stdlib_data):
    model_mtime = stdlib_data.tokenizer.model_path.stat().st_mtime_ns
    tok, train_rows, eval_rows = pipeline.stdlib_datasets(stdlib_data.data_dir, LENGTH)
    assert tok.model_path == stdlib_data.tokenizer.model_path
    assert tok.model_path.stat().st_mtime_ns == model_mtime  # reused, not retrained
    assert len(list((stdlib_data.data_dir / "cache").glob(f"packed_*_L{LENGTH}.npz"))) == 2
    manifest = json.loads(stdlib_data.paths["manifest"].read_text())
    for split, rows in (("train", train_rows), ("validation", eval_rows)):
        assert set(rows) == set(pipeline.FEATURES)
        assert (rows["decoder_target_tokens"] == tok.eos_id).sum() == manifest["documents"][split]
        assert rows["decoder_loss_weights"].mean() > 0.95
    start = time.perf_counter()
    _, cached_train, _ = pipeline.stdlib_datasets(stdlib_data.data_dir, LENGTH)
    assert time.perf_counter() - start < 1.0
    np.testing.assert_array_equal(cached_train["decoder_input_tokens"], train_rows["decoder_input_tokens"])
