"""Packed rows for MeCo's stage 1: every document behind its own metadata prefix.

Each document becomes ``[BOS] + prefix + doc + [EOS]`` (the prefix, e.g. ``"URL: en.wikipedia.org
\\n\\n"``, tokenized apart from the document), with loss weight 0 on BOS and on every prefix
token. Documents longer than a row are split by :func:`objectives.metadata.split_with_prefix`:
with the default ``continuation='repeat'`` every piece starts again with ``[BOS] + prefix``, so
no document token is trained without its conditioning. The pieces are packed best-fit-decreasing
like the causal rows (so packing keeps each document's prefix with it), and the plan is stored
next to the prepared data. The cooldown (stage 2) uses the plain causal rows of
:mod:`t5x_like.data.pipeline`; :class:`t5x_like.data.stages.StagedIterator` switches between them.

With a denoising objective (prefix LM, span corruption, UL2; both architectures),
:func:`open_denoising_task` gives the stage-1 rows of :mod:`t5x_like.data.denoising` with each
piece's inputs behind its document's prefix: ``[mode] prefix <noised text> [EOS]`` (the mode
token stays first; see ``t5x_like.objectives.examples``). The prefix is counted in the inputs
budget (decoder-only: the row), never noised and never a target. The cooldown uses the plain
denoising rows of the same objective.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from t5x_like.data import denoising, packing
from t5x_like.data.pipeline import FEATURES
from t5x_like.data.plan_files import NpzDataclass, load_or_build
from t5x_like.data.prepared import PreparedDataset
from t5x_like.objectives import metadata as meta
from t5x_like.objectives.examples import SpecialIds

_PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class MecoPlan(NpzDataclass):
    """Pieces (document ranges, with or without the prefix) and their rows."""

    piece_doc_P: np.ndarray
    piece_start_P: np.ndarray
    piece_len_P: np.ndarray
    piece_has_prefix_P: np.ndarray
    row_ptr_R1: np.ndarray
    row_pieces_P: np.ndarray

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return len(self.row_ptr_R1) - 1


def plan_meco(lengths_D: np.ndarray, prefix_len_D: np.ndarray, length: int, *,
              continuation: str, bos: bool, seed: int | None) -> MecoPlan:
    """Split every document around its prefix, then pack the pieces (rows shuffled by seed)."""
    docs, starts, lens, prefixed, sizes = [], [], [], [], []
    for d, (n, m) in enumerate(zip(lengths_D.tolist(), prefix_len_D.tolist())):
        for piece in meta.split_with_prefix(n, m, length, continuation, bos=bos):
            docs.append(d), starts.append(piece[0]), lens.append(piece[1])
            prefixed.append(piece[2])
            sizes.append(meta.piece_length(piece, n, m, bos=bos))
    row_P, offset_P, num_rows = packing.best_fit_decreasing(np.array(sizes, np.int64), length)
    row_ptr, row_pieces = packing.rows_from_assignment(row_P, offset_P, num_rows, seed)
    return MecoPlan(np.array(docs, np.int64), np.array(starts, np.int64),
                    np.array(lens, np.int64), np.array(prefixed, bool), row_ptr, row_pieces)


class DocumentPrefixes:
    """The metadata prefix ids of every document of a prepared dataset (picklable).

    ``prefixes(d)`` gives document d's read-only int32 ids (empty under ``missing='skip'`` for a
    document without metadata); ``lengths_D`` their lengths; ``stats()`` the data summary's
    counts (each document counted once); ``identity`` names the rule in a plan's key.
    ``wrong_metadata`` gives every document the metadata of the next one (a rotation, so none
    keeps its own), for measuring how much the true metadata helps.
    """

    def __init__(self, dataset: PreparedDataset, spec: meta.MetadataSpec, tokenizer,
                 wrong_metadata: bool = False):
        """Prefixes of ``dataset``'s stored metadata under ``spec``, tokenized by ``tokenizer``."""
        doc_metadata = dataset.all_metadata()
        if wrong_metadata:
            doc_metadata = doc_metadata[1:] + doc_metadata[:1]
        self.spec, self.doc_metadata = spec, doc_metadata
        self.tokenizer = meta.PrefixTokenizer(tokenizer, spec)
        self.lengths_D = np.array([len(self.tokenizer.ids(m)) for m in doc_metadata], np.int64)
        self.identity = repr((dataclasses.astuple(spec), tokenizer.file_hash(), wrong_metadata))

    @property
    def continuation(self) -> str:
        """Which pieces of a split document carry the prefix: 'repeat' or 'first_only'."""
        return self.spec.continuation

    def __call__(self, doc: int) -> np.ndarray:
        """Document ``doc``'s prefix ids."""
        return self.tokenizer.ids(self.doc_metadata[doc], count=False)

    def stats(self) -> dict[str, int]:
        """``PrefixTokenizer.stats()``: documents with / without metadata, prefix tokens."""
        return self.tokenizer.stats()


class MecoRows:
    """Assembles MeCo stage-1 rows of a prepared dataset (picklable, for grain workers)."""

    def __init__(self, dataset_path, plan: MecoPlan, prefixes: DocumentPrefixes, length: int,
                 bos_id: int, eos_id: int):
        """``prefixes(d)`` is document d's prefix ids."""
        self._path = str(dataset_path)
        self._docs: PreparedDataset | None = None
        self.plan, self.prefixes = plan, prefixes
        self.length, self.bos_id, self.eos_id = length, bos_id, eos_id

    def __getstate__(self):
        return self.__dict__ | {"_docs": None}

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return self.plan.num_rows

    def _piece(self, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs, targets, weights) of piece ``p``, reading only the tokens it needs."""
        plan = self.plan
        d, start, n = int(plan.piece_doc_P[p]), int(plan.piece_start_P[p]), int(plan.piece_len_P[p])
        size = int(self._docs.lengths_D[d])
        # One token of context before a plain continuation, one after to tell the end (EOS).
        lo, hi = max(0, start - 1), min(size, start + n + 1)
        (ids,) = self._docs.pieces(np.array([d]), np.array([lo]), np.array([hi - lo]))
        prefix = self.prefixes(d) if plan.piece_has_prefix_P[p] else np.zeros(0, np.int32)
        piece = (start - lo, n, bool(plan.piece_has_prefix_P[p]))
        return meta.piece_example(ids, prefix, piece, self.bos_id, self.eos_id)

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Features of rows ``rows_B`` as ``[len(rows_B), length]`` int32 arrays."""
        if self._docs is None:
            self._docs = PreparedDataset(self._path)
        out = {k: np.zeros((len(rows_B), self.length), np.int32) for k in FEATURES}
        plan = self.plan
        for r, row in enumerate(np.asarray(rows_B, np.int64)):
            offset = 0
            for segment, p in enumerate(plan.row_pieces_P[plan.row_ptr_R1[row]:
                                                          plan.row_ptr_R1[row + 1]], start=1):
                inputs, targets, weights = self._piece(int(p))
                end = offset + len(inputs)
                out["decoder_input_tokens"][r, offset:end] = inputs
                out["decoder_target_tokens"][r, offset:end] = targets
                out["decoder_loss_weights"][r, offset:end] = weights
                out["decoder_segment_ids"][r, offset:end] = segment
                out["decoder_positions"][r, offset:end] = np.arange(len(inputs))
                offset = end
        return out


def open_task(dataset_path, spec: meta.MetadataSpec, tokenizer, length: int,
              seed: int | None, wrong_metadata: bool = False) -> MecoRows:
    """MeCo stage-1 causal rows of a prepared dataset; the plan is built once, kept in ``plans/``.

    ``wrong_metadata``: every document behind another one's prefix (see ``DocumentPrefixes``).
    """
    dataset = PreparedDataset(dataset_path)
    prefixes = DocumentPrefixes(dataset, spec, tokenizer, wrong_metadata)
    bos = tokenizer.bos_id >= 0
    identity = repr((_PLAN_VERSION, prefixes.identity, length, bos, seed))
    path = dataset.path / "plans" / f"meco_v{_PLAN_VERSION}_{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npz"
    plan, _ = load_or_build(path, MecoPlan, lambda: plan_meco(
        dataset.lengths_D, prefixes.lengths_D, length, continuation=spec.continuation, bos=bos,
        seed=seed))
    return MecoRows(dataset_path, plan, prefixes, length, tokenizer.bos_id, tokenizer.eos_id)


def open_denoising_task(dataset_path, spec: meta.MetadataSpec, tokenizer, denoisers,
                        opts: denoising.ExampleOptions, seed: int | None,
                        wrong_metadata: bool = False) -> denoising.DenoisingRows:
    """MeCo stage-1 rows of a denoising objective: ``denoising.open_task`` with every piece's
    inputs behind its document's prefix (``continuation``: every piece or the first only)."""
    dataset = PreparedDataset(dataset_path)
    prefixes = DocumentPrefixes(dataset, spec, tokenizer, wrong_metadata)
    return denoising.open_task(dataset_path, denoisers, SpecialIds.from_tokenizer(tokenizer),
                               opts, seed, prefixes=prefixes)


def stage1_summary(rows: MecoRows | denoising.DenoisingRows) -> dict[str, int]:
    """The data summary of MeCo stage-1 rows (causal or denoising): the documents with, and
    without, metadata (``PrefixTokenizer.stats()``), and the pieces of split documents that are
    trained without their document's prefix (``continuation='first_only'``)."""
    plan = rows.plan
    prefixed_P = (plan.piece_has_prefix_P if isinstance(plan, MecoPlan)
                  else plan.piece_metadata_len_P > 0)
    continuation_P = plan.piece_start_P > 0
    has_prefix_P = rows.prefixes.lengths_D[plan.piece_doc_P] > 0
    return rows.prefixes.stats() | {
        "pieces": int(len(prefixed_P)), "continuation_pieces": int(continuation_P.sum()),
        "continuations_without_prefix": int((continuation_P & has_prefix_P & ~prefixed_P).sum())}
