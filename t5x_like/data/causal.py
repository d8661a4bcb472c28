"""The causal LM objective: next-token prediction over packed ``[BOS] doc [EOS]`` rows.

Plain rows: documents longer than a row are cut (the only cut the row forces) and the pieces
packed by ``DataConfig.packer``. With MeCo's metadata each document is ``[BOS] prefix doc
[EOS]`` with no loss on the prefix, and a long document's pieces are cut around the prefix by
``objectives.metadata.split_with_prefix`` (the prefix repeated on every piece, or on the first
only). Features, all int32 ``[batch, length]``: ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_segment_ids``, ``decoder_positions``,
``decoder_loss_weights`` (0 on padding and on prefix targets).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from t5x_like.config import RunConfig
from t5x_like.data import packing, rows
from t5x_like.data.packing import Plan
from t5x_like.objectives import metadata as meta

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
            "decoder_positions", "decoder_loss_weights")


@rows.register("causal_lm", feature_keys=frozenset({"targets"}))
@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Rows of ``length`` positions; ``bos_id`` < 0: no BOS."""

    length: int
    bos_id: int
    eos_id: int
    packer: str = "best_fit"

    kind = "causal"

    @classmethod
    def from_config(cls, cfg: RunConfig, tokenizer) -> CausalLM:
        """The objective of a run."""
        return cls(cfg.data.seq_len, tokenizer.bos_id, tokenizer.eos_id, cfg.data.packer)

    @property
    def bos(self) -> bool:
        """Whether examples start with BOS."""
        return self.bos_id >= 0

    def plan(self, docs: rows.Documents, *, seed: int | None, window: int) -> Plan:
        """Pieces of ``[BOS] doc [EOS]`` (around each prefix under MeCo), packed."""
        if docs.prefix_len_D is None:
            # [bos] + ids + [eos] gives len(ids) + 1 (input, target) pairs; without BOS, len(ids).
            return packing.plan_packing(docs.lengths_D + int(self.bos), self.length,
                                        packer=self.packer, window=window, seed=seed)
        doc_P, start_P, len_P, prefix_P, size_P = [], [], [], [], []
        for d, (n, m) in enumerate(zip(docs.lengths_D.tolist(), docs.prefix_len_D.tolist())):
            for piece in meta.split_with_prefix(n, m, self.length, docs.continuation,
                                                bos=self.bos):
                doc_P.append(d), start_P.append(piece[0]), len_P.append(piece[1])
                prefix_P.append(m if piece[2] else 0)
                size_P.append(meta.piece_length(piece, n, m, bos=self.bos))
        size_Px1 = np.array(size_P, np.int64).reshape(-1, 1)
        row_ptr_R1, row_pieces_P = packing.pack_rows(size_Px1, (self.length,), packer=self.packer,
                                                     window=window, seed=seed)
        return Plan(np.array([self.length]), np.array(doc_P, np.int64),
                    np.array(start_P, np.int64), np.array(len_P, np.int64), size_Px1,
                    row_ptr_R1, row_pieces_P, piece_prefix_len_P=np.array(prefix_P, np.int64))

    def rows(self, dataset_path: str, plan: Plan, prefixes, seed: int) -> rows.RowSource:
        """Plain rows, or MeCo's prefixed rows when the plan carries prefixes."""
        if prefixes is None:
            return CausalLMRows(dataset_path, plan, self.bos_id, self.eos_id)
        return PrefixedCausalRows(dataset_path, plan, prefixes, self.bos_id, self.eos_id)


class _Rows(rows.DocumentRows):
    """Shared by the causal row builders."""

    def __init__(self, docs, plan: Plan, bos_id: int, eos_id: int):
        super().__init__(docs, plan)
        self.bos_id, self.eos_id = bos_id, eos_id

    def _write(self, out, r: int, offset: int, segment: int, inputs, targets, weights) -> int:
        end = offset + len(inputs)
        out["decoder_input_tokens"][r, offset:end] = inputs
        out["decoder_target_tokens"][r, offset:end] = targets
        out["decoder_loss_weights"][r, offset:end] = weights
        out["decoder_segment_ids"][r, offset:end] = segment
        out["decoder_positions"][r, offset:end] = np.arange(len(inputs))
        return end


class CausalLMRows(_Rows):
    """Packed next-token-prediction rows of a plain plan."""

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Features of rows ``rows_B`` as ``[len(rows_B), length]`` int32 arrays."""
        rows_B = np.asarray(rows_B, np.int64)
        plan = self.plan
        out = {k: np.zeros((len(rows_B), plan.length), np.int32) for k in FEATURES}
        row_of_P, pieces_P = self.row_pieces(rows_B)
        len_P, start_P = plan.piece_len_P[pieces_P].astype(np.int64), plan.piece_start_P[pieces_P]
        doc_P = plan.piece_doc_P[pieces_P]
        n_P = self.docs.lengths_D[doc_P]
        b = int(self.bos_id >= 0)
        # The piece covers sequence positions [start, start + len] of [bos] + ids + [eos];
        # read only the ids inside that window.
        id_lo_P = np.maximum(0, start_P - b)
        id_hi_P = np.minimum(n_P, start_P + len_P + 1 - b)
        ids = self.docs.pieces(doc_P, id_lo_P, np.maximum(id_hi_P - id_lo_P, 0))
        fill_B, segment_B = np.zeros(len(rows_B), np.int64), np.zeros(len(rows_B), np.int64)
        for r, n_tok, start, n, piece_ids in zip(row_of_P, len_P, start_P, n_P, ids):
            head = [self.bos_id] if (b and start == 0) else []
            tail = [self.eos_id] if start + n_tok + 1 > n + b else []
            seq = np.concatenate([np.asarray(head, np.int32), piece_ids.astype(np.int32),
                                  np.asarray(tail, np.int32)])
            segment_B[r] += 1
            fill_B[r] = self._write(out, r, fill_B[r], segment_B[r], seq[:-1], seq[1:], 1)
        return out


class PrefixedCausalRows(_Rows):
    """MeCo stage-1 rows: every piece behind its document's metadata prefix (no loss on it)."""

    def __init__(self, docs, plan: Plan, prefixes, bos_id: int, eos_id: int):
        """``prefixes(d)`` is document d's prefix ids (``meco.DocumentPrefixes``)."""
        super().__init__(docs, plan, bos_id, eos_id)
        self.prefixes = prefixes

    def _piece(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, weights) of piece ``p``, reading only the tokens it needs."""
        plan = self.plan
        d, start, n = int(plan.piece_doc_P[p]), int(plan.piece_start_P[p]), int(plan.piece_len_P[p])
        size = int(self.docs.lengths_D[d])
        # One token of context before a plain continuation, one after to tell the end (EOS).
        lo, hi = max(0, start - 1), min(size, start + n + 1)
        (ids,) = self.docs.pieces(np.array([d]), np.array([lo]), np.array([hi - lo]))
        prefixed = bool(plan.piece_prefix_len_P[p])
        prefix = self.prefixes(d) if prefixed else np.zeros(0, np.int32)
        return meta.piece_example(ids, prefix, (start - lo, n, prefixed), self.bos_id, self.eos_id)

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Features of rows ``rows_B`` as ``[len(rows_B), length]`` int32 arrays."""
        plan = self.plan
        out = {k: np.zeros((len(rows_B), plan.length), np.int32) for k in FEATURES}
        for r, row in enumerate(np.asarray(rows_B, np.int64)):
            offset = 0
            for segment, p in enumerate(plan.row_pieces_P[plan.row_ptr_R1[row]:
                                                          plan.row_ptr_R1[row + 1]], start=1):
                offset = self._write(out, r, offset, segment, *self._piece(int(p)))
        return out


class InMemoryDocs:
    """Token arrays held in memory, with the document-store interface of PreparedDataset."""

    def __init__(self, tokens: Sequence[np.ndarray]):
        """Wrap one 1-D token array per document."""
        self.tokens = list(tokens)
        self.lengths_D = np.array([len(t) for t in self.tokens], np.int64)

    def pieces(self, docs_P, starts_P, lens_P) -> list[np.ndarray]:
        """Tokens ``[start, start + len)`` of each document."""
        return [self.tokens[d][s : s + n] for d, s, n in zip(docs_P, starts_P, lens_P)]
