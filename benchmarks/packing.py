"""Packing benchmark: speed and quality of t5x_like's packers against grain's.

Two length distributions, N documents each, rows of L tokens:

* ``lognormal``: ``round(exp(normal(log 400, 1.3)))`` clipped to >= 1 (shared/specs/packing.md);
* ``stdlib``: the real document lengths of the embedded corpus (the stdlib train split, default
  tokenizer), bootstrap-resampled to N; a document of n ids packs as n + 1 (input, target) pairs.

For each: t5x_like's ``best_fit`` (OBFD) over everything and in windows of 1k, 10k and 100k
pieces, its ``first_fit`` and ``concat`` baselines, and grain's FirstFit (16 bins), BestFit (1024
bins) and ConcatThenSplit. docs/s and pieces/s use the wall time of the whole packing (ours:
split + sort + assign + row shuffle, best of 3, numba compiled beforehand; grain: iterating the
whole packed dataset once). "pieces" are the documents cut at L, the same count for every packer;
grain's best/first fit get those pieces (they cannot cut), so their truncated documents are the
ones longer than L. Over lower bound = (rows - ceil(tokens / L)) / ceil(tokens / L).

    python benchmarks/packing.py [--docs 200000] [--length 2048] [--grain-docs 50000]
                                 [--skip-grain] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

from t5x_like.data import packing


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def lognormal_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Document lengths with median 400 and sigma 1.3 (log space), at least 1."""
    rng = np.random.default_rng(seed)
    return np.maximum(1, np.round(np.exp(rng.normal(np.log(400), 1.3, n)))).astype(np.int64)


def stdlib_lengths(n: int, seed: int = 0) -> np.ndarray:
    """Bootstrap sample of the stdlib corpus's train-split example lengths (ids + 1)."""
    from t5x_like.data import stdlib_corpus, tokenizer

    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(None))
    tok = tokenizer.default_tokenizer(None)
    with open(paths["train"]) as f:
        texts = [json.loads(line)["text"] for line in f]
    real_D = np.array([len(ids) + 1 for ids in tok.encode_batch(texts)], np.int64)
    print(f"stdlib: {len(real_D)} train documents, median {int(np.median(real_D))} "
          f"and mean {real_D.mean():.0f} tokens; bootstrap-resampled to {n:,}")
    return np.random.default_rng(seed).choice(real_D, size=n, replace=True)


def _row(dataset, packer, window, lengths_D, length, seconds, rows, truncated) -> dict:
    pieces = int((-(-lengths_D // length)).sum())
    tokens = int(lengths_D.sum())
    lower = -(-tokens // length)
    return {"dataset": dataset, "packer": packer, "window": window, "docs": len(lengths_D),
            "docs_per_second": len(lengths_D) / seconds, "pieces_per_second": pieces / seconds,
            "sequences_over_lower_bound_pct": 100 * (rows - lower) / lower,
            "fill_pct": 100 * tokens / (rows * length), "truncated_docs": int(truncated),
            "rows": int(rows), "lower_bound": lower}


def time_ours(dataset: str, lengths_D: np.ndarray, length: int, packer: str, window: int) -> dict:
    """Best of 3 runs of plan_packing (split, sort, assign, shuffle, group rows)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        plan = packing.plan_packing(lengths_D, length, packer=packer, window=window, seed=0)
        best = min(best, time.perf_counter() - start)
    return _row(dataset, f"t5x_like {packer}", window, lengths_D, length, best, plan.num_rows,
                plan.num_truncated_docs)


def time_grain(dataset: str, lengths_D: np.ndarray, length: int, kind: str) -> dict:
    """One pass over a grain packing dataset; documents carry their id + 1 as token values."""
    import grain
    from grain import experimental as ge

    if kind == "ConcatThenSplit":
        doc_P, len_P = np.arange(len(lengths_D)), lengths_D
    else:  # grain's fit packers cannot cut: give them the pieces
        doc_P, _, len_P = packing.split_lengths(lengths_D, length)
    source = grain.MapDataset.source(np.stack([doc_P + 1, len_P], 1))
    ds = source.map(lambda dn: {"tokens": np.full(dn[1], dn[0], np.int32)}).to_iter_dataset()
    lengths = {"tokens": length}
    if kind == "FirstFit":
        ds, label = ge.FirstFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=16), "FirstFit 16 bins"
    elif kind == "BestFit":
        ds, label = ge.BestFitPackIterDataset(ds, length_struct=lengths, num_packing_bins=1024), "BestFit 1024 bins"
    else:
        ds, label = ge.ConcatThenSplitIterDataset(ds, length_struct=lengths), "ConcatThenSplit"
    rows, cut, prev_last = 0, set(), 0
    start = time.perf_counter()
    for row in ds:
        rows += 1
        # ConcatThenSplit emits rows in order: a row that starts with the document the previous
        # row ended with has cut that document.
        first = row["tokens"][0]
        if first and first == prev_last:
            cut.add(int(first))
        prev_last = row["tokens"][-1]
    seconds = time.perf_counter() - start
    truncated = len(cut) if kind == "ConcatThenSplit" else int((lengths_D > length).sum())
    return _row(dataset, f"grain {label}", 0, lengths_D, length, seconds, rows, truncated)


def assignment_rate(lengths_D: np.ndarray, length: int) -> float:
    """Pieces per second of the OBFD assignment step alone (best of 3)."""
    _, _, len_P = packing.split_lengths(lengths_D, length)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        packing.best_fit_decreasing(len_P, length)
        best = min(best, time.perf_counter() - start)
    return len(len_P) / best


def _print_table(results: list[dict]) -> None:
    head = ("dataset", "packer", "window", "docs", "docs/s", "pieces/s", "over LB", "fill", "truncated docs")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        cells = (r["dataset"], r["packer"], f"{r['window']:,}" if r["window"] else "global", f"{r['docs']:,}",
                 f"{r['docs_per_second']:,.0f}", f"{r['pieces_per_second']:,.0f}",
                 f"+{r['sequences_over_lower_bound_pct']:.4f}%", f"{r['fill_pct']:.4f}%",
                 f"{r['truncated_docs']:,} ({100 * r['truncated_docs'] / r['docs']:.1f}%)")
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    """Run the benchmark, print a table, optionally write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000, help="documents per dataset")
    parser.add_argument("--length", type=int, default=2048, help="row length L")
    parser.add_argument("--grain-docs", type=int, default=50_000,
                        help="grain packers see the first this many documents (they run ~3k docs/s)")
    parser.add_argument("--skip-grain", action="store_true", help="leave out grain's packers")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"# packing benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, {_cpu()}, "
          f"{os.cpu_count()} cores (shared: timings are noisy), Python {sys.version.split()[0]}")
    packing.plan_packing(lognormal_lengths(1000), args.length)  # compile the numba kernels
    packing.plan_packing(lognormal_lengths(1000), args.length, packer="first_fit")
    datasets = {"lognormal": lognormal_lengths(args.docs), "stdlib": stdlib_lengths(args.docs)}
    results = []
    for name, lengths_D in datasets.items():
        rate = assignment_rate(lengths_D, args.length)
        print(f"{name}: {len(lengths_D):,} docs, {int(lengths_D.sum()):,} tokens, L = {args.length}; "
              f"OBFD assignment step alone: {rate / 1e6:.1f}M pieces/s")
        for window in (0, 1_000, 10_000, 100_000):
            results.append(time_ours(name, lengths_D, args.length, "best_fit", window))
        results.append(time_ours(name, lengths_D, args.length, "first_fit", 0))
        results.append(time_ours(name, lengths_D, args.length, "concat", 0))
        if not args.skip_grain:
            for kind in ("FirstFit", "BestFit", "ConcatThenSplit"):
                results.append(time_grain(name, lengths_D[: args.grain_docs], args.length, kind))
    print()
    _print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
