"""The reference attention maths: RoPE convention, packed and prefix-LM masks, GQA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models.attention import (apply_rope, attention_mask,
                                       dot_product_attention, rope_tables)
from t5x_like.models.rope import plain_frequencies


def _rope(x, positions, theta=10_000.0):
    return apply_rope(x, rope_tables(jnp.asarray(positions),
                                   plain_frequencies(x.shape[-1], theta)))


def test_rope_is_rotate_half_and_relative():
    x = np.random.default_rng(0).normal(size=(1, 3, 1, 8)).astype(np.float32)
    pos = np.array([[0, 1, 5]])
    out = np.asarray(_rope(x, pos))
    # Hugging Face Llama: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
    inv = 10_000.0 ** (-np.arange(4) / 4)
    ang = pos[0][:, None] * inv
    cos, sin = np.concatenate([np.cos(ang)] * 2, -1), np.concatenate([np.sin(ang)] * 2, -1)
    rot = np.concatenate([-x[0, :, 0, 4:], x[0, :, 0, :4]], -1)
    np.testing.assert_allclose(out[0, :, 0], x[0, :, 0] * cos + rot * sin, rtol=1e-5, atol=1e-6)
    # Scores depend only on relative position: <R(p)q, R(p+k)k> is independent of p.
    q, k = x[:, :1], x[:, 1:2]
    s = [float(np.sum(_rope(q, [[p]], 1e4) * _rope(k, [[p + 3]], 1e4))) for p in (0, 7)]
    assert s[0] == pytest.approx(s[1], rel=1e-4)


def test_grouped_query_attention_equals_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 5, 2, 8)).astype(np.float32) for _ in range(2))
    seg = np.ones((2, 5), np.int32)
    mask = attention_mask(seg, seg, causal=True)
    gqa = dot_product_attention(q, k, v, mask)
    mha = dot_product_attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), mask)
    # and each head is the textbook softmax(q.k masked).v
    scores = np.einsum("lhe,mhe->hlm", q[0], np.repeat(k, 2, axis=2)[0])
    scores = np.where(np.asarray(mask)[0], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    textbook = np.einsum("hlm,mhe->lhe", probs, np.repeat(v, 2, axis=2)[0])
    np.testing.assert_allclose(gqa[0], textbook, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gqa, mha, rtol=1e-5, atol=1e-6)


def test_attention_mask_blocks_padding_and_other_segments():
    seg = np.array([[1, 1, 2, 0]])
    mask = np.asarray(attention_mask(seg, seg, causal=True))[0, 0]
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)


def test_prefix_lm_mask_is_bidirectional_over_each_prefix_only():
    seg = np.array([[1, 1, 1, 2, 2, 2, 0]])
    prefix = np.array([[1, 1, 0, 1, 0, 0, 0]])
    mask = np.asarray(attention_mask(seg, seg, causal=True, prefix_BxL=prefix))[0, 0]
    expected = np.array([
        [1, 1, 0, 0, 0, 0, 0],  # prefix token sees the whole prefix of its segment
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0],  # targets stay causal
        [0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)


def test_reference_attention_supports_forward_mode_autodiff():
    """No custom_vjp on the reference path: jvp (and so jax.hessian, jacfwd) works."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 4, 2, 4)), jnp.float32) for _ in range(3))
    mask = attention_mask(jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32), causal=True)
    _, tangent = jax.jvp(lambda q: dot_product_attention(q, k, v, mask), (q,), (jnp.ones_like(q),))
    assert np.isfinite(np.asarray(tangent)).all()
