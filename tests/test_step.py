"""Step maths: loss sums, exact gradient accumulation, the non-finite guard."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import MICRO_MODEL, random_packed_rows, random_seq2seq_rows
from t5x_like import optim, step
from t5x_like.config import ModelConfig, OptimizerConfig
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder


def test_cross_entropy_sums_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, (2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]])
    sums = step.cross_entropy_sums(logits, targets, weights, z_loss=0.1)
    log_z = np.log(np.exp(logits).sum(-1))
    nll = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    assert float(sums["cross_entropy"]) == pytest.approx((nll * weights).sum(), rel=1e-5)
    assert float(sums["z_loss"]) == pytest.approx(0.1 * (log_z**2 * weights).sum(), rel=1e-5)
    assert float(sums["weight"]) == 3
    assert float(sums["correct"]) == ((logits.argmax(-1) == targets) * weights).sum()


def test_a_target_tied_for_the_largest_logit_counts_as_correct():
    logits = np.array([[[2.0, 2.0, 1.0], [0.0, 3.0, 1.0]]], np.float32)
    sums = step.cross_entropy_sums(logits, np.array([[1, 2]]), np.ones((1, 2)), z_loss=0.0)
    assert float(sums["correct"]) == 1.0  # token 0: tied with index 0; token 1: 1.0 < 3.0


def test_loss_sums_reduce_the_vocabulary_without_an_index():
    """Accuracy shares logsumexp's max: a max and a sum over V, no (value, index) argmax."""
    f = jax.jit(lambda l, t, w: step.cross_entropy_sums(l, t, w, z_loss=1e-4))
    hlo = f.lower(jnp.zeros((2, 3, 11)), jnp.zeros((2, 3), jnp.int32),
                  jnp.ones((2, 3))).compile().as_text()
    over_v = [ln for ln in hlo.splitlines() if " reduce(" in ln and "dimensions={2}" in ln]
    assert len(over_v) == 2, over_v
    assert not any("s32" in ln.split(" reduce(")[0] for ln in over_v), over_v


def test_all_masked_rows_give_zero_loss_not_nan():
    sums = step.cross_entropy_sums(np.zeros((1, 4, 7)), np.zeros((1, 4), int), np.zeros((1, 4)),
                                   z_loss=1e-4)
    assert all(float(v) == 0.0 for v in sums.values())


@pytest.fixture(scope="module")
def setup():
    model = Decoder(MICRO_MODEL, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tx, schedule = optim.make_optimizer(OptimizerConfig(warmup_steps=1), 10)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    batch = {k: jnp.asarray(v) for k, v in random_packed_rows(8, 16, MICRO_MODEL.vocab_size)
             .items()}
    # Uneven loss weights across micro-batches: normalizing per micro-batch would be wrong.
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].at[:4, 8:].set(0)
    fn = functools.partial(step.train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                           z_loss=1e-4)
    return state, batch, fn


def test_gradient_accumulation_equals_full_batch(setup):
    state, batch, fn = setup
    _, full = jax.jit(fn)(state, batch)
    _, acc = jax.jit(functools.partial(fn, grad_accum_steps=4))(state, batch)
    for key in ("loss", "grad_norm", "tokens", "accuracy"):
        assert float(acc[key]) == pytest.approx(float(full[key]), rel=1e-5), key
    graphdef = fn.keywords["graphdef"]
    grads = {n: jax.jit(lambda p, b, n=n: step.accumulated_grads(
        p, graphdef, b, z_loss=1e-4, grad_accum_steps=n)[0])(state["params"], batch)
        for n in (1, 4)}
    # float32 summation order differs between the two; a normalization bug (per micro-batch
    # means) would be off by tens of percent, so compare against each tensor's scale.
    for a, b in zip(jax.tree.leaves(grads[1]), jax.tree.leaves(grads[4])):
        assert float(jnp.abs(a - b).max()) <= 1e-4 * float(jnp.abs(a).max())


def _assert_chunks_equal_the_whole_row(graphdef, params, batch, chunks=4):
    """Loss sums and gradients with the vocabulary in `chunks` pieces equal the whole row's."""
    grads = {n: jax.jit(lambda p, n=n: step.accumulated_grads(
        p, graphdef, batch, z_loss=1e-4, grad_accum_steps=1, loss_chunks=n))(params)
        for n in (1, chunks)}
    for key, value in grads[1][1].items():
        assert float(grads[chunks][1][key]) == pytest.approx(float(value), rel=1e-5), key
    for a, b in zip(jax.tree.leaves(grads[1][0]), jax.tree.leaves(grads[chunks][0])):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * float(jnp.abs(a).max())


def test_chunked_loss_equals_the_whole_row_with_gradients(setup):
    """TrainConfig.loss_chunks: the same sums and gradients, the vocabulary a piece at a time."""
    state, batch, fn = setup
    _assert_chunks_equal_the_whole_row(fn.keywords["graphdef"], state["params"], batch)


@pytest.mark.parametrize("tied", [False, True], ids=["lm_head", "tied-scaled"])
def test_chunked_encoder_decoder_loss_equals_the_whole_row(tied):
    """T5's logits through slices of its output kernel: untied, and tied with T5 v1.0's
    d_model ** -0.5 scaling of the hidden states."""
    cfg = ModelConfig(architecture="encoder_decoder", vocab_size=64, d_model=16, num_layers=2,
                      num_encoder_layers=2, num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
                      tie_embeddings=tied)
    graphdef, params = nnx.split(EncoderDecoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(params)
    batch = {k: jnp.asarray(v) for k, v in random_seq2seq_rows(4, 12, 16, 64).items()}
    _assert_chunks_equal_the_whole_row(graphdef, params, batch)


def test_non_finite_loss_leaves_state_untouched(setup):
    state, batch, fn = setup
    poisoned = jax.tree.map(lambda x: x, state)
    poisoned["params"]["final_norm"]["scale"] = state["params"]["final_norm"]["scale"].at[0].set(
        jnp.nan)
    new_state, metrics = jax.jit(fn)(poisoned, batch)
    assert not bool(metrics["finite"])
    assert int(new_state["step"]) == 0
    for a, b in zip(jax.tree.leaves(new_state["opt_state"]), jax.tree.leaves(state["opt_state"])):
        np.testing.assert_array_equal(a, b)


def _state_copies(hlo_text: str) -> int:
    """Copies of `state` arguments in the entry computation (scan carries and the like aside)."""
    entry = hlo_text[hlo_text.index("\nENTRY"):]
    return sum(" copy(%state" in line for line in entry[:entry.index("\n}")].splitlines())


def test_donated_state_is_updated_in_place(setup):
    """The non-finite guard must not make XLA copy the donated state before updating it (a
    select between old and new state copied every parameter and Adam moment)."""
    state, batch, fn = setup
    hlo = jax.jit(fn, donate_argnums=0).lower(state, batch).compile().as_text()
    assert _state_copies(hlo) <= 1, _state_copies(hlo)  # the step counter may be copied


def test_train_step_reduces_loss_on_a_repeated_batch(setup):
    state, batch, fn = setup
    jitted = jax.jit(fn)
    losses = []
    for _ in range(5):
        state, metrics = jitted(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert int(state["step"]) == 5


def test_eval_metrics_perplexity_is_exp_loss():
    out = step.eval_metrics({"cross_entropy": 20.0, "correct": 5.0, "weight": 10.0})
    assert out["eval_loss"] == 2.0 and out["eval_accuracy"] == 0.5
    assert out["eval_perplexity"] == pytest.approx(np.exp(2.0), rel=1e-6)


@pytest.mark.parametrize("architecture", ["encoder_decoder", "decoder"])
def test_all_masked_meco_denoising_rows_are_finite(stdlib_data, architecture):
    """Real metadata-conditioned UL2 rows: a row, or a whole batch, without loss gives no NaN."""
    from t5x_like import inputs, trainer
    from t5x_like.config import (DataConfig, ModelConfig, ObjectiveConfig, RunConfig,
                                 TaskConfig)
    from t5x_like.data import rows as rows_lib
    model = dataclasses.replace(MICRO_MODEL, vocab_size=stdlib_data.tokenizer.vocab_size,
                                architecture=architecture, num_kv_heads=4,
                                mlp_activation="gelu_tanh" if architecture == "encoder_decoder"
                                else MICRO_MODEL.mlp_activation)
    cfg = RunConfig(model=model, data=DataConfig(data_dir=str(stdlib_data.data_dir),
                                                 task_feature_lengths={"inputs": 48, "targets": 32}),
                    objective=ObjectiveConfig(name="ul2", metadata_field="module",
                                              metadata_kind="value"))
    objective = rows_lib.objective_for(cfg, stdlib_data.tokenizer)
    rows = inputs.task_rows(cfg, objective, TaskConfig(), "train", stdlib_data.tokenizer, "true")
    batch = {k: jnp.asarray(v) for k, v in rows(np.arange(8)).items()}
    graphdef, params = nnx.split(trainer.default_model_factory(cfg)(nnx.Rngs(0)), nnx.Param)
    params = nnx.to_pure_dict(params)
    tx, schedule = optim.make_optimizer(OptimizerConfig(warmup_steps=1), 10)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    fn = jax.jit(functools.partial(step.train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                                   z_loss=1e-4))
    one_masked = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"].at[0].set(0))
    _, metrics = fn(state, one_masked)
    assert bool(metrics["finite"]) and float(metrics["tokens"]) > 0
    none = dict(batch, decoder_loss_weights=jnp.zeros_like(batch["decoder_loss_weights"]))
    new_state, metrics = fn(state, none)
    assert bool(metrics["finite"]) and float(metrics["loss"]) == 0.0
    assert float(metrics["grad_norm"]) == 0.0 and int(new_state["step"]) == 1
