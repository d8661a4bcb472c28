"""Attention maths: RoPE convention, packed masks, GQA, and the hand-written backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models.attention import (MASK_VALUE, apply_rope, attention_mask,
                                       dot_product_attention, rope_tables)


def _rope(x, positions, theta=10_000.0):
    return apply_rope(x, rope_tables(jnp.asarray(positions), x.shape[-1], theta))


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


def test_rope_table_lookup_equals_the_direct_formula_and_rejects_far_positions():
    positions = np.random.default_rng(0).integers(0, 512, size=(2, 512))
    inv = np.float32(10_000.0) ** (-np.arange(32, dtype=np.float32) / np.float32(32))
    angles = positions[..., None].astype(np.float32) * inv  # the float32 products both use
    table = rope_tables(jnp.asarray(positions), 64, 10_000.0, max_position=512)
    for got, fn in zip(table, (np.cos, np.sin)):
        # The table is as accurate as float64 maths on the same float32 angles (XLA's own
        # cos/sin, the direct path, are off by up to ~1e-4 at angles of a few hundred).
        np.testing.assert_allclose(np.asarray(got)[:, :, 0], fn(angles.astype(np.float64)),
                                   rtol=0, atol=2e-7)
    direct = rope_tables(jnp.asarray(positions), 64, 10_000.0)
    for a, b in zip(table, direct):
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-4)
    cos, sin = rope_tables(jnp.asarray([[0, 7, 8]]), 4, 10_000.0, max_position=8)
    assert np.isfinite(cos[0, :2]).all()
    assert np.isnan(cos[0, 2]).all() and np.isnan(sin[0, 2]).all()


def test_grouped_query_attention_equals_repeated_kv_heads():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 4, 8)).astype(np.float32)
    k, v = (rng.normal(size=(2, 5, 2, 8)).astype(np.float32) for _ in range(2))
    seg = np.ones((2, 5), np.int32)
    mask = attention_mask(seg, seg, causal=True)
    gqa = dot_product_attention(q, k, v, mask)
    mha = dot_product_attention(q, np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2), mask)
    np.testing.assert_allclose(gqa, mha, rtol=1e-5, atol=1e-6)


def test_attention_mask_blocks_padding_and_other_segments():
    seg = np.array([[1, 1, 2, 0]])
    mask = np.asarray(attention_mask(seg, seg, causal=True))[0, 0]
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(mask, expected)


def _reference_attention(q, k, v, mask, bias, scale):
    """Textbook GQA attention, differentiated by autodiff: what the custom VJP must equal."""
    b, l, h, e = q.shape
    kv_heads = k.shape[2]
    k, v = jnp.repeat(k, h // kv_heads, axis=2), jnp.repeat(v, h // kv_heads, axis=2)
    scores = jnp.einsum("blhe,bmhe->bhlm", q, k) * (e ** -0.5 if scale is None else scale)
    if bias is not None:
        scores = scores + bias
    scores = jnp.where(mask, scores, MASK_VALUE)
    return jnp.einsum("bhlm,bmhe->blhe", jax.nn.softmax(scores, axis=-1), v)


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_gradients_equal_autodiff(with_bias):
    """Forward and every gradient (q, k, v and T5's bias) match autodiff of the reference, on a
    packed causal batch with two segments, a padded tail and an all-padding row."""
    rng = np.random.default_rng(1)
    b, l, h, kv, e = 3, 12, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, l, kv, e)), jnp.float32) for _ in range(2))
    bias = jnp.asarray(rng.normal(size=(b, h, l, l)), jnp.float32) if with_bias else None
    seg = jnp.asarray([[1] * 7 + [2] * 3 + [0] * 2, [1] * 12, [0] * 12])
    mask = attention_mask(seg, seg, causal=True)
    scale = 1.0 if with_bias else None
    cotangent = jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.float32)

    def loss(fn):
        return lambda *args: jnp.sum(cotangent * fn(*args[:3], mask, args[3], scale))

    args = (q, k, v, bias)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    ours = jax.value_and_grad(loss(dot_product_attention), argnums)(*args)
    ref = jax.value_and_grad(loss(_reference_attention), argnums)(*args)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5)
    for name, got, want in zip("qkvb", ours[1], ref[1]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5, err_msg=f"d_{name}")
    # An all-padding row neither attends nor sends gradients anywhere.
    assert not np.any(np.asarray(ours[1][0])[2])


def test_attention_backward_keeps_the_compute_dtype():
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.bfloat16)
    k, v = (jnp.asarray(rng.normal(size=(1, 6, 1, 4)), jnp.bfloat16) for _ in range(2))
    seg = jnp.ones((1, 6), jnp.int32)
    mask = attention_mask(seg, seg, causal=True)
    grads = jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask)
                                             .astype(jnp.float32)), (0, 1, 2))(q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
