"""Beam search over the key/value cache, scored as T5X's: log-likelihood over a length penalty.

A finished beam of n tokens (its EOS included) scores log p / ((5 + n) / 6) ** alpha (Wu et al.
2016, T5X's `brevity_penalty`); alpha 0 ranks by log-likelihood alone. Every step extends the W
live beams of each example by every token, keeps the 2W best extensions (at least W of them do
not end), moves those that end to the finished set (its W best are kept) and the W best that do
not end to the live set. The search stops at the length limit, or when no live beam, even with
the largest penalty the limit allows, could beat the worst kept finished one. An example
with no finished beam at the limit returns its best live beam, scored by log-likelihood (as
T5X).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like import generate

NEG_INF = -1.0e7  # finite: a masked score stays comparable and never turns NaN


def length_penalty(alpha: float, length: jax.Array) -> jax.Array:
    """((5 + length) / 6) ** alpha."""
    return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def _select(scores_BxC: jax.Array, k: int, *arrays: jax.Array):
    """The k best of C candidates per example: (scores, then each array's matching entries)."""
    top_BxK, index_BxK = jax.lax.top_k(scores_BxC, k)
    return (top_BxK,) + tuple(jnp.take_along_axis(a, index_BxK.reshape(
        index_BxK.shape + (1,) * (a.ndim - 2)), axis=1) for a in arrays)


def beam_search(params, prompt_BxP, segment_ids_BxP, eos_id, *, graphdef, new_tokens: int,
                num_beams: int, alpha: float, prefix_lm: bool) -> tuple[jax.Array, jax.Array]:
    """(tokens [B, N], score [B]) of each example's best beam; tokens after EOS are 0."""
    model = nnx.merge(graphdef, params)
    batch, width = prompt_BxP.shape[0], num_beams
    tile = lambda x: jnp.repeat(x, width, axis=0)  # example b's beams are rows b*W .. b*W+W-1
    logits_RxV, cache = generate.start(model, tile(prompt_BxP), tile(segment_ids_BxP),
                                       new_tokens + 1, prefix_lm)
    vocab = logits_RxV.shape[-1]
    # Only beam 0 is live at first: the others are copies of it and would repeat its choices.
    live_BxW = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, NEG_INF), (batch, 1))
    state = dict(i=jnp.int32(0), logits=logits_RxV, cache=cache, live=live_BxW,
                 live_seqs=jnp.zeros((batch, width, new_tokens), jnp.int32),
                 finished=jnp.full((batch, width), NEG_INF),
                 finished_seqs=jnp.zeros((batch, width, new_tokens), jnp.int32),
                 finished_any=jnp.zeros((batch, width), bool))

    def cond(s):
        best_possible_B = s["live"][:, 0] / length_penalty(alpha, jnp.int32(new_tokens))
        worst_kept_B = jnp.min(jnp.where(s["finished_any"], s["finished"], 0.0), axis=1)
        settled_B = jnp.all(s["finished_any"], axis=1) & (worst_kept_B > best_possible_B)
        return (s["i"] < new_tokens) & ~jnp.all(settled_B)

    def body(s):
        i = s["i"]
        log_probs_BxWxV = jax.nn.log_softmax(s["logits"].astype(jnp.float32), -1).reshape(
            batch, width, vocab)
        candidates_BxC = (s["live"][:, :, None] + log_probs_BxWxV).reshape(batch, width * vocab)
        beam_C, token_C = jnp.divmod(jnp.arange(width * vocab), vocab)
        top_Bx2W, beam_Bx2W, token_Bx2W = _select(
            candidates_BxC, 2 * width, jnp.broadcast_to(beam_C, candidates_BxC.shape),
            jnp.broadcast_to(token_C, candidates_BxC.shape))
        seqs_Bx2WxN = jnp.take_along_axis(s["live_seqs"], beam_Bx2W[:, :, None], axis=1)
        seqs_Bx2WxN = jax.lax.dynamic_update_slice(seqs_Bx2WxN, token_Bx2W[:, :, None],
                                                   (0, 0, i))
        # A candidate of a beam that was never live (before W beams exist) is not an ending.
        ends_Bx2W = (token_Bx2W == eos_id) & (top_Bx2W > NEG_INF / 2)
        # Finished: the kept W and the new endings, length-penalized; the best W stay.
        ended_Bx2W = jnp.where(ends_Bx2W, top_Bx2W / length_penalty(alpha, i + 1), NEG_INF)
        finished, finished_seqs, finished_any = _select(
            jnp.concatenate([s["finished"], ended_Bx2W], 1), width,
            jnp.concatenate([s["finished_seqs"], seqs_Bx2WxN], 1),
            jnp.concatenate([s["finished_any"], ends_Bx2W], 1))
        # Live: the best W that do not end; their caches follow their parents.
        live, live_seqs, parent_BxW = _select(jnp.where(ends_Bx2W, NEG_INF, top_Bx2W), width,
                                              seqs_Bx2WxN, beam_Bx2W)
        rows_R = (jnp.arange(batch)[:, None] * width + parent_BxW).reshape(-1)
        logits, cache = generate.step(model, live_seqs[:, :, i].reshape(-1),
                                      s["cache"].gather_rows(rows_R))
        return dict(i=i + 1, logits=logits, cache=cache, live=live, live_seqs=live_seqs,
                    finished=finished, finished_seqs=finished_seqs, finished_any=finished_any)

    s = jax.lax.while_loop(cond, body, state)
    none_finished_B = ~jnp.any(s["finished_any"], axis=1)
    tokens_BxN = jnp.where(none_finished_B[:, None], s["live_seqs"][:, 0],
                           s["finished_seqs"][:, 0])
    score_B = jnp.where(none_finished_B, s["live"][:, 0], s["finished"][:, 0])
    return tokens_BxN, score_B
