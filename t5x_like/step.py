"""The maths of one training or evaluation step, as module-level pure functions.

A train state is a plain dict {'step', 'params', 'opt_state'} of arrays, so jit shardings, donation
and orbax checkpoints all see an ordinary pytree. The model enters as an NNX graph definition plus
its parameter tree; nothing here knows the mesh.

Batches are dicts of [B, L] int32 arrays with T5X's feature names: decoder_input_tokens,
decoder_target_tokens, decoder_segment_ids, decoder_positions, decoder_loss_weights; prefix-LM
batches add decoder_causal_attention, encoder-decoder batches add encoder_input_tokens,
encoder_segment_ids and encoder_positions (over their own length).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

Batch = dict[str, jax.Array]
TrainState = dict[str, Any]


def cross_entropy_sums(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array,
                       z_loss: float) -> dict[str, jax.Array]:
    """Weighted sums (not means) of the loss terms, so micro-batches and hosts add up exactly.

    Returns cross-entropy, z-loss (z_loss * log(Z)^2, PaLM), correct predictions and weight.
    A prediction is correct when no logit exceeds the target's (a tie counts as correct). XLA
    merges that max with logsumexp's own; an argmax made the pass over the [B, L, V] logits a
    (value, index) reduction, which XLA:CPU ran ~4x slower (164 -> 39 ms at 2048 x 32000).
    A row whose weights are all zero contributes zeros, never NaN.
    """
    logits = logits_BxLxV.astype(jnp.float32)
    target_logit_BxL = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return _sums(jax.nn.logsumexp(logits, axis=-1), target_logit_BxL,
                 jnp.max(logits, axis=-1), weights_BxL, z_loss)


def _sums(log_z_BxL: jax.Array, target_logit_BxL: jax.Array, max_logit_BxL: jax.Array,
          weights_BxL: jax.Array, z_loss: float) -> dict[str, jax.Array]:
    weights = weights_BxL.astype(jnp.float32)
    correct = (target_logit_BxL >= max_logit_BxL).astype(jnp.float32)
    return {
        "cross_entropy": jnp.sum((log_z_BxL - target_logit_BxL) * weights),
        "z_loss": z_loss * jnp.sum(jnp.square(log_z_BxL) * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }


def _zero_sums() -> dict[str, jax.Array]:
    """`cross_entropy_sums`' terms at zero: the start of a sum over micro-batches."""
    return {k: jnp.zeros((), jnp.float32) for k in ("cross_entropy", "z_loss", "correct",
                                                     "weight")}


def model_hidden(model: nnx.Module, batch: Batch) -> jax.Array:
    """Final hidden states [B, L, D] of either architecture (chosen by the batch's features),
    which `model.logits` projects onto the vocabulary."""
    if "encoder_input_tokens" in batch:
        return model.hidden(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                            batch["encoder_segment_ids"], batch["decoder_segment_ids"],
                            batch["encoder_positions"], batch["decoder_positions"])
    return model.hidden(batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                        batch["decoder_positions"], batch.get("decoder_causal_attention"))


def chunked_loss_sums(model: nnx.Module, hidden_BxLxD: jax.Array, targets_BxL: jax.Array,
                      weights_BxL: jax.Array, z_loss: float, chunks: int
                      ) -> dict[str, jax.Array]:
    """`cross_entropy_sums` of model.logits(hidden), `chunks` pieces of the vocabulary at a time.

    The normalizer is an online logsumexp over the pieces, and each piece's logits are
    recomputed in the backward pass (jax.checkpoint), so the float32 [B, L, V] logits and their
    gradient never exist whole: at 8k tokens x 128k vocabulary that is 4 GB a row, the largest
    buffer of the step. Piece c holds the columns c, c + chunks, ...: each shard of a
    vocabulary-sharded kernel keeps its columns.

    Pieces of the vocabulary, not of the row: a piece then needs only its slice of the output
    kernel, so FSDP gathers the kernel and reduces its gradient once per pass, and each slice's
    gradient is one matmul, as unchunked. The hidden states' gradient sums over the pieces, in
    float32 because the loop reads a float32 copy. The measurements behind both choices are in
    docs/benchmarks.md ("Loss chunks over the vocabulary").
    """
    if chunks == 1:
        return cross_entropy_sums(model.logits(hidden_BxLxD), targets_BxL, weights_BxL, z_loss)
    kernel_DxV = model.output_kernel()
    d_model, vocab = kernel_DxV.shape
    kernels_CxDxW = jnp.moveaxis(kernel_DxV.reshape(d_model, vocab // chunks, chunks), 2, 0)
    piece_BxL, column_BxL = targets_BxL % chunks, targets_BxL // chunks
    hidden32_BxLxD = hidden_BxLxD.astype(jnp.float32)

    @jax.checkpoint
    def body(carry, xs):
        max_BxL, sum_BxL, target_BxL = carry
        kernel_DxW, c = xs
        logits_BxLxW = model.logits(hidden32_BxLxD.astype(hidden_BxLxD.dtype), kernel_DxW)
        # lse = max + log(sum exp(logits - max)) does not depend on max: no gradient through it
        new_max_BxL = jax.lax.stop_gradient(jnp.maximum(max_BxL, jnp.max(logits_BxLxW, -1)))
        sum_BxL = (sum_BxL * jnp.exp(max_BxL - new_max_BxL)
                   + jnp.sum(jnp.exp(logits_BxLxW - new_max_BxL[..., None]), -1))
        picked_BxL = jnp.take_along_axis(logits_BxLxW, column_BxL[..., None], axis=-1)[..., 0]
        target_BxL = jnp.where(piece_BxL == c, picked_BxL, target_BxL)
        return (new_max_BxL, sum_BxL, target_BxL), None

    zeros_BxL = jnp.zeros(targets_BxL.shape, jnp.float32)
    (max_BxL, sum_BxL, target_BxL), _ = jax.lax.scan(
        body, (jnp.full_like(zeros_BxL, -jnp.inf), zeros_BxL, zeros_BxL),
        (kernels_CxDxW, jnp.arange(chunks)))
    return _sums(max_BxL + jnp.log(sum_BxL), target_BxL, max_BxL, weights_BxL, z_loss)


def forward_sums(params: Any, graphdef: nnx.GraphDef, batch: Batch, z_loss: float,
                 loss_chunks: int = 1) -> dict[str, jax.Array]:
    """Run the model on a packed batch and return the loss sums of `cross_entropy_sums`."""
    model = nnx.merge(graphdef, params)
    return chunked_loss_sums(model, model_hidden(model, batch),
                             batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                             z_loss, loss_chunks)


def _micro_batches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B/num, ...], row i of micro-batch j being row j*B/num + i."""
    return jax.tree.map(lambda x: x.reshape(num, x.shape[0] // num, *x.shape[1:]), batch)


def accumulated_grads(params: Any, graphdef: nnx.GraphDef, batch: Batch, *, z_loss: float,
                      grad_accum_steps: int, loss_chunks: int = 1
                      ) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of the summed loss over `grad_accum_steps` sequential micro-batches, and sums.

    Summing first and normalizing once by the total weight makes accumulation exactly the
    full-batch gradient, however the loss weights are spread across micro-batches.
    """
    def summed_loss(p, micro):
        sums = forward_sums(p, graphdef, micro, z_loss, loss_chunks)
        return sums["cross_entropy"] + sums["z_loss"], sums

    grad_fn = jax.grad(summed_loss, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn(params, batch)

    def body(carry, micro):
        grads, sums = grad_fn(params, micro)
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    (grads, sums), _ = jax.lax.scan(body, (zero_grads, _zero_sums()),
                                    _micro_batches(batch, grad_accum_steps))
    return grads, sums


def train_step(state: TrainState, batch: Batch, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, schedule: Callable, z_loss: float,
               grad_accum_steps: int = 1, loss_chunks: int = 1
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. A non-finite loss or gradient leaves the state untouched.

    Skipping the update (rather than applying NaNs) means the state the trainer may checkpoint is
    always finite; the `finite` metric tells the trainer to stop with an error. The skip is a
    conditional, not a select between the old and the new state: a select reads the old
    (donated) buffers after the update could have overwritten them, so XLA copied every
    parameter and optimizer moment at the start of each step (120 copies on the tiny model);
    for the same reason `param_norm` is the norm after the update.
    """
    grads, sums = accumulated_grads(state["params"], graphdef, batch, z_loss=z_loss,
                                    grad_accum_steps=grad_accum_steps, loss_chunks=loss_chunks)
    denom = jnp.maximum(sums["weight"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = (sums["cross_entropy"] + sums["z_loss"]) / denom
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(old: TrainState) -> TrainState:
        updates, opt_state = tx.update(grads, old["opt_state"], old["params"])
        return {"step": old["step"] + 1, "params": optax.apply_updates(old["params"], updates),
                "opt_state": opt_state}

    new_state = jax.lax.cond(finite, update, lambda old: old, state)
    metrics = {
        "loss": loss,
        "cross_entropy": sums["cross_entropy"] / denom,
        "z_loss": sums["z_loss"] / denom,
        "accuracy": sums["correct"] / denom,
        "tokens": sums["weight"],
        "grad_norm": grad_norm,
        "param_norm": optax.tree.norm(new_state["params"]),
        "learning_rate": schedule(state["step"]),
        "finite": finite,
    }
    return new_state, metrics


def eval_step(params: Any, batch: Batch, *, graphdef: nnx.GraphDef) -> dict[str, jax.Array]:
    """Loss sums of one eval batch (summed across batches by the caller, then normalized)."""
    return forward_sums(params, graphdef, batch, z_loss=0.0)


def eval_metrics(total: dict[str, float]) -> dict[str, float]:
    """Turn summed eval sums into loss, perplexity and token accuracy."""
    weight = max(total["weight"], 1.0)
    loss = total["cross_entropy"] / weight
    return {"eval_loss": loss, "eval_perplexity": float(jnp.exp(jnp.minimum(loss, 80.0))),
            "eval_accuracy": total["correct"] / weight, "eval_tokens": total["weight"]}
