"""Decoding benchmark: t5x_like's KV-cache greedy decoding against Hugging Face `generate`.

Each model is built once with random weights, exported with `t5x-like`'s Hugging Face writer and
loaded by transformers, so both sides decode the very same float32 weights. Both decode greedily
with their key/value cache, exactly `--new_tokens` tokens per row (no EOS: HF with
`min_new_tokens`, ours with an EOS id no token has), from prompts of `--prompt_len` random tokens
(all rows the same length, so that HF needs no padding). Times are the median of `--repeats`
runs after one warm-up (our compile); tokens/s counts new tokens of all rows. The `same` column
says whether both produced the same tokens (random weights make near-ties, so float rounding
may flip one late in a long decode; it is reported, not required).

The curve (batch 1, --curve new tokens) shows the cost per new token as the decode grows: a
linear cost keeps ms/token flat. For the decoder-only models named in --cache_free it also times
decoding without a cache (the whole decoder over the buffer for every new token, as
`t5x-like generate` did before the cache), whose cost per token grows with the length.

    python benchmarks/generate.py [--models tiny,llama_100m,t5_100m] [--batches 1,8]
        [--new_tokens 128] [--curve 32,64,128,256,512] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def model_config(name: str):
    """Our ModelConfig of configs/models/<name>.gin, unrolled layers, float32."""
    from t5x_like.gin_loader import load_run_config
    return load_run_config([f"models/{name}.gin"]).model


def build(name: str, directory: pathlib.Path):
    """(our Generator, HF model, is seq2seq) sharing one set of random weights."""
    import torch
    import transformers
    from flax import nnx
    from t5x_like.convert import hf
    from t5x_like.generate import Generator
    from t5x_like.models.decoder import Decoder
    from t5x_like.models.encoder_decoder import EncoderDecoder
    cfg = model_config(name)
    seq2seq = cfg.architecture == "encoder_decoder"
    model = (EncoderDecoder if seq2seq else Decoder)(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    hf.export_hf_dir(nnx.to_pure_dict(params), cfg, directory)
    del model, params
    cfg, params = hf.import_hf_dir(directory, scan_layers=cfg.scan_layers)
    auto = (transformers.T5ForConditionalGeneration if seq2seq
            else transformers.LlamaForCausalLM)
    hf_model = auto.from_pretrained(directory, torch_dtype=torch.float32).eval()
    return Generator(params, graphdef, eos_id=-1), hf_model, seq2seq


def time_ours(gen, prompts, new_tokens: int, repeats: int):
    gen.generate(prompts, max_new_tokens=new_tokens)  # compile
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = gen.generate(prompts, max_new_tokens=new_tokens)
        times.append(time.perf_counter() - start)
    return statistics.median(times), [r.tokens for r in out]


def read_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """GB/s at which XLA reads memory here (best of a jitted sum over a float32 array): the
    floor of a batch-1 decode step is its weights' bytes at this rate."""
    import jax
    import jax.numpy as jnp
    x = jnp.ones(megabytes * 2**20 // 4, jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        total(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return x.nbytes / best / 1e9


def time_cache_free(gen, prompts, new_tokens: int, repeats: int) -> float:
    """Greedy decoding that re-runs the decoder over the whole buffer for each new token."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @jax.jit
    def decode(params, tokens_BxT):
        model = nnx.merge(gen.graphdef, params)
        batch, total = tokens_BxT.shape
        ones, positions = jnp.ones_like(tokens_BxT), jnp.broadcast_to(jnp.arange(total),
                                                                      tokens_BxT.shape)

        def body(cursor, tokens):
            logits_BxV = jax.lax.dynamic_index_in_dim(model(tokens, ones, positions),
                                                      cursor - 1, axis=1, keepdims=False)
            token_B = jnp.argmax(logits_BxV, -1).astype(tokens.dtype)
            return jax.lax.dynamic_update_slice(tokens, token_B[:, None], (0, cursor))
        return jax.lax.fori_loop(total - new_tokens, total, body, tokens_BxT)

    prompt = np.asarray(prompts, np.int32)
    buffer = np.concatenate([prompt, np.zeros((len(prompts), new_tokens), np.int32)], 1)
    decode(gen.params, buffer).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode(gen.params, buffer).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_hf(model, prompts, new_tokens: int, repeats: int, seq2seq: bool):
    import torch
    ids = torch.as_tensor(np.asarray(prompts), dtype=torch.long)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  num_beams=1, use_cache=True, pad_token_id=0,
                  attention_mask=torch.ones_like(ids))
    if seq2seq:
        kwargs["decoder_start_token_id"] = 0
    times, out = [], None
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            times.append(time.perf_counter() - start)
    new = out[:, 1:] if seq2seq else out[:, ids.shape[1]:]
    return statistics.median(times), new.tolist()


def run(args) -> list[dict]:
    import torch
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    rows = []
    for name in filter(None, args.models.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            gen, hf_model, seq2seq = build(name, pathlib.Path(tmp))
        vocab = hf_model.config.vocab_size
        cases = [(b, args.new_tokens, "batch") for b in map(int, args.batches.split(","))]
        cases += [(1, n, "curve") for n in map(int, args.curve.split(","))] if args.curve else []
        for batch, new_tokens, kind in cases:
            prompts = rng.integers(2, vocab, (batch, args.prompt_len)).tolist()
            ours_s, ours_tokens = time_ours(gen, prompts, new_tokens, args.repeats)
            hf_s, hf_tokens = time_hf(hf_model, prompts, new_tokens, args.repeats, seq2seq)
            row = dict(model=name, kind=kind, batch=batch, new_tokens=new_tokens,
                       ours_tokens_per_s=batch * new_tokens / ours_s,
                       hf_tokens_per_s=batch * new_tokens / hf_s,
                       ours_ms_per_token=1e3 * ours_s / new_tokens,
                       hf_ms_per_token=1e3 * hf_s / new_tokens,
                       same_tokens=ours_tokens == hf_tokens)
            row["speedup"] = row["ours_tokens_per_s"] / row["hf_tokens_per_s"]
            if kind == "curve" and name in args.cache_free.split(",") and not seq2seq:
                row["no_cache_ms_per_token"] = 1e3 * time_cache_free(
                    gen, prompts, new_tokens, args.repeats) / new_tokens
            rows.append(row)
            print_row(row, header=len(rows) == 1)
    return rows


def print_row(row: dict, header: bool) -> None:
    if header:
        print(f"{'model':<11} {'kind':<5} {'batch':>5} {'new':>4} {'ours tok/s':>10} "
              f"{'HF tok/s':>9} {'ours/HF':>7} {'ours ms/tok':>11} {'HF ms/tok':>9} same "
              f"{'no-cache ms/tok':>15}")
    print(f"{row['model']:<11} {row['kind']:<5} {row['batch']:>5} {row['new_tokens']:>4} "
          f"{row['ours_tokens_per_s']:>10.1f} {row['hf_tokens_per_s']:>9.1f} "
          f"{row['speedup']:>7.2f} {row['ours_ms_per_token']:>11.2f} "
          f"{row['hf_ms_per_token']:>9.2f} {str(row['same_tokens']):>4} "
          f"{row.get('no_cache_ms_per_token', float('nan')):>15.2f}", flush=True)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,llama_100m,t5_100m",
                   help="configs/models/<name>.gin, comma-separated ('' = only the header's "
                        "memory bandwidth)")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--curve", default="32,64,128,256,512",
                   help="new-token counts of the batch-1 cost curve ('' = none)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache_free", default="tiny",
                   help="decoder-only models whose curve also times cache-free decoding")
    p.add_argument("--json", default="", help="also write the rows and the machine here")
    args = p.parse_args(argv)
    import jax
    import torch
    import transformers
    print(f"# {datetime.date.today()} {platform.machine()} {os.cpu_count()} cores, jax "
          f"{jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
          f"; XLA reads memory at {read_bandwidth():.1f} GB/s")
    rows = run(args)
    if args.json:
        meta = dict(date=str(datetime.date.today()), cores=os.cpu_count(),
                    machine=platform.machine(), jax=jax.__version__, torch=torch.__version__,
                    transformers=transformers.__version__, args=vars(args))
        pathlib.Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
