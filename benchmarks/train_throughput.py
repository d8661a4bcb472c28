"""Train-step throughput and MFU: t5x_like vs Hugging Face transformers' PyTorch Llama and T5.

    python benchmarks/train_throughput.py [--configs tiny,llama_100m] [--batch_size 8]
        [--seq_len 256] [--inputs_len 128] [--targets_len 128] [--steps N] [--warmup N]
        [--rounds 3] [--peer_malloc system|retain] [--json PATH]

Decoder-only configs (`tiny`, `llama_100m`, the default) are compared with `LlamaForCausalLM`
at `--seq_len`; encoder-decoder configs (`t5_tiny`, `t5_100m`) with `T5ForConditionalGeneration`
at `--inputs_len` encoder + `--targets_len` decoder tokens per row (128 + 128 by default: the
256 tokens of a decoder row, split as in `configs/runs/ul2_tiny.gin`); `--seq_len` applies only
to decoders, `--inputs_len`/`--targets_len` only to encoder-decoders, so both kinds can share one
`--configs` list. Timed steps per block by default: tiny and t5_tiny 15, llama_100m 3, t5_100m 5;
warm-up steps: tiny and t5_tiny 3, llama_100m and t5_100m 4.
The encoder-decoder comparison (the default `--configs` stays tiny,llama_100m):

    python benchmarks/train_throughput.py --configs t5_tiny,t5_100m --json /tmp/bench_t5.json

Methodology
-----------
* Shapes come from the shipped gin files (`configs/models/<name>.gin`, via the gin loader). The
  t5x_like side builds its train step exactly as `t5x_like.trainer.train` does (partitioner,
  optimizer with clipping, sharded init, AOT `compile_train_step`, donated state), so the number
  measured is the trainer's step: forward, backward, clip-by-global-norm, AdamW, plus its
  bookkeeping (z-loss, accuracy, norms, the non-finite guard).
* The reference is `transformers.LlamaForCausalLM` (float32, `attn_implementation="sdpa"`) with
  the same vocabulary, widths, heads, GQA, RoPE theta, norm epsilon and embedding tying; the
  parameter counts are asserted equal. For encoder-decoder configs it is
  `transformers.T5ForConditionalGeneration` (float32, SDPA with T5's relative-position bias as
  the additive mask; eager attention measured the same on t5_tiny) with the same vocabulary,
  widths, heads, encoder/decoder depths, gated-GELU MLP (`feed_forward_proj='gated-gelu'`),
  position buckets, norm epsilon and an untied `lm_head`
  (the installed transformers ties T5's `lm_head` to the embedding whatever the config says, so
  it gets a parameter of its own, as T5 v1.1 has); parameter counts are asserted equal too.
  The reference step is forward, token cross-entropy on the logits, backward,
  `clip_grad_norm_(1.0)` and `torch.optim.AdamW` (fused CPU kernel when available) with the same
  lr/betas/eps, weight decay on matrices only (as t5x_like masks norm scales).
* Both get the same seeded random tokens ([B, L+1] -> inputs/targets shifted by one, one
  segment per row, every token weighted; encoder-decoder: [B, Li] encoder tokens and [B, Lt]
  targets, decoder inputs = targets shifted right with 0 first, as T5 does), and all cores
  (`torch.set_num_threads(os.cpu_count())`; XLA uses its default thread pool).
* Memory: the t5x_like side runs with glibc's malloc set to keep freed memory, as the `t5x-like`
  command runs (`t5x_like.host_memory`: without it XLA:CPU's per-step temporary buffer is mapped
  and zeroed afresh every step); the reference runs with the system's malloc, as a PyTorch user
  has it, unless `--peer_malloc retain` gives it the same setting.
* Timing: each implementation is built, compiled and run for `--warmup` untimed steps, then one
  block of `--steps` steps is timed. Blocks alternate between the implementations for
  `--rounds` rounds, so a change in machine load hits both alike, and every block runs in a
  fresh process, so XLA's and torch's thread pools never compete (torch's OpenMP workers spin
  after each op). XLA steps are dispatched back to back (as the trainer's loop does) and
  blocked on once; PyTorch on CPU is synchronous. tokens/s per block = steps x B x L / block
  wall time, where an encoder-decoder row counts its encoder and its decoder tokens,
  L = Li + Lt (as the trainer's tokens/s does); each side reports its median block, and the
  min-max.
* MFU = tokens/s x `t5x_like.config.flops_per_token` (6 x matmul params + attention, PaLM
  convention, same number for both; encoder-decoder: `flops_per_token(cfg, Li + Lt, Li)`, a
  row's FLOPs spread over its Li + Lt tokens) / peak. The peak is measured in the same run: the
  best float32 square-matmul FLOP/s of XLA (`metrics.measure_matmul_peak`) and of `torch.mm`, at
  2048 and 4096; the larger of the two is the single denominator for every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from t5x_like import host_memory, optim, state as state_lib, trainer
from t5x_like.config import RunConfig, flops_per_token
from t5x_like.gin_loader import load_run_config
from t5x_like.metrics import measure_matmul_peak

DEFAULT_STEPS = {"tiny": 15, "llama_100m": 3, "t5_tiny": 15, "t5_100m": 5}
PEAK_SIZES = (2048, 4096)
# Untimed steps first: with `host_memory`, a t5x_like process's heap can still be growing (and
# faulting in fresh pages) over its first steps; at 124M two warm-up steps were not always enough.
DEFAULT_WARMUP = {"tiny": 3, "llama_100m": 4, "t5_tiny": 3, "t5_100m": 4}


def warmup_steps(name: str, args) -> int:
    """--warmup, or the config's default when it is -1."""
    return DEFAULT_WARMUP.get(name, 3) if args.warmup < 0 else args.warmup


# ------------------------------------------------------------------------------ shared inputs

def is_encoder_decoder(cfg: RunConfig) -> bool:
    """Whether the config is an encoder-decoder (T5 reference) rather than a decoder (Llama)."""
    return cfg.model.architecture == "encoder_decoder"


def run_config(name: str, args) -> RunConfig:
    """The shipped `configs/models/<name>.gin` with the benchmark's batch and lengths: {'targets':
    seq_len} for a decoder, {'inputs': inputs_len, 'targets': targets_len} for an
    encoder-decoder (with a denoising objective, which such lengths need; it does not enter the
    train step)."""
    cfg = load_run_config([f"models/{name}.gin"])
    train = dataclasses.replace(cfg.train, batch_size=args.batch_size)
    if not is_encoder_decoder(cfg):
        return dataclasses.replace(cfg, train=train, data=dataclasses.replace(
            cfg.data, task_feature_lengths={"targets": args.seq_len}))
    lengths = {"inputs": args.inputs_len, "targets": args.targets_len}
    return dataclasses.replace(
        cfg, train=train, data=dataclasses.replace(cfg.data, task_feature_lengths=lengths),
        objective=dataclasses.replace(cfg.objective, name="span_corruption"))


def _positions(batch_size: int, length: int) -> np.ndarray:
    return np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length)).copy()


def random_batch(cfg: RunConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded batch of random tokens in t5x_like's feature layout (one segment per row, no
    padding): decoder-only rows of L tokens, or encoder-decoder rows of Li inputs and Lt
    targets whose decoder inputs are the targets shifted right (0 first)."""
    rng = np.random.default_rng(seed)
    batch_size, vocab_size = cfg.train.batch_size, cfg.model.vocab_size
    lengths = cfg.data.task_feature_lengths
    if not is_encoder_decoder(cfg):
        seq_len = lengths["targets"]
        tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1)).astype(np.int32)
        ones = np.ones((batch_size, seq_len), np.int32)
        return {
            "decoder_input_tokens": tokens[:, :-1].copy(),
            "decoder_target_tokens": tokens[:, 1:].copy(),
            "decoder_segment_ids": ones,
            "decoder_positions": _positions(batch_size, seq_len),
            "decoder_loss_weights": ones.copy(),
        }
    inputs_len, targets_len = lengths["inputs"], lengths["targets"]
    inputs = rng.integers(0, vocab_size, (batch_size, inputs_len)).astype(np.int32)
    targets = rng.integers(0, vocab_size, (batch_size, targets_len)).astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1)
    return {
        "encoder_input_tokens": inputs,
        "encoder_segment_ids": np.ones((batch_size, inputs_len), np.int32),
        "encoder_positions": _positions(batch_size, inputs_len),
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
        "decoder_segment_ids": np.ones((batch_size, targets_len), np.int32),
        "decoder_positions": _positions(batch_size, targets_len),
        "decoder_loss_weights": np.ones((batch_size, targets_len), np.int32),
    }


def measure_peaks() -> dict[str, float]:
    """Best float32 square-matmul FLOP/s of XLA and of torch.mm on this machine."""
    import torch
    xla = max(measure_matmul_peak(size) for size in PEAK_SIZES)
    best_torch = 0.0
    for size in PEAK_SIZES:
        a = torch.ones(size, size)
        torch.mm(a, a)  # warm-up
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, a)
            best_torch = max(best_torch, 2 * size**3 / (time.perf_counter() - start))
    return {"xla": xla, "torch": best_torch}


# ------------------------------------------------------------------------------ t5x_like

def t5x_like_runner(cfg: RunConfig, batch: dict[str, np.ndarray],
                    compiler_options: dict[str, Any] | None = None) -> tuple[Callable, dict]:
    """Build and AOT-compile the trainer's train step (with XLA `compiler_options`, if given);
    return (run_block(steps) -> seconds, info).

    A block dispatches its steps back to back (as the trainer's loop does) and blocks once.
    """
    partitioner = trainer.default_partitioner(cfg)
    tx, schedule = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    factory = trainer.default_model_factory(cfg)
    holder = {}
    layout = state_lib.state_layout(factory, tx, partitioner)
    holder["state"] = state_lib.init_state(factory, tx, layout, partitioner, cfg.train.seed)
    start = time.perf_counter()
    if compiler_options is None:
        train_step = trainer.compile_train_step(cfg, layout, partitioner, tx, schedule, batch)
    else:
        train_step = trainer.lower_train_step(cfg, layout, partitioner, tx, schedule,
                                              batch).compile(compiler_options)
    info = {"params": state_lib.count_params(holder["state"]["params"]),
            "compile_seconds": time.perf_counter() - start}
    global_batch = partitioner.global_batch(batch)

    def run_block(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            holder["state"], metrics = train_step(holder["state"], global_batch)
        jax.block_until_ready((holder["state"], metrics))
        info["final_loss"] = float(metrics["loss"])
        return time.perf_counter() - start

    return run_block, info


# ------------------------------------------------------------------------------ PyTorch / HF

def hf_model(cfg: RunConfig):
    """`LlamaForCausalLM` (decoder) or `T5ForConditionalGeneration` (encoder-decoder) with
    t5x_like's shapes, float32, SDPA attention."""
    import torch
    if is_encoder_decoder(cfg):
        return hf_t5_model(cfg)
    from transformers import LlamaConfig, LlamaForCausalLM
    m = cfg.model
    hf_cfg = LlamaConfig(
        vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=m.mlp_dim,
        num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads, head_dim=m.head_dim, rope_theta=m.rope_theta,
        rms_norm_eps=m.norm_eps, tie_word_embeddings=m.tie_embeddings,
        max_position_embeddings=max(cfg.data.seq_len, 2048), attention_bias=False,
        mlp_bias=False, hidden_act="silu", use_cache=False)
    torch.manual_seed(cfg.train.seed)
    model = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa",
                                          dtype=torch.float32)
    return model.train()


HF_T5_FEED_FORWARD = {"gelu_tanh": "gated-gelu", "silu": "gated-silu", "relu": "relu"}


def hf_t5_model(cfg: RunConfig):
    """`T5ForConditionalGeneration` with t5x_like's encoder-decoder shapes (T5 v1.1: gated-GELU,
    untied lm_head), float32, SDPA attention (T5's position bias as the additive mask)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    m = cfg.model
    if m.num_kv_heads != m.num_heads:
        raise ValueError(f"T5 has multi-head attention; {m.num_kv_heads=} != {m.num_heads=}")
    hf_cfg = T5Config(
        vocab_size=m.vocab_size, d_model=m.d_model, d_kv=m.head_dim, d_ff=m.mlp_dim,
        num_layers=m.num_encoder_layers or m.num_layers, num_decoder_layers=m.num_layers,
        num_heads=m.num_heads, relative_attention_num_buckets=m.relative_attention_num_buckets,
        relative_attention_max_distance=m.relative_attention_max_distance,
        feed_forward_proj=HF_T5_FEED_FORWARD[m.mlp_activation], layer_norm_epsilon=m.norm_eps,
        tie_word_embeddings=m.tie_embeddings, dropout_rate=0.0, use_cache=False,
        decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(cfg.train.seed)
    model = T5ForConditionalGeneration._from_config(hf_cfg, attn_implementation="sdpa",
                                                    dtype=torch.float32)
    if not m.tie_embeddings and model.lm_head.weight is model.shared.weight:
        # The installed transformers ties T5's lm_head to `shared` whatever the config says
        # (it only drops the d_model**-0.5 logit scale): give it its own weight, as T5 v1.1 has.
        model.lm_head.weight = torch.nn.Parameter(
            torch.randn(m.vocab_size, m.d_model) * m.d_model ** -0.5)
    return model.train()


def hf_optimizer(model, cfg: RunConfig):
    """AdamW with t5x_like's hyper-parameters; decay only on matrices (norm scales excluded)."""
    import torch
    o = cfg.optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    kwargs = dict(lr=o.learning_rate, betas=(o.b1, o.b2), eps=o.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), "fused"
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs), "foreach"


def hf_runner(cfg: RunConfig, batch: dict[str, np.ndarray]) -> tuple[Callable, dict]:
    """The reference's forward + cross-entropy + backward + clipping + AdamW, as a block runner."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(os.cpu_count())
    model = hf_model(cfg)
    optimizer, kind = hf_optimizer(model, cfg)
    info = {"params": sum(p.numel() for p in model.parameters()),
            "model": type(model).__name__, "optimizer": f"torch.optim.AdamW({kind})"}
    tensors = {k: torch.from_numpy(v).long() for k, v in batch.items()}
    if is_encoder_decoder(cfg):  # no attention masks: one unpadded segment per row
        model_inputs = {"input_ids": tensors["encoder_input_tokens"],
                        "decoder_input_ids": tensors["decoder_input_tokens"]}
    else:
        model_inputs = {"input_ids": tensors["decoder_input_tokens"]}
    targets = tensors["decoder_target_tokens"]
    clip = cfg.optimizer.grad_clip_norm

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        logits = model(**model_inputs).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        return loss.item()

    def run_block(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            info["final_loss"] = step()
        return time.perf_counter() - start

    return run_block, info


# ------------------------------------------------------------------------------ report

def make_row(impl: str, name: str, cfg: RunConfig, info: dict[str, Any], block_seconds: list,
             steps: int, peak: float) -> dict[str, Any]:
    """One table/JSON row: median-over-rounds throughput and MFU. An encoder-decoder row counts
    its encoder and decoder tokens (seq_len = inputs_len + targets_len), as the trainer does."""
    tokens = steps * cfg.train.batch_size * cfg.data.seq_len
    seconds = statistics.median(block_seconds)
    tps = tokens / seconds
    inputs_len = cfg.data.task_feature_lengths.get("inputs")
    fpt = flops_per_token(cfg.model, cfg.data.seq_len, inputs_len)
    lengths = ({"inputs_len": inputs_len, "targets_len": cfg.data.task_feature_lengths["targets"]}
               if inputs_len is not None else {})
    return {"implementation": impl, "config": name, "params": info["params"],
            "batch_size": cfg.train.batch_size, "seq_len": cfg.data.seq_len, **lengths,
            "steps": steps, "rounds": len(block_seconds), "tokens_per_second": tps,
            "mfu": tps * fpt / peak,
            "flops_per_token": fpt, "peak_flops": peak, "step_seconds": seconds / steps,
            "block_tokens_per_second": [tokens / s for s in block_seconds],
            **{k: v for k, v in info.items() if k != "params"}}


def time_block(impl: str, name: str, args) -> tuple[float, dict[str, Any]]:
    """Build one implementation, warm it up and time one block of steps (worker process).

    t5x_like runs with malloc set as the `t5x-like` command sets it (`t5x_like.host_memory`),
    before XLA starts its threads; the reference keeps the system's malloc unless
    `--peer_malloc retain` gives it the same setting.
    """
    retained = ((impl == "t5x_like" or args.peer_malloc == "retain")
                and host_memory.retain_freed_memory())
    cfg = run_config(name, args)
    batch = random_batch(cfg, args.seed)
    run_block, info = (t5x_like_runner if impl == "t5x_like" else hf_runner)(cfg, batch)
    info["malloc"] = "retained" if retained else "system"
    if warmup_steps(name, args):
        run_block(warmup_steps(name, args))
    steps = args.steps or DEFAULT_STEPS.get(name, 5)
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = run_block(steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # What malloc costs in the kernel: fresh pages faulted in, and system CPU time.
    info["minor_faults_per_step"] = (after.ru_minflt - before.ru_minflt) / steps
    info["system_seconds_per_step"] = (after.ru_stime - before.ru_stime) / steps
    return seconds, info


def _worker_block(impl: str, name: str, args) -> tuple[float, dict[str, Any]]:
    """`time_block` in a fresh process: XLA's and torch's thread pools never share a process
    (torch's OpenMP workers spin after each op and would steal cores from XLA)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", impl, "--configs", name,
           "--batch_size", str(args.batch_size), "--seq_len", str(args.seq_len),
           "--inputs_len", str(args.inputs_len), "--targets_len", str(args.targets_len),
           "--steps", str(args.steps or DEFAULT_STEPS.get(name, 5)),
           "--warmup", str(warmup_steps(name, args)), "--seed", str(args.seed),
           "--peer_malloc", args.peer_malloc]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["info"]


def benchmark_config(name: str, args, peak: float) -> list[dict[str, Any]]:
    """Both implementations on one config: rounds alternate between them (so drifting machine
    load hits both), each block in its own process; each side reports its median block."""
    cfg = run_config(name, args)
    steps = args.steps or DEFAULT_STEPS.get(name, 5)
    times, infos = {"t5x_like": [], "hf_pytorch": []}, {}
    for _ in range(args.rounds):
        for impl in times:
            seconds, infos[impl] = _worker_block(impl, name, args)
            times[impl].append(seconds)
    assert infos["t5x_like"]["params"] == infos["hf_pytorch"]["params"], (name, infos)
    return [make_row(impl, name, cfg, infos[impl], times[impl], steps, peak) for impl in times]


def print_table(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """A markdown table, plus the t5x_like / hf_pytorch tokens/s ratio per config."""
    print(f"\nmatmul peak (float32): XLA {peaks['xla'] / 1e9:.1f} GFLOP/s, torch "
          f"{peaks['torch'] / 1e9:.1f} GFLOP/s; MFU denominator = max\n")
    tps = {(r["implementation"], r["config"]): r["tokens_per_second"] for r in rows}
    print("| implementation | config | params | batch x seq | steps x rounds | s/step "
          "| tokens/s (median) | tokens/s (min-max) | MFU | ratio t5x_like/hf |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = tps[("t5x_like", r["config"])] / tps[("hf_pytorch", r["config"])]
        spread = r["block_tokens_per_second"]
        row = (f"({r['inputs_len']}+{r['targets_len']})" if "inputs_len" in r
               else str(r["seq_len"]))
        print(f"| {r['implementation']} | {r['config']} | {r['params'] / 1e6:.2f}M | "
              f"{r['batch_size']}x{row} | {r['steps']}x{r['rounds']} | "
              f"{r['step_seconds']:.3f} | {r['tokens_per_second']:,.0f} | "
              f"{min(spread):,.0f}-{max(spread):,.0f} | {100 * r['mfu']:.1f}% | {ratio:.2f} |")
    print("\nmalloc (t5x_like.host_memory; --peer_malloc retain gives the reference the same), "
          "minor page faults and system CPU seconds per step in the last block:")
    for r in rows:
        print(f"  {r['implementation']} {r['config']}: {r['malloc']}, "
              f"{r['minor_faults_per_step']:,.0f} faults, {r['system_seconds_per_step']:.3f} s")
    if any("inputs_len" in r for r in rows):
        print("\nencoder-decoder rows: tokens/row = encoder inputs + decoder targets (Li+Lt), "
              "and tokens/s counts both; FLOPs/token = flops_per_token(cfg, Li+Lt, Li)")


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="tiny,llama_100m",
                   help="comma-separated configs/models/*.gin names: decoders (tiny, "
                        "llama_100m; vs LlamaForCausalLM) or encoder-decoders (t5_tiny, "
                        "t5_100m; vs T5ForConditionalGeneration)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=256, help="row length of decoder configs")
    p.add_argument("--inputs_len", type=int, default=128,
                   help="encoder tokens per row of encoder-decoder configs")
    p.add_argument("--targets_len", type=int, default=128,
                   help="decoder tokens per row of encoder-decoder configs")
    p.add_argument("--steps", type=int, default=0,
                   help=f"timed steps; 0 = per-config default {DEFAULT_STEPS}")
    p.add_argument("--warmup", type=int, default=-1,
                   help=f"untimed steps after compiling; -1 = per-config default {DEFAULT_WARMUP}")
    p.add_argument("--rounds", type=int, default=3,
                   help="timed blocks per implementation, alternating between them")
    p.add_argument("--seed", type=int, default=0, help="seed of the random token batch")
    p.add_argument("--peer_malloc", choices=("system", "retain"), default="system",
                   help="the reference's malloc: the system's as shipped (default), or glibc "
                        "set to retain freed memory as the t5x-like command sets it")
    p.add_argument("--json", default="", help="write the rows as a JSON list here")
    p.add_argument("--_worker", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> list[dict[str, Any]]:
    """Measure the peaks, benchmark every config, print the table and optionally write JSON."""
    args = parse_args(argv)
    if args._worker:
        seconds, info = time_block(args._worker, args.configs, args)
        print(json.dumps({"seconds": seconds, "info": info}))
        return []
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    peaks = measure_peaks()
    peak = max(peaks.values())
    rows = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        rows += benchmark_config(name, args, peak)
        for r in rows[-2:]:
            print(f"{r['implementation']:>10} {name}: {r['tokens_per_second']:,.0f} tokens/s, "
                  f"{r['step_seconds']:.3f} s/step, loss {r['final_loss']:.3f}", flush=True)
    print_table(rows, peaks)
    # Anything else running on the machine skews both sides; the 1-min load average shows it.
    load = (load_before, os.getloadavg()[0])
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s; 1-min load average "
          f"{load[0]:.2f} before, {load[1]:.2f} after, on {os.cpu_count()} CPUs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**r, "peak_flops_xla": peaks["xla"], "peak_flops_torch": peaks["torch"],
                        "load_average": load} for r in rows], f, indent=2)
    return rows


if __name__ == "__main__":
    main()
