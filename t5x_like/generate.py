"""Batched decoding with a key/value cache for both architectures: greedy, temperature / top-k /
top-p sampling, and beam search (`beam_search`).

A decoder-only model prefills its left-padded prompts once, then feeds one token per row per
step; an encoder-decoder encodes its right-padded inputs once (and projects every layer's cross
keys and values once), then decodes from BOS = 0 (T5's start token). Each decode is one jitted
program: the prefill, then a `lax.while_loop` that stops when every row has emitted EOS, so the
cost follows the tokens actually generated. Under a partitioner the prompts are sharded by
batch and the cache by the logical rules (`kv_cache.CACHE_AXES`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_like.models.encoder_decoder import EncoderDecoder
from t5x_like.models.kv_cache import KVCache
from t5x_like.partitioning import Partitioner


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How a token is drawn from logits; temperature 0 is greedy (top_k 0, top_p 1: off)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(f"invalid sampling settings: temperature={self.temperature} (>= 0), "
                             f"top_k={self.top_k} (>= 0), top_p={self.top_p} (in (0, 1])")


def sample_logits(logits_BxV: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """One token id per row [B] from float logits [B, V]."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits_BxV = logits_BxV.astype(jnp.float32) / sampling.temperature
    if sampling.top_k > 0:
        kth_Bx1 = jax.lax.top_k(logits_BxV, sampling.top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if sampling.top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        cumulative_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        keep_Bx1 = jnp.minimum(jnp.sum(cumulative_BxV < sampling.top_p, axis=-1,
                                       keepdims=True), logits_BxV.shape[-1] - 1)
        cutoff_Bx1 = jnp.take_along_axis(sorted_BxV, keep_Bx1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return jax.random.categorical(rng, logits_BxV, axis=-1).astype(jnp.int32)


# --------------------------------------------------------------------------------------------
# The two architectures behind one start / step interface (also beam search's).
# --------------------------------------------------------------------------------------------
def start(model: nnx.Module, prompt_BxP: jax.Array, segment_ids_BxP: jax.Array, new_tokens: int,
          prefix_lm: bool) -> tuple[jax.Array, KVCache]:
    """(logits [B, V] of the first new token, cache with room for `new_tokens` more).

    Decoder-only prompts are left-padded (segment 0), encoder inputs right-padded. `prefix_lm`:
    the prompt attends to itself both ways, as a prefix LM was trained."""
    if isinstance(model, EncoderDecoder):
        cache = model.init_cache(prompt_BxP, segment_ids_BxP, new_tokens)
        return model.extend(jnp.zeros_like(prompt_BxP[:, :1]), cache)
    cache = model.init_cache(prompt_BxP.shape[0], prompt_BxP.shape[1] + new_tokens)
    return model.extend(prompt_BxP, segment_ids_BxP, cache, prefill=True,
                        prefix_BxL=segment_ids_BxP if prefix_lm else None)


def step(model: nnx.Module, tokens_B: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """(logits [B, V] of the next token, cache) after one more token per row."""
    if isinstance(model, EncoderDecoder):
        return model.extend(tokens_B[:, None], cache)
    return model.extend(tokens_B[:, None], jnp.ones_like(tokens_B[:, None]), cache,
                        prefill=False)


def _token_logprob(logits_BxV: jax.Array, tokens_B: jax.Array) -> jax.Array:
    log_probs_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs_BxV, tokens_B[:, None], axis=-1)[:, 0]


def decode_loop(params, prompt_BxP, segment_ids_BxP, rng, eos_id, *, graphdef, new_tokens: int,
                sampling: Sampling, prefix_lm: bool) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, N], log-likelihood [B]) of sampled continuations; after EOS a row holds 0
    and its log-likelihood stops (EOS counted)."""
    model = nnx.merge(graphdef, params)
    logits_BxV, cache = start(model, prompt_BxP, segment_ids_BxP, new_tokens, prefix_lm)
    batch = prompt_BxP.shape[0]

    def emit(i, logits_BxV, tokens_BxN, done_B, score_B, rng):
        rng, draw = jax.random.split(rng)
        token_B = jnp.where(done_B, 0, sample_logits(logits_BxV, draw, sampling))
        score_B = score_B + jnp.where(done_B, 0.0, _token_logprob(logits_BxV, token_B))
        tokens_BxN = jax.lax.dynamic_update_slice(tokens_BxN, token_B[:, None], (0, i))
        return token_B, tokens_BxN, done_B | (token_B == eos_id), score_B, rng

    token_B, tokens_BxN, done_B, score_B, rng = emit(
        0, logits_BxV, jnp.zeros((batch, new_tokens), jnp.int32), jnp.zeros(batch, bool),
        jnp.zeros(batch, jnp.float32), rng)

    def cond(carry):
        i, _, _, done_B, _, _, _ = carry
        return (i < new_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, token_B, tokens_BxN, done_B, score_B, cache, rng = carry
        logits_BxV, cache = step(model, token_B, cache)
        token_B, tokens_BxN, done_B, score_B, rng = emit(i, logits_BxV, tokens_BxN, done_B,
                                                         score_B, rng)
        return i + 1, token_B, tokens_BxN, done_B, score_B, cache, rng

    carry = (jnp.int32(1), token_B, tokens_BxN, done_B, score_B, cache, rng)
    _, _, tokens_BxN, _, score_B, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens_BxN, score_B


# --------------------------------------------------------------------------------------------
# Host side: lay prompts out, compile once per shape, cut at EOS.
# --------------------------------------------------------------------------------------------
def pad_prompts(prompts: Sequence[Sequence[int]], length: int, *, left: bool
                ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, segment ids) [B, length] of prompts padded with 0 on the left or the right."""
    tokens = np.zeros((len(prompts), length), np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        if not 0 < len(prompt) <= length:
            raise ValueError(f"prompt {row} has {len(prompt)} tokens; it needs 1 to {length} "
                             "(raise the prompt length, or cut the prompt)")
        span = slice(length - len(prompt), length) if left else slice(0, len(prompt))
        tokens[row, span], segments[row, span] = prompt, 1
    return tokens, segments


def bucket(n: int, multiple: int = 16) -> int:
    """`n` rounded up to a multiple, so that prompts of nearby lengths share a compile."""
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Result:
    """One row's new tokens (EOS excluded) and their log-likelihood (EOS included)."""

    tokens: list[int]
    score: float


class Generator:
    """Decodes batches of prompts with one trained model, sharded by its partitioner.

    `prefix_lm`: a decoder-only model trained with bidirectional inputs (every objective but
    causal_lm) sees its prompt that way. Compiled programs are kept per shape and settings.
    """

    def __init__(self, params: Any, graphdef: nnx.GraphDef, *, eos_id: int,
                 prefix_lm: bool = False, partitioner: Partitioner | None = None):
        self.params, self.graphdef, self.eos_id = params, graphdef, int(eos_id)
        self.prefix_lm, self.partitioner = prefix_lm, partitioner
        self.encoder_decoder = issubclass(graphdef.nodes[0].type, EncoderDecoder)
        self._compiled: dict[tuple, Any] = {}

    def _multiple(self) -> int:
        return self.partitioner.data_parallel_size if self.partitioner else 1

    def _run(self, fn, key: tuple, arrays: tuple[np.ndarray, ...], scalars: tuple, **static):
        """`fn(params, *arrays, *scalars, graphdef=..., **static)`, jitted once per key.

        Every process passes the same whole batch (decoding is SPMD when the mesh spans
        processes) and gets every row back."""
        if key not in self._compiled:
            jitted = functools.partial(fn, graphdef=self.graphdef, **static)
            if self.partitioner is None:
                self._compiled[key] = jax.jit(jitted)
            else:
                shardings = jax.tree.map(lambda x: x.sharding, self.params)
                batch, replicated = self.partitioner.batch_sharding, self.partitioner.replicated()
                self._compiled[key] = jax.jit(
                    jitted, in_shardings=(shardings,) + (batch,) * len(arrays)
                    + (replicated,) * len(scalars), out_shardings=replicated)
        if self.partitioner is None:
            return self._compiled[key](self.params, *arrays, *scalars)
        with self.partitioner.activation_context():
            batch = self.partitioner.batch_sharding
            return self._compiled[key](self.params, *(jax.device_put(a, batch) for a in arrays),
                                       *scalars)

    def layout(self, prompts: Sequence[Sequence[int]], prompt_length: int = 0
               ) -> tuple[np.ndarray, np.ndarray, int]:
        """(tokens, segment ids, real rows): prompts padded to `prompt_length` (0: a bucket of
        the longest) and, under a mesh, with rows added up to a multiple of its data axes."""
        length = prompt_length or bucket(max(len(p) for p in prompts))
        padded = list(prompts) + [[0]] * (-len(prompts) % self._multiple())
        tokens, segments = pad_prompts(padded, length, left=not self.encoder_decoder)
        return tokens, segments, len(prompts)

    def _results(self, tokens_BxN, scores_B, rows: int) -> list[Result]:
        tokens_BxN, scores_B = jax.device_get((tokens_BxN, scores_B))
        out = []
        for row in range(rows):
            new = [int(t) for t in tokens_BxN[row]]
            out.append(Result(new[:new.index(self.eos_id)] if self.eos_id in new else new,
                              float(scores_B[row])))
        return out

    def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 sampling: Sampling = Sampling(), seed: int = 0, prompt_length: int = 0
                 ) -> list[Result]:
        """Continue each prompt (decoder-only) or answer each input (encoder-decoder)."""
        if not prompts:
            return []
        tokens, segments, rows = self.layout(prompts, prompt_length)
        key = ("sample", tokens.shape, max_new_tokens, sampling)
        out = self._run(decode_loop, key, (tokens, segments),
                        (jax.random.key(seed), jnp.int32(self.eos_id)),
                        new_tokens=max_new_tokens, sampling=sampling, prefix_lm=self.prefix_lm)
        return self._results(*out, rows)

    def beam_search(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    num_beams: int, alpha: float = 0.6, prompt_length: int = 0) -> list[Result]:
        """The best beam of each prompt, scored as T5X's beam search (see `beam_search`)."""
        from t5x_like import beam_search as beam_lib
        if num_beams < 1 or alpha < 0:
            raise ValueError(f"beam search needs num_beams >= 1 (got {num_beams}) and a length "
                             f"penalty alpha >= 0 (got {alpha}): its early stop bounds what a "
                             "live beam can still score by the penalty at the length limit")
        if not prompts:
            return []
        tokens, segments, rows = self.layout(prompts, prompt_length)
        key = ("beam", tokens.shape, max_new_tokens, num_beams, alpha)
        out = self._run(beam_lib.beam_search, key, (tokens, segments),
                        (jnp.int32(self.eos_id),), new_tokens=max_new_tokens,
                        num_beams=num_beams, alpha=alpha, prefix_lm=self.prefix_lm)
        return self._results(*out, rows)
