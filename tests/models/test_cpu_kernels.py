"""XLA:CPU kernels: each hand-written backward pass and re-ordering equals the plain reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models import attention as reference
from t5x_like.models import cpu_kernels
from t5x_like.models.rope import plain_frequencies


@pytest.mark.parametrize("x_shape, kernel_shape, num_in", [
    ((2, 5, 6), (6, 3), 1),        # d_out smaller than x: the transposed-kernel branch
    ((2, 5, 3), (3, 7), 1),        # x smaller than d_out: the direct branch
    ((2, 5, 2, 4), (2, 4, 6), 2),  # attention output projection: heads x head_dim -> embed
    ((2, 5, 6), (6, 2, 4), 1),     # query projection: embed -> heads x head_dim
])
def test_dense_gradients_equal_autodiff(x_shape, kernel_shape, num_in):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    out_shape = x_shape[:len(x_shape) - num_in] + kernel_shape[num_in:]
    cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    axes = (tuple(range(len(x_shape) - num_in, len(x_shape))), tuple(range(num_in)))

    def loss(fn):
        return lambda x, kernel: jnp.sum(cotangent * fn(x, kernel))

    ours = jax.value_and_grad(loss(lambda x, w: cpu_kernels.dense(x, w, num_in)), (0, 1))(x, kernel)
    ref = jax.value_and_grad(loss(lambda x, w: jnp.tensordot(x, w, axes)), (0, 1))(x, kernel)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    for got, want in zip(ours[1], ref[1]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_stacked_qkv_and_ordered_gate_up_equal_separate_matmuls():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
    wq = jnp.asarray(rng.normal(size=(8, 6, 4)), jnp.float32)  # 6 query heads, 2 kv heads
    wk, wv = (jnp.asarray(rng.normal(size=(8, 2, 4)), jnp.float32) for _ in range(2))
    for got, w in zip(cpu_kernels.qkv(x, wq, wk, wv), (wq, wk, wv)):
        np.testing.assert_allclose(got, jnp.einsum("bld,dhe->blhe", x, w), rtol=1e-5, atol=1e-5)
    wg, wu = (jnp.asarray(rng.normal(size=(8, 10)), jnp.float32) for _ in range(2))
    for got, w in zip(cpu_kernels.gate_up(x, wg, wu), (wg, wu)):
        np.testing.assert_allclose(got, x @ w, rtol=1e-5, atol=1e-5)


def test_rope_table_equals_the_direct_formula():
    positions = jnp.asarray(np.random.default_rng(0).integers(0, 512, size=(2, 512)))
    inv_freq = plain_frequencies(64, 10_000.0)
    table = cpu_kernels.rope_tables(positions, inv_freq, 1.0, 512)
    angles = np.asarray(positions)[..., None].astype(np.float32) * inv_freq
    for got, fn in zip(table, (np.cos, np.sin)):
        # numpy's cos/sin of the same float32 angles; XLA's own (the direct path) differ by
        # up to ~1e-4 at angles of a few hundred.
        np.testing.assert_allclose(np.asarray(got)[:, :, 0], fn(angles.astype(np.float64)),
                                   rtol=0, atol=2e-7)
    for a, b in zip(table, reference.rope_tables(positions, inv_freq)):
        np.testing.assert_allclose(a, b, rtol=0, atol=3e-4)


@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_gradients_equal_autodiff_of_the_reference(with_bias):
    """Forward and every gradient (q, k, v and T5's bias) on a packed causal batch with two
    segments, a padded tail and an all-padding row."""
    rng = np.random.default_rng(1)
    b, l, h, kv, e = 3, 12, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(b, l, kv, e)), jnp.float32) for _ in range(2))
    bias = jnp.asarray(rng.normal(size=(b, h, l, l)), jnp.float32) if with_bias else None
    seg = jnp.asarray([[1] * 7 + [2] * 3 + [0] * 2, [1] * 12, [0] * 12])
    mask = reference.attention_mask(seg, seg, causal=True)
    cotangent = jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.float32)

    def loss(fn):
        return lambda *args: jnp.sum(cotangent * fn(*args[:3], mask, args[3]))

    args = (q, k, v, bias)
    argnums = (0, 1, 2, 3) if with_bias else (0, 1, 2)
    ours = jax.value_and_grad(loss(cpu_kernels.attention), argnums)(*args)
    ref = jax.value_and_grad(loss(reference.dot_product_attention), argnums)(*args)
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
    mask = reference.attention_mask(seg, seg, causal=True)
    grads = jax.grad(lambda q, k, v: jnp.sum(cpu_kernels.attention(q, k, v, mask)
                                             .astype(jnp.float32)), (0, 1, 2))(q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3
