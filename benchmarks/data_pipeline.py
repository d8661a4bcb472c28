"""Prepared-data pipeline throughput: tokens per second delivered into packed training batches.

Prepares the embedded corpus (the interpreter's standard library) once, plans its packing, then
times the grain iterator that assembles packed ``[batch, length]`` rows by reading pieces from
the ArrayRecord shards, with no prefetch threads (one core does all the work) and with threads.
Also reports the tokenize-and-write rate of ``prepare`` with 1 and with all worker processes,
on ``--repeat`` copies of the corpus so that worker start-up (~1 s) is amortized.

    python benchmarks/data_pipeline.py [--length 2048] [--batch 16] [--batches 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time


from t5x_like.data import causal, pipeline, prepared, stdlib_corpus, tokenizer
from t5x_like.data import rows as rows_lib


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _time_prepare(spec: str, tok, workers: int, root: str) -> dict:
    out = os.path.join(root, f"prep{workers}")
    start = time.perf_counter()
    manifest = prepared.prepare(spec, out, tok, prepared.PrepareOptions(num_workers=workers,
                                                                        progress=False))
    seconds = time.perf_counter() - start
    return {"stage": f"prepare ({workers} worker{'s' * (workers > 1)})",
            "tokens_per_second": manifest["tokens"] / seconds, "seconds": seconds,
            "tokens": manifest["tokens"], "path": out}


def _time_iterator(rows, batch: int, batches: int, prefetch: int) -> dict:
    it = pipeline.make_train_iterator([rows], global_batch_size=batch, seed=0, prefetch=prefetch)
    for _ in range(5):  # warm up readers and threads
        next(it)
    tokens, start = 0, time.perf_counter()
    for _ in range(batches):
        tokens += int(next(it)["decoder_loss_weights"].sum())
    seconds = time.perf_counter() - start
    return {"stage": f"packed batches, prefetch={prefetch}",
            "tokens_per_second": tokens / seconds, "seconds": seconds, "tokens": tokens}


def main(argv=None) -> int:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=8,
                        help="copies of the corpus to prepare, so worker start-up is amortized")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    print(f"# data pipeline benchmark, {datetime.date.today()}, {_cpu()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}")
    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(None))
    tok = tokenizer.default_tokenizer(None)
    results = []
    with tempfile.TemporaryDirectory() as root:
        corpus = os.path.join(root, "corpus.jsonl")
        with open(paths["train"], "rb") as f, open(corpus, "wb") as out:
            text = f.read()
            for _ in range(args.repeat):
                out.write(text)
        results.append(_time_prepare(corpus, tok, 1, root))
        results.append(_time_prepare(corpus, tok, os.cpu_count() or 1, root))
        path = results[0].pop("path")
        results[1].pop("path")
        start = time.perf_counter()
        objective = causal.CausalLM(args.length, tok.bos_id, tok.eos_id)
        rows = rows_lib.open_rows(objective, path, seed=0)
        plan_seconds = time.perf_counter() - start
        results.append({"stage": "plan (best_fit, global)", "seconds": plan_seconds,
                        "tokens": rows.plan.num_tokens,
                        "tokens_per_second": rows.plan.num_tokens / plan_seconds})
        for prefetch in (0, 2):
            results.append(_time_iterator(rows, args.batch, args.batches, prefetch))
    print(f"\ncorpus: the stdlib train split x {args.repeat}, {results[0]['tokens']:,} tokens; "
          f"L = {args.length}, batch {args.batch}, "
          f"{args.batches} batches; fill {100 * rows.plan.fill:.3f}%\n")
    print(f"| {'stage':32} | {'tokens/s':>12} | {'seconds':>8} |")
    print(f"|{'-' * 34}|{'-' * 14}|{'-' * 10}|")
    for r in results:
        print(f"| {r['stage']:32} | {r['tokens_per_second']:12,.0f} | {r['seconds']:8.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
