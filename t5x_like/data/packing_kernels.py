"""Compiled (numba) inner loops of :mod:`t5x_like.data.packing`.

Private to the packing module: inputs are validated there (lengths in range, int64 arrays), so
the kernels do no checks. All kernels are deterministic.

Max segment trees are flat arrays ``tree`` of ``2 * size`` entries (``size`` a power of two):
leaf ``i`` lives at ``tree[size + i]``, node ``j`` has children ``2j`` and ``2j + 1``, and the
root ``tree[1]`` holds the maximum over all leaves.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _tree_size(n):
    """Smallest power of two >= n (>= 1)."""
    size = 1
    while size < n:
        size *= 2
    return size


@numba.njit(cache=True)
def _tree_set(tree, size, leaf, value):
    """Set a leaf and restore the max invariant on its path to the root."""
    i = leaf + size
    tree[i] = value
    i >>= 1
    while i >= 1:
        left, right = tree[2 * i], tree[2 * i + 1]
        m = left if left > right else right
        if tree[i] == m:
            break  # nothing above can change either
        tree[i] = m
        i >>= 1


@numba.njit(cache=True)
def _tree_first_at_least(tree, size, w):
    """Leftmost leaf whose value is >= w, or -1."""
    if tree[1] < w:
        return -1
    i = 1
    while i < size:
        i = 2 * i
        if tree[i] < w:
            i += 1
    return i - size


@numba.njit(cache=True)
def _tree_first_at_least_from(tree, size, lo, w):
    """Leftmost leaf with index >= lo whose value is >= w, or -1."""
    i = lo + size
    if tree[i] < w:
        while True:
            while i & 1:  # climb while we are a right child: our range ends a subtree
                i >>= 1
            if i == 0:
                return -1
            i += 1  # the right sibling covers the leaves just after the ones checked
            if tree[i] >= w:
                break
        while i < size:
            i = 2 * i
            if tree[i] < w:
                i += 1
    return i - size


@numba.njit(cache=True)
def counting_order(lengths_P, length):
    """Piece indices sorted by length, longest first; ties keep input order (stable)."""
    counts_C = np.zeros(length + 1, np.int64)
    for p in range(len(lengths_P)):
        counts_C[lengths_P[p]] += 1
    start_C = np.empty(length + 1, np.int64)
    pos = 0
    for c in range(length, -1, -1):
        start_C[c] = pos
        pos += counts_C[c]
    order_P = np.empty(len(lengths_P), np.int64)
    for p in range(len(lengths_P)):
        c = lengths_P[p]
        order_P[start_C[c]] = p
        start_C[c] += 1
    return order_P


@numba.njit(cache=True)
def obfd(lengths_P, length):
    """Optimized best-fit-decreasing: ``(row_P, offset_P, num_rows)``.

    Leaf c of the tree holds c while some open bin has exactly c tokens free (else 0), so the
    leftmost leaf >= w is the tightest fit. Bins with c free form a LIFO stack (``head_C[c]``,
    linked through ``next_B``): among equally tight bins the one that got there last wins.
    """
    n = len(lengths_P)
    order_P = counting_order(lengths_P, length)
    size = _tree_size(length + 1)
    tree = np.zeros(2 * size, np.int32)
    head_C = np.full(length + 1, -1, np.int64)
    next_B = np.empty(max(n, 1), np.int64)
    row_P = np.empty(n, np.int64)
    offset_P = np.empty(n, np.int64)
    num_rows = 0
    for k in range(n):
        p = order_P[k]
        w = lengths_P[p]
        c = _tree_first_at_least(tree, size, w)
        if c < 0:
            b, c = num_rows, length
            num_rows += 1
        else:
            b = head_C[c]
            head_C[c] = next_B[b]
            if head_C[c] < 0:
                _tree_set(tree, size, c, 0)
        row_P[p] = b
        offset_P[p] = length - c
        r = c - w
        if r > 0:  # a bin that is exactly full is closed: it is in no stack
            next_B[b] = head_C[r]
            if head_C[r] < 0:
                _tree_set(tree, size, r, r)
            head_C[r] = b
    return row_P, offset_P, num_rows


@numba.njit(cache=True)
def first_fit(lengths_P, length, max_open):
    """First fit in input order over bins in opening order: ``(row_P, offset_P, num_rows)``.

    Leaf b holds the free tokens of bin b while it is open (0 once closed). With
    ``max_open > 0`` at most that many bins are open: opening one more first closes the fullest
    open bin (fewest free tokens; the oldest on ties).
    """
    n = len(lengths_P)
    size = _tree_size(max(n, 1))
    tree = np.zeros(2 * size, np.int32)
    open_K = np.empty(max(max_open, 1), np.int64)
    slot_B = np.full(max(n, 1), -1, np.int64)  # position of an open bin in open_K
    num_open = 0
    row_P = np.empty(n, np.int64)
    offset_P = np.empty(n, np.int64)
    num_rows = 0
    for p in range(n):
        w = lengths_P[p]
        b = _tree_first_at_least(tree, size, w)
        if b >= 0:
            c = tree[size + b]
        else:
            if max_open > 0 and num_open == max_open:
                j = 0
                for i in range(1, num_open):
                    ci, cj = tree[size + open_K[i]], tree[size + open_K[j]]
                    if ci < cj or (ci == cj and open_K[i] < open_K[j]):
                        j = i
                _tree_set(tree, size, open_K[j], 0)
                num_open -= 1
                open_K[j] = open_K[num_open]
                slot_B[open_K[j]] = j
            b, c = num_rows, length
            num_rows += 1
            if max_open > 0:
                open_K[num_open] = b
                slot_B[b] = num_open
                num_open += 1
        row_P[p] = b
        offset_P[p] = length - c
        _tree_set(tree, size, b, c - w)
        if c == w and max_open > 0:  # exactly full: closed, frees its slot
            j = slot_B[b]
            num_open -= 1
            open_K[j] = open_K[num_open]
            slot_B[open_K[j]] = j
    return row_P, offset_P, num_rows


@numba.njit(cache=True)
def bfd_2d(inputs_P, targets_P, order_P, inputs_length, targets_length):
    """Two-dimensional best fit in ``order_P``: ``(row_P, inputs_offset_P, targets_offset_P, rows)``.

    Outer tree leaf a (free inputs tokens) holds 1 + the largest free targets count among open
    rows with exactly a inputs free (0 = none); inner tree a, leaf t, holds t + 1 while some open
    row has (a, t) free. The chosen row has the fewest free inputs among rows that fit both, then
    the fewest free targets; rows with (a, t) free form a LIFO stack. A row is closed once both
    are 0. Memory: 16 to 24 bytes per (free inputs, free targets) pair, e.g. 4 MB at 512 x 512.
    """
    n = len(order_P)
    osize = _tree_size(inputs_length + 1)
    isize = _tree_size(targets_length + 1)
    outer = np.zeros(2 * osize, np.int32)
    inner = np.zeros((inputs_length + 1, 2 * isize), np.int32)
    head_AT = np.full((inputs_length + 1, targets_length + 1), -1, np.int64)
    next_B = np.empty(max(n, 1), np.int64)
    row_P = np.empty(len(inputs_P), np.int64)
    in_off_P = np.empty(len(inputs_P), np.int64)
    tgt_off_P = np.empty(len(inputs_P), np.int64)
    num_rows = 0
    for k in range(n):
        p = order_P[k]
        wi, wt = inputs_P[p], targets_P[p]
        a = _tree_first_at_least_from(outer, osize, wi, wt + 1)
        if a < 0:
            b, a, t = num_rows, inputs_length, targets_length
            num_rows += 1
        else:
            t = _tree_first_at_least(inner[a], isize, wt + 1)
            b = head_AT[a, t]
            head_AT[a, t] = next_B[b]
            if head_AT[a, t] < 0:
                _tree_set(inner[a], isize, t, 0)
                _tree_set(outer, osize, a, inner[a, 1])
        row_P[p] = b
        in_off_P[p] = inputs_length - a
        tgt_off_P[p] = targets_length - t
        ra, rt = a - wi, t - wt
        if ra > 0 or rt > 0:
            next_B[b] = head_AT[ra, rt]
            if head_AT[ra, rt] < 0:
                _tree_set(inner[ra], isize, rt, rt + 1)
                _tree_set(outer, osize, ra, inner[ra, 1])
            head_AT[ra, rt] = b
    return row_P, in_off_P, tgt_off_P, num_rows


_BITS = 62  # bits per word of a column's occupancy bitset (int64, sign bit kept clear)


@numba.njit(cache=True)
def _highest_at_most(bits_W, t):
    """The largest set bit index <= t of a bitset, or -1."""
    w = t // _BITS
    word = bits_W[w] & ((1 << (t % _BITS + 1)) - 1)
    while word == 0:
        w -= 1
        if w < 0:
            return -1
        word = bits_W[w]
    high = 0
    while word >> (high + 1):
        high += 1
    return w * _BITS + high


@numba.njit(cache=True)
def fill_rows_2d(inputs_P, targets_P, inputs_length, targets_length):
    """Row-at-a-time 2-D packing: ``(row_P, inputs_offset_P, targets_offset_P, rows)``.

    One row is open at a time. It takes, again and again, the waiting piece whose (inputs,
    targets) has the largest dot product with the room the row has left (each budget
    normalized by its length), and closes when no waiting piece fits. Unlike best fit in
    decreasing order, a row that has targets room left draws target-heavy pieces, so rows
    mix piece shapes (the bin-centric dot-product heuristic of Panigrahy et al., 2011).
    Pieces of one shape are taken in input order. Per pick: for each inputs length (a
    column), the longest fitting targets length is the column's best, found in an
    occupancy bitset; columns are scanned from the longest and the scan stops once no
    shorter column can win.
    """
    li, lt = inputs_length, targets_length
    n = len(inputs_P)
    words = lt // _BITS + 1
    count_AT = np.zeros((li + 1, lt + 1), np.int64)
    for p in range(n):
        count_AT[inputs_P[p], targets_P[p]] += 1
    start_AT = np.zeros((li + 1, lt + 1), np.int64)  # next piece of each shape, in shape order
    total = 0
    for a in range(li + 1):
        for t in range(lt + 1):
            start_AT[a, t] = total
            total += count_AT[a, t]
    order_Q = np.empty(n, np.int64)
    fill_AT = start_AT.copy()
    for p in range(n):
        order_Q[fill_AT[inputs_P[p], targets_P[p]]] = p
        fill_AT[inputs_P[p], targets_P[p]] += 1
    bits_AW = np.zeros((li + 1, words), np.int64)
    column_A = np.zeros(li + 1, np.int64)
    for a in range(li + 1):
        for t in range(lt + 1):
            if count_AT[a, t]:
                bits_AW[a, t // _BITS] |= 1 << (t % _BITS)
                column_A[a] += count_AT[a, t]
    row_P = np.empty(n, np.int64)
    in_off_P = np.empty(n, np.int64)
    tgt_off_P = np.empty(n, np.int64)
    scale_i, scale_t = 1.0 / (li * li), 1.0 / (lt * lt)
    left, num_rows = n, 0
    while left:
        ri, rt = li, lt
        while True:
            best, best_a, best_t = -1.0, -1, -1
            for a in range(ri, -1, -1):
                if a * ri * scale_i + rt * rt * scale_t <= best:
                    break  # even a full targets room cannot lift a shorter column above best
                if column_A[a] == 0:
                    continue
                t = _highest_at_most(bits_AW[a], rt)
                if t >= 0:
                    score = a * ri * scale_i + t * rt * scale_t
                    if score > best:
                        best, best_a, best_t = score, a, t
            if best_a < 0:
                break
            p = order_Q[start_AT[best_a, best_t]]
            start_AT[best_a, best_t] += 1
            count_AT[best_a, best_t] -= 1
            column_A[best_a] -= 1
            if count_AT[best_a, best_t] == 0:
                bits_AW[best_a, best_t // _BITS] &= ~(1 << (best_t % _BITS))
            row_P[p], in_off_P[p], tgt_off_P[p] = num_rows, li - ri, lt - rt
            ri -= best_a
            rt -= best_t
            left -= 1
        num_rows += 1
    return row_P, in_off_P, tgt_off_P, num_rows


@numba.njit(cache=True)
def group_rows(row_P, key_P, num_rows):
    """CSR grouping ``(row_ptr_R1, row_pieces_P)``: pieces by row, key-increasing in a row."""
    n = len(row_P)
    row_ptr_R1 = np.zeros(num_rows + 1, np.int64)
    for p in range(n):
        row_ptr_R1[row_P[p] + 1] += 1
    for r in range(num_rows):
        row_ptr_R1[r + 1] += row_ptr_R1[r]
    fill_R = row_ptr_R1[:-1].copy()
    row_pieces_P = np.empty(n, np.int64)
    for p in range(n):
        row_pieces_P[fill_R[row_P[p]]] = p
        fill_R[row_P[p]] += 1
    # Rows hold a handful of pieces: insertion sort is the cheapest in-row sort.
    for r in range(num_rows):
        for i in range(row_ptr_R1[r] + 1, row_ptr_R1[r + 1]):
            p = row_pieces_P[i]
            j = i - 1
            while j >= row_ptr_R1[r] and key_P[row_pieces_P[j]] > key_P[p]:
                row_pieces_P[j + 1] = row_pieces_P[j]
                j -= 1
            row_pieces_P[j + 1] = p
    return row_ptr_R1, row_pieces_P


@numba.njit(cache=True)
def min_slack_rows(lengths_P, length, target):
    """Minimum-bin-slack packing: ``(row_P, num_rows)``, rows filled one at a time.

    Each row takes the longest piece left, then the subset of the others whose lengths fill the
    room best: a subset-sum over the pieces left, longest first, as bitsets of reachable sums
    (one per piece considered, for the way back), stopped as soon as the room is exactly full.
    Where best fit keeps adding the longest piece that fits, this finds combinations such as
    1,953 + 1,562 + ... that fill a row to the token. O(rows x pieces x length / 64) at worst;
    exact fits usually stop the scan early. Gives up, returning ``num_rows = target``, once the
    rows so far plus ``ceil(tokens left / length)`` reach ``target``: it cannot beat that.
    """
    n = len(lengths_P)
    order_Q = counting_order(lengths_P, length)
    taken_Q = np.zeros(n, np.bool_)
    row_P = np.full(n, -1, np.int64)
    words = length // 64 + 1
    reach_QxW = np.zeros((n + 1, words), np.uint64)
    left_Q = np.empty(n, np.int64)
    num_rows, first, tokens_left = 0, 0, 0
    for p in range(n):
        tokens_left += lengths_P[p]
    while True:
        if num_rows + (tokens_left + length - 1) // length >= target:
            return row_P, target
        while first < n and taken_Q[first]:
            first += 1
        if first == n:
            break
        taken_Q[first] = True
        row_P[order_Q[first]] = num_rows
        room = length - lengths_P[order_Q[first]]
        tokens_left -= lengths_P[order_Q[first]]
        m = 0
        for q in range(first + 1, n):
            if not taken_Q[q] and lengths_P[order_Q[q]] <= room:
                left_Q[m] = q
                m += 1
        reach_QxW[0, :] = 0
        reach_QxW[0, 0] = 1
        done = 0
        for j in range(m):
            w = lengths_P[order_Q[left_Q[j]]]
            shift_w, shift_b = w // 64, w % 64
            for i in range(words):
                v = reach_QxW[j, i]
                if i >= shift_w:
                    v |= reach_QxW[j, i - shift_w] << np.uint64(shift_b)
                    if shift_b and i > shift_w:
                        v |= reach_QxW[j, i - shift_w - 1] >> np.uint64(64 - shift_b)
                reach_QxW[j + 1, i] = v
            done = j + 1
            if (reach_QxW[done, room // 64] >> np.uint64(room % 64)) & np.uint64(1):
                break
        best = room
        while not (reach_QxW[done, best // 64] >> np.uint64(best % 64)) & np.uint64(1):
            best -= 1
        for j in range(done, 0, -1):  # the way back: a sum not reachable without piece j - 1
            if not (reach_QxW[j - 1, best // 64] >> np.uint64(best % 64)) & np.uint64(1):
                q = left_Q[j - 1]
                taken_Q[q] = True
                row_P[order_Q[q]] = num_rows
                best -= lengths_P[order_Q[q]]
                tokens_left -= lengths_P[order_Q[q]]
        num_rows += 1
    return row_P, num_rows
