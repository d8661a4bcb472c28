"""One accelerator's train step, kernel by kernel: tokens/s, MFU and peak memory.

    python benchmarks/gpu_step.py [--config llama_1b] [--batch_size 4] [--seq_len 2048]
        [--impls auto,xla] [--remat full] [--dtype bfloat16] [--steps 10] [--warmup 3]
        [--json PATH]

Built for one H100/H200 (the Llama-3.2-1B shapes of configs/models/llama_1b.gin, bf16 compute
over float32 parameters and AdamW moments), it runs anywhere: on CPU, `--config tiny
--seq_len 256 --batch_size 2` checks the script itself. Each `--impls` entry
(ModelConfig.attention_impl; 'auto' is gpu_flash on a GPU) is the trainer's own step, built
as `t5x_like.trainer.train` builds it (`train_throughput.t5x_like_runner`), on the same seeded
random batch (one segment per row). tokens/s = steps x B x L / wall time of a block of steps
dispatched back to back; MFU = tokens/s x flops_per_token / the device's data-sheet bf16 peak;
peak memory is the device allocator's high-water mark (`memory_stats()`, absent on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from t5x_like.config import flops_per_token
from t5x_like.metrics import peak_flops_per_device
from train_throughput import random_batch, run_config, t5x_like_runner


def measure(cfg, args) -> dict:
    """Compile, warm up and time the trainer's step for `cfg`."""
    batch = random_batch(cfg)
    run_block, info = t5x_like_runner(cfg, batch)
    run_block(args.warmup)
    seconds = run_block(args.steps)
    tokens_per_second = args.steps * cfg.train.batch_size * args.seq_len / seconds
    peak, source = peak_flops_per_device(cfg.model.dtype)
    stats = jax.devices()[0].memory_stats() or {}
    return {"attention_impl": cfg.model.attention_impl, "remat": cfg.model.remat_policy,
            "batch": cfg.train.batch_size, "seq_len": args.seq_len,
            "params": info["params"], "compile_s": info["compile_seconds"],
            "step_s": seconds / args.steps, "tokens_per_s": tokens_per_second,
            "mfu": tokens_per_second * flops_per_token(cfg.model, args.seq_len) / peak,
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30, "peak_source": source,
            "final_loss": info["final_loss"], "device": jax.devices()[0].device_kind}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="llama_1b")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--impls", default="auto,xla")
    parser.add_argument("--remat", default="full")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    base = run_config(args.config, argparse.Namespace(batch_size=args.batch_size,
                                                      seq_len=args.seq_len))
    rows = []
    for impl in args.impls.split(","):
        model = dataclasses.replace(base.model, attention_impl=impl, remat_policy=args.remat,
                                    dtype=args.dtype, scan_layers=True)
        rows.append(measure(dataclasses.replace(base, model=model), args))
    print(f"\n{args.config} on {rows[0]['device']}, B={args.batch_size} L={args.seq_len} "
          f"{args.dtype}, remat {args.remat}; MFU peak: {rows[0]['peak_source']}")
    print(f"{'attention_impl':>14} {'tokens/s':>10} {'MFU':>7} {'step s':>8} {'peak GiB':>9} "
          f"{'compile s':>9} {'loss':>7}")
    for r in rows:
        print(f"{r['attention_impl']:>14} {r['tokens_per_s']:>10.0f} {r['mfu']:>7.1%} "
              f"{r['step_s']:>8.3f} {r['peak_gib']:>9.2f} {r['compile_s']:>9.1f} "
              f"{r['final_loss']:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
