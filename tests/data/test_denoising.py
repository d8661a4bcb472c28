"""Packed denoising rows (UL2, span corruption, prefix LM) for both architectures, end to end."""

import json

import numpy as np
import pytest

from t5x_like import objectives
from t5x_like.data import denoising, prepared
from t5x_like.data import rows as rows_lib

INPUTS, TARGETS = 96, 48


@pytest.fixture(scope="module")
def dataset(stdlib_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("denoise")
    with open(stdlib_data.paths["train"], encoding="utf-8") as f, open(d / "docs.jsonl", "w") as out:
        for _, line in zip(range(40), f):
            out.write(json.dumps({"text": json.loads(line)["text"][:2500]}) + "\n")
    prepared.prepare(str(d / "docs.jsonl"), d / "prep", stdlib_data.tokenizer,
                     prepared.PrepareOptions(num_workers=1, progress=False))
    return prepared.PreparedDataset(d / "prep")


def _rows(dataset, tok, denoisers, encoder_decoder, seed=0):
    objective = denoising.Denoising(tuple(denoisers), objectives.SpecialIds.from_tokenizer(tok),
                                    INPUTS, TARGETS, encoder_decoder,
                                    num_sentinels=tok.num_sentinels)
    return rows_lib.open_rows(objective, dataset.path, seed=seed)


def _segments(row_tokens, row_segments):
    return [row_tokens[row_segments == s] for s in range(1, row_segments.max() + 1)]


def _reconstruct(inputs, targets, tok):
    """Put each sentinel's target span back into the inputs (the spec's reconstruction)."""
    spans, current = {}, None
    for t in targets[:-1]:  # drop EOS
        if tok.is_sentinel(np.array([t]))[0]:
            current = int(t)
            spans[current] = []
        else:
            spans[current].append(int(t))
    out = []
    for t in inputs[:-1]:
        out.extend(spans[int(t)] if tok.is_sentinel(np.array([t]))[0] else [int(t)])
    return out


@pytest.mark.parametrize("encoder_decoder", [True, False])
def test_ul2_rows_reconstruct_every_piece(dataset, stdlib_data, encoder_decoder):
    tok = stdlib_data.tokenizer
    denoisers = objectives.UL2_DENOISERS
    rows = _rows(dataset, tok, denoisers, encoder_decoder)
    plan = rows.plan
    # Pieces cover every token of every document exactly once, in order.
    for d in range(dataset.num_documents):
        sel = np.nonzero(plan.piece_doc_P == d)[0]
        np.testing.assert_array_equal(plan.piece_start_P[sel], np.concatenate(
            [[0], np.cumsum(plan.piece_len_P[sel])[:-1]]))
        assert plan.piece_len_P[sel].sum() == dataset.lengths_D[d]
    out = rows(np.arange(min(rows.num_rows, 12)))
    mode_ids = {tok.mode_token_id(d.mode_token) for d in denoisers}
    for r in range(len(out["decoder_target_tokens"])):
        pieces = plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]
        seg = out["decoder_segment_ids"][r]
        targets = _segments(out["decoder_target_tokens"][r], seg)
        dec_inputs = _segments(out["decoder_input_tokens"][r], seg)
        if encoder_decoder:
            inputs = _segments(out["encoder_input_tokens"][r], out["encoder_segment_ids"][r])
            for t, di in zip(targets, dec_inputs):
                np.testing.assert_array_equal(di, np.concatenate([[0], t[:-1]]))
        else:
            causal = _segments(out["decoder_causal_attention"][r], seg)
            weights = _segments(out["decoder_loss_weights"][r], seg)
            inputs = [t[:int(c.sum()) - 1] for t, c in zip(targets, causal)]
            targets = [t[w == 1] for t, w in zip(targets, weights)]
        assert len(inputs) == len(targets) == len(pieces)
        for p, x, y in zip(pieces, inputs, targets):
            den = denoisers[plan.piece_kind_P[p]]
            assert x[0] in mode_ids and x[0] == tok.mode_token_id(den.mode_token)
            (raw,) = dataset.pieces(plan.piece_doc_P[[p]], plan.piece_start_P[[p]],
                                    plan.piece_len_P[[p]])
            if den.is_prefix_lm:
                np.testing.assert_array_equal(np.concatenate([x[1:-1], y[:-1]]), raw)
            else:
                assert _reconstruct(x[1:], y, tok) == raw.tolist()
            assert y[-1] == tok.eos_id


def test_rates_determinism_and_plan_reuse(dataset, stdlib_data):
    tok = stdlib_data.tokenizer
    rows = _rows(dataset, tok, objectives.UL2R_DENOISERS, True)
    counts = np.bincount(rows.plan.piece_kind_P, minlength=3)
    n = counts.sum()
    for count, p in zip(counts, [0.5, 0.25, 0.25]):
        assert abs(count - n * p) <= 3 * np.sqrt(n * p * (1 - p)) + 1
    again = _rows(dataset, tok, objectives.UL2R_DENOISERS, True)
    for k, v in rows(np.arange(4)).items():
        np.testing.assert_array_equal(v, again(np.arange(4))[k])
    assert len(list((dataset.path / "plans").glob("denoise_*.npz"))) >= 1
    other = _rows(dataset, tok, objectives.UL2R_DENOISERS, True, seed=1)
    assert not np.array_equal(other(np.arange(4))["encoder_input_tokens"],
                              rows(np.arange(4))["encoder_input_tokens"])
