"""Batches from row sources: task mixtures, resumable grain iterators, eval batches.

A row source (:class:`t5x_like.data.rows.RowSource`, or :class:`ArrayRows`) gives any of its
rows by index. The grain pipeline over row indices shuffles them from a seed, reshuffles every
epoch, mixes tasks at fixed rates, batches, and serves each process its share; its state (a few
integers per task) goes into the checkpoint and restores exactly. Batches carry the objective's
features plus ``_source`` ``[batch]``, the task index of each row (keys starting with ``_`` are
bookkeeping that never reaches the model).
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

SOURCE_KEY = "_source"


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

    def __init__(self, tasks: Sequence):
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
    tasks: Sequence,
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

    ``rows`` is a row source or a dict of arrays.
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
