"""Llama-style decoder-only Transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention).

Packing-aware: attention is causal *and* confined to the token's segment, and RoPE reads the
per-segment positions from the batch. Attention and projections run through `ops.Kernels`; the
layer stack (scanned or unrolled, remat) is `stack`'s.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like.config import ModelConfig
from t5x_like.models import stack
from t5x_like.models.kv_cache import KVCache, token_positions
from t5x_like.models.layers import MLP, RMSNorm, Attention, param
from t5x_like.models.ops import Kernels
from t5x_like.models.rope import rope_frequencies
from t5x_like.partitioning import constrain


class DecoderBlock(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        kernels = Kernels.from_config(cfg)
        self.attention_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype,
                                      rngs=rngs)
        self.attention = Attention(d_model=cfg.d_model, num_heads=cfg.num_heads,
                                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                   dtype=dtype, param_dtype=param_dtype, kernels=kernels,
                                   rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(d_model=cfg.d_model, mlp_dim=cfg.mlp_dim, activation=cfg.mlp_activation,
                       dtype=dtype, param_dtype=param_dtype, kernels=kernels, rngs=rngs)

    def __call__(self, x_BxLxD, rope, segment_ids_BxL, prefix_BxL=None, cache=None):
        """The block's output; with a `cache` (a `kv_cache.LayerView`), (output, its arrays)."""
        attended = self.attention(self.attention_norm(x_BxLxD), rope, segment_ids_BxL,
                                  prefix_BxL, cache)
        out_BxLxD, arrays = attended if cache is not None else (attended, None)
        x_BxLxD = x_BxLxD + out_BxLxD
        x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        return x_BxLxD if cache is None else (x_BxLxD, arrays)


class Decoder(nnx.Module):
    """Token embedding -> N decoder blocks -> final norm -> logits over the vocabulary."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg, self.kernels = cfg, Kernels.from_config(cfg)
        param_dtype = jnp.dtype(cfg.param_dtype)
        self.token_embed = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                                 ("vocab", "embed"), param_dtype)
        self.layers = stack.make_layers(cfg, cfg.num_layers, DecoderBlock, rngs)
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype,
                                  rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, nnx.initializers.variance_scaling(1.0, "fan_in", "normal"),
                                 (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), param_dtype)

    def __call__(self, input_tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
                 positions_BxL: jax.Array, causal_attention_BxL: jax.Array | None = None
                 ) -> jax.Array:
        """Logits [B, L, V] in float32; a row's padding (segment 0) attends to nothing.

        `causal_attention_BxL` (prefix LM, seqio's decoder_causal_attention): positions flagged 1
        also attend bidirectionally to each other within their segment.
        """
        return self.logits(self.hidden(input_tokens_BxL, segment_ids_BxL, positions_BxL,
                                       causal_attention_BxL))

    def hidden(self, input_tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
               positions_BxL: jax.Array, causal_attention_BxL: jax.Array | None = None
               ) -> jax.Array:
        """The final-normed hidden states [B, L, D] that `logits` projects."""
        dtype = jnp.dtype(self.cfg.dtype)
        x_BxLxD = jnp.take(self.token_embed[...], input_tokens_BxL, axis=0).astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        rope = self.kernels.rope(positions_BxL, *rope_frequencies(self.cfg))
        x_BxLxD = stack.run_layers(self.cfg, self.layers, x_BxLxD, rope, segment_ids_BxL,
                                   causal_attention_BxL)
        return self.final_norm(x_BxLxD)

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch: int, length: int) -> KVCache:
        """An empty cache of `length` slots per row (prompt plus new tokens)."""
        cfg = self.cfg
        return KVCache.zeros(num_layers=cfg.num_layers, batch=batch, length=length,
                             kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                             dtype=jnp.dtype(cfg.dtype))

    def extend(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array, cache: KVCache, *,
               prefill: bool, prefix_BxL: jax.Array | None = None
               ) -> tuple[jax.Array, KVCache]:
        """Feed a chunk through the cache: (float32 logits [B, V] of its last token, cache).

        `prefill`: the chunk is a left-padded prompt (segment 0 = padding) into an empty cache,
        attended within itself by the platform's kernel; `prefix_BxL` flags a prefix LM's
        bidirectional part. Otherwise one token per row (L = 1) against every slot. Positions
        count each row's real tokens, so padding shifts nothing.
        """
        positions_BxL = cache.next_positions()[:, None] + token_positions(segment_ids_BxL)
        cache = cache.mark(segment_ids_BxL)
        dtype = jnp.dtype(self.cfg.dtype)
        x_BxLxD = jnp.take(self.token_embed[...], tokens_BxL, axis=0).astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        rope = self.kernels.rope(positions_BxL, *rope_frequencies(self.cfg),
                                 num_positions=cache.length)
        x_BxLxD, cache = stack.run_layers_cached(self.cfg, self.layers, x_BxLxD, cache, prefill,
                                                 rope, segment_ids_BxL, prefix_BxL)
        logits_Bx1xV = self.logits(self.final_norm(x_BxLxD[:, -1:]))
        return logits_Bx1xV[:, 0], cache.advance(tokens_BxL.shape[1])

    def output_kernel(self) -> jax.Array:
        """The [D, V] projection onto the vocabulary, in the compute dtype (the loss may take
        it a slice of columns at a time)."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.cfg.tie_embeddings:
            return self.token_embed[...].astype(dtype).T
        return self.lm_head[...].astype(dtype)

    def logits(self, x_BxLxD: jax.Array, kernel_DxV: jax.Array | None = None) -> jax.Array:
        """Float32 logits [B, L, V] of hidden states, or [B, L, W] for a [D, W] `kernel_DxV`
        slice of `output_kernel()`."""
        kernel_DxV = self.output_kernel() if kernel_DxV is None else kernel_DxV
        logits_BxLxV = self.kernels.dense(x_BxLxD, kernel_DxV)
        return constrain(logits_BxLxV.astype(jnp.float32), ("batch", "length", "vocab"))
