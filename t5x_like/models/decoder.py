"""Llama-style decoder-only Transformer (RMSNorm, RoPE, SwiGLU, grouped-query attention).

Packing-aware: attention is causal *and* confined to the token's segment, and RoPE reads the
per-segment positions from the batch. Layers are either stacked along a leading 'layers' axis and
run with `lax.scan` (compile time independent of depth), or kept as a list (per-layer params,
easier to inspect); both compute the same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like.config import ModelConfig
from t5x_like.models.attention import attention_mask, rope_tables
from t5x_like.models.layers import MLP, RMSNorm, Attention, dense, param
from t5x_like.partitioning import constrain

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderBlock(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.attention_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype,
                                      rngs=rngs)
        self.attention = Attention(d_model=cfg.d_model, num_heads=cfg.num_heads,
                                   num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                                   rope_theta=cfg.rope_theta, dtype=dtype,
                                   param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = MLP(d_model=cfg.d_model, mlp_dim=cfg.mlp_dim, activation=cfg.mlp_activation,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x_BxLxD, rope, mask_Bx1xLxL):
        x_BxLxD = x_BxLxD + self.attention(self.attention_norm(x_BxLxD), rope, mask_Bx1xLxL)
        x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))
        return constrain(x_BxLxD, ("batch", "length", "embed"))


class Decoder(nnx.Module):
    """Token embedding -> N decoder blocks -> final norm -> logits over the vocabulary."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        param_dtype = jnp.dtype(cfg.param_dtype)
        self.token_embed = param(rngs, nnx.initializers.normal(0.02), (cfg.vocab_size, cfg.d_model),
                                 ("vocab", "embed"), param_dtype)
        if cfg.scan_layers:
            self.layers = _stacked_blocks(cfg, rngs)
        else:
            self.layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
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
        dtype = jnp.dtype(self.cfg.dtype)
        x_BxLxD = jnp.take(self.token_embed[...], input_tokens_BxL, axis=0).astype(dtype)
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
        mask_Bx1xLxL = attention_mask(segment_ids_BxL, segment_ids_BxL, causal=True)
        if causal_attention_BxL is not None:
            prefix = causal_attention_BxL.astype(bool)
            mask_Bx1xLxL |= (attention_mask(segment_ids_BxL, segment_ids_BxL, causal=False)
                             & (prefix[:, :, None] & prefix[:, None, :])[:, None])
        # Packed positions restart in each segment, so they are always < L.
        rope = rope_tables(positions_BxL, self.cfg.head_dim, self.cfg.rope_theta,
                           max_position=input_tokens_BxL.shape[1])
        x_BxLxD = self._run_layers(x_BxLxD, rope, mask_Bx1xLxL)
        x_BxLxD = self.final_norm(x_BxLxD)
        if self.cfg.tie_embeddings:
            logits_BxLxV = dense(x_BxLxD, self.token_embed[...].astype(dtype).T)
        else:
            logits_BxLxV = dense(x_BxLxD, self.lm_head[...].astype(dtype))
        return constrain(logits_BxLxV.astype(jnp.float32), ("batch", "length", "vocab"))

    def _run_layers(self, x_BxLxD, rope, mask_Bx1xLxL):
        def apply(block, x):
            return block(x, rope, mask_Bx1xLxL)

        policy = _REMAT_POLICIES.get(self.cfg.remat_policy)
        if policy is not None:
            apply = nnx.remat(apply, policy=policy, prevent_cse=not self.cfg.scan_layers)
        if not self.cfg.scan_layers:
            for block in self.layers:
                x_BxLxD = apply(block, x_BxLxD)
            return x_BxLxD
        graphdef, stacked_state = nnx.split(self.layers)

        def body(x, layer_state):
            return apply(nnx.merge(graphdef, layer_state), x), None

        x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, stacked_state)
        return x_BxLxD


def _stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> DecoderBlock:
    """num_layers blocks whose parameters are stacked on a leading 'layers' axis."""
    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> DecoderBlock:
        return DecoderBlock(cfg, rngs=rngs)

    return make(rngs)
