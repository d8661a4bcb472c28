"""Sampling: greedy, temperature, top-k and top-p (nucleus), for both architectures.

The whole decode is one jitted `lax.fori_loop` over a fixed-length buffer; each step re-runs the
decoder over the buffer (no key/value cache yet), which is simple and exact, and fast enough for
the small models one samples on a laptop. Positions past the cursor are masked out by causality.
An encoder-decoder encodes its prompt once and decodes from BOS = 0 (T5's start token).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def sample_logits(logits_V: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                  top_p: float) -> jax.Array:
    """One token id from logits; temperature 0 is greedy. top_k 0 and top_p 1 disable those."""
    if temperature == 0.0:
        return jnp.argmax(logits_V)
    logits_V = logits_V.astype(jnp.float32) / temperature
    if top_k > 0:
        kth = jnp.sort(logits_V)[-top_k]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    if top_p < 1.0:
        sorted_V = jnp.sort(logits_V)[::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_V))
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        cutoff = sorted_V[jnp.minimum(jnp.sum(cumulative < top_p), sorted_V.shape[0] - 1)]
        logits_V = jnp.where(logits_V < cutoff, -jnp.inf, logits_V)
    return jax.random.categorical(rng, logits_V)


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "temperature", "top_k",
                                             "top_p", "prefix_length"))
def _decode(params, tokens_1xT, rng, eos_id, *, graphdef, prompt_len: int, temperature: float,
            top_k: int, top_p: float, prefix_length: int):
    model = nnx.merge(graphdef, params)
    total = tokens_1xT.shape[1]
    segment_ids_1xT = jnp.ones_like(tokens_1xT)
    positions_1xT = jnp.arange(total)[None, :]
    extra = ()
    if prefix_length:  # a prefix LM attends bidirectionally over its prefix, as in training
        extra = ((jnp.arange(total) < prefix_length)[None, :].astype(jnp.int32),)

    def body(cursor, carry):
        tokens, done, rng = carry
        rng, sample_rng = jax.random.split(rng)
        logits_V = model(tokens, segment_ids_1xT, positions_1xT, *extra)[0, cursor - 1]
        token = sample_logits(logits_V, sample_rng, temperature=temperature, top_k=top_k,
                              top_p=top_p).astype(tokens.dtype)
        token = jnp.where(done, 0, token)
        tokens = tokens.at[0, cursor].set(token)
        return tokens, done | (token == eos_id), rng

    tokens, _, _ = jax.lax.fori_loop(prompt_len, total, body,
                                     (tokens_1xT, jnp.array(False), rng))
    return tokens


def generate(params: Any, graphdef: nnx.GraphDef, prompt_ids: Sequence[int], *,
             max_new_tokens: int, eos_id: int, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, prefix_length: int = 0) -> list[int]:
    """Continue `prompt_ids`; returns the new ids, stopping after (and excluding) EOS.

    `prefix_length` > 0: the first that many positions attend to each other bidirectionally
    (a decoder-only model trained as a prefix LM: the whole prompt, in seqio's layout).
    """
    if not prompt_ids:
        raise ValueError("generate needs a non-empty prompt (at least a BOS id)")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"invalid sampling settings: temperature={temperature} (>= 0), "
                         f"top_k={top_k} (>= 0), top_p={top_p} (in (0, 1])")
    prompt_len = len(prompt_ids)
    tokens_1xT = jnp.zeros((1, prompt_len + max_new_tokens), jnp.int32)
    tokens_1xT = tokens_1xT.at[0, :prompt_len].set(jnp.asarray(prompt_ids, jnp.int32))
    out = _decode(params, tokens_1xT, jax.random.key(seed), eos_id, graphdef=graphdef,
                  prompt_len=prompt_len, temperature=float(temperature), top_k=int(top_k),
                  top_p=float(top_p), prefix_length=int(prefix_length))
    new = [int(t) for t in jax.device_get(out)[0, prompt_len:]]
    return new[:new.index(eos_id)] if eos_id in new else new


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k", "top_p"))
def _decode_seq2seq(params, inputs_1xL, targets_1xT, rng, eos_id, *, graphdef,
                    temperature: float, top_k: int, top_p: float):
    model = nnx.merge(graphdef, params)
    encoded_1xLxD = model.encode(inputs_1xL)

    def body(cursor, carry):
        targets, done, rng = carry
        rng, sample_rng = jax.random.split(rng)
        # Decoder inputs are the targets shifted right, starting from 0.
        decoder_inputs = jnp.concatenate([jnp.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
        logits_V = model.decode(encoded_1xLxD, decoder_inputs)[0, cursor]
        token = sample_logits(logits_V, sample_rng, temperature=temperature, top_k=top_k,
                              top_p=top_p).astype(targets.dtype)
        token = jnp.where(done, 0, token)
        return targets.at[0, cursor].set(token), done | (token == eos_id), rng

    targets, _, _ = jax.lax.fori_loop(0, targets_1xT.shape[1], body,
                                      (targets_1xT, jnp.array(False), rng))
    return targets


def generate_seq2seq(params: Any, graphdef: nnx.GraphDef, input_ids: Sequence[int], *,
                     max_new_tokens: int, eos_id: int, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, seed: int = 0) -> list[int]:
    """Encoder-decoder: encode `input_ids`, sample up to `max_new_tokens` targets (EOS dropped)."""
    if not input_ids:
        raise ValueError("generate needs a non-empty input")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"invalid sampling settings: temperature={temperature} (>= 0), "
                         f"top_k={top_k} (>= 0), top_p={top_p} (in (0, 1])")
    inputs_1xL = jnp.asarray([list(input_ids)], jnp.int32)
    out = _decode_seq2seq(params, inputs_1xL, jnp.zeros((1, max_new_tokens), jnp.int32),
                          jax.random.key(seed), eos_id, graphdef=graphdef,
                          temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    new = [int(t) for t in jax.device_get(out)[0]]
    return new[:new.index(eos_id)] if eos_id in new else new
