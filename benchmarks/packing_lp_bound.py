"""How far best fit is from optimal where L2 cannot tell: the cutting-stock LP bound.

Martello-Toth L2 (``packing.lower_bound_rows``) is cheap but can sit below the optimum; the
Gilmore-Gomory linear program (rows as patterns of piece sizes, column generation with a
bounded-knapsack pricing step) is a much tighter bound, and for cutting-stock instances the
optimum is almost always ``ceil(LP)`` or one more. Practical only where pieces take a few
hundred distinct sizes, as in the bootstrap-resampled stdlib set of benchmarks/packing.py;
``--time-limit`` stops it with the (weaker) Farley bound ``LP / best pattern value`` instead.

    python benchmarks/packing_lp_bound.py [--docs 200000] [--lengths 512,2048,8192] [--real]

``--real``: the corpus's own ~718 train documents, not resampled.
"""

from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np
from scipy import optimize, sparse

from t5x_like.data import packing

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from packing import stdlib_lengths  # noqa: E402  (the benchmark's own distribution)


@numba.njit(cache=True)
def best_pattern(value_I, size_I, max_I, capacity):
    """Bounded knapsack: ``(value, count_I)`` of the row pattern worth most at these prices."""
    num = 0
    for i in range(len(size_I)):  # binary splitting of each bounded count
        c, k = max_I[i], 1
        while c > 0:
            num, c, k = num + 1, c - min(k, c), k * 2
    item_J, mult_J = np.empty(num, np.int64), np.empty(num, np.int64)
    j = 0
    for i in range(len(size_I)):
        c, k = max_I[i], 1
        while c > 0:
            item_J[j], mult_J[j] = i, min(k, c)
            j, c, k = j + 1, c - min(k, c), k * 2
    best_C = np.zeros(capacity + 1)
    take_JxC = np.zeros((num, capacity + 1), np.bool_)
    for j in range(num):
        w, v = size_I[item_J[j]] * mult_J[j], value_I[item_J[j]] * mult_J[j]
        if v <= 0 or w > capacity:
            continue
        for c in range(capacity, w - 1, -1):
            if best_C[c - w] + v > best_C[c]:
                best_C[c], take_JxC[j, c] = best_C[c - w] + v, True
    count_I, c = np.zeros(len(size_I), np.int64), capacity
    for j in range(num - 1, -1, -1):
        if take_JxC[j, c]:
            count_I[item_J[j]] += mult_J[j]
            c -= size_I[item_J[j]] * mult_J[j]
    return best_C[capacity], count_I


def lp_bound(len_P: np.ndarray, length: int, time_limit: float) -> tuple[float, bool, int]:
    """``(bound, converged, iterations)``: the LP value (or Farley's bound when stopped early)."""
    full = int((len_P == length).sum())  # a full piece is a row of its own in every packing
    size_I, demand_I = np.unique(len_P[len_P < length], return_counts=True)
    max_I = np.minimum(demand_I, length // size_I)
    columns = [np.eye(len(size_I), dtype=np.int64)[i] * max_I[i] for i in range(len(size_I))]
    start, bound, it = time.perf_counter(), 0.0, 0
    while True:
        it += 1
        a_IxJ = sparse.csc_matrix(np.array(columns).T)
        res = optimize.linprog(np.ones(len(columns)), A_ub=-a_IxJ, b_ub=-demand_I, method="highs")
        value, pattern_I = best_pattern(-res.ineqlin.marginals, size_I, max_I, length)
        bound = max(bound, res.fun / max(value, 1.0))
        if value <= 1 + 1e-9:
            return full + res.fun, True, it
        if time.perf_counter() - start > time_limit:
            return full + bound, False, it
        columns.append(pattern_I)


def main(argv=None) -> int:
    """Best fit's rows against L2 and the LP bound, as a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--lengths", default="512,2048,8192")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds per LP")
    parser.add_argument("--real", action="store_true", help="the real documents, not resampled")
    args = parser.parse_args(argv)
    lengths_D = stdlib_lengths(args.docs, resample=not args.real)
    print("| L | best fit rows | L2 | LP bound | best fit over LP | seconds |")
    print("|---|---|---|---|---|---|")
    for length in (int(x) for x in args.lengths.split(",")):
        _, _, len_P = packing.split_lengths(lengths_D, length)
        rows = packing.plan_packing(lengths_D, length).num_rows
        start = time.perf_counter()
        bound, converged, _ = lp_bound(len_P.astype(np.int64), length, args.time_limit)
        rows_lp = int(np.ceil(bound - 1e-6))
        print(f"| {length:,} | {rows:,} | {packing.lower_bound_rows(len_P[:, None], (length,)):,} | "
              f"{rows_lp:,}{'' if converged else ' (Farley, stopped)'} | "
              f"+{rows - rows_lp:,} (+{100 * (rows - rows_lp) / rows_lp:.4f}%) | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
