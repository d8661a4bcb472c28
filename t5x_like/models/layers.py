"""Transformer building blocks in Flax NNX, packing-aware.

Shape letters: B batch, L query length, M key length, D d_model, H query heads, K key/value
heads, G = H // K query heads per key/value head, E head_dim, F mlp_dim, V vocab, R relative
position buckets.

Parameters carry logical axis names ('embed', 'mlp', ...) as metadata; `t5x_like.partitioning`
turns them into shardings. They are created with eager sharding off so that building a model never
needs a mesh: the partitioner shards the jitted initializer's outputs instead.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_like.models.attention import apply_rope
from t5x_like.models.kv_cache import LayerView
from t5x_like.models.ops import Kernels
from t5x_like.partitioning import constrain

Initializer = Callable[..., jax.Array]


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


class Attention(nnx.Module):
    """Multi-head causal self-attention with grouped-query key/value heads and RoPE."""

    def __init__(self, *, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, kernels: Kernels, rngs: nnx.Rngs):
        self.dtype, self.kernels = dtype, kernels
        qkv_init = fan_in_init(0, (1, 2))
        self.query = param(rngs, qkv_init, (d_model, num_heads, head_dim),
                           ("embed", "heads", "head_dim"), param_dtype)
        self.key = param(rngs, qkv_init, (d_model, num_kv_heads, head_dim),
                         ("embed", "kv_heads", "head_dim"), param_dtype)
        self.value = param(rngs, qkv_init, (d_model, num_kv_heads, head_dim),
                           ("embed", "kv_heads", "head_dim"), param_dtype)
        self.out = param(rngs, fan_in_init((0, 1), 2), (num_heads, head_dim, d_model),
                         ("heads", "head_dim", "embed"), param_dtype)

    def __call__(self, x_BxLxD: jax.Array, rope: tuple[jax.Array, jax.Array],
                 segment_ids_BxL: jax.Array, prefix_BxL: jax.Array | None = None,
                 cache: LayerView | None = None):
        """`rope` is `kernels.rope(positions, ...)`, shared by the layers; `prefix_BxL` marks a
        prefix LM's bidirectional inputs. With a `cache`, returns (output, the cache's arrays
        with this chunk's keys and values written)."""
        x = x_BxLxD.astype(self.dtype)
        q_BxLxHxE, k_BxLxKxE, v_BxLxKxE = self.kernels.qkv(
            x, *(w[...].astype(self.dtype) for w in (self.query, self.key, self.value)))
        q_BxLxHxE, k_BxLxKxE = apply_rope(q_BxLxHxE, rope), apply_rope(k_BxLxKxE, rope)
        if cache is None or cache.prefill:
            out_BxLxHxE = self.kernels.attention(
                q_BxLxHxE, k_BxLxKxE, v_BxLxKxE, q_segment_ids_BxL=segment_ids_BxL,
                kv_segment_ids_BxM=segment_ids_BxL, causal=True, prefix_BxL=prefix_BxL)
        if cache is not None:
            arrays = cache.write(k_BxLxKxE, v_BxLxKxE)
            if not cache.prefill:  # one new token per row, against every slot written so far
                out_BxLxHxE = self.kernels.attention(
                    q_BxLxHxE, *cache.keys_values(arrays), q_segment_ids_BxL=segment_ids_BxL,
                    kv_segment_ids_BxM=cache.segment_ids_BxT, causal=False,
                    what="decode self-attention")
        out_BxLxD = self.kernels.dense(out_BxLxHxE, self.out[...].astype(self.dtype), num_in=2,
                                       name="out_proj")
        return out_BxLxD if cache is None else (out_BxLxD, arrays)


MLP_ACTIVATIONS = {
    "silu": jax.nn.silu,
    # Hugging Face's gelu_new / T5X's gelu: the tanh approximation.
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


class MLP(nnx.Module):
    """Feed-forward block: gated down(act(x @ gate) * (x @ up)), or ungated down(act(x @ up)).

    'silu' and 'gelu_tanh' are gated (SwiGLU for Llama and UL2, GeGLU for T5 v1.1); 'relu' is
    T5 v1.0's ungated MLP and has no `gate` kernel: its single input projection is `up` (Hugging
    Face's `wi`), the one whose output goes through the activation.
    """

    def __init__(self, *, d_model: int, mlp_dim: int, activation: str, dtype: jnp.dtype,
                 param_dtype: jnp.dtype, kernels: Kernels, rngs: nnx.Rngs):
        self.dtype, self.activation, self.kernels = dtype, activation, kernels
        self.gated = activation != "relu"
        # Truncated normal with variance 1/fan_in, as T5X's MlpBlock and the Llama decoder.
        if self.gated:
            self.gate = param(rngs, fan_in_init(0, 1), (d_model, mlp_dim), ("embed", "mlp"),
                              param_dtype)
        self.up = param(rngs, fan_in_init(0, 1), (d_model, mlp_dim), ("embed", "mlp"),
                        param_dtype)
        self.down = param(rngs, fan_in_init(0, 1), (mlp_dim, d_model), ("mlp", "embed"),
                          param_dtype)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        act = MLP_ACTIVATIONS[self.activation]
        x = x_BxLxD.astype(self.dtype)
        if self.gated:
            gate_BxLxF, up_BxLxF = self.kernels.gate_up(x, self.gate[...].astype(self.dtype),
                                                        self.up[...].astype(self.dtype))
            hidden_BxLxF = act(gate_BxLxF) * up_BxLxF
        else:
            hidden_BxLxF = act(self.kernels.dense(x, self.up[...].astype(self.dtype),
                                                  name="mlp_up"))
        hidden_BxLxF = constrain(hidden_BxLxF, ("batch", "length", "mlp"))
        return self.kernels.dense(hidden_BxLxF, self.down[...].astype(self.dtype),
                                  name="mlp_out")

# --------------------------------------------------------------------------------------------
# T5: relative position biases and unscaled attention without RoPE.
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of every relative position in [-max_distance, max_distance], index rel + max_distance.

    T5's formula, with `half` the buckets of one direction (all of them when causal): a
    distance d below `exact` = half // 2 is its own bucket; beyond it the bucket is
    exact + floor(log(d / exact) / log(max_distance / exact) * (half - exact)), capped at
    half - 1. We evaluate the floor exactly, in integers: it is the largest k with
    (d / exact) ** (half - exact) >= (max_distance / exact) ** k. Float evaluations
    (Hugging Face's `T5Attention._relative_position_bucket`, T5X, Mesh TensorFlow) agree with
    this wherever the quotient is not an integer; where it is one exactly (e.g. d = 18 with 17
    buckets and max distance 27: log(2.25) / log(3.375) * 9 = 6), the last ulp of the float
    log decides, and it differs between backends: Hugging Face in eager PyTorch (MKL's log)
    and the same function under torch.compile disagree there (docs/convert.md has the count).
    Exact integers give one answer on every host. Beyond +-max_distance every bucket
    saturates, so clipping is exact.
    """
    half = num_buckets // 2 if bidirectional else num_buckets
    exact, log_buckets = half // 2, half - half // 2
    side = list(range(exact))  # side[d]: the bucket of distance d, before the direction offset
    for d in range(exact, max_distance + 1):
        k = 0  # k < log_buckets - 1: exact + k never passes the last bucket, half - 1
        while (k < log_buckets - 1 and d ** log_buckets * exact ** (k + 1)
               >= max_distance ** (k + 1) * exact ** log_buckets):
            k += 1
        side.append(exact + k)
    side = np.asarray(side, np.int32)
    rel = np.arange(-max_distance, max_distance + 1)
    if bidirectional:
        return (np.where(rel > 0, half, 0) + side[np.abs(rel)]).astype(np.int32)
    return side[np.maximum(-rel, 0)]


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
    """T5's bucket (int32 in [0, num_buckets)) of relative positions key - query.

    Exact buckets for small distances, logarithmic ones up to max_distance, one bucket beyond.
    Bidirectional (encoder) spends half the buckets on keys after the query; causal (decoder)
    maps every later key to bucket 0 (they are masked anyway).
    """
    table = jnp.asarray(_bucket_table(bidirectional, num_buckets, max_distance))
    return table[jnp.clip(relative_position, -max_distance, max_distance) + max_distance]


class RelativePositionBias(nnx.Module):
    """T5's learned per-head bias of bucketed relative positions, one table [R, H] per stack.

    Positions come from the batch, so in a packed row each segment sees positions from 0.
    """

    def __init__(self, *, num_buckets: int, max_distance: int, num_heads: int,
                 bidirectional: bool, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.bidirectional = bidirectional
        # T5X: variance_scaling(1.0, 'fan_avg', 'uniform'). No logical name fits the bucket axis
        # (it is tiny): replicated.
        init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        self.embedding = param(rngs, init, (num_buckets, num_heads), (None, "heads"),
                               param_dtype)

    def __call__(self, q_positions_BxL: jax.Array, k_positions_BxM: jax.Array) -> jax.Array:
        """Float32 bias [B, H, L, M] to add to the attention scores."""
        relative_BxLxM = k_positions_BxM[:, None, :] - q_positions_BxL[:, :, None]
        buckets_BxLxM = relative_position_bucket(
            relative_BxLxM, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
            max_distance=self.max_distance)
        bias_BxLxMxH = jnp.take(self.embedding[...].astype(jnp.float32), buckets_BxLxM, axis=0)
        bias_BxHxLxM = jnp.transpose(bias_BxLxMxH, (0, 3, 1, 2))
        return constrain(bias_BxHxLxM, ("batch", "heads", "length", None))


class T5Attention(nnx.Module):
    """Multi-head attention without RoPE and without 1/sqrt(head_dim) score scaling (T5).

    Self-attention when `x_BxMxD` is the query input, cross-attention when it is the encoder
    output. The scaling is folded into the initialization as in T5X: query ~ N(0, (D*E)**-1),
    key and value ~ N(0, 1/D), out ~ N(0, 1/(H*E)). Key/value heads may be grouped (K < H).
    """

    def __init__(self, *, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int,
                 dtype: jnp.dtype, param_dtype: jnp.dtype, kernels: Kernels, rngs: nnx.Rngs):
        self.dtype, self.kernels = dtype, kernels
        kv_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0,
                                                    out_axis=(1, 2))
        query_init = nnx.initializers.variance_scaling(1.0 / head_dim, "fan_in", "normal",
                                                       in_axis=0, out_axis=(1, 2))
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1),
                                                     out_axis=2)
        self.query = param(rngs, query_init, (d_model, num_heads, head_dim),
                           ("embed", "heads", "head_dim"), param_dtype)
        self.key = param(rngs, kv_init, (d_model, num_kv_heads, head_dim),
                         ("embed", "kv_heads", "head_dim"), param_dtype)
        self.value = param(rngs, kv_init, (d_model, num_kv_heads, head_dim),
                           ("embed", "kv_heads", "head_dim"), param_dtype)
        self.out = param(rngs, out_init, (num_heads, head_dim, d_model),
                         ("heads", "head_dim", "embed"), param_dtype)

    def __call__(self, x_BxLxD: jax.Array, kv_BxMxD: jax.Array, q_segment_ids_BxL: jax.Array,
                 kv_segment_ids_BxM: jax.Array, *, causal: bool,
                 bias_BxHxLxM: jax.Array | None = None, what: str = "attention") -> jax.Array:
        return self.attend(x_BxLxD, *self.keys_values(kv_BxMxD), q_segment_ids_BxL,
                           kv_segment_ids_BxM, causal=causal, bias_BxHxLxM=bias_BxHxLxM,
                           what=what)

    def keys_values(self, kv_BxMxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B, M, K, E] of `kv_BxMxD` (a decode cache keeps them)."""
        kv = kv_BxMxD.astype(self.dtype)
        return (self.kernels.dense(kv, self.key[...].astype(self.dtype), name="key_proj"),
                self.kernels.dense(kv, self.value[...].astype(self.dtype), name="value_proj"))

    def attend(self, x_BxLxD: jax.Array, k_BxMxKxE: jax.Array, v_BxMxKxE: jax.Array,
               q_segment_ids_BxL: jax.Array, kv_segment_ids_BxM: jax.Array, *, causal: bool,
               bias_BxHxLxM: jax.Array | None = None, what: str = "attention") -> jax.Array:
        """Attention of `x_BxLxD`'s queries over given keys and values, then the output
        projection."""
        x = x_BxLxD.astype(self.dtype)
        q_BxLxHxE = self.kernels.dense(x, self.query[...].astype(self.dtype), name="query_proj")
        out_BxLxHxE = self.kernels.attention(
            q_BxLxHxE, k_BxMxKxE, v_BxMxKxE, q_segment_ids_BxL=q_segment_ids_BxL,
            kv_segment_ids_BxM=kv_segment_ids_BxM, causal=causal, bias_BxHxLxM=bias_BxHxLxM,
            scale=1.0, what=what)
        return self.kernels.dense(out_BxLxHxE, self.out[...].astype(self.dtype), num_in=2,
                                  name="out_proj")

    def cached(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, cache: LayerView,
               bias_BxHxLxT: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Self-attention of one new token per row (L = 1) over the cache, after writing its
        key and value: the output and the cache's arrays. `bias_BxHxLxT` relates the token to
        every slot."""
        arrays = cache.write(*self.keys_values(x_BxLxD))
        out_BxLxD = self.attend(x_BxLxD, *cache.keys_values(arrays), segment_ids_BxL,
                                cache.segment_ids_BxT, causal=False, bias_BxHxLxM=bias_BxHxLxT,
                                what="decode self-attention")
        return out_BxLxD, arrays
