"""Decoder-only model: packed attention never leaks across segments, scan == unrolled."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import MICRO_MODEL
from t5x_like.config import num_params
from t5x_like.models.decoder import Decoder

L = 16


def _packed(batch=2):
    segment_ids = np.array([[1] * 6 + [2] * 5 + [3] * 3 + [0] * 2] * batch, np.int32)
    positions = np.array([list(range(6)) + list(range(5)) + list(range(3)) + [0, 0]] * batch,
                         np.int32)
    tokens = np.random.default_rng(0).integers(4, MICRO_MODEL.vocab_size, (batch, L)).astype(
        np.int32)
    return tokens, segment_ids, positions


@pytest.fixture(scope="module")
def model():
    return Decoder(MICRO_MODEL, rngs=nnx.Rngs(0))


def test_param_count_matches_config(model):
    params = nnx.state(model, nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(params)) == num_params(MICRO_MODEL)


def test_changing_one_segment_leaves_other_segments_logits_unchanged(model):
    tokens, seg, pos = _packed()
    base = model(tokens, seg, pos)
    changed = tokens.copy()
    changed[:, 6:11] = (changed[:, 6:11] + 7) % MICRO_MODEL.vocab_size  # segment 2 only
    out = model(changed, seg, pos)
    other = seg != 2
    np.testing.assert_array_equal(np.asarray(base)[other & (seg != 0)],
                                  np.asarray(out)[other & (seg != 0)])
    assert not np.allclose(np.asarray(base)[seg == 2], np.asarray(out)[seg == 2])


def test_packed_segment_equals_the_document_alone(model):
    tokens, seg, pos = _packed(batch=1)
    packed = model(tokens, seg, pos)[0, 6:11]
    alone = model(tokens[:, 6:11], np.ones((1, 5), np.int32), pos[:, 6:11])[0]
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-5)


def test_causal_future_tokens_do_not_change_past_logits(model):
    tokens, seg, pos = _packed(batch=1)
    changed = tokens.copy()
    changed[0, 3] = (changed[0, 3] + 1) % MICRO_MODEL.vocab_size
    a, b = model(tokens, seg, pos), model(changed, seg, pos)
    np.testing.assert_array_equal(a[0, :3], b[0, :3])
    assert not np.allclose(a[0, 3], b[0, 3])


def test_prefix_lm_attends_bidirectionally_over_the_prefix_only(model):
    tokens, seg, pos = _packed(batch=1)
    # Segment 1: positions 0-3 are the prefix (inputs + 1), 4-5 targets; segment 2: 6-7 prefix.
    flags = np.zeros_like(seg)
    flags[0, :4] = 1
    flags[0, 6:8] = 1
    base = model(tokens, seg, pos, flags)
    np.testing.assert_array_equal(model(tokens, seg, pos, np.zeros_like(seg)),
                                  model(tokens, seg, pos))  # no flags: plain causal
    later_prefix = tokens.copy()
    later_prefix[0, 3] = (later_prefix[0, 3] + 1) % MICRO_MODEL.vocab_size
    assert not np.allclose(base[0, 0], model(later_prefix, seg, pos, flags)[0, 0])
    target = tokens.copy()
    target[0, 4] = (target[0, 4] + 1) % MICRO_MODEL.vocab_size
    out = model(target, seg, pos, flags)
    np.testing.assert_array_equal(base[0, :4], out[0, :4])  # targets stay invisible to the prefix
    np.testing.assert_array_equal(base[0, 6:14], out[0, 6:14])  # and to the next segment


def test_fully_padded_row_is_finite(model):
    zeros = np.zeros((1, L), np.int32)
    assert np.isfinite(np.asarray(model(zeros, zeros, zeros))).all()


def test_scanned_and_unrolled_layers_compute_the_same_function():
    scanned = Decoder(MICRO_MODEL, rngs=nnx.Rngs(0))
    unrolled = Decoder(dataclasses.replace(MICRO_MODEL, scan_layers=False), rngs=nnx.Rngs(1))
    stacked = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
    per_layer = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    for i in range(MICRO_MODEL.num_layers):
        per_layer["layers"][i] = jax.tree.map(lambda x: x[i], stacked["layers"])
    per_layer.update({k: v for k, v in stacked.items() if k != "layers"})
    nnx.update(unrolled, per_layer)
    tokens, seg, pos = _packed()
    np.testing.assert_allclose(scanned(tokens, seg, pos), unrolled(tokens, seg, pos),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_does_not_change_gradients(remat):
    tokens, seg, pos = _packed()

    def grads(cfg):
        model = Decoder(cfg, rngs=nnx.Rngs(0))
        return nnx.grad(lambda m: m(tokens, seg, pos).mean())(model)

    ref = jax.tree.leaves(grads(MICRO_MODEL))
    got = jax.tree.leaves(grads(dataclasses.replace(MICRO_MODEL, remat_policy=remat)))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = Decoder(dataclasses.replace(MICRO_MODEL, dtype="bfloat16"), rngs=nnx.Rngs(0))
    tokens, seg, pos = _packed()
    logits = model(tokens, seg, pos)
    assert logits.dtype == jnp.float32 and model.token_embed[...].dtype == jnp.float32
    ref = Decoder(MICRO_MODEL, rngs=nnx.Rngs(0))(tokens, seg, pos)
    np.testing.assert_allclose(logits, ref, atol=0.1)


