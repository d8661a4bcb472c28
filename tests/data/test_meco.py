"""MeCo stage-1 rows from prepared data: layout, loss mask, conservation, prefixes per piece."""

import dataclasses
import json

import numpy as np
import pytest

from t5x_like import gin_loader, objectives
from t5x_like.config import ObjectiveConfig
from t5x_like.data import causal, denoising, meco, prepared
from t5x_like.data import rows as rows_lib
from tests.data.test_denoising import _reconstruct

LENGTH = 96


@pytest.fixture(scope="module")
def dataset(stdlib_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("meco")
    with open(stdlib_data.paths["train"], encoding="utf-8") as f, open(d / "docs.jsonl", "w") as out:
        for i, line in zip(range(30), f):
            record = json.loads(line)
            row = {"text": record["text"][: 200 + 40 * i]}
            if i % 5:  # every fifth document has no URL: it gets the placeholder
                row["url"] = f"https://site{i % 3}.example.org/{record['module']}"
            out.write(json.dumps(row) + "\n")
    prepared.prepare(str(d / "docs.jsonl"), d / "prep", stdlib_data.tokenizer,
                     prepared.PrepareOptions(metadata_fields=("url",), num_workers=1,
                                             progress=False))
    return prepared.PreparedDataset(d / "prep")


def _spec(continuation="repeat"):
    return ObjectiveConfig(metadata_field="url", metadata_continuation=continuation)


def _causal_rows(dataset, tok, continuation="repeat"):
    return rows_lib.open_rows(causal.CausalLM(LENGTH, tok.bos_id, tok.eos_id), dataset.path,
                              seed=0, prefixes=meco.DocumentPrefixes(dataset, _spec(continuation),
                                                                     tok))


@pytest.fixture(scope="module")
def rows(dataset, stdlib_data):
    return _causal_rows(dataset, stdlib_data.tokenizer)


def test_every_piece_starts_with_bos_and_its_documents_prefix(rows, dataset, stdlib_data):
    tok = stdlib_data.tokenizer
    out = rows(np.arange(rows.num_rows))
    plan, metadata = rows.plan, dataset.all_metadata()
    for r in range(rows.num_rows):
        seg = out["decoder_segment_ids"][r]
        pieces = plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]
        for s, p in enumerate(pieces, start=1):
            inputs = out["decoder_input_tokens"][r][seg == s]
            weights = out["decoder_loss_weights"][r][seg == s]
            url = metadata[plan.piece_doc_P[p]].get("url")
            domain = url.split("/")[2] if url else "unknown"
            prefix = tok.encode(f"URL: {domain}\n\n")
            assert plan.piece_prefix_len_P[p]  # 'repeat': continuations keep the prefix
            np.testing.assert_array_equal(inputs[:1 + len(prefix)], [tok.bos_id, *prefix])
            # Weight 0 exactly on targets that are prefix tokens (BOS is never a target).
            np.testing.assert_array_equal(weights[:len(prefix)], 0)
            assert weights[len(prefix):].all()


def test_document_tokens_and_eos_are_trained_exactly_once(rows, dataset, stdlib_data):
    out = rows(np.arange(rows.num_rows))
    weights, targets = out["decoder_loss_weights"], out["decoder_target_tokens"]
    assert weights.sum() == dataset.lengths_D.sum() + dataset.num_documents
    assert (targets[weights == 1] == stdlib_data.tokenizer.eos_id).sum() == dataset.num_documents
    # Reassemble each document from its pieces' weighted targets (minus EOS).
    plan = rows.plan
    got = {}
    for r in range(rows.num_rows):
        seg = out["decoder_segment_ids"][r]
        for s, p in enumerate(plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]], 1):
            mask = (seg == s) & (weights[r] == 1)
            got.setdefault(int(plan.piece_doc_P[p]), []).append(
                (int(plan.piece_start_P[p]), targets[r][mask]))
    for d, parts in got.items():
        text = np.concatenate([t for _, t in sorted(parts, key=lambda x: x[0])])[:-1]
        (ids,) = dataset.pieces(np.array([d]), np.array([0]), dataset.lengths_D[[d]])
        np.testing.assert_array_equal(text, ids)
    assert out["decoder_segment_ids"].max() >= 2 and (weights.sum() / weights.size) > 0.5


# ---------------------------------------------------------------- with the denoisers

INPUTS, TARGETS = 48, 32


def _ul2(tok, encoder_decoder):
    return denoising.Denoising(objectives.UL2_DENOISERS, objectives.SpecialIds.from_tokenizer(tok),
                               INPUTS, TARGETS, encoder_decoder, num_sentinels=tok.num_sentinels)


def _denoising_rows(dataset, tok, encoder_decoder, continuation="repeat"):
    return rows_lib.open_rows(_ul2(tok, encoder_decoder), dataset.path, seed=0,
                              prefixes=meco.DocumentPrefixes(dataset, _spec(continuation), tok))


def _prefix_of(metadata, tok):
    url = metadata.get("url")
    return tok.encode(f"URL: {url.split('/')[2] if url else 'unknown'}\n\n")


@pytest.mark.parametrize("continuation", ["repeat", "first_only"])
@pytest.mark.parametrize("encoder_decoder", [True, False], ids=["enc_dec", "decoder_only"])
def test_denoising_inputs_are_mode_then_the_documents_prefix_never_noised(
        dataset, stdlib_data, encoder_decoder, continuation):
    tok = stdlib_data.tokenizer
    rows = _denoising_rows(dataset, tok, encoder_decoder, continuation)
    plan, metadata = rows.plan, dataset.all_metadata()
    for d in range(dataset.num_documents):  # pieces cover each document once, in order
        sel = np.nonzero(plan.piece_doc_P == d)[0]
        np.testing.assert_array_equal(plan.piece_start_P[sel], np.concatenate(
            [[0], np.cumsum(plan.piece_len_P[sel])[:-1]]))
        assert plan.piece_len_P[sel].sum() == dataset.lengths_D[d]
    out = rows(np.arange(rows.num_rows))
    seen_prefixed = seen_plain = 0
    for r in range(rows.num_rows):
        seg = out["decoder_segment_ids"][r]
        pieces = plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]
        for s, p in enumerate(pieces, start=1):
            tokens = out["decoder_target_tokens"][r][seg == s]
            weights = out["decoder_loss_weights"][r][seg == s]
            if encoder_decoder:
                x = out["encoder_input_tokens"][r][out["encoder_segment_ids"][r] == s]
                y = tokens
                assert weights.all()  # the decoder holds targets only; the prefix is encoder input
            else:
                causal = out["decoder_causal_attention"][r][seg == s]
                n_in = int(causal.sum()) - 1
                x, y = tokens[:n_in], tokens[n_in:]
                # The prefix is in the inputs part: attended both ways, loss weight 0 on all of it.
                np.testing.assert_array_equal(weights, [0] * n_in + [1] * len(y))
            # The packer's accounting is exact, so no budget is exceeded by the prefix.
            sizes = (len(x), len(y)) if encoder_decoder else (len(x) + len(y),)
            assert sizes == tuple(plan.size_PxK[p])
            den = objectives.UL2_DENOISERS[plan.piece_kind_P[p]]
            assert x[0] == tok.mode_token_id(den.mode_token)
            prefixed = continuation == "repeat" or plan.piece_start_P[p] == 0
            prefix = _prefix_of(metadata[plan.piece_doc_P[p]], tok) if prefixed else []
            assert plan.piece_prefix_len_P[p] == len(prefix)
            # Exactly the tokenized template, untouched by the noise (no sentinel in it).
            np.testing.assert_array_equal(x[1:1 + len(prefix)], prefix)
            assert not tok.is_sentinel(np.asarray(x[1:1 + len(prefix)], np.int32)).any()
            (raw,) = dataset.pieces(plan.piece_doc_P[[p]], plan.piece_start_P[[p]],
                                    plan.piece_len_P[[p]])
            body = x[1 + len(prefix):]
            if den.is_prefix_lm:
                np.testing.assert_array_equal(np.concatenate([body[:-1], y[:-1]]), raw)
            else:
                assert _reconstruct(body, y, tok) == raw.tolist()
            seen_prefixed += bool(prefix)
            seen_plain += not prefix
    assert seen_prefixed and (seen_plain or continuation == "repeat")


def test_denoising_plan_with_metadata_is_cut_shorter_than_without(dataset, stdlib_data):
    tok = stdlib_data.tokenizer
    plain = _ul2(tok, True).plan(rows_lib.Documents(dataset.lengths_D), seed=0, window=0)
    rows = _denoising_rows(dataset, tok, True)
    assert len(rows.plan.piece_doc_P) > len(plain.piece_doc_P)  # prefixes take inputs room
    assert not plain.piece_prefix_len_P.any()
    with pytest.raises(ValueError, match="pass prefixes="):
        denoising.DenoisingRows(dataset.path, rows.plan, _ul2(tok, True))


@pytest.mark.parametrize("continuation", ["repeat", "first_only"])
def test_the_data_summary_counts_missing_metadata_and_unprefixed_continuations(
        dataset, stdlib_data, continuation):
    tok = stdlib_data.tokenizer
    for rows in (_causal_rows(dataset, tok, continuation),
                 _denoising_rows(dataset, tok, True, continuation)):
        summary = meco.stage1_summary(rows)
        # Every fifth document has no URL (the placeholder prefix); each is counted once.
        assert summary["documents"] == dataset.num_documents == 30
        assert (summary["with_metadata"], summary["placeholder"], summary["no_prefix"]) == (24, 6, 0)
        assert summary["pieces"] == len(rows.plan.piece_doc_P)
        assert summary["continuation_pieces"] > 0
        assert summary["continuations_without_prefix"] == (
            summary["continuation_pieces"] if continuation == "first_only" else 0)


# ---------------------------------------------------------------- the paired cut (meco_ul2_tiny)


@pytest.fixture(scope="module")
def modules(stdlib_data, tmp_path_factory):
    """The first 20 files of the embedded corpus's train split, whole, with their module paths."""
    d = tmp_path_factory.mktemp("meco_modules")
    with open(stdlib_data.paths["train"], encoding="utf-8") as f:
        (d / "docs.jsonl").write_text("".join(line for _, line in zip(range(20), f)))
    prepared.prepare(str(d / "docs.jsonl"), d / "prep", stdlib_data.tokenizer,
                     prepared.PrepareOptions(metadata_fields=("module",), num_workers=1,
                                             progress=False))
    return prepared.PreparedDataset(d / "prep")


@pytest.fixture(scope="module")
def meco_ul2_tiny(stdlib_data, modules):
    """The shipped run's objective and its stage-1 documents (module-path prefixes)."""
    cfg = gin_loader.load_run_config(["runs/meco_ul2_tiny.gin"])
    objective = rows_lib.objective_for(cfg, stdlib_data.tokenizer)
    prefixes = meco.DocumentPrefixes(modules, cfg.objective, stdlib_data.tokenizer)
    return objective, prefixes


def test_shipped_meco_ul2_tiny_pairs_prefixed_pieces_under_10_percent_padding(
        modules, meco_ul2_tiny):
    objective, prefixes = meco_ul2_tiny
    assert (objective.inputs_length, objective.targets_length, objective.pieces_per_row) == (
        128, 64, 3)
    docs = rows_lib.Documents(modules.lengths_D, prefixes.lengths_D, prefixes.continuation)
    assert objective.paired_per_row(docs, seed=0) == 2
    plan = objective.plan(docs, seed=0, window=0)
    assert plan.fill >= 0.90  # the plain cut pads ~20%: every piece repeats its prefix
    assert plan.num_rows < 0.8 * objective.rows_needed(docs, 0, None)
    # The cooldown's plain pieces keep the plain cut.
    assert objective.paired_per_row(rows_lib.Documents(modules.lengths_D), seed=0) is None


def test_paired_pieces_are_cut_for_their_budgets_and_rows_agree_with_the_plan(
        modules, meco_ul2_tiny, stdlib_data):
    objective, prefixes = meco_ul2_tiny
    tok, kw = stdlib_data.tokenizer, objective.lengths_kwargs()
    rows = rows_lib.open_rows(objective, modules.path, seed=0, prefixes=prefixes)
    plan = rows.plan
    ends_P = plan.piece_start_P + plan.piece_len_P == modules.lengths_D[plan.piece_doc_P]
    for p in range(len(plan.piece_len_P)):
        m, den = int(plan.piece_prefix_len_P[p]), objective.denoisers[plan.piece_kind_P[p]]
        assert m == len(prefixes(int(plan.piece_doc_P[p])))  # 'repeat': every piece
        inputs_len, targets_len = denoising.piece_budgets(objective, m, 2)
        assert inputs_len == 64  # two a row; the targets an input-heavy partner leaves
        assert (plan.size_PxK[p] <= (inputs_len, targets_len)).all()
        # The longest piece that fits them: only a document's end cuts one shorter.
        longest = objectives.raw_length_for(inputs_len, targets_len, den, metadata_len=m, **kw)
        assert plan.piece_len_P[p] == longest or (ends_P[p] and plan.piece_len_P[p] < longest)
    out = rows(np.arange(rows.num_rows))
    for r in range(rows.num_rows):
        pieces = plan.row_pieces_P[plan.row_ptr_R1[r]:plan.row_ptr_R1[r + 1]]
        for s, p in enumerate(pieces, start=1):
            x = out["encoder_input_tokens"][r][out["encoder_segment_ids"][r] == s]
            y = out["decoder_target_tokens"][r][out["decoder_segment_ids"][r] == s]
            assert (len(x), len(y)) == tuple(plan.size_PxK[p])
            prefix = prefixes(int(plan.piece_doc_P[p]))
            np.testing.assert_array_equal(x[1:1 + len(prefix)], prefix)
            den = objectives.UL2_DENOISERS[plan.piece_kind_P[p]]
            if not den.is_prefix_lm:
                (raw,) = modules.pieces(plan.piece_doc_P[[p]], plan.piece_start_P[[p]],
                                        plan.piece_len_P[[p]])
                assert _reconstruct(x[1 + len(prefix):], y, tok) == raw.tolist()


def test_only_an_encoder_decoder_with_prefixes_and_room_for_pairs_has_the_choice(
        modules, meco_ul2_tiny, stdlib_data):
    objective, prefixes = meco_ul2_tiny
    docs = rows_lib.Documents(modules.lengths_D, prefixes.lengths_D)
    for other in (dataclasses.replace(objective, encoder_decoder=False),
                  dataclasses.replace(objective, pieces_per_row=1)):
        assert other.paired_per_row(docs, seed=0) is None
    # The plain cut: 1/k of each budget, whatever the prefix.
    assert denoising.piece_budgets(objective, 12) == (42, 21)
    assert denoising.piece_budgets(objective, 0, 2) == (42, 21)
