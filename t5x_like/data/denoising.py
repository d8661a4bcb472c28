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

Metadata (MeCo's stage 1, :func:`t5x_like.data.meco.open_denoising_task`): given per-document
``prefixes``, a piece that carries its document's metadata prefix (every piece under
``continuation='repeat'``, the first one under 'first_only') is cut shorter by the prefix's
length, which its planned inputs length includes, and the prefix is put after the mode token at
assembly (``objectives.build_example(metadata=...)``): never noised, never a target. Each piece
keeps its own document's prefix wherever packing puts it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Sequence

import numpy as np

from t5x_like import objectives
from t5x_like.data import packing
from t5x_like.data.plan_files import NpzDataclass, load_or_build
from t5x_like.data.prepared import PreparedDataset

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                    "decoder_positions", "decoder_loss_weights")


@dataclasses.dataclass(frozen=True)
class ExampleOptions:
    """How pieces become examples: budgets, architecture and the objective's switches."""

    inputs_length: int
    targets_length: int
    encoder_decoder: bool
    use_mode_tokens: bool = True
    sentinel_policy: str = "cap"
    random_roll: bool = False
    num_sentinels: int = 100

    def lengths_kwargs(self) -> dict:
        """Keyword arguments shared by the objectives' length functions."""
        return dict(use_mode_token=self.use_mode_tokens, sentinel_policy=self.sentinel_policy,
                    num_sentinels=self.num_sentinels, random_roll=self.random_roll)


def piece_seed(seed: int, piece: int) -> int:
    """The seed of one piece's noise mask or prefix split: planning and assembly must agree."""
    return int(np.random.SeedSequence([seed, piece]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class DenoisingPlan(NpzDataclass):
    """Pieces (document ranges with a denoiser), their output lengths, and their rows."""

    piece_doc_P: np.ndarray
    piece_start_P: np.ndarray
    piece_len_P: np.ndarray
    piece_denoiser_P: np.ndarray
    piece_metadata_len_P: np.ndarray  # metadata prefix ids in front of the piece's inputs (0: none)
    inputs_len_P: np.ndarray
    targets_len_P: np.ndarray
    row_ptr_R1: np.ndarray
    row_pieces_P: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return len(self.row_ptr_R1) - 1


def cut_pieces(lengths_D: np.ndarray, denoisers: Sequence, opts: ExampleOptions, seed: int,
               metadata_len_D: np.ndarray | None = None, continuation: str = "repeat"):
    """Cut each document into pieces sized for the denoiser drawn for each piece.

    Returns (doc, start, raw length, denoiser index, metadata length) per piece. Each document
    draws its denoisers from its own seeded stream, so the cut does not depend on the other
    documents. ``metadata_len_D``: the length of each document's metadata prefix (None: no
    metadata), carried by every piece ('repeat') or by the first only ('first_only'); a
    prefixed piece's raw budget shrinks by it.
    """
    if not denoisers:
        raise ValueError("no denoisers: the causal_lm objective packs with pipeline.open_task")
    if continuation not in ("repeat", "first_only"):
        raise ValueError(f"continuation = {continuation!r}: must be 'repeat' or 'first_only'")

    @functools.cache
    def raw_max(k: int, metadata_len: int) -> int:
        # A decoder-only row holds inputs and targets together: only their sum is budgeted.
        return objectives.raw_length_for(opts.inputs_length, opts.targets_length, denoisers[k],
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


def plan_denoising(lengths_D: np.ndarray, denoisers: Sequence, opts: ExampleOptions,
                   seed: int | None, metadata_len_D: np.ndarray | None = None,
                   continuation: str = "repeat") -> DenoisingPlan:
    """Choose denoisers, cut pieces, compute their output lengths and pack them.

    ``metadata_len_D`` / ``continuation``: MeCo's prefixes, as in :func:`cut_pieces`.
    """
    doc_P, start_P, len_P, den_P, meta_P = cut_pieces(lengths_D, denoisers, opts, seed or 0,
                                                      metadata_len_D, continuation)
    out = [objectives.output_lengths(int(n), denoisers[k], seed=piece_seed(seed or 0, p),
                                     metadata_len=int(m), **opts.lengths_kwargs())
           for p, (n, k, m) in enumerate(zip(len_P, den_P, meta_P))]
    in_P = np.array([o[0] for o in out], np.int64).reshape(-1)
    tgt_P = np.array([o[1] for o in out], np.int64).reshape(-1)
    if opts.encoder_decoder:
        row_ptr, row_pieces, _, _ = packing.plan_packing_2d(
            in_P, tgt_P, opts.inputs_length, opts.targets_length, seed=seed)
    else:
        row_P, offset_P, num_rows = packing.best_fit_decreasing(
            in_P + tgt_P, opts.inputs_length + opts.targets_length)
        row_ptr, row_pieces = packing.rows_from_assignment(row_P, offset_P, num_rows, seed)
    return DenoisingPlan(doc_P, start_P, len_P, den_P, meta_P, in_P, tgt_P, np.asarray(row_ptr),
                         np.asarray(row_pieces))


def _shift_right(targets: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], targets[:-1]]).astype(np.int32)


class DenoisingRows:
    """Assembles the rows of a :class:`DenoisingPlan` (picklable, for grain workers)."""

    def __init__(self, docs, plan: DenoisingPlan, denoisers: Sequence, ids, opts: ExampleOptions,
                 seed: int = 0, prefixes=None):
        """``docs``: a prepared dataset's path (opened lazily) or an in-memory store.

        ``prefixes``: for a plan with metadata, ``prefixes(doc)`` gives document ``doc``'s
        prefix ids (``t5x_like.data.meco.DocumentPrefixes``); picklable.
        """
        self._path = str(docs) if isinstance(docs, (str, os.PathLike)) else None
        self._docs = None if self._path else docs
        self.plan, self.denoisers, self.ids, self.opts, self.seed = plan, list(denoisers), ids, opts, seed
        self.prefixes = prefixes
        if prefixes is None and plan.piece_metadata_len_P.any():
            raise ValueError("this denoising plan puts metadata prefixes in front of its pieces: "
                             "pass prefixes= (t5x_like.data.meco.open_denoising_task does)")

    def __getstate__(self):
        return self.__dict__ | ({"_docs": None} if self._path else {})

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return self.plan.num_rows

    def _examples(self, rows_B: np.ndarray):
        """(row position, inputs, targets) of every piece of the given rows, in row order."""
        plan = self.plan
        lo_B, hi_B = plan.row_ptr_R1[rows_B], plan.row_ptr_R1[rows_B + 1]
        pieces_P = np.concatenate([plan.row_pieces_P[a:b] for a, b in zip(lo_B, hi_B)])
        row_of_P = np.repeat(np.arange(len(rows_B)), hi_B - lo_B)
        if self._docs is None:
            self._docs = PreparedDataset(self._path)
        raw = self._docs.pieces(plan.piece_doc_P[pieces_P], plan.piece_start_P[pieces_P],
                                plan.piece_len_P[pieces_P])
        for r, p, tokens in zip(row_of_P, pieces_P, raw):
            inputs, targets = objectives.build_example(
                np.asarray(tokens, np.int32), self.denoisers[plan.piece_denoiser_P[p]],
                seed=piece_seed(self.seed, int(p)),
                tokenizer_ids=self.ids, use_mode_token=self.opts.use_mode_tokens,
                sentinel_policy=self.opts.sentinel_policy, random_roll=self.opts.random_roll,
                metadata=self._metadata(int(p)))
            yield r, inputs, targets

    def _metadata(self, p: int) -> np.ndarray | None:
        """The metadata ids of piece ``p`` (None: none), checked against the plan's length."""
        planned = int(self.plan.piece_metadata_len_P[p])
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
        o = self.opts
        dec_len = o.targets_length if o.encoder_decoder else o.inputs_length + o.targets_length
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


_PLAN_VERSION = 3  # 2: pieces record their metadata prefix length; 3: float32 noise counts


def open_task(dataset_path, denoisers: Sequence, ids, opts: ExampleOptions,
              seed: int | None, prefixes=None) -> DenoisingRows:
    """The denoising rows of a prepared dataset; the plan is built once and kept in ``plans/``.

    ``seed`` None (eval) keeps rows unshuffled; masks are then drawn from seed 0.
    ``prefixes``: MeCo's per-document metadata prefixes (a ``meco.DocumentPrefixes``, whose
    ``identity`` names it in the plan's key, ``lengths_D`` sizes the pieces and
    ``continuation`` says which pieces carry it); None: plain rows.
    """
    dataset = PreparedDataset(dataset_path)
    identity = repr((_PLAN_VERSION, dataclasses.astuple(opts),
                     [dataclasses.astuple(d) for d in denoisers], seed,
                     None if prefixes is None else prefixes.identity))
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    kind = "denoise" if prefixes is None else "denoise_meco"
    path = dataset.path / "plans" / f"{kind}_v{_PLAN_VERSION}_{key}.npz"
    plan, _ = load_or_build(path, DenoisingPlan, lambda: plan_denoising(
        dataset.lengths_D, denoisers, opts, seed,
        None if prefixes is None else prefixes.lengths_D,
        "repeat" if prefixes is None else prefixes.continuation))
    return DenoisingRows(dataset_path, plan, denoisers, ids, opts, seed=seed or 0,
                         prefixes=prefixes)
