"""How much TrainConfig.loss_chunks changes the gradient in bfloat16 compute.

The loss over `chunks` pieces of the vocabulary (step.py:chunked_loss_sums) computes each
slice of the output kernel's gradient in one matmul, and sums the hidden states' gradient over
the pieces. This prints, for a small decoder in bfloat16, each chunk count's error in the
output kernel's gradient (and in all gradients) against the same model in float32, unchunked:
the rounding that chunking adds beside the rounding bfloat16 already has. Run it on an earlier
checkout to compare another chunking (the step module is all it relies on):

    python benchmarks/loss_chunks.py                 # decoder, untied and tied output kernel
    python benchmarks/loss_chunks.py --attention_impl=cpu --length 512 --chunks 1 8 16
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_like import step
from t5x_like.config import ModelConfig
from t5x_like.models.decoder import Decoder


def random_rows(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, jax.Array]:
    """One document per row, a few padded positions at the end of each."""
    rng = np.random.default_rng(seed)
    used = length - rng.integers(0, 4, rows)
    live = np.arange(length)[None, :] < used[:, None]
    tokens = np.where(live, rng.integers(4, vocab, (rows, length)), 0)
    targets = np.where(live, rng.integers(4, vocab, (rows, length)), 0)
    return {"decoder_input_tokens": tokens, "decoder_target_tokens": targets,
            "decoder_segment_ids": live.astype(np.int32),
            "decoder_positions": np.where(live, np.arange(length)[None, :], 0),
            "decoder_loss_weights": live.astype(np.int32)}


def gradients(cfg: ModelConfig, batch: dict, chunks: int) -> dict:
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    fn = jax.jit(lambda p: step.accumulated_grads(p, graphdef, batch, z_loss=1e-4,
                                                  grad_accum_steps=1, loss_chunks=chunks)[0])
    return fn(nnx.to_pure_dict(params))


def relative_error(ref, got) -> float:
    ref, got = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]) for t in (ref, got))
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--attention_impl", default="xla", help="ModelConfig.attention_impl")
    args = ap.parse_args()
    batch = {k: jnp.asarray(v) for k, v in random_rows(args.rows, args.length,
                                                        args.vocab).items()}
    print(f"decoder d_model 64, vocab {args.vocab}, {args.rows} x {args.length} tokens, "
          f"{args.attention_impl} kernels; "
          "relative L2 error of bfloat16 gradients against float32, unchunked")
    print(f"{'output kernel':<16}{'chunks':>7}{'kernel grad':>13}{'all grads':>11}")
    for tied in (False, True):
        cfg = ModelConfig(vocab_size=args.vocab, d_model=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=128, tie_embeddings=tied,
                          attention_impl=args.attention_impl)
        ref = gradients(dataclasses.replace(cfg, dtype="float32"), batch, 1)
        key = "token_embed" if tied else "lm_head"
        for chunks in args.chunks:
            got = gradients(dataclasses.replace(cfg, dtype="bfloat16"), batch, chunks)
            print(f"{'tied' if tied else 'lm_head':<16}{chunks:>7}"
                  f"{relative_error(ref[key], got[key]):>12.3%}{relative_error(ref, got):>11.3%}")


if __name__ == "__main__":
    main()
