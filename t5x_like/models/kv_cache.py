"""Key/value caches for incremental decoding, shared by both architectures.

A cache holds every layer's keys and values for a fixed number of slots T, stacked on a leading
layer axis so that scanned layers take their slice as `lax.scan` input: [N, B, T, K, E]. Slots
fill left to right, every row at the same index; which slots hold a token of the row is
`segment_ids_BxT` (1) versus padding or not yet written (0), so the masks are the packed-row
masks the models already use. Prompts of different lengths are left-padded: their padding slots
stay 0 and their positions count only real tokens.

Prefill writes a whole chunk (a decoder-only prompt) and attends within it through the
platform's kernel; a step writes one token per row and attends over all T slots. Keys are
stored after RoPE, so a step never rotates the past again.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from t5x_like.partitioning import constrain

# Logical axes of a [N, B, T, K, E] cache: sharded like the attention's keys (batch over the data
# axes, key/value heads over tensor).
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Self-attention keys and values of every layer, and which slots hold tokens."""

    key_NxBxTxKxE: jax.Array
    value_NxBxTxKxE: jax.Array
    segment_ids_BxT: jax.Array  # 1: a token of the row; 0: padding or not yet written
    index: jax.Array  # int32 scalar: the slot the next token goes to
    # Encoder-decoder: cross-attention keys and values of the encoded inputs, projected once.
    cross_key_NxBxSxKxE: jax.Array | None = None
    cross_value_NxBxSxKxE: jax.Array | None = None
    encoder_segment_ids_BxS: jax.Array | None = None

    @classmethod
    def zeros(cls, *, num_layers: int, batch: int, length: int, kv_heads: int, head_dim: int,
              dtype) -> "KVCache":
        shape = (num_layers, batch, length, kv_heads, head_dim)
        return cls(constrain(jnp.zeros(shape, dtype), CACHE_AXES),
                   constrain(jnp.zeros(shape, dtype), CACHE_AXES),
                   jnp.zeros((batch, length), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        """Slots per row (T)."""
        return self.segment_ids_BxT.shape[1]

    def next_positions(self) -> jax.Array:
        """[B] position of each row's next token: the tokens it holds (padding is not one)."""
        return jnp.sum(self.segment_ids_BxT != 0, axis=1, dtype=jnp.int32)

    def mark(self, segment_ids_BxL: jax.Array) -> "KVCache":
        """The slots [index, index + L) take the chunk's segment ids (before the layers run)."""
        segment_ids_BxT = jax.lax.dynamic_update_slice(
            self.segment_ids_BxT, segment_ids_BxL.astype(jnp.int32), (0, self.index))
        return dataclasses.replace(self, segment_ids_BxT=segment_ids_BxT)

    def advance(self, num: int) -> "KVCache":
        """Past a chunk of `num` tokens (after the layers wrote their keys and values)."""
        return dataclasses.replace(self, index=self.index + num)

    def layers(self) -> tuple[jax.Array, ...]:
        """The stacked per-layer arrays the layers read and write (cross-attention's last)."""
        cross = () if self.cross_key_NxBxSxKxE is None else (self.cross_key_NxBxSxKxE,
                                                              self.cross_value_NxBxSxKxE)
        return (self.key_NxBxTxKxE, self.value_NxBxTxKxE) + cross

    def with_layers(self, arrays: tuple[jax.Array, ...]) -> "KVCache":
        """The cache holding the layers' written arrays (only self-attention's change)."""
        key, value = (constrain(x, CACHE_AXES) for x in arrays[:2])
        return dataclasses.replace(self, key_NxBxTxKxE=key, value_NxBxTxKxE=value)

    def view(self, arrays: tuple[jax.Array, ...], layer, prefill: bool) -> "LayerView":
        """Layer `layer`'s view of `arrays` (this cache's `layers()`, as the stack carries them)."""
        return LayerView(arrays, layer, self.segment_ids_BxT, self.index, prefill)

    def gather_rows(self, rows_B: jax.Array) -> "KVCache":
        """The cache of rows `rows_B` (beam search keeps its best beams' histories).

        Every row must come from a row of the same example: cross-attention's keys and values
        are the example's and stay where they are.
        """
        return dataclasses.replace(
            self, key_NxBxTxKxE=constrain(jnp.take(self.key_NxBxTxKxE, rows_B, axis=1),
                                          CACHE_AXES),
            value_NxBxTxKxE=constrain(jnp.take(self.value_NxBxTxKxE, rows_B, axis=1), CACHE_AXES),
            segment_ids_BxT=jnp.take(self.segment_ids_BxT, rows_B, axis=0))


@dataclasses.dataclass(frozen=True)
class LayerView:
    """What layer `layer` sees of the cache. The arrays stay stacked [N, ...] and the layer
    writes its chunk in place, so a step never copies the cache."""

    arrays: tuple[jax.Array, ...]  # KVCache.layers(): self keys, values (+ cross keys, values)
    layer: int | jax.Array  # a Python int when unrolled, the scan's counter when scanned
    segment_ids_BxT: jax.Array
    index: jax.Array
    prefill: bool  # the chunk is the whole history so far: attend within it (any kernel)

    def write(self, k_BxLxKxE: jax.Array, v_BxLxKxE: jax.Array) -> tuple[jax.Array, ...]:
        """The stacked arrays with this layer's chunk of keys and values written at the index."""
        start = (self.layer, 0, self.index, 0, 0)
        key, value = (jax.lax.dynamic_update_slice(a, x[None].astype(a.dtype), start)
                      for a, x in zip(self.arrays[:2], (k_BxLxKxE, v_BxLxKxE)))
        return (key, value) + self.arrays[2:]

    def keys_values(self, arrays: tuple[jax.Array, ...], which: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
        """This layer's [B, T, K, E] keys and values (which=0: self-attention, 1: cross)."""
        return arrays[2 * which][self.layer], arrays[2 * which + 1][self.layer]


def token_positions(segment_ids_BxL: jax.Array) -> jax.Array:
    """[B, L] position of each token of one-segment rows, counting only real tokens (padding,
    segment 0, takes none and gets the position before it, or 0)."""
    return jnp.maximum(jnp.cumsum(segment_ids_BxL != 0, axis=1, dtype=jnp.int32) - 1, 0)


def slot_positions(cache: KVCache) -> jax.Array:
    """[B, T] position of each slot's token (what a relative bias compares), 0 where empty."""
    return token_positions(cache.segment_ids_BxT)
