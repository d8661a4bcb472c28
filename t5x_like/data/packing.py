"""Sequence packing: many documents per fixed-length row, no cross-talk, few truncations.

Packing several documents into each ``[length]`` row avoids spending compute on padding.
``segment_ids`` (1, 2, ... per row, 0 = padding) let attention masks keep packed documents
apart, and ``positions`` restart at 0 in every segment.

The packer is Optimized Best-Fit-Decreasing (Ding et al., "Fewer Truncations Improve Language
Modeling", 2024; see shared/specs/packing.md): documents longer than ``length`` are cut into
pieces of at most ``length`` (the only cut the context forces), pieces are sorted longest first
by counting sort, and each goes into the open row with the least room that still fits it, found
in O(log length) with a segment tree over free capacities (:mod:`.packing_kernels`).

:func:`plan_packing` returns a :class:`Plan`: which token ranges of which documents go into
which row, small enough to store next to the data; :func:`pack_rows` packs any objective's
pieces, with one budget or two. Rows are then assembled from a plan on demand.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Sequence

import numpy as np

from t5x_like.config import Packer
from t5x_like.data import packing_kernels as _k
from t5x_like.data.plan_files import NpzDataclass

PACKERS = typing.get_args(Packer)
# Plan.piece_cut_P flags: which part of a supervised example its budget cut.
CUT_INPUTS, CUT_TARGETS = 1, 2


def _check_length(length, name: str = "length") -> int:
    if int(length) != length or length < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {length!r}")
    return int(length)


def _as_int_array(values, what: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; ``what`` names it in errors."""
    arr = np.asarray(values)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D array of integers, got dtype {arr.dtype} and shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _check_piece_lengths(lengths_P: np.ndarray, length: int, lo: int = 1, what: str = "piece") -> None:
    bad_P = (lengths_P < lo) | (lengths_P > length)
    if bad_P.any():
        i = int(np.argmax(bad_P))
        raise ValueError(f"{what} {i} has length {lengths_P[i]}, outside {lo}..{length}; "
                         "cut long documents with split_lengths() first")


def split_lengths(doc_lengths_D, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut documents into consecutive pieces of at most ``length`` tokens.

    Returns ``(piece_doc_P, piece_start_P, piece_len_P)`` (int64, int64, int32) in document
    order: a document of n tokens gives ``ceil(n / length)`` pieces, all of ``length`` tokens but
    the last; documents of length 0 give none.
    """
    length = _check_length(length)
    lengths_D = _as_int_array(doc_lengths_D, "doc_lengths_D")
    if (lengths_D < 0).any():
        d = int(np.argmax(lengths_D < 0))
        raise ValueError(f"document {d} has negative length {lengths_D[d]}")
    count_D = -(-lengths_D // length)
    piece_doc_P = np.repeat(np.arange(len(lengths_D), dtype=np.int64), count_D)
    first_D = np.cumsum(count_D) - count_D
    piece_start_P = (np.arange(len(piece_doc_P), dtype=np.int64) - first_D[piece_doc_P]) * length
    piece_len_P = np.minimum(length, lengths_D[piece_doc_P] - piece_start_P).astype(np.int32)
    return piece_doc_P, piece_start_P, piece_len_P


def best_fit_decreasing(lengths_P, length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Optimized best-fit-decreasing: ``(row_P, offset_P, num_rows)`` for pieces in 1..length.

    Pieces go longest first (ties in input order) into the open row with the fewest free tokens
    that still fits them (among equally tight rows, the one that reached that room last), else
    into a new row; rows are numbered in opening order and exactly full rows are closed.
    ``offset_P`` is the token offset of each piece in its row: pieces are laid out in placement
    order. O(P + length + P log length).
    """
    length = _check_length(length)
    lengths_P = _as_int_array(lengths_P, "lengths_P")
    _check_piece_lengths(lengths_P, length)
    row_P, offset_P, num_rows = _k.obfd(lengths_P, length)
    return row_P, offset_P, int(num_rows)


def first_fit(lengths_P, length: int, num_bins: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Baseline first fit in input order: ``(row_P, offset_P, num_rows)``.

    Each piece goes into the oldest open row that fits it. ``num_bins=None`` keeps every row
    open (classic first fit). With ``num_bins=k`` at most k rows are open: when none fits and k
    are open, the fullest open row (the oldest on ties) is closed (emitted) to make room.
    Exactly full rows close.
    """
    length = _check_length(length)
    lengths_P = _as_int_array(lengths_P, "lengths_P")
    _check_piece_lengths(lengths_P, length)
    max_open = 0 if num_bins is None else _check_length(num_bins, "num_bins")
    row_P, offset_P, num_rows = _k.first_fit(lengths_P, length, max_open)
    return row_P, offset_P, int(num_rows)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan(NpzDataclass):
    """Which pieces of which documents fill which row: every objective's plan.

    Piece p covers ``piece_len_P[p]`` units from ``piece_start_P[p]`` of document
    ``piece_doc_P[p]``, in the units its objective's row builder reads (positions of ``[BOS] doc
    [EOS]`` for causal rows, document tokens for the others), and takes ``size_PxK[p, k]``
    positions of budget ``budgets_K[k]`` of its row: one budget (``[L]``, a decoder row) or two
    (``[inputs, targets]``, an encoder-decoder row). Row r holds pieces
    ``row_pieces_P[row_ptr_R1[r]:row_ptr_R1[r + 1]]``, laid out back to back in that order.
    ``piece_prefix_len_P``: metadata prefix tokens the piece carries (0: none);
    ``piece_kind_P``: the denoiser of the piece (0 where an objective has one kind).
    A supervised example is one piece of two runs: its inputs (``piece_len_P`` tokens from
    ``piece_start_P``, the document's start) and its targets (``piece_targets_len_P`` tokens from
    the document's inputs length; 0 for the pieces of other objectives), each cut to its budget
    if longer: ``piece_cut_P`` flags it (``CUT_INPUTS | CUT_TARGETS``; 0: whole).
    """

    budgets_K: np.ndarray
    piece_doc_P: np.ndarray
    piece_start_P: np.ndarray
    piece_len_P: np.ndarray
    size_PxK: np.ndarray
    row_ptr_R1: np.ndarray
    row_pieces_P: np.ndarray
    piece_prefix_len_P: np.ndarray = None
    piece_kind_P: np.ndarray = None
    piece_targets_len_P: np.ndarray = None
    piece_cut_P: np.ndarray = None

    def __post_init__(self):
        zeros_P = np.zeros(len(self.piece_len_P), np.int64)
        for name in ("piece_prefix_len_P", "piece_kind_P", "piece_targets_len_P", "piece_cut_P"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, zeros_P)

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return len(self.row_ptr_R1) - 1

    @property
    def length(self) -> int:
        """The row length of a one-budget plan."""
        if len(self.budgets_K) != 1:
            raise ValueError(f"a plan with budgets {self.budgets_K.tolist()} has no single length")
        return int(self.budgets_K[0])

    @property
    def tokens_K(self) -> np.ndarray:
        """Positions holding tokens, per budget."""
        return self.size_PxK.sum(axis=0, dtype=np.int64).reshape(len(self.budgets_K))

    @property
    def num_tokens(self) -> int:
        """Positions holding tokens over all budgets (non-padding positions)."""
        return int(self.tokens_K.sum())

    @property
    def fill_K(self) -> np.ndarray:
        """Fraction of each budget's row positions holding tokens."""
        return self.tokens_K / np.maximum(1, self.num_rows * self.budgets_K)

    @property
    def fill(self) -> float:
        """Fraction of all row positions holding tokens (1.0 = no padding)."""
        return self.num_tokens / max(1, self.num_rows * int(self.budgets_K.sum()))

    @property
    def lower_bound(self) -> int:
        """Fewest rows any packer can reach with these pieces (:func:`lower_bound_rows`)."""
        return lower_bound_rows(self.size_PxK, self.budgets_K)

    @property
    def num_truncated_docs(self) -> int:
        """Documents cut into more than one piece (distinct docs with a piece not at start 0)."""
        return len(np.unique(self.piece_doc_P[self.piece_start_P > 0]))

    def piece_rows(self) -> np.ndarray:
        """Row of every piece, ``[P]`` int64."""
        row_P = np.empty(len(self.piece_len_P), np.int64)
        row_P[self.row_pieces_P] = np.repeat(np.arange(self.num_rows), np.diff(self.row_ptr_R1))
        return row_P

    def piece_offsets(self) -> np.ndarray:
        """Offset of every piece inside its row, in the first budget, ``[P]`` int64."""
        len_Q = self.size_PxK[self.row_pieces_P, 0].astype(np.int64)
        end_Q = np.cumsum(len_Q)
        row_start_R = np.concatenate([[0], end_Q])[self.row_ptr_R1[:-1]]
        offset_P = np.empty(len(len_Q), np.int64)
        offset_P[self.row_pieces_P] = end_Q - len_Q - np.repeat(row_start_R, np.diff(self.row_ptr_R1))
        return offset_P


def _check_window(window) -> int:
    if int(window) != window or window < 0:
        raise ValueError(f"window must be an integer >= 0 (0 = all pieces at once), got {window!r}")
    return int(window)


def _windows(full_P: np.ndarray, window: int) -> list[tuple[int, int]]:
    """Runs of consecutive pieces, each with ``window`` pieces not flagged in ``full_P``.

    A piece that fills a whole budget takes a row alone whatever else the window holds, so
    it is not counted: a heavy-tailed corpus's many full pieces would otherwise crowd out the
    short pieces that best fit pairs up. ``window=0``: all pieces at once.
    """
    window, n = _check_window(window), len(full_P)
    if not window or not n:
        return [(0, n)] if n else []
    short_before_P = np.cumsum(~full_P) - ~full_P
    win_P = short_before_P // window
    starts = np.flatnonzero(np.r_[True, win_P[1:] != win_P[:-1]])
    return list(zip(starts.tolist(), np.r_[starts[1:], n].tolist()))


def lower_bound_rows(size_PxK, budgets) -> int:
    """The fewest rows any packer can reach: the largest Martello-Toth L2 bound over budgets.

    For one budget L and each K in 0..L/2, pieces larger than L - K each need a row of their
    own, as do pieces larger than L/2 (no two share a row), and pieces from K to L/2 can use
    only the room those rows leave; L2 is the best such count (Martello & Toth 1990), never
    below ``ceil(tokens / L)``. Budgets of a two-budget row are bounded one at a time.
    """
    size_PxK = np.asarray(size_PxK, np.int64).reshape(-1, len(budgets))
    best = 0
    for k, budget in enumerate(int(b) for b in budgets):
        sizes_P = size_PxK[:, k]
        count_C = np.bincount(sizes_P[sizes_P > 0], minlength=budget + 1)[: budget + 1]
        count_ge_C = np.r_[np.cumsum(count_C[::-1])[::-1], 0]  # pieces of size >= c
        sum_ge_C = np.r_[np.cumsum((count_C * np.arange(budget + 1))[::-1])[::-1], 0]
        half, k_K = budget // 2, np.arange(budget // 2 + 1)
        n1_K = count_ge_C[budget - k_K + 1]  # larger than L - K
        n2_K = count_ge_C[half + 1] - n1_K  # larger than L/2, at most L - K
        room_K = n2_K * budget - (sum_ge_C[half + 1] - sum_ge_C[budget - k_K + 1])
        small_K = sum_ge_C[np.maximum(k_K, 1)] - sum_ge_C[half + 1]  # from K to L/2
        extra_K = np.maximum(0, -(-(small_K - room_K) // budget))
        best = max(best, int((n1_K + n2_K + extra_K).max()))
    return best


def _emit_rank(rows_W: Sequence[int], windowed: bool, seed) -> np.ndarray | None:
    """Emitted position of every row (rows of a window stay in that window's span), or None."""
    if seed is None:
        return None
    if not windowed:
        perm_R = np.random.default_rng(seed).permutation(int(sum(rows_W)))
    else:
        base_W = np.cumsum(rows_W) - rows_W
        perm_R = np.concatenate([np.zeros(0, np.int64)] + [
            b + np.random.default_rng([seed, w]).permutation(n) for w, (b, n) in enumerate(zip(base_W, rows_W))])
    rank_R = np.empty(len(perm_R), np.int64)
    rank_R[perm_R] = np.arange(len(perm_R))
    return rank_R


def _concat_assign(doc_P, start_P, len_P, length: int, window: int):
    """Concatenate-then-split per window: fragments ``(doc, start, len, row, offset)``, rows/window."""
    n = len(len_P)
    win_P = np.arange(n) // window if window else np.zeros(n, np.int64)
    # Consecutive pieces of one document in one window are one contiguous token range.
    new_P = np.ones(n, bool)
    new_P[1:] = (doc_P[1:] != doc_P[:-1]) | (win_P[1:] != win_P[:-1])
    first_G = np.flatnonzero(new_P)
    len_G = np.add.reduceat(len_P.astype(np.int64), first_G) if n else np.zeros(0, np.int64)
    win_G = win_P[first_G]
    end_G = np.cumsum(len_G)
    first_W = np.flatnonzero(np.r_[True, win_G[1:] != win_G[:-1]]) if n else np.zeros(0, np.int64)
    pos_G = end_G - len_G - (end_G - len_G)[first_W][win_G]  # token position inside its window
    rows_W = -(-np.add.reduceat(len_G, first_W) // length) if n else np.zeros(0, np.int64)
    row_lo_G, row_hi_G = pos_G // length, (pos_G + len_G - 1) // length
    count_G = row_hi_G - row_lo_G + 1
    g_F = np.repeat(np.arange(len(len_G)), count_G)
    row_F = row_lo_G[g_F] + np.arange(len(g_F)) - (np.cumsum(count_G) - count_G)[g_F]
    lo_F = np.maximum(pos_G[g_F], row_F * length)
    hi_F = np.minimum(pos_G[g_F] + len_G[g_F], (row_F + 1) * length)
    frag = (doc_P[first_G][g_F], start_P[first_G][g_F] + lo_F - pos_G[g_F], (hi_F - lo_F).astype(np.int32))
    row_F += (np.cumsum(rows_W) - rows_W)[win_G[g_F]]
    return frag, row_F, lo_F % length, rows_W.tolist()


def plan_packing(doc_lengths_D, length: int, *, packer: str = "best_fit", window: int = 0,
                 seed: int | None = 0) -> Plan:
    """Plan packing documents of the given token counts into rows of ``length``.

    ``packer``: ``"best_fit"`` (OBFD; only documents longer than ``length`` are cut),
    ``"first_fit"`` (unbounded first fit in document order; same cuts), or ``"concat"``
    (documents concatenated in order and cut into rows of exactly ``length``; only a window's
    last row may be partial). ``window`` and ``seed``: as in :func:`pack_rows`.
    """
    if packer not in PACKERS:
        raise ValueError(f"unknown packer {packer!r}; choose one of {PACKERS}")
    length = _check_length(length)
    doc_P, start_P, len_P = split_lengths(doc_lengths_D, length)
    if packer != "concat":
        row_ptr_R1, row_pieces_P = pack_rows(len_P[:, None], (length,), packer=packer,
                                             window=window, seed=seed)
        return Plan(np.array([length]), doc_P, start_P, len_P, len_P[:, None], row_ptr_R1,
                    row_pieces_P)
    window = _check_window(window)
    (doc_P, start_P, len_P), row_P, offset_P, rows_W = _concat_assign(doc_P, start_P, len_P,
                                                                      length, window)
    rank_R = _emit_rank(rows_W, window > 0, seed)
    if rank_R is not None:
        row_P = rank_R[row_P]
    row_ptr_R1, row_pieces_P = _k.group_rows(row_P, offset_P, int(sum(rows_W)))
    return Plan(np.array([length]), doc_P, start_P, len_P, len_P[:, None], row_ptr_R1,
                row_pieces_P)


def pack_rows(size_PxK, budgets, *, packer: str = "best_fit", window: int = 0,
              seed: int | None = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pack pieces of the given sizes into rows: ``(row_ptr_R1, row_pieces_P)``.

    One budget (``size_PxK`` ``[P, 1]``): ``"best_fit"`` (OBFD) or ``"first_fit"``; two
    (inputs, targets): 2-D best fit (:func:`plan_packing_2d`). ``window=0`` packs all pieces at
    once; ``window=W`` packs each run of W consecutive pieces on its own, as a streaming
    pipeline would. Rows are emitted shuffled (``np.random.default_rng(seed)``; per window with
    seed ``(seed, window index)``, windows kept in order) because best-fit output order
    correlates with length; ``seed=None`` keeps packer order. Pieces of a row are in offset order.
    """
    size_PxK = np.asarray(size_PxK, np.int64)
    budgets = [int(b) for b in budgets]
    if size_PxK.ndim != 2 or size_PxK.shape[1] != len(budgets) or len(budgets) not in (1, 2):
        raise ValueError(f"sizes of shape {size_PxK.shape} for budgets {budgets}: need [P, K] "
                         "with K = 1 or 2 budgets")
    if len(budgets) == 2:
        if packer != "best_fit":
            raise ValueError(f"packer {packer!r}: two budgets are packed by 2-D best fit only")
        row_ptr_R1, row_pieces_P, _, _ = plan_packing_2d(
            size_PxK[:, 0], size_PxK[:, 1], budgets[0], budgets[1], window=window, seed=seed)
        return row_ptr_R1, row_pieces_P
    if packer not in ("best_fit", "first_fit"):
        raise ValueError(f"packer {packer!r}: pieces are packed by 'best_fit' or 'first_fit' "
                         "('concat' re-cuts documents: plan_packing does it)")
    length = _check_length(budgets[0])
    lengths_P = size_PxK[:, 0]
    _check_piece_lengths(lengths_P, length)
    row_P, key_P, rows_W, total = np.empty_like(lengths_P), np.empty_like(lengths_P), [], 0
    for lo, hi in _windows(lengths_P == length, window):
        if packer == "best_fit":
            rows, keys, n = repair(lengths_P[lo:hi], *_k.obfd(lengths_P[lo:hi], length), length)
        else:
            rows, keys, n = _k.first_fit(lengths_P[lo:hi], length, 0)
        row_P[lo:hi], key_P[lo:hi] = rows + total, keys
        rows_W.append(int(n))
        total += int(n)
    rank_R = _emit_rank(rows_W, window > 0, seed)
    if rank_R is not None:
        row_P = rank_R[row_P]
    return _k.group_rows(row_P, key_P, int(sum(rows_W)))


REPAIR_CHUNK = 8192  # pieces re-packed together: bounds the subset-sum work per row


def repair(lengths_P, row_P, key_P, num_rows: int, length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Re-pack the rows best fit left with room by minimum bin slack, where that saves rows.

    Best fit adds the longest piece that fits, so on lengths that repeat it builds rows of
    copies of one length, whose leftover room nothing left fits, where the optimum mixes them.
    Skipped at the L2 bound. The pieces of the rows with room, a row's pieces together in runs
    of about ``REPAIR_CHUNK``, are re-packed by :func:`packing_kernels.min_slack_rows`, kept
    where they need fewer rows (on the man pages at 8,192: 15 rows, reaching the bound). Returns
    ``(row_P, key_P, num_rows)``: rows renumbered in order, ``key_P`` ordering each row's pieces.
    """
    if num_rows <= lower_bound_rows(lengths_P[:, None], (length,)):
        return row_P, key_P, num_rows
    used_R = np.bincount(row_P, weights=lengths_P, minlength=num_rows)
    open_P = np.flatnonzero(used_R[row_P] < length)
    open_P = open_P[np.argsort(row_P[open_P], kind="stable")]
    row_P, key_P = row_P.copy(), key_P.copy()
    kept_R = np.ones(num_rows, bool)
    start = 0
    while start < len(open_P):
        end = min(start + REPAIR_CHUNK, len(open_P))
        while end < len(open_P) and row_P[open_P[end]] == row_P[open_P[end - 1]]:
            end += 1  # a row's pieces stay in one chunk
        chunk_P = open_P[start:end]
        rows_C = np.unique(row_P[chunk_P])
        new_P, n = _k.min_slack_rows(lengths_P[chunk_P], length, len(rows_C))
        if n < len(rows_C):
            row_P[chunk_P] = rows_C[new_P]
            key_P[chunk_P] = np.argsort(_k.counting_order(lengths_P[chunk_P], length))  # longest first
            kept_R[rows_C[n:]] = False
        start = end
    if kept_R.all():
        return row_P, key_P, num_rows
    return (np.cumsum(kept_R) - 1)[row_P], key_P, int(kept_R.sum())


def plan_packing_2d(inputs_len_P, targets_len_P, inputs_length: int, targets_length: int, *,
                    window: int = 0, seed: int | None = 0):
    """Two-dimensional best-fit-decreasing for encoder-decoder examples.

    Returns ``(row_ptr_R1, row_pieces_P, inputs_offset_P, targets_offset_P)``: row r holds
    pieces ``row_pieces_P[row_ptr_R1[r]:row_ptr_R1[r + 1]]`` in placement order, with inputs
    summing to at most ``inputs_length`` and targets to at most ``targets_length``; each piece's
    inputs start at ``inputs_offset_P`` and its targets at ``targets_offset_P`` in that row.
    Nothing is split: every piece must fit both lengths (lengths may be 0).

    Two heuristics run on every window and the one with fewer rows is kept (best fit on a
    tie): best fit in decreasing order of ``max(inputs / inputs_length, targets /
    targets_length)``, each piece into the open row that fits both with the fewest free inputs
    tokens, then the fewest free targets tokens (a segment tree over free inputs whose leaves
    hold the largest free targets finds it in O(log L)); and row-at-a-time filling by dot
    product (``packing_kernels.fill_rows_2d``), which mixes piece shapes where best fit builds
    rows of one shape that leave the other budget empty. ``window`` and ``seed`` work as in
    :func:`pack_rows`.
    """
    inputs_length = _check_length(inputs_length, "inputs_length")
    targets_length = _check_length(targets_length, "targets_length")
    in_P = _as_int_array(inputs_len_P, "inputs_len_P")
    tgt_P = _as_int_array(targets_len_P, "targets_len_P")
    if in_P.shape != tgt_P.shape:
        raise ValueError(f"inputs_len_P has {len(in_P)} pieces but targets_len_P has {len(tgt_P)}")
    for arr, lim, what in ((in_P, inputs_length, "inputs"), (tgt_P, targets_length, "targets")):
        bad_P = (arr < 0) | (arr > lim)
        if bad_P.any():
            i = int(np.argmax(bad_P))
            raise ValueError(f"piece {i} has {what} length {arr[i]}, outside 0..{lim}; "
                             "truncate or drop it before packing")
    key_P = np.maximum(in_P * targets_length, tgt_P * inputs_length)  # exact integer ratio compare
    row_P, in_off_P, tgt_off_P = np.empty_like(in_P), np.empty_like(in_P), np.empty_like(in_P)
    rows_W, total = [], 0
    for lo, hi in _windows((in_P == inputs_length) | (tgt_P == targets_length), window):
        order = np.argsort(-key_P[lo:hi], kind="stable")
        rows, ins, tgts, n = _k.bfd_2d(in_P[lo:hi], tgt_P[lo:hi], order, inputs_length, targets_length)
        mixed = _k.fill_rows_2d(in_P[lo:hi], tgt_P[lo:hi], inputs_length, targets_length)
        if mixed[3] < n:
            rows, ins, tgts, n = mixed
        row_P[lo:hi], in_off_P[lo:hi], tgt_off_P[lo:hi] = rows + total, ins, tgts
        rows_W.append(int(n))
        total += int(n)
    rank_R = _emit_rank(rows_W, window > 0, seed)
    if rank_R is not None:
        row_P = rank_R[row_P]
    row_ptr_R1, row_pieces_P = _k.group_rows(row_P, in_off_P * (targets_length + 1) + tgt_off_P,
                                             int(sum(rows_W)))
    return row_ptr_R1, row_pieces_P, in_off_P, tgt_off_P
