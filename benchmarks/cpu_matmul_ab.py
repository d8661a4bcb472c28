"""t5x_like's train step with XLA:CPU's matmuls from YNNPACK (jaxlib's default) or from oneDNN.

    python benchmarks/cpu_matmul_ab.py [--configs tiny,llama_100m] [--pairs 10] [--steps 1]
        [--matmuls]

An experiment kept runnable, not a setting: jaxlib 0.10.2 can hand every dot to oneDNN
(ONEDNN_OPTIONS below) and that measured 3-7% faster train steps here, but its oneDNN path
aborts the process in two ways seen so far, so the trainer does not use it (docs/benchmarks.md):
a oneDNN fusion holding more than one dot fails to build when it first runs ("partition compile
failed", then SIGILL; encoder-decoders always have one, and this script refuses them), and
destroying an executable can fail a check in its oneDNN object pool (SIGABRT; seen in a
two-process run). oneDNN executables also cannot enter JAX's persistent compilation cache.

Both variants are compiled in one process from the same seed and batch as `train_throughput.py`
builds them, warmed up, then timed in alternating blocks of `--steps` steps, the order flipping
every pair. On a noisy machine the speed drifts by more than the difference being measured, so
the figure to read is the median of the per-pair ratios: both blocks of a pair run within
seconds of each other. Each pair also reports process CPU seconds per step (user + system),
which another tenant's load does not inflate as it does wall time. Losses must agree to float32
noise: the libraries sum in different orders. `--matmuls` first times single matmuls of the
124M step's shapes with each library (best GFLOP/s over interleaved blocks) and with torch.mm
(in a process of its own: torch brings its own oneDNN and OpenMP, which changed XLA's oneDNN
timings when they shared a process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from t5x_like import host_memory  # noqa: E402  (malloc is set before XLA starts its threads)

LIBRARIES = ("xla", "onednn")
# Every dot becomes a oneDNN fusion; YNNPACK's fusions off (left on, YNNPACK claims the dots).
ONEDNN_OPTIONS = {"xla_cpu_use_onednn": True,
                  "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
                  "xla_cpu_experimental_ynn_fusion_type": ""}
COMPILER_OPTIONS = {"xla": None, "onednn": ONEDNN_OPTIONS}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ab_config(name: str, args) -> dict:
    """Both libraries on one config: per-pair wall and CPU ratios (onednn / xla) and losses."""
    import train_throughput as tt
    runners = {}
    cfg = tt.run_config(name, tt.parse_args(["--configs", name]))
    if tt.is_encoder_decoder(cfg):  # the cross-attention gradients sum into one oneDNN fusion
        raise SystemExit(f"{name}: an encoder-decoder step gives oneDNN a fusion of several "
                         f"dots, which aborts the process; only decoders can be measured")
    for library in LIBRARIES:
        runners[library] = tt.t5x_like_runner(cfg, tt.random_batch(cfg, args.seed),
                                              COMPILER_OPTIONS[library])
        runners[library][0](args.warmup)
    wall = {lib: [] for lib in LIBRARIES}
    cpu = {lib: [] for lib in LIBRARIES}
    for pair in range(args.pairs):
        for library in (LIBRARIES if pair % 2 == 0 else LIBRARIES[::-1]):
            before = _cpu_seconds()
            wall[library].append(runners[library][0](args.steps) / args.steps)
            cpu[library].append((_cpu_seconds() - before) / args.steps)
    ratio = lambda d: [b / a for a, b in zip(d["xla"], d["onednn"])]  # noqa: E731
    return {"config": name, "wall": wall, "cpu": cpu, "wall_ratio": ratio(wall),
            "cpu_ratio": ratio(cpu),
            "loss": {lib: runners[lib][1]["final_loss"] for lib in LIBRARIES}}


# [M, K] x [K, N] float32 matmuls of the 124M decoder's step (M = 2048 tokens): q/k/v, the MLP's
# gate/up and down projections, the output projection, and the transposed shape of a gradient.
MATMUL_SHAPES = ((2048, 768, 1280), (2048, 768, 2048), (2048, 2048, 768), (2048, 768, 32000),
                 (768, 2048, 2048))


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def torch_matmul_rates(repeats: int = 21) -> list[float]:
    """GFLOP/s of torch.mm on MATMUL_SHAPES, best of `repeats` (run in its own process)."""
    import numpy as np
    import torch
    rates = []
    for m, k, n in MATMUL_SHAPES:
        rng = np.random.default_rng(0)
        a, b = (torch.from_numpy(rng.standard_normal(s, np.float32)) for s in ((m, k), (k, n)))
        rates.append(2 * m * k * n / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9)
    return rates


def matmul_rates(repeats: int = 7, rounds: int = 3) -> list[dict]:
    """GFLOP/s of single matmuls: XLA with each library (blocks interleaved, best of all) and
    torch.mm in a separate process (torch's own oneDNN and OpenMP must not share XLA's)."""
    import jax
    import numpy as np
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--_torch_matmuls"],
                         check=True, capture_output=True, text=True).stdout
    torch_rates = json.loads(out.strip().splitlines()[-1])
    rows = []
    for (m, k, n), torch_rate in zip(MATMUL_SHAPES, torch_rates):
        rng = np.random.default_rng(0)
        a, b = (jax.device_put(rng.standard_normal(s, np.float32)) for s in ((m, k), (k, n)))
        lowered = jax.jit(lambda x, y: x @ y).lower(a, b)
        fns = {lib: (lambda c=lowered.compile(COMPILER_OPTIONS[lib]): c(a, b).block_until_ready())
               for lib in LIBRARIES}
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(rounds):
            for name, fn in fns.items():
                best[name] = min(best[name], _best_seconds(fn, repeats))
        rows.append({"shape": (m, k, n), "torch": torch_rate,
                     **{name: 2 * m * k * n / t / 1e9 for name, t in best.items()}})
    return rows


def print_matmuls(rows: list[dict]) -> None:
    """Best GFLOP/s per shape and library."""
    print("\n| [M, K] x [K, N] | XLA (YNNPACK) | XLA (oneDNN) | torch.mm (MKL) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['xla']:.0f} | {r['onednn']:.0f} | {r['torch']:.0f} |")


def print_table(results: list[dict]) -> None:
    """Medians per library, and the median and range of the per-pair ratios."""
    print("\n| config | xla s/step | onednn s/step | onednn/xla wall (median, min-max) "
          "| onednn/xla CPU s (median) | losses xla / onednn |")
    print("|---|---:|---:|---|---:|---|")
    for r in results:
        w = r["wall_ratio"]
        print(f"| {r['config']} | {statistics.median(r['wall']['xla']):.3f} | "
              f"{statistics.median(r['wall']['onednn']):.3f} | {statistics.median(w):.3f} "
              f"({min(w):.2f}-{max(w):.2f}, {len(w)} pairs) | "
              f"{statistics.median(r['cpu_ratio']):.3f} | "
              f"{r['loss']['xla']:.6f} / {r['loss']['onednn']:.6f} |")


def main(argv=None) -> list[dict]:
    """Parse flags, run every config, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,llama_100m")
    p.add_argument("--pairs", type=int, default=10, help="alternating blocks per library")
    p.add_argument("--steps", type=int, default=1, help="steps per block")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per library")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--matmuls", action="store_true",
                   help="also time single matmuls of the 124M shapes (GFLOP/s, best of blocks)")
    p.add_argument("--_torch_matmuls", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._torch_matmuls:
        print(json.dumps(torch_matmul_rates()))
        return []
    host_memory.retain_freed_memory()
    if args.matmuls:
        print_matmuls(matmul_rates())
    results = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        results.append(ab_config(name, args))
        r = results[-1]
        print(f"{name}: per-pair wall ratios onednn/xla "
              f"{[round(x, 3) for x in r['wall_ratio']]}", flush=True)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
