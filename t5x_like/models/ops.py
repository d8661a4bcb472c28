"""The kernel seam: every attention and projection of both architectures goes through `Kernels`.

Models call it with segment ids, positions and flags, never with masks, so each kernel builds
what it needs (an [L, M] mask for the reference, segment ids for splash, lengths and offsets for
cuDNN). `ModelConfig.attention_impl` picks the kernel:

  auto       by platform, per call (an AOT compile for a TPU topology on a CPU host is for TPU):
             TPU -> splash, GPU -> gpu_flash, CPU -> cpu; logged once per choice
  xla        `attention.dot_product_attention` and plain `dot_general`s, autodiff: the reference
  cpu        `cpu_kernels`: hand-written backward passes and orders that measured faster on
             XLA:CPU (docs/benchmarks.md)
  splash     `splash`: TPU Pallas splash attention, prefix LM in two calls (interpret mode off
             TPU)
  gpu_flash  `cudnn`: cuDNN flash attention with packed segments

A kernel that cannot serve a call (T5's relative bias, a prefix-LM mask on cuDNN, unaligned
lengths, a dtype) hands it to the reference and the log says why. Every projection's output carries a
`checkpoint_name` (config.CHECKPOINT_NAMES), which is what remat policies select by.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from t5x_like import partitioning
from t5x_like.config import ModelConfig
from t5x_like.models import attention as reference
from t5x_like.models import cpu_kernels, cudnn, splash

log = logging.getLogger(__name__)
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_AUTO = {"tpu": "splash", "cpu": "cpu"} | {p: "gpu_flash" for p in _GPU_PLATFORMS}


@functools.lru_cache(maxsize=None)
def _note(what: str, impl: str, reason: str = "") -> None:
    """Log each kernel choice once per process (a scan traces its body once anyway)."""
    if reason:
        log.warning("%s: %s instead of the configured kernel: %s", what, impl, reason)
    else:
        log.info("%s: %s kernel", what, impl)


@dataclasses.dataclass(frozen=True)
class Kernels:
    """How a model's attention and projections run (static: part of the model's graph)."""

    attention_impl: str = "auto"
    block_size: int = 512  # splash q/kv blocks
    max_segments: int = 64  # cuDNN packed layout: segments per row
    dot_general: Callable = jax.lax.dot_general  # projections' matmul (int8/fp8 go here)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "Kernels":
        return cls(cfg.attention_impl, cfg.attention_block_size, cfg.attention_max_segments)

    def _requested(self) -> str:
        if self.attention_impl != "auto":
            return self.attention_impl
        return _AUTO.get(partitioning.active_platform(), "xla")

    @property
    def cpu_tuned(self) -> bool:
        """Whether projections and RoPE take XLA:CPU's orders (only with the cpu kernel)."""
        return self._requested() == "cpu"

    def _cpu_stacked(self, x_BxLxD: jax.Array) -> bool:
        """Whether the fused CPU projections serve `x`: not for a decode step (one token per
        row), where stacking the kernels costs a copy of them per step and buys nothing."""
        return self.cpu_tuned and x_BxLxD.shape[1] > 1

    # ------------------------------------------------------------------ projections
    def dense(self, x: jax.Array, kernel: jax.Array, num_in: int = 1,
              name: str | None = None) -> jax.Array:
        """x [..., *in] . kernel [*in, *out] -> [..., *out], over the last `num_in` axes of x."""
        if self.cpu_tuned:
            out = cpu_kernels.dense(x, kernel, num_in)
        else:
            contract = (tuple(range(x.ndim - num_in, x.ndim)), tuple(range(num_in)))
            out = self.dot_general(x, kernel, (contract, ((), ())))
        return out if name is None else checkpoint_name(out, name)

    def qkv(self, x_BxLxD, query_DxHxE, key_DxKxE, value_DxKxE):
        """Query, key and value projections."""
        if self._cpu_stacked(x_BxLxD):
            q, k, v = cpu_kernels.qkv(x_BxLxD, query_DxHxE, key_DxKxE, value_DxKxE)
            return tuple(checkpoint_name(t, n) for t, n in
                         zip((q, k, v), ("query_proj", "key_proj", "value_proj")))
        return (self.dense(x_BxLxD, query_DxHxE, name="query_proj"),
                self.dense(x_BxLxD, key_DxKxE, name="key_proj"),
                self.dense(x_BxLxD, value_DxKxE, name="value_proj"))

    def gate_up(self, x_BxLxD, gate_DxF, up_DxF):
        """The gated MLP's two input projections."""
        if self._cpu_stacked(x_BxLxD):
            gate, up = cpu_kernels.gate_up(x_BxLxD, gate_DxF, up_DxF)
            return checkpoint_name(gate, "mlp_gate"), checkpoint_name(up, "mlp_up")
        return (self.dense(x_BxLxD, gate_DxF, name="mlp_gate"),
                self.dense(x_BxLxD, up_DxF, name="mlp_up"))

    def rope(self, positions_BxL: jax.Array, inv_freq_E2: np.ndarray, scale: float = 1.0,
             num_positions: int | None = None):
        """cos, sin [B, L, 1, E/2] for `attention.apply_rope`, of `rope.rope_frequencies`.

        `num_positions` bounds the positions (default L, a packed row's; a decode step's
        position can reach its cache length)."""
        if self.cpu_tuned:
            return cpu_kernels.rope_tables(positions_BxL, inv_freq_E2, scale,
                                           num_positions or positions_BxL.shape[1])
        return reference.rope_tables(positions_BxL, inv_freq_E2, scale)

    # ------------------------------------------------------------------ attention
    def attention(self, q_BxLxHxE: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array, *,
                  q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array, causal: bool,
                  prefix_BxL: jax.Array | None = None, bias_BxHxLxM: jax.Array | None = None,
                  scale: float | None = None, what: str = "attention") -> jax.Array:
        """Grouped-query attention within packed segments; padding (segment 0) is ignored.

        Scores are q.k * scale (default head_dim**-0.5; T5 passes 1.0) plus an optional float32
        bias, masked causally if asked and, with `prefix_BxL`, bidirectionally over the prefix.
        """
        head_dim = q_BxLxHxE.shape[-1]
        scale = head_dim ** -0.5 if scale is None else scale
        if scale != 1.0:  # on q (L x E values), not on the scores (L x M)
            q_BxLxHxE = q_BxLxHxE * jnp.asarray(scale, q_BxLxHxE.dtype)
        impl, reason = self._attention_impl(q_BxLxHxE, k_BxMxKxE, prefix_BxL, bias_BxHxLxM)
        _note(what, impl, reason)
        if impl == "splash":
            out = splash.attention(q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, q_segment_ids_BxL,
                                   kv_segment_ids_BxM, causal=causal,
                                   block_size=self.block_size, prefix_BxL=prefix_BxL,
                                   interpret=partitioning.active_platform() != "tpu")
        elif impl == "gpu_flash":
            out = cudnn.attention(q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, q_segment_ids_BxL,
                                  kv_segment_ids_BxM, causal=causal,
                                  max_segments=self.max_segments)
        else:
            mask = reference.attention_mask(q_segment_ids_BxL, kv_segment_ids_BxM, causal,
                                            prefix_BxL)
            fn = cpu_kernels.attention if impl == "cpu" else reference.dot_product_attention
            out = fn(q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, mask, bias_BxHxLxM)
        return checkpoint_name(out, "context")

    def _attention_impl(self, q, k, prefix, bias) -> tuple[str, str]:
        """(kernel, why not the requested one) for this call's shapes and features."""
        impl = self._requested()
        if impl in ("xla", "cpu"):
            return impl, ""
        if q.shape[1] == 1:  # a decode step: one query per row is a matrix-vector product,
            return "xla", ""  # which XLA's einsum serves; flash kernels tile many queries
        if bias is not None:
            return "xla", f"{impl} takes no learned position bias (T5's relative attention)"
        if prefix is not None and impl != "splash":
            return "xla", f"{impl} has no prefix-LM mask (it is per row, not per head)"
        if impl == "splash":
            why = splash.unsupported(q.shape[1], k.shape[1], self.block_size)
        else:
            why = cudnn.unsupported(q.dtype, q.shape[-1])
            if not why and partitioning.active_platform() not in _GPU_PLATFORMS:
                why = f"no GPU (platform {partitioning.active_platform()})"
        return ("xla", why) if why else (impl, "")
