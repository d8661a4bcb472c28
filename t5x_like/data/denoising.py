"""Packed rows for denoising objectives (span corruption, prefix LM, UL2) on both architectures.

Order of work, as the UL2 spec asks: the denoiser of every piece is chosen first (seeded per
document), which fixes the piece's raw length and its output lengths (they depend only on the
raw length); the pieces are then packed — two-dimensionally for an encoder-decoder, whose rows
must fit both the inputs and the targets budget; the noise masks are drawn last, when a row is
assembled, from a seed per piece, so the plan and the rows always agree.

Features (0 = padding everywhere):
- encoder-decoder: ``encoder_input_tokens/segment_ids/positions`` ``[B, Li]`` and
  ``decoder_input_tokens/target_tokens/segment_ids/positions/loss_weights`` ``[B, Lt]``;
  decoder inputs are the targets shifted right within each segment (0 at a segment start).
- decoder-only (prefix LM): the decoder features over ``[B, Li + Lt]`` plus
  ``decoder_causal_attention`` (1 on the prefix and the first target position).

Metadata (MeCo's stage 1, ``rows.open_rows(..., prefixes=...)``): given per-document
``prefixes``, a piece that carries its document's metadata prefix (every piece under
``continuation='repeat'``, the first one under 'first_only') is cut shorter by the prefix's
length, which its planned inputs length includes, and the prefix is put after the mode token at
assembly (``objectives.build_example(metadata=...)``): never noised, never a target. Each piece
keeps its own document's prefix wherever packing puts it. An encoder-decoder may cut prefixed
pieces in pairs, fewer and longer (``piece_budgets``), when that packs a sample of the documents
into fewer rows (``Denoising.paired_per_row``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from t5x_like import objectives
from t5x_like.config import RunConfig
from t5x_like.data import packing, rows
from t5x_like.data.packing import Plan

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                    "decoder_positions", "decoder_loss_weights")
# Tokens of the documents packed to compare the cuts of prefixed pieces (paired_per_row): a
# sample, so that choosing costs a fraction of the plan (under a second on the embedded corpus).
CUT_SAMPLE_TOKENS = 1 << 19

logger = logging.getLogger(__name__)


@rows.register("prefix_lm", "span_corruption", "ul2", "ul2r",
               feature_keys=frozenset({"inputs", "targets"}))
@dataclasses.dataclass(frozen=True)
class Denoising:
    """A mixture of denoisers over rows of ``inputs_length`` + ``targets_length`` positions:
    two budgets for an encoder-decoder, their sum in one decoder-only row."""

    denoisers: tuple[objectives.Denoiser, ...]
    ids: objectives.SpecialIds
    inputs_length: int
    targets_length: int
    encoder_decoder: bool
    use_mode_tokens: bool = True
    sentinel_policy: str = "cap"
    random_roll: bool = False
    num_sentinels: int = 100
    packer: str = "best_fit"
    pieces_per_row: int = 1  # pieces are cut for 1/k of each budget

    kind = "denoise"

    @classmethod
    def from_config(cls, cfg: RunConfig, tokenizer) -> Denoising:
        """The objective of a run: its preset's denoisers (or the configured table)."""
        o, lengths = cfg.objective, cfg.data.task_feature_lengths
        return cls(objectives.denoisers_from_config(o),
                   objectives.SpecialIds.from_tokenizer(tokenizer),
                   lengths["inputs"], lengths["targets"],
                   cfg.model.architecture == "encoder_decoder", o.use_mode_tokens,
                   o.sentinel_policy, o.random_roll, tokenizer.num_sentinels, cfg.data.packer,
                   o.pieces_per_row)

    @property
    def budgets(self) -> tuple[int, ...]:
        """A row's positions: (inputs, targets), or their sum for a decoder-only row."""
        if self.encoder_decoder:
            return (self.inputs_length, self.targets_length)
        return (self.inputs_length + self.targets_length,)

    def lengths_kwargs(self) -> dict:
        """Keyword arguments shared by the objectives' length functions."""
        return dict(use_mode_token=self.use_mode_tokens, sentinel_policy=self.sentinel_policy,
                    num_sentinels=self.num_sentinels, random_roll=self.random_roll)

    def plan(self, docs: rows.Documents, *, seed: int | None, window: int) -> Plan:
        """Choose denoisers, cut pieces (prefixed ones as ``paired_per_row`` says), compute
        their output lengths and pack them."""
        paired = self.paired_per_row(docs, seed)
        if paired:
            logger.info("Prefixed pieces are cut in pairs, %d a row", paired)
        pieces = cut_pieces(docs.lengths_D, self, seed or 0, docs.prefix_len_D, docs.continuation,
                            paired)
        doc_P, start_P, len_P, den_P, meta_P = pieces
        size_PxK = self.sizes(pieces, seed)
        row_ptr_R1, row_pieces_P = packing.pack_rows(size_PxK, self.budgets, packer=self.packer,
                                                     window=window, seed=seed)
        return Plan(np.array(self.budgets), doc_P, start_P, len_P, size_PxK, row_ptr_R1,
                    row_pieces_P, piece_prefix_len_P=meta_P, piece_kind_P=den_P)

    def sizes(self, pieces: tuple[np.ndarray, ...], seed: int | None) -> np.ndarray:
        """``[P, K]``: each piece of ``cut_pieces`` in each budget, exactly (its own seed)."""
        _, _, len_P, den_P, meta_P = pieces
        out = [objectives.output_lengths(int(n), self.denoisers[k], seed=piece_seed(seed or 0, p),
                                         metadata_len=int(m), **self.lengths_kwargs())
               for p, (n, k, m) in enumerate(zip(len_P, den_P, meta_P))]
        size_Px2 = np.array(out, np.int64).reshape(-1, 2)
        return size_Px2 if self.encoder_decoder else size_Px2.sum(1, keepdims=True)

    def paired_per_row(self, docs: rows.Documents, seed: int | None) -> int | None:
        """Prefixed pieces a row under the paired cut (``piece_budgets``), or None for the
        plain cut: whichever packs a sample of ``docs`` (every s-th document, about
        ``CUT_SAMPLE_TOKENS`` tokens) into fewer rows, the plain cut on a tie.

        Only an encoder-decoder whose documents carry prefixes has the choice; the candidates
        are the even counts up to ``pieces_per_row``. Measured rather than predicted, because
        which cut packs better depends on the budgets and the 2-D packer: on the embedded corpus
        two a row turn 19% padding into 5% at 128 + 64 with 3 pieces a row, while at larger
        budgets with more pieces a row the plain cut can win.
        """
        prefix_D = docs.prefix_len_D
        if not self.encoder_decoder or prefix_D is None or not prefix_D.any():
            return None
        stride = max(1, int(docs.lengths_D.sum()) // CUT_SAMPLE_TOKENS)
        sample = rows.Documents(docs.lengths_D[::stride], prefix_D[::stride], docs.continuation)
        best, fewest = None, self.rows_needed(sample, seed, None)
        for k in range(self.pieces_per_row // 2 * 2, 1, -2):
            try:  # every prefix length of the split, not only the sample's, must fit
                for m in np.unique(prefix_D[prefix_D > 0]).tolist():
                    piece_budgets(self, m, k)
            except objectives.SentinelBudgetError:  # longer pieces need more sentinels
                continue
            num_rows = self.rows_needed(sample, seed, k)
            if num_rows < fewest:
                best, fewest = k, num_rows
        return best

    def rows_needed(self, docs: rows.Documents, seed: int | None, paired: int | None) -> int:
        """Rows of the best-fit packing of ``docs`` under a cut (``paired_per_row``)."""
        pieces = cut_pieces(docs.lengths_D, self, seed or 0, docs.prefix_len_D, docs.continuation,
                            paired)
        row_ptr_R1, _ = packing.pack_rows(self.sizes(pieces, seed), self.budgets,
                                          packer=self.packer, seed=None)
        return len(row_ptr_R1) - 1

    def rows(self, dataset_path: str, plan: Plan, prefixes, seed: int) -> DenoisingRows:
        """The rows of ``plan``; masks are drawn from ``seed`` and each piece's index."""
        return DenoisingRows(dataset_path, plan, self, seed=seed, prefixes=prefixes)


def piece_seed(seed: int, piece: int) -> int:
    """The seed of one piece's noise mask or prefix split: planning and assembly must agree."""
    return int(np.random.SeedSequence([seed, piece]).generate_state(1)[0])


def piece_budgets(objective: Denoising, metadata_len: int = 0,
                  paired_per_row: int | None = None) -> tuple[int, int]:
    """The (inputs, targets) budgets a piece is cut for (``objectives.raw_length_for``).

    Plain cut: 1/k of each budget (k = ``pieces_per_row``), the prefix counted in the inputs.
    Paired cut, for a piece with an ``metadata_len``-token prefix (``paired_per_row`` = k',
    even): 1/k' of the inputs, and of the targets its own share plus what an input-heavy partner
    leaves of its share: ``2 Lt/k'`` less the fewest targets a piece of any denoiser cut for
    the same inputs has. Why: the prefix is inputs only, so cut for 1/k of the inputs even the
    target-heavy pieces (X at 50%) turn input-heavy, the stage-1 mixture cannot fill the targets
    budget that fits the plain one, and pieces that all end near 1/k of the inputs tile it
    badly. Fewer, longer pieces carry fewer prefixes a row; each fills its 1/k' of the inputs,
    and a target-heavy piece beside an input-heavy one (R, S, X at 15%) fills their targets.
    """
    o = objective
    if not paired_per_row or not metadata_len:
        return o.inputs_length // o.pieces_per_row, o.targets_length // o.pieces_per_row
    inputs_len, share = o.inputs_length // paired_per_row, o.targets_length // paired_per_row
    kw = o.lengths_kwargs()
    fewest = min(objectives.max_output_lengths(objectives.raw_length_for(
        inputs_len, o.targets_length, d, metadata_len=metadata_len, **kw), d, **kw)[1]
        for d in o.denoisers)
    return inputs_len, min(o.targets_length, max(share, 2 * share - fewest))


def cut_pieces(lengths_D: np.ndarray, objective: Denoising, seed: int,
               metadata_len_D: np.ndarray | None = None, continuation: str = "repeat",
               paired_per_row: int | None = None):
    """Cut each document into pieces sized for the denoiser drawn for each piece.

    Returns (doc, start, raw length, denoiser index, metadata length) per piece. Each document
    draws its denoisers from its own seeded stream, so the cut does not depend on the other
    documents. ``metadata_len_D``: the length of each document's metadata prefix (None: no
    metadata), carried by every piece ('repeat') or by the first only ('first_only'); a
    prefixed piece's raw budget shrinks by it, and ``paired_per_row`` cuts prefixed pieces in
    pairs (``piece_budgets``).
    """
    denoisers, opts = objective.denoisers, objective
    if not denoisers:
        raise ValueError("no denoisers: a denoising objective needs at least one")

    @functools.cache
    def budgets(metadata_len: int) -> tuple[int, int]:
        return piece_budgets(opts, metadata_len, paired_per_row)

    @functools.cache
    def raw_max(k: int, metadata_len: int) -> int:
        # A decoder-only row holds inputs and targets together: only their sum is budgeted.
        return objectives.raw_length_for(*budgets(metadata_len), denoisers[k],
                                         combined=not opts.encoder_decoder,
                                         metadata_len=metadata_len, **opts.lengths_kwargs())

    for k in range(len(denoisers)):
        raw_max(k, 0)  # the plain budgets are checked even for a corpus of prefixed pieces
    weights = np.array([d.weight for d in denoisers], np.float64)
    probs = weights / weights.sum()
    docs, starts, lens, dens, metas = [], [], [], [], []
    for doc, n in enumerate(lengths_D.tolist()):
        rng = np.random.default_rng([seed, doc])
        doc_meta = 0 if metadata_len_D is None else int(metadata_len_D[doc])
        start = 0
        while start < n:
            k = int(rng.choice(len(probs), p=probs))
            m = doc_meta if (start == 0 or continuation == "repeat") else 0
            size = min(n - start, raw_max(k, m))
            docs.append(doc), starts.append(start), lens.append(size), dens.append(k)
            metas.append(m)
            start += size
    return (np.array(docs, np.int64), np.array(starts, np.int64), np.array(lens, np.int64),
            np.array(dens, np.int16), np.array(metas, np.int64))


def _shift_right(targets: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], targets[:-1]]).astype(np.int32)


class ExampleRows(rows.DocumentRows):
    """Packs (inputs, targets) examples into the rows of a plan, on either architecture: two
    budgets of an encoder-decoder (decoder inputs shifted right per segment), or one decoder-only
    prefix-LM row (``objectives.to_decoder_only``). Subclasses define ``_examples(rows_B)``,
    yielding (row position, inputs, targets) for every piece of those rows in row order: the
    denoisers' below, supervised records' in ``data/supervised.py``.
    ``objective`` needs ``encoder_decoder``, ``inputs_length`` and ``budgets``. Picklable."""

    def __init__(self, docs, plan: Plan, objective, seed: int = 0, prefixes=None):
        """``prefixes``: for a plan with metadata, ``prefixes(doc)`` gives document ``doc``'s
        prefix ids (``t5x_like.data.meco.DocumentPrefixes``); picklable."""
        super().__init__(docs, plan)
        self.objective, self.seed, self.prefixes = objective, seed, prefixes
        if prefixes is None and plan.piece_prefix_len_P.any():
            raise ValueError(f"this {type(objective).__name__} plan puts metadata prefixes in "
                             "front of its pieces: pass prefixes=")

    def _metadata(self, p: int) -> np.ndarray | None:
        """The metadata ids of piece ``p`` (None: none), checked against the plan's length."""
        planned = int(self.plan.piece_prefix_len_P[p])
        if not planned:
            return None
        doc = int(self.plan.piece_doc_P[p])
        ids = self.prefixes(doc)
        if len(ids) != planned:
            raise ValueError(f"document {doc}'s metadata prefix has {len(ids)} tokens but the "
                             f"plan reserved {planned}: the tokenizer or the metadata changed "
                             f"since the plan was built; delete the plans/ directory")
        return ids

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Features of rows ``rows_B``."""
        rows_B = np.asarray(rows_B, np.int64)
        o = self.objective
        dec_len = o.budgets[-1]  # the decoder's row: the targets, or the whole decoder-only row
        names = DECODER_FEATURES + (ENCODER_FEATURES if o.encoder_decoder
                                    else ("decoder_causal_attention",))
        out = {k: np.zeros((len(rows_B), o.inputs_length if k.startswith("encoder") else dec_len),
                           np.int32) for k in names}
        enc_fill, dec_fill = np.zeros(len(rows_B), int), np.zeros(len(rows_B), int)
        segment = np.zeros(len(rows_B), int)
        for r, inputs, targets in self._examples(rows_B):
            segment[r] += 1
            if o.encoder_decoder:
                a, n = enc_fill[r], len(inputs)
                out["encoder_input_tokens"][r, a:a + n] = inputs
                out["encoder_segment_ids"][r, a:a + n] = segment[r]
                out["encoder_positions"][r, a:a + n] = np.arange(n)
                enc_fill[r] += n
                feats = {"decoder_target_tokens": targets, "decoder_input_tokens": _shift_right(targets),
                         "decoder_loss_weights": np.ones(len(targets), np.int32)}
            else:
                feats = objectives.to_decoder_only(inputs, targets, len(inputs) + len(targets))
            a, n = dec_fill[r], len(feats["decoder_target_tokens"])
            for k, v in feats.items():
                out[k][r, a:a + n] = v
            out["decoder_segment_ids"][r, a:a + n] = segment[r]
            out["decoder_positions"][r, a:a + n] = np.arange(n)
            dec_fill[r] += n
        return out


class DenoisingRows(ExampleRows):
    """Assembles the rows of a denoising plan (picklable, for grain workers)."""

    def _examples(self, rows_B: np.ndarray):
        """(row position, inputs, targets) of every piece of the given rows, in row order."""
        plan, o = self.plan, self.objective
        row_of_P, pieces_P = self.row_pieces(rows_B)
        raw = self.docs.pieces(plan.piece_doc_P[pieces_P], plan.piece_start_P[pieces_P],
                               plan.piece_len_P[pieces_P])
        for r, p, tokens in zip(row_of_P, pieces_P, raw):
            inputs, targets = objectives.build_example(
                np.asarray(tokens, np.int32), o.denoisers[plan.piece_kind_P[p]],
                seed=piece_seed(self.seed, int(p)), tokenizer_ids=o.ids,
                use_mode_token=o.use_mode_tokens, sentinel_policy=o.sentinel_policy,
                random_roll=o.random_roll, metadata=self._metadata(int(p)))
            yield r, inputs, targets
