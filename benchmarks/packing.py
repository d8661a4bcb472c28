"""Packing benchmark: t5x_like's packers against grain's, rows against the best lower bound.

Three length distributions, rows of each L in ``--lengths`` (512, 2048, 8192):

* ``lognormal``: ``round(exp(normal(log 400, 1.3)))`` clipped to >= 1, N documents
  (shared/specs/packing.md);
* ``stdlib``: the embedded corpus's real document lengths (stdlib train split, default
  tokenizer, ids + 1), bootstrap-resampled to N documents, so only ~700 distinct lengths;
* ``man``: this machine's English man pages (``/usr/share/man/man*/*.gz``), every page once,
  decompressed and tokenized by the same tokenizer: a second real corpus, built offline.

Quality: rows over the best lower bound any packer of the pieces cut at L faces, Martello-Toth
L2 (``packing.lower_bound_rows``: pieces over L/2 need a row each, so it can exceed
``ceil(tokens / L)``); concatenation re-cuts documents anywhere and is held to ``ceil(tokens / L)``.

Speed, two ways. *Plans* (whole corpus): t5x_like's ``plan_packing`` (split + sort + assign +
shuffle + group rows, best of 3, numba compiled beforehand) globally and in windows of 1k, 10k
and 100k short pieces, and its first_fit and concat baselines. *Rows against rows* (the first
``--grain-docs`` documents): plan **plus** building every row's training features with the
row builder training uses (``causal.CausalLMRows``), against iterating grain's FirstFit (16 bins), BestFit (1024 bins) and
ConcatThenSplit over the same documents with ``ReadOptions(num_threads=0)`` (grain's setting
for in-memory sources). grain's fit packers cannot cut, so they get the pieces cut at L.

    python benchmarks/packing.py [--docs 200000] [--lengths 512,2048,8192] [--grain-docs 20000]
                                 [--skip-grain] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import glob
import gzip
import json
import os
import platform
import sys
import time

import numpy as np

from t5x_like.data import causal, packing

MAN_GLOB = "/usr/share/man/man*/*.gz"


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


def _tokenizer():
    from t5x_like.data import tokenizer
    return tokenizer.default_tokenizer(None)


def stdlib_lengths(n: int, seed: int = 0, resample: bool = True) -> np.ndarray:
    """Bootstrap sample of the stdlib corpus's train-split example lengths (ids + 1), or
    (``resample=False``) the real lengths themselves."""
    from t5x_like.data import stdlib_corpus

    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(None))
    with open(paths["train"]) as f:
        texts = [json.loads(line)["text"] for line in f]
    real_D = np.array([len(ids) + 1 for ids in _tokenizer().encode_batch(texts)], np.int64)
    print(f"stdlib: {len(real_D)} train documents, median {int(np.median(real_D))} "
          f"and mean {real_D.mean():.0f} tokens" + (f"; bootstrap-resampled to {n:,}" if resample else ""))
    return np.random.default_rng(seed).choice(real_D, size=n, replace=True) if resample else real_D


def man_lengths() -> np.ndarray | None:
    """Token counts (ids + 1) of every English man page here, or None where there are none."""
    paths = sorted(glob.glob(MAN_GLOB))
    if not paths:
        print(f"man: no pages match {MAN_GLOB} (a minimal image strips them): left out")
        return None
    texts = []
    for path in paths:
        try:
            with gzip.open(path) as f:
                texts.append(f.read().decode("utf-8", "replace"))
        except (OSError, EOFError):
            continue  # a broken page is not a length
    lengths_D = np.array([len(ids) + 1 for ids in _tokenizer().encode_batch(texts)], np.int64)
    print(f"man: {len(lengths_D):,} pages, median {int(np.median(lengths_D))} tokens, "
          f"longest {lengths_D.max():,}, {lengths_D.sum():,} tokens")
    return lengths_D


def _row(dataset, length, packer, window, lengths_D, seconds, rows, truncated) -> dict:
    tokens = int(lengths_D.sum())
    l1 = -(-tokens // length)
    _, _, len_P = packing.split_lengths(lengths_D, length)
    l2 = max(l1, packing.lower_bound_rows(len_P[:, None], (length,)))
    # Concatenation cuts documents anywhere, so the bound for pieces cut at L does not bind it.
    best = l1 if "oncat" in packer else l2
    return {"dataset": dataset, "length": length, "packer": packer, "window": window,
            "docs": len(lengths_D), "docs_per_second": len(lengths_D) / seconds, "rows": int(rows),
            "ceil_tokens_over_L": l1, "l2_bound": l2,
            "rows_over_bound_pct": 100 * (rows - best) / best,
            "fill_pct": 100 * tokens / (rows * length), "truncated_docs": int(truncated)}


def time_plan(dataset, lengths_D, length, packer, window) -> dict:
    """Best of 3 runs of plan_packing (split, sort, assign, shuffle, group rows)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        plan = packing.plan_packing(lengths_D, length, packer=packer, window=window, seed=0)
        best = min(best, time.perf_counter() - start)
    return _row(dataset, length, f"t5x_like {packer} (plan)", window, lengths_D, best,
                plan.num_rows, plan.num_truncated_docs)


def _documents(lengths_D: np.ndarray):
    """Token arrays of the given lengths (document d's tokens all d + 1), one flat buffer."""
    tokens_T = np.repeat(np.arange(1, len(lengths_D) + 1, dtype=np.int32), lengths_D)
    start_D = np.cumsum(lengths_D) - lengths_D
    return tokens_T, start_D


def time_rows(dataset, lengths_D, length, packer) -> dict:
    """Best of 3: plan_packing and the training features of every row (``CausalLMRows``, 256
    rows a call, as batches are read), the work grain's packers do. A document of n positions
    is BOS plus n - 1 ids, so it fills the n positions grain's copy of it fills."""
    tokens_T, start_D = _documents(lengths_D)
    docs = causal.InMemoryDocs([tokens_T[s:s + n - 1] for s, n in zip(start_D, lengths_D)])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        plan = packing.plan_packing(lengths_D, length, packer=packer, seed=0)
        rows = causal.CausalLMRows(docs, plan, bos_id=1, eos_id=2)
        filled = sum(int((rows(np.arange(lo, min(lo + 256, plan.num_rows)))["decoder_segment_ids"] > 0).sum())
                     for lo in range(0, plan.num_rows, 256))
        best = min(best, time.perf_counter() - start)
    assert filled == lengths_D.sum()
    return _row(dataset, length, f"t5x_like {packer} (rows)", 0, lengths_D, best,
                plan.num_rows, plan.num_truncated_docs)


def time_grain(dataset, lengths_D, length, kind) -> dict:
    """One pass over a grain packing dataset of the documents' tokens, reader threads off."""
    import grain
    from grain import experimental as ge

    tokens_T, start_D = _documents(lengths_D)
    if kind == "ConcatThenSplit":
        doc_P, piece_start_P, len_P = np.arange(len(lengths_D)), np.zeros(len(lengths_D), int), lengths_D
    else:  # grain's fit packers cannot cut: give them the pieces
        doc_P, piece_start_P, len_P = packing.split_lengths(lengths_D, length)
    items = [{"tokens": tokens_T[s:s + n]} for s, n in zip(start_D[doc_P] + piece_start_P, len_P)]
    ds = grain.MapDataset.source(items).to_iter_dataset(grain.ReadOptions(num_threads=0))
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
    return _row(dataset, length, f"grain {label}", 0, lengths_D, seconds, rows, truncated)


def _print_table(results: list[dict]) -> None:
    head = ("dataset", "L", "packer", "window", "docs", "docs/s", "rows", "ceil(T/L)", "L2",
            "over bound", "fill", "truncated docs")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in results:
        cells = (r["dataset"], f"{r['length']:,}", r["packer"],
                 f"{r['window']:,}" if r["window"] else "global", f"{r['docs']:,}",
                 f"{r['docs_per_second']:,.0f}", f"{r['rows']:,}", f"{r['ceil_tokens_over_L']:,}",
                 f"{r['l2_bound']:,}", f"+{r['rows_over_bound_pct']:.4f}%", f"{r['fill_pct']:.4f}%",
                 f"{r['truncated_docs']:,} ({100 * r['truncated_docs'] / r['docs']:.1f}%)")
        print("| " + " | ".join(cells) + " |")


def bench(name, lengths_D, length, grain_docs, skip_grain) -> list[dict]:
    """Every packer on one distribution at one row length."""
    out = [time_plan(name, lengths_D, length, "best_fit", w) for w in (0, 1_000, 10_000, 100_000)]
    out += [time_plan(name, lengths_D, length, p, 0) for p in ("first_fit", "concat")]
    sample_D = lengths_D[:grain_docs]
    out += [time_rows(name, sample_D, length, p) for p in ("best_fit", "concat")]
    if not skip_grain:
        out += [time_grain(name, sample_D, length, k) for k in ("FirstFit", "BestFit", "ConcatThenSplit")]
    return out


def main(argv=None) -> int:
    """Run the benchmark, print a table, optionally write the rows as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=200_000, help="documents of the synthetic and stdlib sets")
    parser.add_argument("--lengths", default="512,2048,8192", help="row lengths L, comma-separated")
    parser.add_argument("--grain-docs", type=int, default=20_000,
                        help="rows-against-rows comparisons use the first this many documents")
    parser.add_argument("--skip-grain", action="store_true", help="leave out grain's packers")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"# packing benchmark, {datetime.datetime.now():%Y-%m-%d %H:%M}, {_cpu()}, "
          f"{os.cpu_count()} cores (shared: timings are noisy), Python {sys.version.split()[0]}")
    packing.plan_packing(lognormal_lengths(1000), 512)  # compile the numba kernels
    packing.plan_packing(lognormal_lengths(1000), 512, packer="first_fit")
    datasets = {"lognormal": lognormal_lengths(args.docs), "stdlib": stdlib_lengths(args.docs),
                "man": man_lengths()}
    results = []
    for name, lengths_D in datasets.items():
        for length in (int(x) for x in args.lengths.split(",")):
            if lengths_D is not None:
                results += bench(name, lengths_D, length, args.grain_docs, args.skip_grain)
    print()
    _print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
