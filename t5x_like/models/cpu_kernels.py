"""XLA:CPU kernels: hand-written backward passes and operation orders that measured faster there.

Behind `ops` (attention_impl 'cpu', what 'auto' picks on CPU): accelerators never run this code.
Each piece computes exactly the textbook function (tests/models/test_ops.py checks values and
gradients against the 'xla' reference); what differs is the order XLA:CPU is made to run it in.
The measurements behind each are in docs/benchmarks.md.

- `dense`: autodiff hands XLA dot(d_out, x) then a transpose for a kernel gradient, which XLA:CPU
  lowered as strided stores fused into the elementwise producer (the SwiGLU backward), costing
  more than the matmul behind them. Here the operand that gets transposed is the smaller one.
- `attention`: autodiff's backward materialized transposed copies of the [L, M] probabilities and
  score gradients and reduced probs * d_probs over M; this one transposes only [L, E] operands and
  takes the softmax correction from sum(d_out * out) over E, as flash attention does.
- `qkv` as one stacked matmul and `gate_up` as two matmuls in turn: side by side, small matmuls
  contend for the same cores.
- `rope_tables` from a constant table: computed directly, XLA:CPU fuses cos and sin into every
  consumer and evaluates them once per element of q and k (about 5x the rotation's own cost).

The optimization barriers below keep XLA from re-ordering what was ordered on purpose; they also
block fusions and collective overlap, which is why no accelerator path has them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.models.attention import MASK_VALUE


def _axes(start: int, stop: int) -> tuple[int, ...]:
    return tuple(range(start, stop))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dense(x: jax.Array, kernel: jax.Array, num_in: int = 1) -> jax.Array:
    """x [..., *in] . kernel [*in, *out] -> [..., *out], contracting the `num_in` last axes of x."""
    return jnp.tensordot(x, kernel, axes=(_axes(x.ndim - num_in, x.ndim), _axes(0, num_in)))


def _dense_fwd(x, kernel, num_in):
    return dense(x, kernel, num_in), (x, kernel)


def _dense_bwd(num_in, res, d_out):
    x, kernel = res
    num_out, num_batch = kernel.ndim - num_in, x.ndim - num_in
    d_x = jnp.tensordot(d_out, kernel, axes=(_axes(num_batch, d_out.ndim),
                                             _axes(num_in, kernel.ndim)))
    batch = _axes(0, num_batch)
    if x.size <= d_out.size:
        d_kernel = jnp.tensordot(x, d_out, axes=(batch, batch))
    else:  # [*out, *in], kept in this order by the barrier, then flipped
        d_kernel_t = jax.lax.optimization_barrier(jnp.tensordot(d_out, x, axes=(batch, batch)))
        d_kernel = d_kernel_t.transpose(_axes(num_out, num_out + num_in) + _axes(0, num_out))
    return d_x.astype(x.dtype), d_kernel.astype(kernel.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


def qkv(x_BxLxD, query_DxHxE, key_DxKxE, value_DxKxE):
    """q, k, v from one stacked matmul; query head h = k * G + g sits next to its kv head k."""
    d_model, heads, head_dim = query_DxHxE.shape
    kv_heads = key_DxKxE.shape[1]
    groups = heads // kv_heads
    kernel_DxKxG2xE = jnp.concatenate(
        [query_DxHxE.reshape(d_model, kv_heads, groups, head_dim),
         key_DxKxE[:, :, None], value_DxKxE[:, :, None]], axis=2)
    qkv_BxLxKxG2xE = dense(x_BxLxD, kernel_DxKxG2xE)
    q_BxLxHxE = qkv_BxLxKxG2xE[..., :groups, :].reshape(*x_BxLxD.shape[:-1], heads, head_dim)
    return q_BxLxHxE, qkv_BxLxKxG2xE[..., groups, :], qkv_BxLxKxG2xE[..., groups + 1, :]


def gate_up(x_BxLxD, gate_DxF, up_DxF):
    """The gated MLP's two input matmuls, one after the other (the barrier orders them)."""
    gate_BxLxF = dense(x_BxLxD, gate_DxF)
    x_BxLxD, gate_BxLxF = jax.lax.optimization_barrier((x_BxLxD, gate_BxLxF))
    return gate_BxLxF, dense(x_BxLxD, up_DxF)


def rope_tables(positions_BxL, inv_freq_E2: np.ndarray, scale: float, num_positions: int):
    """cos, sin [B, L, 1, E/2] looked up in a constant table of positions 0..num_positions-1.

    Packed positions restart in every segment, so they stay below the row length; a position
    outside the table is clipped to its last row (the batch builders never produce one).
    """
    angles_PxE2 = np.arange(num_positions, dtype=np.float32)[:, None] * inv_freq_E2
    # cos and sin rounded once from float64 (within an ulp of HF's torch); the scale in float32
    tables = [fn(angles_PxE2.astype(np.float64)).astype(np.float32) * np.float32(scale)
              for fn in (np.cos, np.sin)]
    return tuple(jnp.take(jnp.asarray(t), positions_BxL, axis=0, mode="clip")[:, :, None, :]
                 for t in tables)


# --------------------------------------------------------------------------------------------
# Attention: [B, K, G, L, E] layout (query head h = k * G + g), float32 scores and softmax.
# --------------------------------------------------------------------------------------------
def attention(q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, mask_Bx1xLxM, bias_BxHxLxM=None):
    """Grouped-query softmax(q.k + bias, masked) . v with the hand-written backward pass.

    q is already scaled; the mask is `attention.attention_mask`'s.
    """
    batch, length, heads, head_dim = q_BxLxHxE.shape
    kv_heads = k_BxMxKxE.shape[2]
    groups = heads // kv_heads
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
    barrier keeps the dot in this order, so the transpose lands on its [E, M] output instead.
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
    probs = _probs(q_BxKxGxLxE, k_BxKxMxE, mask_Bx1x1xLxM, bias_BxKxGxLxM)
    return jnp.einsum("bkglm,bkme->bkgle", probs.astype(v_BxKxMxE.dtype), v_BxKxMxE)


_attention.defvjp(_attention_fwd, _attention_bwd)
