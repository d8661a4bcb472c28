"""t5x_like's train step with each XLA:CPU matmul library, side by side in one process.

    python benchmarks/cpu_matmul_ab.py [--configs tiny,llama_100m] [--pairs 10] [--steps 1]

Both variants (`MeshConfig.cpu_matmul`: 'xla', jaxlib's default YNNPACK, and 'onednn') are
compiled in one process from the same seed and batch as `train_throughput.py` builds them, warmed
up, then timed in alternating blocks of `--steps` steps, the order flipping every pair. On a noisy
machine the speed drifts by more than the difference being measured, so the figure to read is
the median of the per-pair ratios: both blocks of a pair run within seconds of each other. Each
pair also reports process CPU seconds per step (user + system), which another tenant's load
does not inflate as it does wall time. Losses must agree to float32 noise: the libraries sum
in different orders.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from t5x_like import host_memory  # noqa: E402  (malloc is set before XLA starts its threads)

LIBRARIES = ("xla", "onednn")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ab_config(name: str, args) -> dict:
    """Both libraries on one config: per-pair wall and CPU ratios (onednn / xla) and losses."""
    import train_throughput as tt
    runners = {}
    for library in LIBRARIES:
        targs = tt.parse_args(["--configs", name, "--cpu_matmul", library])
        cfg = tt.run_config(name, targs)
        runners[library] = tt.t5x_like_runner(cfg, tt.random_batch(cfg, args.seed))
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
    args = p.parse_args(argv)
    host_memory.retain_freed_memory()
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
