"""TPU splash attention (Pallas): packed segments and a causal or full mask, never an [L, M] array.

Behind `ops` (attention_impl 'splash', what 'auto' picks on TPU). The kernel takes one example's
[H, L, E] queries, so it is vmapped over the batch, and it runs per device under `shard_map`
over the active mesh: batch rows split by the 'batch' rule, heads by the 'heads' rule. Off TPU
(tests on CPU) it runs in Pallas interpret mode: the same kernel code, slowly.

Block sizes are one knob (`ModelConfig.attention_block_size`, MaxText's sa_block_* at 512):
the forward's q and kv blocks and the fused backward's, capped at the sequence lengths.
"""

from __future__ import annotations

import functools

import jax
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
                           block_kv_dkv_compute=block_kv, use_fused_bwd_kernel=True)
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
              block_size: int, interpret: bool) -> jax.Array:
    """Grouped-query attention of scaled q; segment 0 (padding) attends only to padding."""
    q_BxHxLxE = q_BxLxHxE.transpose(0, 2, 1, 3)
    k_BxKxMxE, v_BxKxMxE = k_BxMxKxE.transpose(0, 2, 1, 3), v_BxMxKxE.transpose(0, 2, 1, 3)
    local = functools.partial(_local_attention, causal=causal, block_size=block_size,
                              interpret=interpret)
    active = partitioning.active_mesh()
    if active is not None:
        mesh, specs = active, _specs(q_BxHxLxE.shape, k_BxKxMxE.shape)
        local = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=specs[0],
                              check_vma=False)
    out_BxHxLxE = local(q_BxHxLxE, k_BxKxMxE, v_BxKxMxE, q_segment_ids_BxL, kv_segment_ids_BxM)
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
