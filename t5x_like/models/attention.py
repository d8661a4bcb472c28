"""Attention maths, the reference every kernel in `ops` is tested against: RoPE, packed masks and
grouped-query attention as plain einsums, differentiated by autodiff.

Shape letters: B batch, L query length, M key length, H query heads, K key/value heads,
G = H // K query heads per key/value head (query head h = k * G + g), E head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# A large finite negative rather than -inf: a fully padded row then softmaxes to a uniform (and
# ignored) distribution instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rope_tables(positions_BxL: jax.Array, inv_freq_E2: np.ndarray, scale: float = 1.0
                ) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, L, 1, E/2] of the rotary angles, once per forward for all layers.

    `inv_freq_E2` and `scale` are `rope.rope_frequencies`'. Positions come from the batch, so
    they restart at 0 in every packed segment. The angle is one float32 product, as in HF.
    """
    angles_BxLxE2 = positions_BxL[..., None].astype(jnp.float32) * jnp.asarray(inv_freq_E2)
    cos, sin = jnp.cos(angles_BxLxE2), jnp.sin(angles_BxLxE2)
    if scale != 1.0:  # YaRN's attention factor, on cos and sin as HF applies it
        cos, sin = cos * jnp.float32(scale), sin * jnp.float32(scale)
    return cos[:, :, None, :], sin[:, :, None, :]


def apply_rope(x_BxLxNxE: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary embedding, Hugging Face "rotate-half" layout (first half pairs with second half)."""
    cos_BxLx1xE2, sin_BxLx1xE2 = tables
    half = x_BxLxNxE.shape[-1] // 2
    x = x_BxLxNxE.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos_BxLx1xE2 - x2 * sin_BxLx1xE2,
                           x2 * cos_BxLx1xE2 + x1 * sin_BxLx1xE2], axis=-1)
    return out.astype(x_BxLxNxE.dtype)


def attention_mask(q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array, causal: bool,
                   prefix_BxL: jax.Array | None = None) -> jax.Array:
    """Boolean [B, 1, L, M]: same segment, not padding (segment 0), causal if asked.

    Causality is by index in the row: within a segment index order is position order, and across
    segments the same-segment term already forbids attention. `prefix_BxL` (prefix LM, seqio's
    decoder_causal_attention): flagged positions also attend to each other both ways.
    """
    same = q_segment_ids_BxL[:, :, None] == kv_segment_ids_BxM[:, None, :]
    mask_BxLxM = same & (q_segment_ids_BxL[:, :, None] != 0)
    if causal:
        length, kv_length = q_segment_ids_BxL.shape[1], kv_segment_ids_BxM.shape[1]
        allowed_BxLxM = jnp.tril(jnp.ones((length, kv_length), dtype=bool))[None]
        if prefix_BxL is not None:
            prefix = prefix_BxL.astype(bool)
            allowed_BxLxM = allowed_BxLxM | (prefix[:, :, None] & prefix[:, None, :])
        mask_BxLxM &= allowed_BxLxM
    return mask_BxLxM[:, None, :, :]


def dot_product_attention(q_BxLxHxE: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array,
                          mask_Bx1xLxM: jax.Array, bias_BxHxLxM: jax.Array | None = None
                          ) -> jax.Array:
    """softmax(q.k + bias, masked) . v, q already scaled; float32 scores and softmax."""
    batch, length, heads, head_dim = q_BxLxHxE.shape
    kv_heads = k_BxMxKxE.shape[2]
    q_BxLxKxGxE = q_BxLxHxE.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    scores_BxKxGxLxM = jnp.einsum("blkge,bmke->bkglm", q_BxLxKxGxE, k_BxMxKxE,
                                  preferred_element_type=jnp.float32)
    if bias_BxHxLxM is not None:
        scores_BxKxGxLxM += bias_BxHxLxM.reshape(scores_BxKxGxLxM.shape).astype(jnp.float32)
    scores_BxKxGxLxM = jnp.where(mask_Bx1xLxM[:, :, None], scores_BxKxGxLxM, MASK_VALUE)
    probs_BxKxGxLxM = jax.nn.softmax(scores_BxKxGxLxM, axis=-1).astype(v_BxMxKxE.dtype)
    out_BxLxKxGxE = jnp.einsum("bkglm,bmke->blkge", probs_BxKxGxLxM, v_BxMxKxE)
    return out_BxLxKxGxE.reshape(batch, length, heads, head_dim)
