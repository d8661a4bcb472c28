"""T5 v1.1 / UL2 encoder-decoder Transformer (T5 v1.0 with relu + tied embeddings), packing-aware.

Pre-norm RMSNorm blocks; encoder self-attention with bidirectional relative position buckets,
decoder causal self-attention with causal buckets and cross-attention without position bias.
Each stack has one relative-bias table, evaluated once per forward and shared by all its layers
(as in T5 and Hugging Face). No dropout.

Packed rows follow the seqio/T5X conventions (segment ids 1..k, 0 = padding; positions restart
at 0 in every segment): encoder self-attention stays within a segment and off padding, decoder
self-attention is also causal, and a decoder token cross-attends only to the encoder tokens of
its own segment. Relative positions are taken from the per-segment positions.

Attention and projections run through `ops.Kernels`; the layer stack (scanned or unrolled,
remat) is `stack`'s. T5's relative bias is an [L, L] input no flash kernel takes, so self-attention
runs the reference kernel on accelerators (the log says so); cross-attention has no bias and
takes the platform's kernel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like.config import ModelConfig
from t5x_like.models import stack
from t5x_like.models.kv_cache import CACHE_AXES, KVCache, slot_positions, token_positions
from t5x_like.models.layers import MLP, RMSNorm, RelativePositionBias, T5Attention, fan_in_init, param
from t5x_like.models.ops import Kernels
from t5x_like.partitioning import constrain

_ACTIVATION = ("batch", "length", "embed")


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> RMSNorm:
    return RMSNorm(cfg.d_model, eps=cfg.norm_eps, param_dtype=jnp.dtype(cfg.param_dtype),
                   rngs=rngs)


def _attention(cfg: ModelConfig, rngs: nnx.Rngs) -> T5Attention:
    return T5Attention(d_model=cfg.d_model, num_heads=cfg.num_heads,
                       num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                       dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                       kernels=Kernels.from_config(cfg), rngs=rngs)


def _mlp(cfg: ModelConfig, rngs: nnx.Rngs) -> MLP:
    return MLP(d_model=cfg.d_model, mlp_dim=cfg.mlp_dim, activation=cfg.mlp_activation,
               dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
               kernels=Kernels.from_config(cfg), rngs=rngs)


def _relative_bias(cfg: ModelConfig, bidirectional: bool, rngs: nnx.Rngs) -> RelativePositionBias:
    return RelativePositionBias(num_buckets=cfg.relative_attention_num_buckets,
                                max_distance=cfg.relative_attention_max_distance,
                                num_heads=cfg.num_heads, bidirectional=bidirectional,
                                param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)


class EncoderLayer(nnx.Module):
    """x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attention_norm = _norm(cfg, rngs)
        self.attention = _attention(cfg, rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = _mlp(cfg, rngs)

    def __call__(self, x_BxLxD, segment_ids_BxL, bias_BxHxLxL):
        h_BxLxD = self.attention_norm(x_BxLxD)
        x_BxLxD = x_BxLxD + self.attention(h_BxLxD, h_BxLxD, segment_ids_BxL, segment_ids_BxL,
                                           causal=False, bias_BxHxLxM=bias_BxHxLxL,
                                           what="encoder self-attention")
        x_BxLxD = x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))
        return constrain(x_BxLxD, _ACTIVATION)


class DecoderLayer(nnx.Module):
    """Causal self-attention, cross-attention to the encoder output, then the MLP; all pre-norm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.self_attention_norm = _norm(cfg, rngs)
        self.self_attention = _attention(cfg, rngs)
        self.cross_attention_norm = _norm(cfg, rngs)
        self.cross_attention = _attention(cfg, rngs)
        self.mlp_norm = _norm(cfg, rngs)
        self.mlp = _mlp(cfg, rngs)

    def __call__(self, y_BxMxD, encoded_BxLxD, segment_ids_BxM, bias_BxHxMxM,
                 encoder_segment_ids_BxL, cache=None):
        """The layer's output; with a `cache` (a `kv_cache.LayerView` holding the encoded
        inputs' cross keys and values, `encoded_BxLxD` unused), (output, its arrays)."""
        if cache is not None:
            return self._step(y_BxMxD, segment_ids_BxM, bias_BxHxMxM, encoder_segment_ids_BxL,
                              cache)
        h_BxMxD = self.self_attention_norm(y_BxMxD)
        y_BxMxD = y_BxMxD + self.self_attention(h_BxMxD, h_BxMxD, segment_ids_BxM,
                                                segment_ids_BxM, causal=True,
                                                bias_BxHxLxM=bias_BxHxMxM,
                                                what="decoder self-attention")
        y_BxMxD = y_BxMxD + self.cross_attention(self.cross_attention_norm(y_BxMxD),
                                                 encoded_BxLxD, segment_ids_BxM,
                                                 encoder_segment_ids_BxL, causal=False,
                                                 what="cross-attention")
        y_BxMxD = y_BxMxD + self.mlp(self.mlp_norm(y_BxMxD))
        return constrain(y_BxMxD, _ACTIVATION)

    def _step(self, y_Bx1xD, segment_ids_Bx1, bias_BxHx1xT, encoder_segment_ids_BxS, cache):
        out_Bx1xD, arrays = self.self_attention.cached(self.self_attention_norm(y_Bx1xD),
                                                       segment_ids_Bx1, cache, bias_BxHx1xT)
        y_Bx1xD = y_Bx1xD + out_Bx1xD
        y_Bx1xD = y_Bx1xD + self.cross_attention.attend(
            self.cross_attention_norm(y_Bx1xD), *cache.keys_values(arrays, which=1),
            segment_ids_Bx1, encoder_segment_ids_BxS, causal=False, what="cross-attention")
        y_Bx1xD = y_Bx1xD + self.mlp(self.mlp_norm(y_Bx1xD))
        return constrain(y_Bx1xD, _ACTIVATION), arrays


class EncoderStack(nnx.Module):
    """Encoder layers sharing one bidirectional relative-bias table, then a final norm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relative_bias = _relative_bias(cfg, bidirectional=True, rngs=rngs)
        self.layers = stack.make_layers(cfg, cfg.num_encoder_layers or cfg.num_layers,
                                        EncoderLayer, rngs)
        self.final_norm = _norm(cfg, rngs)

    def __call__(self, x_BxLxD, segment_ids_BxL, positions_BxL):
        bias_BxHxLxL = self.relative_bias(positions_BxL, positions_BxL)
        x_BxLxD = stack.run_layers(self.cfg, self.layers, x_BxLxD, segment_ids_BxL, bias_BxHxLxL)
        return self.final_norm(x_BxLxD)


class DecoderStack(nnx.Module):
    """Decoder layers sharing one causal relative-bias table, then a final norm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.relative_bias = _relative_bias(cfg, bidirectional=False, rngs=rngs)
        self.layers = stack.make_layers(cfg, cfg.num_layers, DecoderLayer, rngs)
        self.final_norm = _norm(cfg, rngs)

    def __call__(self, y_BxMxD, encoded_BxLxD, segment_ids_BxM, positions_BxM,
                 encoder_segment_ids_BxL):
        bias_BxHxMxM = self.relative_bias(positions_BxM, positions_BxM)
        y_BxMxD = stack.run_layers(self.cfg, self.layers, y_BxMxD, encoded_BxLxD, segment_ids_BxM,
                                   bias_BxHxMxM, encoder_segment_ids_BxL)
        return self.final_norm(y_BxMxD)

    def step(self, y_Bx1xD: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One token per row through the cache (already marked): final-normed hidden states."""
        positions_Bx1 = cache.next_positions()[:, None] - 1  # the cache already counts it
        bias_BxHx1xT = self.relative_bias(positions_Bx1, slot_positions(cache))
        y_Bx1xD, cache = stack.run_layers_cached(
            self.cfg, self.layers, y_Bx1xD, cache, False, None, jnp.ones_like(positions_Bx1),
            bias_BxHx1xT, cache.encoder_segment_ids_BxS)
        return self.final_norm(y_Bx1xD), cache

    def cross_keys_values(self, encoded_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Every layer's cross-attention keys and values [N, B, S, K, E] of the encoded inputs."""
        if not self.cfg.scan_layers:
            pairs = [layer.cross_attention.keys_values(encoded_BxSxD) for layer in self.layers]
            return tuple(jnp.stack(parts) for parts in zip(*pairs))
        graphdef, stacked_state = nnx.split(self.layers)

        def body(_, layer_state):
            return None, nnx.merge(graphdef, layer_state).cross_attention.keys_values(
                encoded_BxSxD)

        return jax.lax.scan(body, None, stacked_state)[1]


def _packing(tokens_BxL: jax.Array, segment_ids_BxL: jax.Array | None,
             positions_BxL: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """The given segment ids and positions; where None, those of one unpadded segment per row."""
    batch, length = tokens_BxL.shape[:2]
    if segment_ids_BxL is None:
        segment_ids_BxL = jnp.ones((batch, length), jnp.int32)
    if positions_BxL is None:
        positions_BxL = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return segment_ids_BxL, positions_BxL


class EncoderDecoder(nnx.Module):
    """Shared token embedding -> encoder stack; decoder stack -> logits over the vocabulary.

    Logits come from an untied `lm_head` [D, V] (T5 v1.1, UL2), or with `tie_embeddings` from the
    embedding itself with the decoder output scaled by d_model**-0.5 (T5 v1.0).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg, self.kernels = cfg, Kernels.from_config(cfg)
        param_dtype = jnp.dtype(cfg.param_dtype)
        # T5X: N(0, 1). Tied logits divide by sqrt(d_model), which brings them back to ~1.
        self.token_embed = param(rngs, nnx.initializers.normal(1.0),
                                 (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), param_dtype)
        self.encoder = EncoderStack(cfg, rngs=rngs)
        self.decoder = DecoderStack(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = param(rngs, fan_in_init(0, 1), (cfg.d_model, cfg.vocab_size),
                                 ("embed", "vocab"), param_dtype)

    def _embed(self, tokens_BxL: jax.Array) -> jax.Array:
        x_BxLxD = jnp.take(self.token_embed[...], tokens_BxL, axis=0)
        return constrain(x_BxLxD.astype(jnp.dtype(self.cfg.dtype)), _ACTIVATION)

    def encode(self, encoder_input_tokens_BxL: jax.Array,
               encoder_segment_ids_BxL: jax.Array | None = None,
               encoder_positions_BxL: jax.Array | None = None) -> jax.Array:
        """Encoder output [B, L, D] in the compute dtype; None ids/positions = one segment."""
        segment_ids_BxL, positions_BxL = _packing(
            encoder_input_tokens_BxL, encoder_segment_ids_BxL, encoder_positions_BxL)
        return self.encoder(self._embed(encoder_input_tokens_BxL), segment_ids_BxL,
                            positions_BxL)

    def decode(self, encoded_BxLxD: jax.Array, decoder_input_tokens_BxM: jax.Array,
               encoder_segment_ids_BxL: jax.Array | None = None,
               decoder_segment_ids_BxM: jax.Array | None = None,
               decoder_positions_BxM: jax.Array | None = None) -> jax.Array:
        """Logits [B, M, V] in float32 given `encode`'s output; None ids/positions = one segment.

        `encoder_segment_ids_BxL` must be those given to `encode`: they tell which encoder tokens
        each decoder token may attend to (padding is segment 0).
        """
        return self.logits(self._decode_hidden(encoded_BxLxD, decoder_input_tokens_BxM,
                                               encoder_segment_ids_BxL, decoder_segment_ids_BxM,
                                               decoder_positions_BxM))

    def _decode_hidden(self, encoded_BxLxD, decoder_input_tokens_BxM, encoder_segment_ids_BxL,
                       decoder_segment_ids_BxM, decoder_positions_BxM):
        encoder_segment_ids_BxL, _ = _packing(encoded_BxLxD, encoder_segment_ids_BxL, None)
        segment_ids_BxM, positions_BxM = _packing(
            decoder_input_tokens_BxM, decoder_segment_ids_BxM, decoder_positions_BxM)
        return self.decoder(self._embed(decoder_input_tokens_BxM), encoded_BxLxD,
                            segment_ids_BxM, positions_BxM, encoder_segment_ids_BxL)

    def output_kernel(self) -> jax.Array:
        """The [D, V] projection onto the vocabulary, in the compute dtype (the loss may take
        it a slice of columns at a time)."""
        dtype = jnp.dtype(self.cfg.dtype)
        if self.cfg.tie_embeddings:
            return self.token_embed[...].astype(dtype).T
        return self.lm_head[...].astype(dtype)

    def logits(self, y_BxMxD: jax.Array, kernel_DxV: jax.Array | None = None) -> jax.Array:
        """Float32 logits [B, M, V] of the decoder's final-normed hidden states, or [B, M, W]
        for a [D, W] `kernel_DxV` slice of `output_kernel()`."""
        kernel_DxV = self.output_kernel() if kernel_DxV is None else kernel_DxV
        if self.cfg.tie_embeddings:
            y_BxMxD = y_BxMxD * jnp.asarray(self.cfg.d_model ** -0.5, self.cfg.dtype)
        logits_BxMxV = self.kernels.dense(y_BxMxD, kernel_DxV)
        return constrain(logits_BxMxV.astype(jnp.float32), ("batch", "length", "vocab"))

    # ------------------------------------------------------------------ decoding
    def init_cache(self, encoder_input_tokens_BxS: jax.Array,
                   encoder_segment_ids_BxS: jax.Array, length: int) -> KVCache:
        """Encode once, project every layer's cross keys and values once, and leave `length`
        empty decoder slots (segment 0 marks the inputs' padding)."""
        cfg = self.cfg
        encoded_BxSxD = self.encode(encoder_input_tokens_BxS, encoder_segment_ids_BxS,
                                    token_positions(encoder_segment_ids_BxS))
        cross_key, cross_value = self.decoder.cross_keys_values(encoded_BxSxD)
        cache = KVCache.zeros(num_layers=cfg.num_layers, batch=encoded_BxSxD.shape[0],
                              length=length, kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                              dtype=jnp.dtype(cfg.dtype))
        return dataclasses.replace(
            cache, cross_key_NxBxSxKxE=constrain(cross_key, CACHE_AXES),
            cross_value_NxBxSxKxE=constrain(cross_value, CACHE_AXES),
            encoder_segment_ids_BxS=encoder_segment_ids_BxS.astype(jnp.int32))

    def extend(self, tokens_Bx1: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """One decoder token per row (BOS = 0 first): (float32 logits [B, V], cache)."""
        cache = cache.mark(jnp.ones_like(tokens_Bx1))
        y_Bx1xD, cache = self.decoder.step(self._embed(tokens_Bx1), cache)
        return self.logits(y_Bx1xD)[:, 0], cache.advance(1)

    def __call__(self, encoder_input_tokens_BxL: jax.Array, decoder_input_tokens_BxM: jax.Array,
                 encoder_segment_ids_BxL: jax.Array | None = None,
                 decoder_segment_ids_BxM: jax.Array | None = None,
                 encoder_positions_BxL: jax.Array | None = None,
                 decoder_positions_BxM: jax.Array | None = None) -> jax.Array:
        """Logits [B, M, V] in float32 for teacher-forced decoder inputs (targets shifted right
        within each segment). Segment ids 0 mark padding; None ids/positions = one segment."""
        return self.logits(self.hidden(encoder_input_tokens_BxL, decoder_input_tokens_BxM,
                                       encoder_segment_ids_BxL, decoder_segment_ids_BxM,
                                       encoder_positions_BxL, decoder_positions_BxM))

    def hidden(self, encoder_input_tokens_BxL, decoder_input_tokens_BxM,
               encoder_segment_ids_BxL=None, decoder_segment_ids_BxM=None,
               encoder_positions_BxL=None, decoder_positions_BxM=None) -> jax.Array:
        """The decoder's final-normed hidden states [B, M, D] that `logits` projects."""
        encoder_segment_ids_BxL, _ = _packing(encoder_input_tokens_BxL, encoder_segment_ids_BxL,
                                              None)
        encoded_BxLxD = self.encode(encoder_input_tokens_BxL, encoder_segment_ids_BxL,
                                    encoder_positions_BxL)
        return self._decode_hidden(encoded_BxLxD, decoder_input_tokens_BxM,
                                   encoder_segment_ids_BxL, decoder_segment_ids_BxM,
                                   decoder_positions_BxM)
