"""TPU splash attention (Pallas): packed segments, a causal, full or prefix-LM mask, never an
[L, M] array.

Behind `ops` (attention_impl 'splash', what 'auto' picks on TPU). The kernel takes one example's
[H, L, E] queries, so it is vmapped over the batch, and it runs per device under `shard_map`
over the active mesh: batch rows split by the 'batch' rule, heads by the 'heads' rule. Off TPU
(tests on CPU) it runs in Pallas interpret mode: the same kernel code, slowly.

Block sizes are one knob (`ModelConfig.attention_block_size`, MaxText's sa_block_* at 512):
the forward's q and kv blocks and the backward's, capped at the sequence lengths. The backward
runs dq and dk/dv as two kernels: the fused one writes a dq partial per kv block,
[H, M / block, L, E], which at 16,384 tokens is 4 GiB per chip for Llama-3-8B
(docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import PartitionSpec

from t5x_like import partitioning


def unsupported(q_len: int, kv_len: int, block_size: int) -> str:
    """Why splash cannot run these lengths ('' when it can)."""
    for name, length in (("query", q_len), ("key", kv_len)):
        block = min(block_size, length)
        if length % block or block % 128:
            return (f"{name} length {length} is not a multiple of a 128-aligned block "
                    f"(attention_block_size={block_size})")
    return ""


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, q_len: int, kv_len: int, causal: bool, block_size: int,
            interpret: bool):
    block_q, block_kv = min(block_size, q_len), min(block_size, kv_len)
    blocks = sk.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                           block_q_dkv=block_q, block_kv_dkv=block_kv,
                           block_kv_dkv_compute=block_kv, block_q_dq=block_q,
                           block_kv_dq=block_kv, use_fused_bwd_kernel=False)
    one = sm.CausalMask((q_len, kv_len)) if causal else sm.FullMask((q_len, kv_len))
    return sk.make_splash_mha(sm.MultiHeadMask([one] * heads), block_sizes=blocks,
                              head_shards=1, q_seq_shards=1, interpret=interpret)


def _local_attention(q_BxHxLxE, k_BxKxMxE, v_BxKxMxE, q_segment_ids_BxL, kv_segment_ids_BxM,
                     *, causal: bool, block_size: int, interpret: bool):
    kernel = _kernel(q_BxHxLxE.shape[1], q_BxHxLxE.shape[2], k_BxKxMxE.shape[2], causal,
                     block_size, interpret)
    segments = sk.SegmentIds(q=q_segment_ids_BxL, kv=kv_segment_ids_BxM)
    return jax.vmap(kernel)(q_BxHxLxE, k_BxKxMxE, v_BxKxMxE, segments)


def attention(q_BxLxHxE: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array,
              q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array, *, causal: bool,
              block_size: int, interpret: bool, prefix_BxL: jax.Array | None = None
              ) -> jax.Array:
    """Grouped-query attention of scaled q; segment 0 (padding) attends only to padding.

    `prefix_BxL` (a causal prefix LM; each segment's prefix comes first, as every objective
    builds it) cannot be a splash mask, which is fixed per head while the prefix varies per row.
    It takes two calls instead, each exact for its own queries: prefix queries attend to their
    segment's prefix both ways (a full mask over keys outside the prefix renamed to a segment no
    query has), the others causally. Twice the FLOPs of one causal call; no [L, M] array.
    """
    q_BxHxLxE = q_BxLxHxE.transpose(0, 2, 1, 3)
    k_BxKxMxE, v_BxKxMxE = k_BxMxKxE.transpose(0, 2, 1, 3), v_BxMxKxE.transpose(0, 2, 1, 3)

    def run(kv_segments_BxM, causal):
        local = functools.partial(_local_attention, causal=causal, block_size=block_size,
                                  interpret=interpret)
        active = partitioning.active_mesh()
        if active is not None:
            specs = _specs(q_BxHxLxE.shape, k_BxKxMxE.shape)
            local = jax.shard_map(local, mesh=active, in_specs=specs, out_specs=specs[0],
                                  check_vma=False)
        return local(q_BxHxLxE, k_BxKxMxE, v_BxKxMxE, q_segment_ids_BxL, kv_segments_BxM)

    out_BxHxLxE = run(kv_segment_ids_BxM, causal)
    if prefix_BxL is not None and causal:  # without causality the prefix changes nothing
        prefix_BxL = prefix_BxL.astype(bool)
        outside = jnp.asarray(-1, kv_segment_ids_BxM.dtype)  # segment ids are >= 0
        both_ways_BxHxLxE = run(jnp.where(prefix_BxL, kv_segment_ids_BxM, outside), False)
        out_BxHxLxE = jnp.where(prefix_BxL[:, None, :, None], both_ways_BxHxLxE, out_BxHxLxE)
    return out_BxHxLxE.transpose(0, 2, 1, 3)


def _specs(q_shape, k_shape) -> tuple[PartitionSpec, ...]:
    """Per-device blocks: rows by the 'batch' rule; heads by the 'heads' rule when the key/value
    heads split the same way (else replicated, so each query head keeps its key/value head)."""
    q_spec = partitioning.active_spec(("batch", "heads", "length", "head_dim"), q_shape)
    k_spec = partitioning.active_spec(("batch", "kv_heads", "length", "head_dim"), k_shape)
    if q_spec[1] != k_spec[1]:
        q_spec = PartitionSpec(q_spec[0], None, None, None)
        k_spec = PartitionSpec(k_spec[0], None, None, None)
    rows = PartitionSpec(q_spec[0], None)
    return q_spec, k_spec, k_spec, rows, rows
