"""Tests for sequence packing: OBFD, baselines, plans, 2-D packing, pack_rows."""

import bisect

import numpy as np
import pytest

from t5x_like.data import packing
from t5x_like.data import packing_kernels as _k


def _lognormal_docs(rng, n, median=400, sigma=1.3):
    return np.maximum(1, np.round(np.exp(rng.normal(np.log(median), sigma, n)))).astype(np.int64)


# ---------------------------------------------------------------- pure-Python references
def _reference_bfd(lengths, length):
    """Best-fit-decreasing with a sorted list of free capacities; ties: the bin that got there last."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    caps, stacks, num_rows = [], {}, 0
    row, offset = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        w = int(lengths[i])
        j = bisect.bisect_left(caps, w)
        if j < len(caps):
            c = caps[j]
            b = stacks[c].pop()
            if not stacks[c]:
                caps.pop(j)
                del stacks[c]
        else:
            b, c, num_rows = num_rows, length, num_rows + 1
        row[i], offset[i] = b, length - c
        if c - w:
            if c - w not in stacks:
                bisect.insort(caps, c - w)
                stacks[c - w] = []
            stacks[c - w].append(b)
    return row, offset, num_rows


def _reference_first_fit(lengths, length, num_bins=None):
    """First fit over rows in opening order; with num_bins, close the fullest row to open one."""
    free, is_open, row, offset = [], [], [], []
    for w in lengths:
        b = next((b for b in range(len(free)) if is_open[b] and free[b] >= w), None)
        if b is None:
            open_rows = [b for b in range(len(free)) if is_open[b]]
            if num_bins is not None and len(open_rows) == num_bins:
                is_open[min(open_rows, key=lambda b: free[b])] = False
            free.append(length)
            is_open.append(True)
            b = len(free) - 1
        row.append(b)
        offset.append(length - free[b])
        free[b] -= w
        is_open[b] = is_open[b] and free[b] > 0
    return row, offset, len(free)


def _reference_bfd_2d(ins, tgts, lin, ltgt):
    """2-D best fit: fewest free inputs, then fewest free targets, then the row that got there last."""
    order = sorted(range(len(ins)), key=lambda i: -max(ins[i] * ltgt, tgts[i] * lin))
    rows = []  # [free inputs, free targets, time it reached that state]
    row, in_off, tgt_off = [0] * len(ins), [0] * len(ins), [0] * len(ins)
    for step, i in enumerate(order):
        fits = [b for b, (a, t, _) in enumerate(rows) if (a or t) and a >= ins[i] and t >= tgts[i]]
        if fits:
            b = min(fits, key=lambda b: (rows[b][0], rows[b][1], -rows[b][2]))
        else:
            rows.append([lin, ltgt, -1])
            b = len(rows) - 1
        row[i], in_off[i], tgt_off[i] = b, lin - rows[b][0], ltgt - rows[b][1]
        rows[b] = [rows[b][0] - ins[i], rows[b][1] - tgts[i], step]
    return row, in_off, tgt_off, len(rows)


def _reference_fill_rows_2d(ins, tgts, lin, ltgt):
    """One row at a time: the waiting piece with the largest normalized dot product with the
    row's room; on a tie the longest inputs, then the first in input order."""
    waiting = list(range(len(ins)))
    row, in_off, tgt_off, rows = [0] * len(ins), [0] * len(ins), [0] * len(ins), 0
    while waiting:
        ri, rt = lin, ltgt
        while True:
            fits = [i for i in waiting if ins[i] <= ri and tgts[i] <= rt]
            if not fits:
                break
            # The kernel's arithmetic exactly, so that ties break the same way.
            i = max(fits, key=lambda i: (ins[i] * ri * (1.0 / (lin * lin))
                                         + tgts[i] * rt * (1.0 / (ltgt * ltgt)), ins[i], -i))
            row[i], in_off[i], tgt_off[i] = rows, lin - ri, ltgt - rt
            ri, rt = ri - ins[i], rt - tgts[i]
            waiting.remove(i)
        rows += 1
    return row, in_off, tgt_off, rows


# ---------------------------------------------------------------- assignment kernels
@pytest.mark.parametrize("length,n,seed", [(1, 20, 0), (7, 300, 1), (64, 2000, 2), (1000, 3000, 3)])
def test_obfd_equals_reference_bfd(length, n, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=n)
    if seed == 3:  # lognormal, as documents are
        lengths = np.clip(_lognormal_docs(rng, n, median=150), 1, length)
    row_P, offset_P, num_rows = packing.best_fit_decreasing(lengths, length)
    ref_row, ref_offset, ref_rows = _reference_bfd(lengths.tolist(), length)
    assert num_rows == ref_rows
    np.testing.assert_array_equal(row_P, ref_row)
    np.testing.assert_array_equal(offset_P, ref_offset)


@pytest.mark.parametrize("num_bins", [None, 1, 3, 16])
def test_first_fit_equals_reference(num_bins):
    lengths = np.random.default_rng(4).integers(1, 33, size=600)
    row_P, offset_P, num_rows = packing.first_fit(lengths, 32, num_bins=num_bins)
    ref_row, ref_offset, ref_rows = _reference_first_fit(lengths.tolist(), 32, num_bins)
    assert num_rows == ref_rows
    np.testing.assert_array_equal(row_P, ref_row)
    np.testing.assert_array_equal(offset_P, ref_offset)


def test_assignment_respects_capacity_and_layout():
    lengths = np.random.default_rng(5).integers(1, 101, size=3000)
    for row_P, offset_P, num_rows in (packing.best_fit_decreasing(lengths, 100), packing.first_fit(lengths, 100)):
        assert np.bincount(row_P, weights=lengths, minlength=num_rows).max() <= 100
        assert (offset_P + lengths <= 100).all()
        # Pieces of a row tile [0, used) without gaps or overlaps.
        order = np.lexsort((offset_P, row_P))
        r, o, n = row_P[order], offset_P[order], lengths[order]
        same = r[1:] == r[:-1]
        assert (o[1:][same] == (o + n)[:-1][same]).all() and (o[1:][~same] == 0).all() and o[0] == 0


def test_bfd_beats_first_fit_and_fills_rows():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 129, size=2000)
    assert packing.best_fit_decreasing(lengths, 128)[2] <= packing.first_fit(lengths, 128)[2]
    lengths = np.clip(rng.lognormal(mean=4.0, sigma=1.0, size=5000).astype(int), 1, 256)
    assert packing.plan_packing(lengths, 256).fill > 0.99


def test_empty_inputs():
    for fn in (packing.best_fit_decreasing, packing.first_fit):
        row_P, offset_P, num_rows = fn([], 8)
        assert num_rows == 0 and len(row_P) == len(offset_P) == 0
    plan = packing.plan_packing([0, 0], 8)
    assert plan.num_rows == 0 and plan.num_tokens == 0 and len(plan.row_ptr_R1) == 1


# ---------------------------------------------------------------- validation
def test_errors_name_the_value():
    with pytest.raises(ValueError, match="length must be an integer >= 1, got 0"):
        packing.best_fit_decreasing([1], 0)
    with pytest.raises(ValueError, match="piece 2 has length 9, outside 1..8; cut long"):
        packing.best_fit_decreasing([1, 8, 9], 8)
    with pytest.raises(ValueError, match="piece 0 has length 0"):
        packing.first_fit([0], 8)
    with pytest.raises(ValueError, match="document 1 has negative length -3"):
        packing.plan_packing([4, -3], 8)
    with pytest.raises(ValueError, match=r"unknown packer 'bfd'; choose one of \('best_fit', 'first_fit', 'concat'\)"):
        packing.plan_packing([4], 8, packer="bfd")
    with pytest.raises(ValueError, match="window must be an integer >= 0"):
        packing.plan_packing([4], 8, window=-1)
    with pytest.raises(ValueError, match="must be a 1-D array of integers"):
        packing.split_lengths([1.5], 8)
    with pytest.raises(ValueError, match="piece 1 has targets length 5, outside 0..4"):
        packing.plan_packing_2d([1, 1], [1, 5], 8, 4)


def test_split_lengths():
    doc_P, start_P, len_P = packing.split_lengths([5, 0, 8, 9, 1], 4)
    assert doc_P.tolist() == [0, 0, 2, 2, 3, 3, 3, 4]
    assert start_P.tolist() == [0, 4, 0, 4, 0, 4, 8, 0]
    assert len_P.tolist() == [4, 1, 4, 4, 4, 4, 1, 1]
    assert (doc_P.dtype, start_P.dtype, len_P.dtype) == (np.int64, np.int64, np.int32)


# ---------------------------------------------------------------- plans
def _check_plan(plan, lengths_D):
    """Every token of every document appears exactly once, in order; rows within capacity."""
    assert plan.row_ptr_R1[0] == 0 and plan.row_ptr_R1[-1] == len(plan.piece_len_P)
    assert np.array_equal(np.sort(plan.row_pieces_P), np.arange(len(plan.piece_len_P)))
    assert (plan.piece_len_P >= 1).all()
    row_P, offset_P = plan.piece_rows(), plan.piece_offsets()
    assert (offset_P + plan.piece_len_P <= plan.length).all()
    assert np.diff(plan.row_ptr_R1).min(initial=1) >= 1
    order = np.lexsort((plan.piece_start_P, plan.piece_doc_P))
    doc, start, n = plan.piece_doc_P[order], plan.piece_start_P[order], plan.piece_len_P[order].astype(np.int64)
    cont = doc[1:] == doc[:-1]
    assert (start[1:][cont] == (start + n)[:-1][cont]).all()  # no gap or overlap inside a document
    assert (start[np.r_[True, ~cont]] == 0).all()
    covered_D = np.bincount(doc, weights=n, minlength=len(lengths_D))
    np.testing.assert_array_equal(covered_D, lengths_D)
    return row_P, offset_P


@pytest.mark.parametrize("packer", packing.PACKERS)
@pytest.mark.parametrize("window", [0, 1, 7, 50])
def test_plan_conserves_tokens(packer, window):
    rng = np.random.default_rng(6)
    lengths_D = np.r_[_lognormal_docs(rng, 150, median=20), 0, 64, 65, 300]
    plan = packing.plan_packing(lengths_D, 64, packer=packer, window=window, seed=1)
    _check_plan(plan, lengths_D)
    long_D = int((lengths_D > 64).sum())
    if packer == "concat":
        assert plan.num_truncated_docs >= long_D
        assert (np.diff(plan.row_ptr_R1) >= 1).all()
    else:
        # Best fit and first fit cut exactly the documents longer than a row, at row multiples.
        assert plan.num_truncated_docs == long_D
        assert (plan.piece_start_P % 64 == 0).all()


def test_concat_fills_every_row_but_the_last_and_truncates():
    lengths_D = _lognormal_docs(np.random.default_rng(7), 400, median=30)
    plan = packing.plan_packing(lengths_D, 64, packer="concat", seed=None)
    _check_plan(plan, lengths_D)
    used_R = np.add.reduceat(plan.piece_len_P[plan.row_pieces_P], plan.row_ptr_R1[:-1])
    assert (used_R[:-1] == 64).all() and plan.num_rows == plan.lower_bound
    assert plan.num_truncated_docs > (lengths_D > 64).sum()


def test_windows_are_packed_independently():
    lengths_D = _lognormal_docs(np.random.default_rng(8), 300, median=30)
    window = 40
    plan = packing.plan_packing(lengths_D, 64, window=window, seed=3)
    row_P = plan.piece_rows()
    # Plan pieces are split pieces in document order; only pieces shorter than a row count.
    short_P = plan.piece_len_P < 64
    window_P = (np.cumsum(short_P) - short_P) // window
    assert (~short_P).any() and len(np.unique(window_P)) == -(-short_P.sum() // window)
    # A row never mixes windows, and windows are emitted in order.
    assert (np.diff(window_P[plan.row_pieces_P[plan.row_ptr_R1[:-1]]]) >= 0).all()
    for w in range(window_P.max() + 1):
        rows = np.unique(row_P[window_P == w])
        assert not np.isin(rows, row_P[window_P != w]).any()
        assert rows.max() - rows.min() + 1 == len(rows)


def _optimal_rows(sizes, length):
    """Fewest rows for the given sizes, by exhaustive search (a handful of pieces only)."""
    sizes, best = sorted(sizes, reverse=True), [len(sizes)]

    def place(i, used):
        if len(used) >= best[0]:
            return
        if i == len(sizes):
            best[0] = len(used)
            return
        for b in sorted({u for u in used if u + sizes[i] <= length}):
            j = used.index(b)
            used[j] += sizes[i]
            place(i + 1, used)
            used[j] -= sizes[i]
        place(i + 1, used + [sizes[i]])

    place(0, [])
    return best[0]


def test_lower_bound_rows_is_martello_toth_l2():
    # Three pieces over half a row need three rows, though their tokens fit in two.
    assert packing.lower_bound_rows([[6], [6], [6]], [10]) == 3
    # K = 4: no 4 fits beside a 7, so the 4s need a row of their own; ceil(29 / 10) = 3.
    assert packing.lower_bound_rows([[7], [7], [7], [4], [4]], [10]) == 4
    rng = np.random.default_rng(21)
    for _ in range(200):
        length = int(rng.integers(8, 25))
        sizes = rng.integers(1, length + 1, int(rng.integers(1, 9)))
        bound = packing.lower_bound_rows(sizes[:, None], [length])
        assert -(-sizes.sum() // length) <= bound <= _optimal_rows(sizes.tolist(), length)
        assert bound <= packing.plan_packing(sizes, length).num_rows


def test_lower_bound_of_two_budgets_is_the_larger():
    # Inputs [6, 6, 6, 1, 1] need 3 rows (three over half a row), targets [1, 1, 1, 2, 2] one.
    size_Px2 = np.array([[6, 1], [6, 1], [6, 1], [1, 2], [1, 2]])
    assert packing.lower_bound_rows(size_Px2[:, :1], [10]) == 3
    assert packing.lower_bound_rows(size_Px2[:, 1:], [10]) == 1
    assert packing.lower_bound_rows(size_Px2, [10, 10]) == 3
    assert packing.lower_bound_rows(size_Px2[:, ::-1], [10, 10]) == 3
    assert packing.lower_bound_rows(np.zeros((0, 2), np.int64), [10, 10]) == 0


def test_windows_count_only_pieces_shorter_than_a_row():
    # Documents of 64 tokens and longer give full pieces; they ride along with the short ones.
    lengths_D = np.array([10, 200, 20, 64, 30, 40, 128, 50])
    plan = packing.plan_packing(lengths_D, 64, window=2, seed=None)
    full = plan.piece_len_P == 64
    assert full.sum() == 6 and (~full).sum() == 6
    # Pieces: 10 | 64 64 64 | 8, 20 | 64 | 30, 40 | 64 64 | 50 (s = short, f = full):
    # windows of two short pieces each, full pieces joining the window they fall in.
    assert packing._windows(full, 2) == [(0, 5), (5, 8), (8, 12)]
    assert packing._windows(full, 0) == [(0, 12)]


def _reference_min_slack(lengths, length):
    """Rows of min_slack_rows in plain Python: the same order, subset sums as sets."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable, longest first
    taken, row, num_rows = set(), [-1] * len(lengths), 0
    for first in order:
        if first in taken:
            continue
        taken.add(first)
        row[first] = num_rows
        room = length - lengths[first]
        cands = [q for q in order if q not in taken and lengths[q] <= room]
        reach = [{0}]
        for q in cands:
            reach.append(reach[-1] | {r + lengths[q] for r in reach[-1] if r + lengths[q] <= room})
            if room in reach[-1]:
                break
        best = max(reach[-1])
        for j in range(len(reach) - 1, 0, -1):
            if best not in reach[j - 1]:
                taken.add(cands[j - 1])
                row[cands[j - 1]] = num_rows
                best -= lengths[cands[j - 1]]
        num_rows += 1
    return row, num_rows


def test_min_slack_rows_matches_reference():
    rng = np.random.default_rng(22)
    for length in (20, 64, 130):
        sizes_P = rng.integers(1, length + 1, 60)
        row_P, n = _k.min_slack_rows(sizes_P, length, 10**9)
        ref_row, ref_n = _reference_min_slack(sizes_P.tolist(), length)
        assert n == ref_n and row_P.tolist() == ref_row
        assert (np.bincount(row_P, weights=sizes_P) <= length).all()
    # It gives up once it cannot beat the target.
    assert _k.min_slack_rows(sizes_P, length, 1)[1] == 1


def test_repair_mixes_lengths_where_best_fit_builds_rows_of_copies():
    # Best fit: 4 + 4 (2 left, no 3 fits), then 3 + 3 + 3 and a lone 3. Optimal: 4 + 3 + 3, twice.
    plan = packing.plan_packing([4, 4, 3, 3, 3, 3], 10, seed=None)
    assert plan.num_rows == plan.lower_bound == 2
    assert _k.obfd(np.array([4, 4, 3, 3, 3, 3]), 10)[2] == 3
    _check_plan(plan, np.array([4, 4, 3, 3, 3, 3]))


def test_repair_closes_nearly_all_of_best_fits_excess_on_small_instances():
    rng = np.random.default_rng(1)
    over = closed = 0
    for _ in range(400):
        sizes_P = rng.integers(3, 15, int(rng.integers(6, 12)))
        row_P, offset_P, n = _k.obfd(sizes_P, 20)
        best = _optimal_rows(sizes_P.tolist(), 20)
        rows, _, m = packing.repair(sizes_P, row_P, offset_P, n, 20)
        assert best <= m <= n and (np.bincount(rows, weights=sizes_P) <= 20).all()
        assert sorted(set(rows.tolist())) == list(range(m))
        over, closed = over + (n > best), closed + (m < n)
    assert over >= 5 and closed >= 0.8 * over


def test_fill_near_lower_bound_on_lognormal_documents():
    lengths_D = _lognormal_docs(np.random.default_rng(9), 20000)
    rows = {}
    for packer, window in [("best_fit", 0), ("best_fit", 10000), ("first_fit", 0), ("concat", 0)]:
        plan = packing.plan_packing(lengths_D, 2048, packer=packer, window=window)
        rows[packer, window] = plan.num_rows
        assert plan.num_tokens == lengths_D.sum()
    lower = packing.plan_packing(lengths_D, 2048).lower_bound
    assert rows["best_fit", 0] <= lower + 1 and rows["concat", 0] == lower
    assert rows["best_fit", 10000] <= lower * 1.001
    assert rows["best_fit", 0] < rows["first_fit", 0]


def test_plan_matches_assignment_when_unshuffled():
    lengths_D = _lognormal_docs(np.random.default_rng(10), 500, median=50)
    plan = packing.plan_packing(lengths_D, 128, seed=None)
    row_P, offset_P, num_rows = packing.best_fit_decreasing(plan.piece_len_P, 128)
    assert plan.num_rows == num_rows == plan.lower_bound  # at the bound: nothing to repair
    np.testing.assert_array_equal(plan.piece_rows(), row_P)
    np.testing.assert_array_equal(plan.piece_offsets(), offset_P)


def test_seed_is_deterministic_and_only_permutes_rows():
    lengths_D = _lognormal_docs(np.random.default_rng(11), 500, median=50)
    for window in (0, 100):
        a, b, c, base = (packing.plan_packing(lengths_D, 128, window=window, seed=s) for s in (5, 5, 6, None))
        for f in ("row_ptr_R1", "row_pieces_P", "piece_doc_P", "piece_start_P"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        assert not np.array_equal(a.piece_rows(), c.piece_rows())
        rows_of = lambda p: sorted(tuple(p.row_pieces_P[p.row_ptr_R1[r]:p.row_ptr_R1[r + 1]]) for r in range(p.num_rows))
        assert rows_of(a) == rows_of(c) == rows_of(base)


def test_save_load_round_trip(tmp_path):
    plan = packing.plan_packing(_lognormal_docs(np.random.default_rng(12), 200, median=50), 128)
    path = tmp_path / "plan.npz.tmp123"  # exactly this name: writers rename it into place
    plan.save(path)
    loaded = packing.Plan.load(path)
    assert loaded.length == 128 and loaded.num_rows == plan.num_rows and loaded.fill == plan.fill
    for f in ("piece_doc_P", "piece_start_P", "piece_len_P", "row_ptr_R1", "row_pieces_P"):
        np.testing.assert_array_equal(getattr(loaded, f), getattr(plan, f))
        assert getattr(loaded, f).dtype == getattr(plan, f).dtype


# ---------------------------------------------------------------- two-dimensional packing
@pytest.mark.parametrize("window", [0, 60])
def test_plan_packing_2d(window):
    rng = np.random.default_rng(14)
    ins = rng.integers(0, 49, size=300)
    tgts = np.clip(ins // 4 + rng.integers(-3, 8, size=300), 0, 16)
    row_ptr_R1, row_pieces_P, in_off_P, tgt_off_P = packing.plan_packing_2d(ins, tgts, 48, 16, window=window)
    assert np.array_equal(np.sort(row_pieces_P), np.arange(300))
    for r in range(len(row_ptr_R1) - 1):
        p = row_pieces_P[row_ptr_R1[r]:row_ptr_R1[r + 1]]
        # Pieces of a row are back to back in both features, in row order, within both lengths.
        np.testing.assert_array_equal(in_off_P[p], np.cumsum(ins[p]) - ins[p])
        np.testing.assert_array_equal(tgt_off_P[p], np.cumsum(tgts[p]) - tgts[p])
        assert ins[p].sum() <= 48 and tgts[p].sum() <= 16
    if window:
        short_P = (ins < 48) & (tgts < 16)  # pieces that fill a budget do not count
        window_P = (np.cumsum(short_P) - short_P) // window
        starts = window_P[row_pieces_P[row_ptr_R1[:-1]]]
        assert (np.diff(starts) >= 0).all()
        assert all(len(set(window_P[row_pieces_P[a:b]])) == 1 for a, b in zip(row_ptr_R1[:-1], row_ptr_R1[1:]))
    else:
        order = np.argsort(-np.maximum(ins * 16, tgts * 48), kind="stable")
        bfd = _k.bfd_2d(ins, tgts, order, 48, 16)
        fill = _k.fill_rows_2d(ins, tgts, 48, 16)
        for got, ref in ((bfd, _reference_bfd_2d(ins.tolist(), tgts.tolist(), 48, 16)),
                         (fill, _reference_fill_rows_2d(ins.tolist(), tgts.tolist(), 48, 16))):
            assert got[3] == ref[3]
            for a, b in zip(got[:3], ref[:3]):
                np.testing.assert_array_equal(a, b)
        assert len(row_ptr_R1) - 1 == min(bfd[3], fill[3])  # the better of the two is kept
        lower = max(-(-ins.sum() // 48), -(-tgts.sum() // 16))
        assert len(row_ptr_R1) - 1 <= lower * 1.1


def test_two_budget_rows_mix_piece_shapes():
    """Input-heavy and target-heavy pieces share rows: 417 rows where best fit in decreasing
    order builds 250 rows of each shape (500), and 400 is the bound."""
    ins, tgts = np.array([32] * 1000 + [15] * 1000), np.array([7] * 1000 + [15] * 1000)
    order = np.argsort(-np.maximum(ins * 61, tgts * 128), kind="stable")
    assert _k.bfd_2d(ins, tgts, order, 128, 61)[3] == 500
    row_ptr_R1, _, _, _ = packing.plan_packing_2d(ins, tgts, 128, 61)
    assert len(row_ptr_R1) - 1 == 417


# ---------------------------------------------------------------- pack_rows (every objective)
def test_pack_rows_is_the_plans_packer_for_one_budget_and_two():
    rng = np.random.default_rng(15)
    lengths_D = _lognormal_docs(rng, 300, median=30)
    for packer, window in (("best_fit", 0), ("first_fit", 0), ("best_fit", 50)):
        plan = packing.plan_packing(lengths_D, 64, packer=packer, window=window, seed=2)
        row_ptr_R1, row_pieces_P = packing.pack_rows(plan.size_PxK, [64], packer=packer,
                                                     window=window, seed=2)
        np.testing.assert_array_equal(row_ptr_R1, plan.row_ptr_R1)
        np.testing.assert_array_equal(row_pieces_P, plan.row_pieces_P)
    ins, tgts = rng.integers(1, 49, size=200), rng.integers(1, 17, size=200)
    expected = packing.plan_packing_2d(ins, tgts, 48, 16, window=40, seed=4)[:2]
    got = packing.pack_rows(np.stack([ins, tgts], 1), [48, 16], window=40, seed=4)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_pack_rows_refuses_what_a_budget_count_cannot_honour():
    with pytest.raises(ValueError, match="2-D best fit only"):
        packing.pack_rows([[1, 1]], [8, 8], packer="first_fit")
    with pytest.raises(ValueError, match="'concat' re-cuts documents"):
        packing.pack_rows([[1]], [8], packer="concat")
    with pytest.raises(ValueError, match=r"need \[P, K\]"):
        packing.pack_rows([[1, 2, 3]], [8, 8, 8])


def test_a_two_budget_plan_reports_each_budgets_fill_and_its_bound():
    ins, tgts = np.array([30, 20, 10]), np.array([4, 8, 8])
    row_ptr_R1, row_pieces_P = packing.pack_rows(np.stack([ins, tgts], 1), [32, 16], seed=None)
    zeros = np.zeros(3, np.int64)
    plan = packing.Plan(np.array([32, 16]), zeros, zeros, ins, np.stack([ins, tgts], 1),
                        row_ptr_R1, row_pieces_P)
    # Inputs need ceil(60 / 32) = 2 rows, targets ceil(20 / 16) = 2: two rows are enough.
    assert (plan.num_rows, plan.lower_bound) == (2, 2)
    np.testing.assert_allclose(plan.fill_K, [60 / 64, 20 / 32])
    assert plan.fill == 80 / 96
    with pytest.raises(ValueError, match="no single length"):
        plan.length


def test_plan_files_build_once_and_round_trip_every_plan_kind(tmp_path):
    from t5x_like.data.plan_files import load_or_build
    plan = packing.plan_packing(np.array([5, 40, 3, 17]), 16, seed=1)
    calls = []
    build = lambda: calls.append(1) or plan  # noqa: E731
    first, built = load_or_build(tmp_path / "p.npz", packing.Plan, build)
    again, built_again = load_or_build(tmp_path / "p.npz", packing.Plan, build)
    assert (built, built_again, calls) == (True, False, [1])
    assert again.length == 16 and isinstance(again.length, int)
    for a, b in zip((first.row_ptr_R1, first.row_pieces_P), (again.row_ptr_R1, again.row_pieces_P)):
        np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temp file left behind
    # A plan written before a field existed loads with the field's default.
    with np.load(tmp_path / "p.npz") as data:
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files
                                          if k not in ("piece_targets_len_P", "piece_cut_P")})
    old = packing.Plan.load(tmp_path / "old.npz")
    assert not old.piece_targets_len_P.any() and len(old.piece_cut_P) == len(plan.piece_len_P)
