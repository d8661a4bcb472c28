"""Tests for packed rows from prepared data: layout, conservation, resume, mixtures, sampling."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_like.data import causal, pipeline, prepared
from t5x_like.data import rows as rows_lib

LENGTH = 128


def _prepare(stdlib_data, tmp_path_factory, name, texts, **opts):
    d = tmp_path_factory.mktemp(name)
    src = d / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t, "score": float(i % 4)}) + "\n"
                           for i, t in enumerate(texts)))
    prepared.prepare(str(src), d / "prep", stdlib_data.tokenizer,
                     prepared.PrepareOptions(num_workers=1, progress=False, **opts))
    return d / "prep"


@pytest.fixture(scope="module")
def texts(stdlib_data):
    with open(stdlib_data.paths["train"], encoding="utf-8") as f:
        return [json.loads(line)["text"][:3000] for _, line in zip(range(80), f)]


@pytest.fixture(scope="module")
def code_path(stdlib_data, texts, tmp_path_factory):
    return _prepare(stdlib_data, tmp_path_factory, "code", texts, score_field="score")


@pytest.fixture(scope="module")
def prose_path(stdlib_data, tmp_path_factory):
    rng = np.random.default_rng(1)
    words = "the of and to in is was for on that with as by at".split()
    prose = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(5, 400, size=50)]
    return _prepare(stdlib_data, tmp_path_factory, "prose", prose)


def _rows(path, stdlib_data, packer="best_fit", seed=0, **opts):
    tok = stdlib_data.tokenizer
    return rows_lib.open_rows(causal.CausalLM(LENGTH, tok.bos_id, tok.eos_id, packer), path,
                              seed=seed, **opts)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("packer,window", [("best_fit", 0), ("best_fit", 7), ("concat", 0)])
def test_rows_conserve_every_token_in_order(code_path, stdlib_data, packer, window):
    tok = stdlib_data.tokenizer
    rows = _rows(code_path, stdlib_data, packer=packer, window=window)
    out = rows(np.arange(rows.num_rows))
    inp, tgt = out["decoder_input_tokens"], out["decoder_target_tokens"]
    seg, pos, w = out["decoder_segment_ids"], out["decoder_positions"], out["decoder_loss_weights"]
    np.testing.assert_array_equal(w, (seg > 0).astype(np.int32))
    assert not (inp[seg == 0].any() or tgt[seg == 0].any() or pos[seg == 0].any())
    same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    np.testing.assert_array_equal(tgt[:, :-1][same], inp[:, 1:][same])
    np.testing.assert_array_equal(pos[:, 1:][same], pos[:, :-1][same] + 1)
    # Reassemble every document from its pieces: exactly [bos] + ids + [eos], once, in order.
    plan, dataset = rows.plan, prepared.PreparedDataset(code_path)
    by_doc = {}
    for r in range(plan.num_rows):
        offset = 0
        for p in plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]:
            n = int(plan.piece_len_P[p])
            by_doc.setdefault(int(plan.piece_doc_P[p]), []).append(
                (int(plan.piece_start_P[p]), inp[r, offset:offset + n], tgt[r, offset:offset + n]))
            offset += n
    assert sorted(by_doc) == list(range(dataset.num_documents))
    for d, parts in by_doc.items():
        parts.sort(key=lambda x: x[0])
        (ids,) = dataset.pieces(np.array([d]), np.array([0]), dataset.lengths_D[[d]])
        seq = np.concatenate([[tok.bos_id], ids, [tok.eos_id]])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), seq[:-1])
        np.testing.assert_array_equal(np.concatenate([p[2] for p in parts]), seq[1:])
        if packer != "concat" and len(seq) - 1 <= LENGTH:
            assert len(parts) == 1  # best fit never cuts a document that fits a row
    if packer == "best_fit" and window == 0:
        assert plan.fill > 0.95


def test_exact_resume_and_orbax_roundtrip(code_path, stdlib_data, tmp_path):
    rows = _rows(code_path, stdlib_data)
    it = pipeline.make_train_iterator([rows], global_batch_size=4, seed=3)
    _take(it, 7)
    state = it.get_state()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = _take(it, 5)
    fresh = pipeline.make_train_iterator([rows], global_batch_size=4, seed=3)
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 5), expected)
    fresh = pipeline.make_train_iterator([rows], global_batch_size=4, seed=3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_batches_equal(_take(fresh, 5), expected)


def test_epochs_processes_and_seeds(code_path, stdlib_data):
    rows = _rows(code_path, stdlib_data)
    n = rows.num_rows
    seen = []
    for p in range(2):
        it = pipeline.make_train_iterator([rows], global_batch_size=2, seed=0, process_index=p,
                                          process_count=2, prefetch=0)
        firsts = [b["decoder_input_tokens"][0] for b in _take(it, n // 2)]
        seen += [tuple(x) for x in firsts]
    assert len(set(seen)) == len(seen) >= 2 * (n // 2) - 1  # disjoint rows across processes
    one = pipeline.make_train_iterator([rows], global_batch_size=1, seed=0)
    epochs = [[tuple(next(one)["decoder_input_tokens"][0]) for _ in range(n)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    with pytest.raises(ValueError, match="global_batch_size 5 must be a positive multiple"):
        pipeline.make_train_iterator([rows], global_batch_size=5, seed=0, process_count=2)


def test_mixture_rates_are_honoured_and_resume(code_path, prose_path, stdlib_data):
    tasks = [_rows(code_path, stdlib_data), _rows(prose_path, stdlib_data)]
    it = pipeline.make_train_iterator(tasks, rates=[0.7, 0.3], global_batch_size=8, seed=0)
    batches = _take(it, 50)
    sources_N = np.concatenate([b[pipeline.SOURCE_KEY] for b in batches])
    k, n, p = int((sources_N == 0).sum()), len(sources_N), 0.7
    assert abs(k - n * p) <= 3 * np.sqrt(n * p * (1 - p))
    # Rows carry their own task's tokens: the prose vocabulary has no newline.
    newline = stdlib_data.tokenizer.encode("\n")[0]
    for b in batches[:5]:
        prose_rows = b["decoder_input_tokens"][b[pipeline.SOURCE_KEY] == 1]
        assert not (prose_rows == newline).any()
    state = it.get_state()
    expected = _take(it, 3)
    again = pipeline.make_train_iterator(tasks, rates=[0.7, 0.3], global_batch_size=8, seed=0)
    again.set_state(state)
    _assert_batches_equal(_take(again, 3), expected)
    with pytest.raises(ValueError, match="rates"):
        pipeline.make_train_iterator(tasks, rates=[1.0], global_batch_size=8, seed=0)


def test_score_weighted_sampling_follows_its_softmax(code_path, stdlib_data):
    dataset = prepared.PreparedDataset(code_path)
    scores_D, temperature = dataset.scores(), 0.5
    draws = np.concatenate([rows_lib._sampled_documents(dataset, temperature, s) for s in range(200)])
    counts = np.bincount(scores_D[draws].astype(int), minlength=4)
    logits = scores_D / temperature
    probs_D = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = np.array([probs_D[scores_D == s].sum() for s in range(4)]) * len(draws)
    sigma = np.sqrt(expected * (1 - expected / len(draws)))
    assert np.all(np.abs(counts - expected) <= 4 * sigma + 1), (counts, expected)
    # The plan packs the sampled multiset, and is stored next to the data for reuse.
    plans = set((code_path / "plans").glob("*.npz"))
    plan = _rows(code_path, stdlib_data, score_temperature=0.5).plan
    assert np.bincount(scores_D[plan.piece_doc_P[plan.piece_start_P == 0]].astype(int))[3] > \
        np.bincount(scores_D.astype(int))[3]
    assert len(set((code_path / "plans").glob("*.npz")) - plans) == 1


def test_eval_batches_count_every_row_once(code_path, stdlib_data):
    rows = _rows(code_path, stdlib_data, seed=None)
    per_process = [pipeline.eval_batches(rows, global_batch_size=4, process_index=p, process_count=2)
                   for p in range(2)]
    assert len(per_process[0]) == len(per_process[1]) == -(-rows.num_rows // 4)
    total = sum(int(b["decoder_loss_weights"].sum()) for bs in per_process for b in bs)
    assert total == rows.plan.num_tokens
    _assert_batches_equal(per_process[0], pipeline.eval_batches(rows, global_batch_size=4,
                                                                process_count=2))


def test_a_train_iterator_can_start_at_a_later_batch():
    ids = np.arange(40, dtype=np.int32)[:, None] * np.ones((1, 4), np.int32)
    rows = pipeline.ArrayRows({"row": ids})
    whole = pipeline.make_train_iterator([rows], global_batch_size=2, seed=3, prefetch=0)
    reference = [next(whole)["row"][:, 0].tolist() for _ in range(30)]  # past an epoch of 20
    later = pipeline.make_train_iterator([rows], global_batch_size=2, seed=3, prefetch=0,
                                         start_batch=17)
    assert [next(later)["row"][:, 0].tolist() for _ in range(13)] == reference[17:]
