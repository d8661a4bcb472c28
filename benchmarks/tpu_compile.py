"""Per-chip memory of the train step on TPU topologies, compiled on this host: t5x_like beside
MaxText, same model shapes, topology, sequence and per-chip batch.

    python benchmarks/tpu_compile.py [--rows main|sweep|t5|all] [--json PATH]
        [--maxtext_python /path/to/maxtext_venv/bin/python]

Ours is `t5x-like compile` (needs the [tpu] extra), one subprocess per row so that each
compile starts with an empty heap: the shipped gin files (runs/llama3_8b_fsdp.gin,
models/llama_1b.gin, models/t5_1_1_xl.gin, models/ul2_20b.gin) with BATCH_SIZE = per-chip
batch x chips, FSDP over every chip, bf16 compute over float32 parameters and AdamW. MaxText's
side (optional; its own Python 3.12 venv, see benchmarks/maxtext_compile.py) runs its
train_compile for the same row. Only the compilers' memory figures are compared: both
compile for the real TPU, but with the libtpu each jax pins, which the table prints.
Sweeps stop at the first row that does not fit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

CHIPS = {"v5e-256": 256, "v5e-8": 8, "v5e-16": 16, "v5p-128": 64, "v5p-256": 128}
GIN = {
    "llama3-8b": ["runs/llama3_8b_fsdp.gin"],
    "llama3.2-1b": ["runs/llama3_8b_fsdp.gin", "models/llama_1b.gin"],
    "t5-1.1-xl": ["runs/llama3_8b_fsdp.gin", "models/t5_1_1_xl.gin"],
    "ul2-20b": ["runs/llama3_8b_fsdp.gin", "models/ul2_20b.gin"],
}
# (model, topology, per-chip batch, length, remat); encoder-decoders split the length in half.
MAIN = [("llama3-8b", "v5e-256", 1, 8192, "full"), ("llama3-8b", "v5e-256", 1, 2048, "full"),
        ("llama3.2-1b", "v5e-8", 1, 8192, "full"), ("llama3-8b", "v5e-256", 1, 8192, "dots"),
        ("llama3-8b", "v5e-256", 1, 8192, "none"), ("llama3-8b", "v5p-128", 1, 8192, "full")]
SWEEP = [[("llama3-8b", "v5e-256", b, 8192, "full") for b in (2, 4)],
         [("llama3.2-1b", "v5e-8", b, 8192, "full") for b in (2, 4)],
         [("llama3-8b", "v5e-256", 1, s, "full") for s in (16384, 32768)]]
T5 = [("t5-1.1-xl", "v5e-16", 8, 1024, "full"), ("ul2-20b", "v5p-128", 2, 1024, "full")]


def ours(model: str, topology: str, batch: int, length: int, remat: str) -> dict:
    """One `t5x-like compile` run; the report's dict, or the OOM message."""
    lengths = ({"targets": length} if not model.startswith(("t5", "ul2"))
               else {"inputs": length // 2, "targets": length // 2})
    flags = [f"--gin.BATCH_SIZE={batch * CHIPS[topology]}",
             f"--gin.TASK_FEATURE_LENGTHS={lengths}", f"--gin.ModelConfig.remat_policy='{remat}'"]
    if "inputs" in lengths:
        flags.append("--gin.ObjectiveConfig.name='span_corruption'")
    cmd = [sys.executable, "-m", "t5x_like.cli", "compile", f"--topology={topology}", "--json",
           *(f"--gin_file={g}" for g in GIN[model]), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(
        os.environ, JAX_PLATFORMS="cpu"))
    row = {"model": model, "topology": topology, "batch": batch, "seq": length, "remat": remat}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            return {**row, "fits": report["hbm_fraction"] <= 1, "compile_s":
                    report["compile_seconds"], **{k: report["memory"][k] for k in (
                        "argument", "temp", "total")}, "collectives": report[
                        "collective_traffic_bytes"], "ideal": (report["ideal_all_gather_bytes"],
                                                               report["ideal_reduce_scatter_bytes"])}
    need = re.search(r"temporaries \(([\d.]+)G\)|Used ([\d.]+)G of", proc.stderr)
    if need:  # the compiler's own figure for what the step would need
        key = "temp" if need.group(1) else "total"
        return {**row, "fits": False, key: float(need.group(1) or need.group(2)) * 2**30,
                "error": "out of HBM"}
    return {**row, "fits": False, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:160]}


def maxtext(python: str, model, topology, batch, length, remat) -> dict:
    sys.path.insert(0, os.path.dirname(__file__))
    import maxtext_compile
    return maxtext_compile.compile_row(python, model, topology, batch, length,
                                       extra=() if remat == "full" else (f"remat_policy={remat}",))


def fmt(side: str, r: dict) -> str:
    gib = lambda k: f"{r[k] / 2**30:8.2f}" if k in r else "       -"  # noqa: E731
    tail = f"{r.get('compile_s', 0):7.0f}" if "compile_s" in r else f"  {r.get('error', '')}"
    return (f"{side:9} {r['model']:12} {r['topology']:8} {r['batch']:>3} {r['seq']:>6} "
            f"{r['remat']:5} {gib('argument')} {gib('temp')} {gib('total')} "
            f"{'yes' if r['fits'] else 'NO':>4} {tail}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="main", choices=("main", "sweep", "t5", "all"))
    parser.add_argument("--maxtext_python", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    groups = {"main": [[r] for r in MAIN], "sweep": SWEEP, "t5": [[r] for r in T5]}
    chosen = [g for name in (("main", "sweep", "t5") if args.rows == "all" else (args.rows,))
              for g in groups[name]]
    print(f"{'side':9} {'model':12} {'topology':8} {'B':>3} {'seq':>6} {'remat':5} "
          f"{'arg GiB':>8} {'temp GiB':>8} {'tot GiB':>8} {'fits':>4} compile s", flush=True)
    results = []
    for group in chosen:
        for row in group:
            r = ours(*row)
            results.append({"side": "t5x_like", **r})
            print(fmt("t5x_like", r), flush=True)
            if args.maxtext_python and not row[0].startswith(("t5", "ul2")):
                m = maxtext(args.maxtext_python, *row)
                results.append({"side": "maxtext", **m, "remat": row[4]})
                print(fmt("maxtext", {**m, "remat": row[4]}), flush=True)
            if not r["fits"]:
                break
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
