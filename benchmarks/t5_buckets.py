"""T5 relative-position buckets of t5x_like against Hugging Face's, over a sweep of configurations.

For every (num_buckets, bidirectional, max_distance) in the sweep it compares the bucket of each
relative position in [-max_distance, max_distance] from ``models/layers.py:_bucket_table``
(exact integers) with ``T5Attention._relative_position_bucket`` (float32 torch, eager; with
``--compile`` also under ``torch.compile``, where a tie makes that matter) and with the numpy
float32 table t5x_like used before c3dc9bd. Each differing position is classed by how close T5's log quotient is to an integer
(float64), which is where a float32 log can land on either side. Needs the ``[hf]`` extra:

    python benchmarks/t5_buckets.py                 # 4-129 buckets: 100,548 configurations
    python benchmarks/t5_buckets.py --max_buckets 48 --compile   # + 577 fresh compiles
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from transformers.models.t5.modeling_t5 import T5Attention

from t5x_like.models.layers import _bucket_table


def float32_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """The table before c3dc9bd: HF's formula in numpy float32."""
    rel = np.arange(-max_distance, max_distance + 1)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        rel = np.abs(rel)
    else:
        rel = -np.minimum(rel, 0)
    exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(rel.astype(np.float32) / np.float32(exact))
                  / np.float32(np.log(max_distance / exact)) * np.float32(num_buckets - exact))
    large = exact + np.where(rel < exact, 0, scaled).astype(np.int64)
    return buckets + np.where(rel < exact, rel, np.minimum(large, num_buckets - 1))


def tie_distance(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """|q - round(q)| / q per position, q the float64 log quotient; inf where no float can err:
    the exact range, and quotients past the last bucket (the cap hides them)."""
    rel = np.arange(-max_distance, max_distance + 1)
    half = num_buckets // 2 if bidirectional else num_buckets
    exact = half // 2
    d = np.abs(rel) if bidirectional else np.maximum(-rel, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.log(d / exact) / math.log(max_distance / exact) * (half - exact)
        open_bucket = (d > exact) & (np.round(q) < half - exact)
        return np.where(open_bucket, np.abs(q - np.round(q)) / q, np.inf)


def compiled(rel: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int):
    """HF's buckets under a fresh torch.compile, specialized to this configuration as a model's
    first compile is (a reused compile turns the ints dynamic and then agrees with eager)."""
    torch._dynamo.reset()
    fn = torch.compile(T5Attention._relative_position_bucket, dynamic=False)
    return fn(torch.as_tensor(rel), bidirectional, num_buckets, max_distance).numpy()


class Tally:
    """Configurations and positions where one evaluation differs from the exact table."""

    def __init__(self, name: str):
        self.name, self.configs, self.positions, self.max_diff, self.max_tie = name, 0, 0, 0, 0.0
        self.examples: list[str] = []

    def add(self, config, rel, exact, other, ties):
        off = exact != other
        if not off.any():
            return
        self.configs += 1
        self.positions += int(off.sum())
        self.max_diff = max(self.max_diff, int(np.abs(exact - other)[off].max()))
        self.max_tie = max(self.max_tie, float(ties[off].max()))
        bidir, nb, md = config
        self.examples.append(f"{nb} {'bidir' if bidir else 'causal'} / {md} at "
                             f"{','.join(str(r) for r in rel[off][:3])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_buckets", type=int, default=4)
    parser.add_argument("--max_buckets", type=int, default=129)
    parser.add_argument("--max_distances", type=int, default=399,
                        help="max distances per bucket count, from the smallest valid one")
    parser.add_argument("--compile", action="store_true",
                        help="also HF under torch.compile, in the configurations with a tie "
                             "(a quotient within 1e-6 of an integer; ~1 s each)")
    parser.add_argument("--list", action="store_true", help="print every configuration off")
    args = parser.parse_args()
    evaluations = {"HF eager": T5Attention._relative_position_bucket, "numpy float32": None}
    tallies = {name: Tally(name) for name in evaluations}
    if args.compile:
        tallies["HF torch.compile"] = Tally("HF torch.compile")
    configs, start = 0, time.perf_counter()
    for num_buckets in range(args.min_buckets, args.max_buckets + 1):
        for bidirectional in (True, False):
            first = num_buckets // 2 + 1
            for max_distance in range(first, first + args.max_distances):
                config = (bidirectional, num_buckets, max_distance)
                rel = np.arange(-max_distance, max_distance + 1)
                exact = _bucket_table(*config)
                ties = tie_distance(*config)
                for name, fn in evaluations.items():
                    other = (float32_table(*config) if fn is None else
                             fn(torch.as_tensor(rel), bidirectional, num_buckets,
                                max_distance).numpy())
                    tallies[name].add(config, rel, exact, other, ties)
                if args.compile and (ties < 1e-6).any():
                    tallies["HF torch.compile"].add(config, rel, exact,
                                                    compiled(rel, *config), ties)
                configs += 1
    print(f"{configs:,} configurations ({args.min_buckets}-{args.max_buckets} buckets, both "
          f"directions, {args.max_distances} max distances each), "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| evaluation | configurations off | positions off | max bucket diff | "
          "max tie distance | first configurations off |")
    print("|---|---|---|---|---|---|")
    for t in tallies.values():
        print(f"| {t.name} | {t.configs:,} | {t.positions:,} | {t.max_diff} | "
              f"{t.max_tie:.3g} | {'; '.join(t.examples[:4]) or '-'} |")
    if args.list:
        for t in tallies.values():
            print(f"\n{t.name}, every configuration off:\n  " + "\n  ".join(t.examples))


if __name__ == "__main__":
    main()
