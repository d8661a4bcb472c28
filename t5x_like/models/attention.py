"""Attention maths shared by both architectures: RoPE, packed masks, grouped-query attention.

Shape letters: B batch, L query length, M key length, H query heads, K key/value heads,
G = H // K query heads per key/value head, E head_dim.

`dot_product_attention` has a hand-written backward pass (`jax.custom_vjp`). Autodiff's
backward is mathematically the same, but on XLA:CPU it materialized transposed copies of the
[L, M] probability and score-gradient arrays for the key and value gradients, and reduced
`probs * d_probs` over M. The hand-written one contracts in an order where only the [L, E]
operands need a transpose and takes the softmax correction from `sum(d_out * out)` over E (as
flash attention does). `benchmarks/train_throughput.py` measures the effect (docs/benchmarks.md);
`tests/models/test_attention.py` checks its gradients against autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# A large finite negative rather than -inf: a fully padded row then softmaxes to a uniform (and
# ignored) distribution instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def rope_tables(positions_BxL: jax.Array, head_dim: int, theta: float,
                max_position: int | None = None) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, L, 1, E/2] of the rotary angles, computed once per forward for all layers.

    Positions come from the batch, so they restart at 0 in every packed segment.

    With `max_position`, the angles of positions 0..max_position-1 are a constant table (numpy,
    float32, the same products as the direct formula) that the batch's positions index into, and
    a position outside it gives NaN rather than a silently wrong rotation. Computed directly
    instead, XLA:CPU fuses cos and sin into every consumer and evaluates them once per element of
    q and k, forwards and backwards, heads included (about 5x the cost of the rotation itself).
    """
    half = head_dim // 2
    inv_freq = np.float32(theta) ** (-np.arange(half, dtype=np.float32) / np.float32(half))
    if max_position is None:
        angles_BxLxE2 = positions_BxL[..., None].astype(jnp.float32) * inv_freq
        return jnp.cos(angles_BxLxE2)[:, :, None, :], jnp.sin(angles_BxLxE2)[:, :, None, :]
    angles_PxE2 = np.arange(max_position, dtype=np.float32)[:, None] * inv_freq
    return tuple(
        jnp.take(jnp.asarray(fn(angles_PxE2)), positions_BxL, axis=0, mode="fill",
                 fill_value=np.nan)[:, :, None, :]
        for fn in (np.cos, np.sin))


def apply_rope(x_BxLxNxE: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotary embedding, Hugging Face "rotate-half" layout (first half pairs with second half).

    `tables` is `rope_tables(positions, head_dim, theta)`.
    """
    cos_BxLx1xE2, sin_BxLx1xE2 = tables
    half = x_BxLxNxE.shape[-1] // 2
    x = x_BxLxNxE.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos_BxLx1xE2 - x2 * sin_BxLx1xE2,
                           x2 * cos_BxLx1xE2 + x1 * sin_BxLx1xE2], axis=-1)
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
                          mask_Bx1xLxM: jax.Array, bias_BxHxLxM: jax.Array | None = None,
                          scale: float | None = None) -> jax.Array:
    """Grouped-query attention: each key/value head serves G = H // K query heads.

    Scores are q.k * scale (default head_dim**-0.5; T5 passes 1.0, its scaling lives in the
    query initializer) plus an optional float32 bias (T5's relative positions), then masked.
    Scores and softmax are float32 whatever the compute dtype.
    """
    batch, length, heads, head_dim = q_BxLxHxE.shape
    kv_heads = k_BxMxKxE.shape[2]
    groups = heads // kv_heads
    scale = head_dim ** -0.5 if scale is None else scale
    if scale != 1.0:  # on q (L x E values), not on the scores (L x M)
        q_BxLxHxE = q_BxLxHxE * jnp.asarray(scale, q_BxLxHxE.dtype)
    # Query head h = k * G + g.
    q_BxKxGxLxE = q_BxLxHxE.reshape(batch, length, kv_heads, groups, head_dim).transpose(
        0, 2, 3, 1, 4)
    bias_BxKxGxLxM = None
    if bias_BxHxLxM is not None:
        bias_BxKxGxLxM = bias_BxHxLxM.reshape(bias_BxHxLxM.shape[0], kv_heads, groups,
                                              *bias_BxHxLxM.shape[2:])
    out_BxKxGxLxE = _attention(q_BxKxGxLxE, k_BxMxKxE.transpose(0, 2, 1, 3),
                               v_BxMxKxE.transpose(0, 2, 1, 3), mask_Bx1xLxM[:, :, None],
                               bias_BxKxGxLxM)
    return out_BxKxGxLxE.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def _probs(q_BxKxGxLxE, k_BxKxMxE, mask_Bx1x1xLxM, bias_BxKxGxLxM):
    """Float32 softmax of the masked (and biased) scores."""
    scores = jnp.einsum("bkgle,bkme->bkglm", q_BxKxGxLxE, k_BxKxMxE,
                        preferred_element_type=jnp.float32)
    if bias_BxKxGxLxM is not None:
        scores = scores + bias_BxKxGxLxM.astype(jnp.float32)
    scores = jnp.where(mask_Bx1x1xLxM, scores, MASK_VALUE)
    return jax.nn.softmax(scores, axis=-1)


def _attention_fwd(q, k, v, mask, bias):
    probs = _probs(q, k, mask, bias)
    out = jnp.einsum("bkglm,bkme->bkgle", probs.astype(v.dtype), v)
    return out, (q, k, v, mask, bias, probs, out)


def _contract_to_m_e(a_BxKxGxLxE, b_BxKxGxLxM):
    """sum over g, l of a * b -> [B, K, M, E], with only the small operand `a` transposed.

    XLA:CPU rewrites transpose(dot(a, b)) into dot(b, a), which transposes the large `b`; the
    optimization barrier keeps the dot in this order, so the transpose lands on its [E, M]
    output instead.
    """
    out_BxKxExM = jnp.einsum("bkgle,bkglm->bkem", a_BxKxGxLxE, b_BxKxGxLxM)
    return jax.lax.optimization_barrier(out_BxKxExM).transpose(0, 1, 3, 2)


def _attention_bwd(res, d_out):
    q, k, v, mask, bias, probs, out = res
    d_v = _contract_to_m_e(d_out, probs.astype(v.dtype))
    d_probs = jnp.einsum("bkgle,bkme->bkglm", d_out, v, preferred_element_type=jnp.float32)
    # Softmax backward: d_scores = p * (d_p - sum_m p * d_p), and sum_m p * d_p = sum_e d_o * o.
    row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    # Masked scores are the constant MASK_VALUE: no gradient, even in an all-masked row.
    d_scores = jnp.where(mask, probs * (d_probs - row), 0.0)
    d_bias = None if bias is None else d_scores.astype(bias.dtype)
    d_scores = d_scores.astype(q.dtype)
    d_q = jnp.einsum("bkglm,bkme->bkgle", d_scores, k)
    d_k = _contract_to_m_e(q, d_scores)
    return d_q, d_k.astype(k.dtype), d_v.astype(v.dtype), None, d_bias


@jax.custom_vjp
def _attention(q_BxKxGxLxE, k_BxKxMxE, v_BxKxMxE, mask_Bx1x1xLxM, bias_BxKxGxLxM):
    """softmax(q.k + bias, masked) . v, [B, K, G, L, E]; differentiated by `_attention_bwd`."""
    probs = _probs(q_BxKxGxLxE, k_BxKxMxE, mask_Bx1x1xLxM, bias_BxKxGxLxM)
    return jnp.einsum("bkglm,bkme->bkgle", probs.astype(v_BxKxMxE.dtype), v_BxKxMxE)


_attention.defvjp(_attention_fwd, _attention_bwd)
