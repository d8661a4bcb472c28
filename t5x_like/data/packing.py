"""Sequence packing: many short examples per fixed-length row, no cross-talk.

Packing several documents into each ``[length]`` row avoids spending compute
on padding. ``segment_ids`` (1, 2, ... per row, 0 = padding) let attention
masks keep packed documents apart, and ``positions`` restart at 0 in every
segment so position embeddings see each document from its start.

This is a straightforward best-fit-decreasing packer. The interface
(:func:`pack_pieces`) is what a faster segment-tree packer will keep.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

# Keys that pack_pieces adds itself and which pieces must therefore not use.
RESERVED_KEYS = ("segment_ids", "positions")


def _check_pieces(pieces: Sequence[dict[str, np.ndarray]], length: int) -> tuple[list[str], np.ndarray]:
    """Validate pieces; return their sorted key list and per-piece lengths."""
    keys = sorted(pieces[0])
    if not keys or set(keys) & set(RESERVED_KEYS):
        raise ValueError(f"piece 0 has keys {keys}; need at least one key and none of {RESERVED_KEYS}")
    lengths_N = np.empty(len(pieces), dtype=np.int64)
    for i, piece in enumerate(pieces):
        if sorted(piece) != keys:
            raise ValueError(f"piece {i} has keys {sorted(piece)}, but piece 0 has {keys}; all pieces need the same keys")
        sizes = {k: np.shape(piece[k]) for k in keys}
        if len(set(sizes.values())) != 1 or len(sizes[keys[0]]) != 1:
            raise ValueError(f"piece {i} arrays must be 1-D and of equal length, got shapes {sizes}")
        n = sizes[keys[0]][0]
        if not 1 <= n <= length:
            raise ValueError(
                f"piece {i} has length {n}, outside 1..{length}; split long sequences with split_long() first"
            )
        lengths_N[i] = n
    return keys, lengths_N


def best_fit_decreasing(lengths: Sequence[int], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Assign items to bins of capacity ``length``; return ``(row, offset)`` per item.

    Items are placed longest first (stable for ties) into the open row with the
    smallest remaining capacity that still fits, else into a new row. Open rows
    live in a sorted list of ``(remaining, row)`` so each placement is a binary
    search; ties go to the lowest row index, keeping the result deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    row_of = np.empty(len(lengths), dtype=np.int64)
    offset_of = np.empty(len(lengths), dtype=np.int64)
    open_rows: list[tuple[int, int]] = []  # (remaining capacity, row index), sorted
    used: list[int] = []  # tokens already placed in each row
    for i in order:
        n = int(lengths[i])
        j = bisect.bisect_left(open_rows, (n, -1))
        if j < len(open_rows):
            remaining, row = open_rows.pop(j)
        else:
            remaining, row = length, len(used)
            used.append(0)
        row_of[i], offset_of[i] = row, used[row]
        used[row] += n
        if remaining - n > 0:
            bisect.insort(open_rows, (remaining - n, row))
    return row_of, offset_of


def pack_pieces(
    pieces: Sequence[dict[str, np.ndarray]], length: int, seed: int | None = 0
) -> dict[str, np.ndarray]:
    """Pack 1-D feature dicts into ``[rows, length]`` int32 arrays.

    Every piece is a dict of equal-length 1-D integer arrays (same keys for all
    pieces, length 1..``length``). Returns each key as ``[rows, length]`` with 0
    padding, plus ``segment_ids`` (1..k per row in placement order, 0 on
    padding) and ``positions`` (0.. within each segment, 0 on padding). Rows are
    shuffled with ``seed`` unless it is None, because best-fit-decreasing emits
    rows roughly sorted by the length of their longest piece.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not pieces:
        return {}
    keys, lengths_N = _check_pieces(pieces, length)
    row_N, offset_N = best_fit_decreasing(lengths_N.tolist(), length)
    num_rows = int(row_N.max()) + 1
    # Segment id = 1 + number of earlier pieces in the same row; offsets grow
    # with placement order, so rank pieces by (row, offset).
    rank = np.lexsort((offset_N, row_N))
    segment_N = np.empty_like(row_N)
    row_sorted = row_N[rank]
    first_in_row = np.searchsorted(row_sorted, row_sorted, side="left")
    segment_N[rank] = np.arange(len(rank)) - first_in_row + 1

    # Flat destination index of every token, pieces concatenated in input order.
    starts_N = np.concatenate([[0], np.cumsum(lengths_N)[:-1]])
    total = int(lengths_N.sum())
    within_T = np.arange(total) - np.repeat(starts_N, lengths_N)
    dest_T = np.repeat(row_N * length + offset_N, lengths_N) + within_T

    out: dict[str, np.ndarray] = {}
    for key in keys:
        flat = np.zeros(num_rows * length, dtype=np.int32)
        flat[dest_T] = np.concatenate([np.asarray(p[key]) for p in pieces])
        out[key] = flat.reshape(num_rows, length)
    for key, values_T in (("segment_ids", np.repeat(segment_N, lengths_N)), ("positions", within_T)):
        flat = np.zeros(num_rows * length, dtype=np.int32)
        flat[dest_T] = values_T
        out[key] = flat.reshape(num_rows, length)
    if seed is not None:
        perm = np.random.default_rng(seed).permutation(num_rows)
        out = {k: v[perm] for k, v in out.items()}
    return out


def split_long(tokens: np.ndarray | Sequence[int], length: int) -> list[np.ndarray]:
    """Cut a 1-D sequence into consecutive chunks of at most ``length`` (last may be shorter)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    tokens = np.asarray(tokens)
    return [tokens[i : i + length] for i in range(0, len(tokens), length)]


def decoder_only_pieces(token_ids: Sequence[int], length: int, bos_id: int, eos_id: int) -> list[dict[str, np.ndarray]]:
    """Next-token-prediction pieces for one document, each at most ``length`` long.

    ``seq = [bos] + ids + [eos]`` (no BOS if ``bos_id < 0``); inputs are
    ``seq[:-1]`` and targets ``seq[1:]``, so ``inputs[i]`` predicts ``targets[i]``
    (teacher forcing). All three features are cut at the same boundaries.
    """
    prefix = [bos_id] if bos_id >= 0 else []
    seq = np.asarray(prefix + list(token_ids) + [eos_id], dtype=np.int32)
    if len(seq) < 2:
        return []
    inputs, targets = seq[:-1], seq[1:]
    weights = np.ones_like(inputs)
    return [
        {"decoder_input_tokens": i, "decoder_target_tokens": t, "decoder_loss_weights": w}
        for i, t, w in zip(split_long(inputs, length), split_long(targets, length), split_long(weights, length))
    ]
