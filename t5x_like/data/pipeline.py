"""Packed training batches from prepared data: plans, row assembly, mixtures, resumable iterators.

Offline packing (the default): the lengths of a prepared dataset are packed once into a
:class:`~t5x_like.data.packing.PackPlan`, stored next to the data; at train time a row is built by
reading its pieces by index. The grain pipeline over row indices shards rows across processes,
shuffles them from a seed, reshuffles every epoch, mixes tasks at fixed rates and batches; its
state (a few integers per task) goes into the checkpoint and restores exactly.

Batch features, all int32 ``[batch, length]``: ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_segment_ids``, ``decoder_positions``,
``decoder_loss_weights`` (0 on padding); plus ``_source`` ``[batch]``, the task index of each row
(keys starting with ``_`` are bookkeeping that never reaches the model).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Sequence

import grain
import numpy as np

from t5x_like.data import packing
from t5x_like.data.plan_files import load_or_build
from t5x_like.data.prepared import PreparedDataset

logger = logging.getLogger(__name__)

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
SOURCE_KEY = "_source"
_PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PlanOptions:
    """How documents become packed rows."""

    length: int
    packer: str = "best_fit"  # best_fit | first_fit | concat
    window: int = 0  # pieces packed together; 0 = the whole dataset at once
    seed: int | None = 0  # row order (and document sampling); None = unshuffled (eval)
    bos: bool = True  # causal LM examples are [bos] + ids + [eos]
    score_temperature: float = 0.0  # > 0: sample documents with softmax(score / temperature)


def _sampled_documents(dataset: PreparedDataset, temperature: float, seed: int) -> np.ndarray:
    """Quality-weighted data selection (QuRating): draw documents with softmax(score / T).

    As many draws as there are documents, with replacement, so an epoch keeps its size while
    high-scoring documents repeat and low-scoring ones drop out.
    """
    logits_D = dataset.scores().astype(np.float64) / temperature
    probs_D = np.exp(logits_D - logits_D.max())
    probs_D /= probs_D.sum()
    rng = np.random.default_rng([seed, 0x5C0E])
    return np.sort(rng.choice(len(probs_D), size=len(probs_D), p=probs_D))


def load_or_build_plan(dataset: PreparedDataset, opts: PlanOptions) -> packing.PackPlan:
    """The packing plan of ``dataset`` under ``opts``, built once and stored under ``plans/``.

    Pieces index documents of the dataset directly (``piece_doc_P``), even when documents were
    sampled by score, so assembling a row needs nothing but the plan.
    """
    temp = f"_T{opts.score_temperature:g}" if opts.score_temperature > 0 else ""
    name = (f"causal_v{_PLAN_VERSION}_L{opts.length}_{opts.packer}_w{opts.window}_s{opts.seed}"
            f"_bos{int(opts.bos)}{temp}.npz")
    path = dataset.path / "plans" / name
    plan, built = load_or_build(path, packing.PackPlan, lambda: _build_plan(dataset, opts))
    if built:
        logger.info("Packing plan %s: %d rows, fill %.3f%%, %d documents cut", path,
                    plan.num_rows, 100 * plan.fill, plan.num_truncated_docs)
    return plan


def _build_plan(dataset: PreparedDataset, opts: PlanOptions) -> packing.PackPlan:
    docs_D = np.arange(dataset.num_documents)
    if opts.score_temperature > 0:
        docs_D = _sampled_documents(dataset, opts.score_temperature, opts.seed or 0)
    # [bos] + ids + [eos] gives len(ids) + 1 (input, target) pairs; without BOS, len(ids).
    example_lengths_D = dataset.lengths_D[docs_D] + int(opts.bos)
    plan = packing.plan_packing(example_lengths_D, opts.length, packer=opts.packer,
                                window=opts.window, seed=opts.seed)
    return dataclasses.replace(plan, piece_doc_P=docs_D[plan.piece_doc_P])


class CausalLMRows:
    """Assembles packed next-token-prediction rows of one task (picklable, for grain workers)."""

    def __init__(self, docs, plan: packing.PackPlan, bos_id: int, eos_id: int):
        """Rows of ``plan`` over ``docs``: a prepared dataset's path (opened lazily, so the
        object pickles small for grain workers) or any store with ``lengths_D`` and ``pieces``
        (e.g. :class:`InMemoryDocs`). ``bos_id`` < 0 means no BOS."""
        self._path = str(docs) if isinstance(docs, (str, os.PathLike)) else None
        self._docs = None if self._path else docs
        self.plan = plan
        self.bos_id, self.eos_id = bos_id, eos_id

    def __getstate__(self):
        return self.__dict__ | ({"_docs": None} if self._path else {})  # readers reopen per worker

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return self.plan.num_rows

    def _pieces(self, rows_B: np.ndarray):
        """(row position, offset, piece) for every piece of the given rows, plus their tokens."""
        plan = self.plan
        lo_B, hi_B = plan.row_ptr_R1[rows_B], plan.row_ptr_R1[rows_B + 1]
        pieces_P = np.concatenate([plan.row_pieces_P[a:b] for a, b in zip(lo_B, hi_B)])
        row_of_P = np.repeat(np.arange(len(rows_B)), hi_B - lo_B)
        len_P = plan.piece_len_P[pieces_P].astype(np.int64)
        start_P = plan.piece_start_P[pieces_P]
        doc_P = plan.piece_doc_P[pieces_P]
        if self._docs is None:
            self._docs = PreparedDataset(self._path)
        n_P = self._docs.lengths_D[doc_P]
        b = int(self.bos_id >= 0)
        # The piece covers sequence positions [start, start + len] of [bos] + ids + [eos];
        # read only the ids inside that window.
        id_lo_P = np.maximum(0, start_P - b)
        id_hi_P = np.minimum(n_P, start_P + len_P + 1 - b)
        ids = self._docs.pieces(doc_P, id_lo_P, np.maximum(id_hi_P - id_lo_P, 0))
        return row_of_P, len_P, start_P, n_P, ids

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Features of rows ``rows_B`` as ``[len(rows_B), length]`` int32 arrays."""
        rows_B = np.asarray(rows_B, np.int64)
        length = self.plan.length
        out = {k: np.zeros((len(rows_B), length), np.int32) for k in FEATURES}
        row_of_P, len_P, start_P, n_P, ids = self._pieces(rows_B)
        b = int(self.bos_id >= 0)
        fill_B = np.zeros(len(rows_B), np.int64)
        segment_B = np.zeros(len(rows_B), np.int64)
        for r, n_tok, start, n, piece_ids in zip(row_of_P, len_P, start_P, n_P, ids):
            head = [self.bos_id] if (b and start == 0) else []
            tail = [self.eos_id] if start + n_tok + 1 > n + b else []
            seq = np.concatenate([np.asarray(head, np.int32), piece_ids.astype(np.int32),
                                  np.asarray(tail, np.int32)])
            o = fill_B[r]
            segment_B[r] += 1
            out["decoder_input_tokens"][r, o : o + n_tok] = seq[:-1]
            out["decoder_target_tokens"][r, o : o + n_tok] = seq[1:]
            out["decoder_segment_ids"][r, o : o + n_tok] = segment_B[r]
            out["decoder_positions"][r, o : o + n_tok] = np.arange(n_tok)
            out["decoder_loss_weights"][r, o : o + n_tok] = 1
            fill_B[r] += n_tok
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


class ArrayRows:
    """Rows already in memory (a dict of ``[N, L]`` arrays), with the row-source interface."""

    def __init__(self, rows: dict[str, np.ndarray]):
        """Wrap ``rows``; every feature must have the same number of rows."""
        counts = {k: v.shape[0] for k, v in rows.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"features have different row counts: {counts}")
        self.rows, self.num_rows = rows, next(iter(counts.values()))

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]:
        """Gather rows ``rows_B`` of every feature."""
        return {k: v[np.asarray(rows_B, np.int64)] for k, v in self.rows.items()}


class _MixedBatch:
    """Turns a batch of (task, row) pairs into features plus each row's task (picklable)."""

    def __init__(self, tasks: Sequence[CausalLMRows | ArrayRows]):
        self.tasks = list(tasks)

    def __call__(self, pairs_Bx2: np.ndarray) -> dict[str, np.ndarray]:
        """Assemble the rows task by task, then put them back in batch order."""
        pairs_Bx2 = np.asarray(pairs_Bx2, np.int64).reshape(-1, 2)
        out: dict[str, np.ndarray] = {}
        for t, task in enumerate(self.tasks):
            sel = np.nonzero(pairs_Bx2[:, 0] == t)[0]
            if not len(sel):
                continue
            feats = task(pairs_Bx2[sel, 1])
            for k, v in feats.items():
                out.setdefault(k, np.zeros((len(pairs_Bx2),) + v.shape[1:], v.dtype))[sel] = v
        out[SOURCE_KEY] = pairs_Bx2[:, 0].astype(np.int32)
        return out


def _per_process_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    """Validate the sharding arguments; return the per-process batch size."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"process_count {process_count}; pick a batch size divisible by the number of hosts"
        )
    return global_batch_size // process_count


def _tag(task_index: int):
    return lambda row: (task_index, int(row))


def make_train_iterator(
    tasks: Sequence[CausalLMRows | ArrayRows],
    *,
    global_batch_size: int,
    seed: int,
    rates: Sequence[float] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int = 2,
    start_batch: int = 0,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's training batches, mixing ``tasks`` at ``rates``.

    Global batch s is a function of (``seed``, s) alone, whatever the number of processes: each
    task's rows are shuffled with a per-task seed and reshuffled every epoch, the tasks are
    interleaved deterministically in proportion to ``rates`` (grain's mix: exact proportions,
    no sampling noise), and that one global order is cut into batches of
    ``global_batch_size`` rows. Process p serves the p-th contiguous share of each global
    batch (``global_batch_size // process_count`` rows), so the processes' shares, in process
    order, are the batch one process would serve, and each process reads only its own rows.
    ``get_state()``/``set_state()`` resume exactly; the iterator is checkpointable with
    ``grain.checkpoint.CheckpointSave``. ``start_batch``: the first batch served is batch
    ``start_batch`` of the same sequence (random access, nothing is read for the skipped
    ones); MeCo's cooldown continues the plain stream this way.
    """
    batch_size = _per_process_batch(global_batch_size, process_index, process_count)
    rates = list(rates) if rates is not None else [1.0] * len(tasks)
    if len(rates) != len(tasks) or not all(r > 0 for r in rates):
        raise ValueError(f"rates {rates} must be positive, one per task ({len(tasks)} tasks)")
    streams = []
    for t, task in enumerate(tasks):
        if task.num_rows < 1:
            raise ValueError(f"task {t} has no rows to train on")
        streams.append(grain.MapDataset.source(np.arange(task.num_rows))
                       .seed(seed + 1000 * t).shuffle().repeat(None).map(_tag(t)))
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, rates)
    # Share k of the global order is global batch k // P's (k % P)-th share.
    shares = mixed.batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
    ds = shares[process_index::process_count].map(_MixedBatch(tasks))
    if start_batch:
        ds = ds[start_batch:]
    read = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=2 * prefetch)
    return iter(ds.to_iter_dataset(read))


def eval_batches(
    rows,
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Deterministic evaluation batches (no shuffle) for this process.

    ``rows`` is a row source (:class:`CausalLMRows`, :class:`ArrayRows`) or a dict of arrays.
    Rows are padded with all-zero rows (loss weight 0) up to a multiple of
    ``global_batch_size``, so every process gets the same number of batches and every real row
    is counted exactly once across processes. Global batch ``b`` is rows ``[b*G, (b+1)*G)``;
    process ``p`` takes its contiguous share.
    """
    batch_size = _per_process_batch(global_batch_size, process_index, process_count)
    rows = ArrayRows(rows) if isinstance(rows, dict) else rows
    num_rows = rows.num_rows
    num_batches = -(-num_rows // global_batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    batches = []
    for b in range(num_batches):
        lo = b * global_batch_size + process_index * batch_size
        idx = np.arange(lo, min(lo + batch_size, num_rows))
        chunk = rows(idx)
        batches.append({k: np.concatenate([v, np.zeros((batch_size - len(idx),) + v.shape[1:], v.dtype)])
                        for k, v in chunk.items()})
    return batches


def open_task(dataset_path: str | pathlib.Path, opts: PlanOptions, bos_id: int,
              eos_id: int) -> CausalLMRows:
    """A prepared dataset, its plan (built if missing) and the row assembler over them."""
    dataset = PreparedDataset(dataset_path)
    plan = load_or_build_plan(dataset, opts)
    return CausalLMRows(dataset_path, plan, bos_id, eos_id)
