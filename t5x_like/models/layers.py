"""Transformer building blocks in Flax NNX, packing-aware.

Shape letters: B batch, L query length, M key length, D d_model, H query heads, K key/value
heads, G = H // K query heads per key/value head, E head_dim, F mlp_dim, V vocab.

Parameters carry logical axis names ('embed', 'mlp', ...) as metadata; `t5x_like.partitioning`
turns them into shardings. They are created with eager sharding off so that building a model never
needs a mesh: the partitioner shards the jitted initializer's outputs instead.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like.partitioning import constrain

Initializer = Callable[..., jax.Array]
# A large finite negative rather than -inf: a fully padded row then softmaxes to a uniform (and
# ignored) distribution instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], names: Sequence[str],
          dtype: jnp.dtype) -> nnx.Param:
    """A parameter with logical axis names, created unsharded (the partitioner shards it)."""
    value = init(rngs.params(), tuple(shape), dtype)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def fan_in_init(in_axes: int | Sequence[int], out_axes: int | Sequence[int]) -> Initializer:
    """Truncated-normal with variance 1/fan_in, fan_in taken over `in_axes` (multi-dim kernels)."""
    return nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                             in_axis=in_axes, out_axis=out_axes)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale (no mean subtraction, no bias)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",), param_dtype)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(jnp.float32)  # the variance in low precision loses the small values
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...].astype(jnp.float32)).astype(x_BxLxD.dtype)


def apply_rope(x_BxLxNxE: jax.Array, positions_BxL: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, Hugging Face "rotate-half" layout (first half pairs with second half).

    Positions come from the batch, so they restart at 0 in every packed segment.
    """
    half = x_BxLxNxE.shape[-1] // 2
    inv_freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BxLxE2 = positions_BxL[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angles_BxLxE2)[:, :, None, :]
    sin = jnp.sin(angles_BxLxE2)[:, :, None, :]
    x = x_BxLxNxE.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxE.dtype)


def attention_mask(q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array,
                   causal: bool) -> jax.Array:
    """Boolean [B, 1, L, M] mask: same segment, not padding (segment 0), and causal if asked.

    Causality is by index in the row: within a segment index order is position order, and across
    segments the same-segment term already forbids attention.
    """
    same = q_segment_ids_BxL[:, :, None] == kv_segment_ids_BxM[:, None, :]
    mask_BxLxM = same & (q_segment_ids_BxL[:, :, None] != 0)
    if causal:
        length, kv_length = q_segment_ids_BxL.shape[1], kv_segment_ids_BxM.shape[1]
        mask_BxLxM &= jnp.tril(jnp.ones((length, kv_length), dtype=bool))
    return mask_BxLxM[:, None, :, :]


def dot_product_attention(q_BxLxHxE: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array,
                          mask_Bx1xLxM: jax.Array) -> jax.Array:
    """Grouped-query attention: each key/value head serves G = H // K query heads."""
    batch, length, heads, head_dim = q_BxLxHxE.shape
    kv_heads = k_BxMxKxE.shape[2]
    q_BxLxKxGxE = q_BxLxHxE.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("blkge,bmke->bkglm", q_BxLxKxGxE, k_BxMxKxE,
                        preferred_element_type=jnp.float32) * head_dim ** -0.5
    scores = jnp.where(mask_Bx1xLxM[:, :, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_BxMxKxE.dtype)
    out_BxLxKxGxE = jnp.einsum("bkglm,bmke->blkge", probs, v_BxMxKxE)
    return out_BxLxKxGxE.reshape(batch, length, heads, head_dim)


class Attention(nnx.Module):
    """Multi-head self-attention with grouped-query key/value heads and RoPE."""

    def __init__(self, *, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 rope_theta: float, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.rope_theta, self.dtype = rope_theta, dtype
        qkv_init = fan_in_init(0, (1, 2))
        self.query = param(rngs, qkv_init, (d_model, num_heads, head_dim),
                           ("embed", "heads", "head_dim"), param_dtype)
        self.key = param(rngs, qkv_init, (d_model, num_kv_heads, head_dim),
                         ("embed", "kv_heads", "head_dim"), param_dtype)
        self.value = param(rngs, qkv_init, (d_model, num_kv_heads, head_dim),
                           ("embed", "kv_heads", "head_dim"), param_dtype)
        self.out = param(rngs, fan_in_init((0, 1), 2), (num_heads, head_dim, d_model),
                         ("heads", "head_dim", "embed"), param_dtype)

    def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array,
                 mask_Bx1xLxM: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(self.dtype)
        q_BxLxHxE = jnp.einsum("bld,dhe->blhe", x, self.query[...].astype(self.dtype))
        k_BxLxKxE = jnp.einsum("bld,dke->blke", x, self.key[...].astype(self.dtype))
        v_BxLxKxE = jnp.einsum("bld,dke->blke", x, self.value[...].astype(self.dtype))
        q_BxLxHxE = apply_rope(q_BxLxHxE, positions_BxL, self.rope_theta)
        k_BxLxKxE = apply_rope(k_BxLxKxE, positions_BxL, self.rope_theta)
        out_BxLxHxE = dot_product_attention(q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, mask_Bx1xLxM)
        return jnp.einsum("blhe,hed->bld", out_BxLxHxE, self.out[...].astype(self.dtype))


class SwiGLU(nnx.Module):
    """Gated MLP: down(silu(x @ gate) * (x @ up))."""

    def __init__(self, *, d_model: int, mlp_dim: int, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.gate = param(rngs, fan_in_init(0, 1), (d_model, mlp_dim), ("embed", "mlp"),
                          param_dtype)
        self.up = param(rngs, fan_in_init(0, 1), (d_model, mlp_dim), ("embed", "mlp"),
                        param_dtype)
        self.down = param(rngs, fan_in_init(0, 1), (mlp_dim, d_model), ("mlp", "embed"),
                          param_dtype)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x = x_BxLxD.astype(self.dtype)
        gate_BxLxF = x @ self.gate[...].astype(self.dtype)
        up_BxLxF = x @ self.up[...].astype(self.dtype)
        hidden_BxLxF = constrain(jax.nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "mlp"))
        return hidden_BxLxF @ self.down[...].astype(self.dtype)
