"""MeCo stage-1 rows from prepared data: layout, loss mask, conservation, prefixes per piece."""

import json

import numpy as np
import pytest

from t5x_like.data import meco, prepared
from t5x_like.objectives.metadata import MetadataSpec

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


@pytest.fixture(scope="module")
def rows(dataset, stdlib_data):
    return meco.open_task(dataset.path, MetadataSpec(), stdlib_data.tokenizer, LENGTH, seed=0)


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
            assert plan.piece_has_prefix_P[p]  # 'repeat': continuations keep the prefix
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
