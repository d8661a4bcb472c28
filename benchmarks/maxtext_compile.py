"""MaxText's ahead-of-time (AOT) compile memory per TPU chip, to set beside t5x_like's own figures.

    python benchmarks/maxtext_compile.py --maxtext_python=/work/maxtext_venv/bin/python \
        --model=llama3-8b --topology=v5e-256 --batch=1 --seq=8192 [--collectives]
    python benchmarks/maxtext_compile.py --maxtext_python=/work/maxtext_venv/bin/python --table

MaxText lives in its own venv (`pip install "maxtext[tpu]==0.2.5" "jax[tpu]==0.12.0.1"`, Python
3.12); its train_compile runs as a subprocess and compiles the train step for a TPU topology with
libtpu's compiler on this CPU-only host (JAX_PLATFORMS=cpu; ALLOW_MULTIPLE_LIBTPU_LOAD=1 skips the
/tmp/libtpu_lockfile each compile leaves behind, which the next one aborts on). A few lines in that
process wrap its jit_and_compile to print `compiled.memory_analysis()` (and, with --collectives, op
counts from `compiled.as_text()`) as JSON. A step XLA rejects raises RESOURCE_EXHAUSTED, whose
"Used X of Y hbm" (-> total) or "temporaries (X) exceeds available HBM (Y)" (-> temp) is parsed;
one can also compile and still need more than HBM, so "fits" checks the total too. All else is
MaxText's default: adamw, remat_policy=full, attention=autoselected (splash on TPU),
weight_dtype=float32, dtype=bfloat16, scan_layers, FSDP over all chips.
"""

import argparse
import json
import os
import re
import subprocess
import time

DRIVER = r"""
import json, os, re, time
from absl import app
from maxtext.trainers.pre_train import train_compile as tc
_orig = tc.jit_and_compile
def _wrapped(*args, **kwargs):
    t0 = time.time()
    compiled = _orig(*args, **kwargs)
    m = compiled.memory_analysis()
    out = {k: getattr(m, k + "_size_in_bytes") for k in
           ("argument", "output", "alias", "temp", "generated_code")}
    out["compile_s"] = round(time.time() - t0, 1)
    if os.environ.get("MT_COLLECTIVES"):
        text = compiled.as_text()
        ops = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
        out["collectives"] = {op: len(re.findall(r"\s%s(?:-start)?\(" % op, text)) for op in ops}
    print("MT_RESULT " + json.dumps(out), flush=True)
    return compiled
tc.jit_and_compile = _wrapped
app.run(tc.main)
"""

# HBM per chip that XLA:TPU allows (its OOM errors say so); 16 and 95 GiB on paper.
HBM_GIB = {"v5e": 15.75, "v5p": 95.73}
# llama3.2-1b has no MaxText 0.2.5 config: llama3-8b's block, resized to Llama 3.2 1B.
MODELS = {"llama3.2-1b": ["model_name=llama3-8b", "override_model_config=True", "base_emb_dim=2048",
                          "base_num_decoder_layers=16", "base_mlp_dim=8192", "head_dim=64",
                          "logits_via_embedding=True"]}


def maxtext_args(maxtext_python, model, topology, batch, seq, extra=()):
    code = "import maxtext, os; print(os.path.dirname(maxtext.__file__))"
    site = subprocess.check_output([maxtext_python, "-c", code], text=True).strip()
    return [os.path.join(site, "configs", "base.yml"), f"compile_topology={topology}",
            "compile_topology_num_slices=1", *MODELS.get(model, [f"model_name={model}"]),
            f"per_device_batch_size={batch}", f"max_target_length={seq}", "dataset_type=synthetic",
            f"run_name=aot_{model}_{topology}_{batch}_{seq}",
            "base_output_directory=/tmp/maxtext_aot", *extra]


def compile_row(maxtext_python, model, topology, batch, seq, collectives=False, timeout_s=600,
                extra=(), log_dir=None):
    """One MaxText AOT compile; returns per-chip bytes, fit and times (s) as a dict."""
    args = maxtext_args(maxtext_python, model, topology, batch, seq, extra)
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
               **({"MT_COLLECTIVES": "1"} if collectives else {}))
    row = {"model": model, "topology": topology, "batch": batch, "seq": seq, "extra": list(extra)}
    t0 = time.time()
    try:
        proc = subprocess.run([maxtext_python, "-c", DRIVER, *args], env=env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        log, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        log, rc = (e.stdout or b"").decode() + (e.stderr or b"").decode(), "timeout"
    if log_dir:  # wall_s: the whole subprocess; compile_s: lower() + compile() inside it
        name = os.path.join(log_dir, f"{model}_{topology}_b{batch}_s{seq}{'_x' if extra else ''}.log")
        open(name, "w", encoding="utf-8").write(" ".join(args) + "\n" + log)
    hbm = int(HBM_GIB.get(topology.split("-")[0], 0) * 2**30)
    if found := re.search(r"^MT_RESULT (.*)$", log, re.M):
        row.update(r := json.loads(found.group(1)), compiled=True)
        row["total"] = r["argument"] + r["output"] - r["alias"] + r["temp"]  # code size apart
        row["fits"] = not hbm or row["total"] <= hbm
    else:
        used = re.search(r"(Used |temporaries \()([\d.]+)([KMG])\)? (?:of |exceeds available HBM \()"
                         r"([\d.]+)([KMG])", log)
        gb = lambda v, u: int(float(v) * 2 ** {"K": 10, "M": 20, "G": 30}[u])
        row["error"] = "RESOURCE_EXHAUSTED" if "RESOURCE_EXHAUSTED" in log else f"rc={rc}: " + (
            log.strip().splitlines() or [""])[-1][:300]
        if used:
            row["total" if used.group(1) == "Used " else "temp"] = gb(*used.group(2, 3))
            hbm = gb(*used.group(4, 5))
    return {"compiled": False, "fits": False, **row, "hbm": hbm, "wall_s": round(time.time() - t0, 1)}


def fmt(row):
    gib = lambda k: f"{row[k] / 2**30:7.2f}" if k in row else "      -"
    return (f"{row['model']:12} {row['topology']:8} {row['batch']:>3} {row['seq']:>6} "
            f"{gib('argument')} {gib('output')} {gib('alias')} {gib('temp')} {gib('total')} "
            f"{row['hbm'] / 2**30:6.2f} {'yes' if row['fits'] else 'NO':4} "
            f"{row.get('compile_s', '-'):>7} {row['wall_s']:>7}  {row.get('error', '')}"
            f"{json.dumps(row['collectives']) if 'collectives' in row else ''} {' '.join(row['extra'])}")


def table(py, timeout_s, log_dir):
    """The fixed rows, then batch and length sweeps that stop at the first row that does not fit."""
    rows = [("llama3-8b", "v5e-256", 1, 8192, True), ("llama3-8b", "v5e-256", 1, 2048, False),
            ("llama3-8b", "v5p-128", 1, 8192, False), ("llama3.2-1b", "v5e-8", 1, 8192, False)]
    print("model        topology   B    seq  arg_GiB out_GiB alias_G temp_Gi tot_GiB  HBM_G fits "
          "compile    wall", flush=True)
    for model, topo, b, s, coll in rows:
        print(fmt(compile_row(py, model, topo, b, s, coll, timeout_s, log_dir=log_dir)), flush=True)
    sweeps = [("llama3-8b", "v5e-256", [(b, 8192) for b in (2, 3, 4, 8, 16)]),
              ("llama3.2-1b", "v5e-8", [(b, 8192) for b in (2, 3, 4, 8, 16)]),
              ("llama3-8b", "v5e-256", [(1, s) for s in (16384, 24576, 32768, 65536)])]
    for model, topo, points in sweeps:
        for b, s in points:
            r = compile_row(py, model, topo, b, s, False, timeout_s, log_dir=log_dir)
            print(fmt(r), flush=True)
            if not r["fits"] or r["wall_s"] > 480:  # past ~8 minutes a compile, stop the sweep
                break


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maxtext_python", required=True)
    for flag, default in (("--model", "llama3-8b"), ("--topology", "v5e-256"), ("--batch", 1),
                          ("--seq", 8192)):
        p.add_argument(flag, default=default, type=type(default))
    p.add_argument("--collectives", action="store_true", help="count collective ops in the compiled HLO")
    p.add_argument("--table", action="store_true", help="run the fixed rows and sweeps")
    p.add_argument("--timeout_s", type=int, default=600, help="per compile")
    p.add_argument("--log_dir", default=None, help="keep each compile's full log here")
    p.add_argument("extra", nargs="*", help="more MaxText key=value overrides (single row only)")
    a = p.parse_args()
    if a.table:
        return table(a.maxtext_python, a.timeout_s, a.log_dir)
    print(json.dumps(compile_row(a.maxtext_python, a.model, a.topology, a.batch, a.seq,
                                 a.collectives, a.timeout_s, a.extra, a.log_dir), indent=1))


if __name__ == "__main__":
    main()
