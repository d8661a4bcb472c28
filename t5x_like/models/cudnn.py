"""GPU flash attention through cuDNN, with packed segments in cuDNN's own packed layout.

Behind `ops` (attention_impl 'gpu_flash', what 'auto' picks on GPU for bf16/fp16). Why cuDNN and
not a Pallas/Triton kernel: XLA already ships it (no extra dependency), it is what
`jax.nn.dot_product_attention(implementation='cudnn')` runs, and its packed layout takes the
segments directly as per-row lengths and offsets, so no [L, M] mask or bias is ever built.
`jax.nn.dot_product_attention` does not expose the offsets, hence the call into jax's cuDNN
module. A row's segments must be contiguous runs 1, 2, ..., k followed by padding (0), which is
what every packer here produces; at most `max_segments` of them per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention


def unsupported(dtype, head_dim: int) -> str:
    """Why cuDNN flash attention cannot run this call ('' when it can)."""
    if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return f"compute dtype {jnp.dtype(dtype).name} (cuDNN flash needs bfloat16 or float16)"
    if head_dim > 128 or head_dim % 8:
        return f"head_dim {head_dim} (cuDNN flash needs a multiple of 8, at most 128)"
    return ""


def packed_layout(segment_ids_BxL: jax.Array, max_segments: int
                  ) -> tuple[jax.Array, jax.Array]:
    """cuDNN's per-row segment lengths [B, S] and start offsets [B, S + 1], -1 where unused."""
    ids_S = jnp.arange(1, max_segments + 1, dtype=segment_ids_BxL.dtype)
    lengths_BxS = jnp.sum(segment_ids_BxL[:, None, :] == ids_S[None, :, None], axis=-1,
                          dtype=jnp.int32)
    used_B = jnp.sum(lengths_BxS > 0, axis=-1)
    # Segments are contiguous runs 1..k: segment j starts where 1..j-1 end.
    starts_BxS1 = jnp.pad(jnp.cumsum(lengths_BxS, axis=-1), ((0, 0), (1, 0)))
    slot_S1 = jnp.arange(max_segments + 1)
    offsets_BxS1 = jnp.where(slot_S1[None, :] <= used_B[:, None], starts_BxS1, -1)
    return jnp.where(lengths_BxS > 0, lengths_BxS, -1), offsets_BxS1


def attention(q_BxLxHxE: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array,
              q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array, *, causal: bool,
              max_segments: int) -> jax.Array:
    """Grouped-query attention of scaled q within segments; padding rows come out as zeros."""
    q_lengths, q_offsets = packed_layout(q_segment_ids_BxL, max_segments)
    kv_lengths, kv_offsets = packed_layout(kv_segment_ids_BxM, max_segments)
    mask_type = (cudnn_attention.MaskType.PADDING_CAUSAL if causal
                 else cudnn_attention.MaskType.PADDING)
    return cudnn_attention.dot_product_attention(
        q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, q_seqlen=q_lengths, kv_seqlen=kv_lengths,
        q_offsets=q_offsets, kv_offsets=kv_offsets, scale=1.0, mask_type=mask_type,
        qkv_layout="BTNH")
