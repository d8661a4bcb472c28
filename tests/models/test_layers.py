"""Building blocks: `dense`'s hand-written backward pass equals autodiff of a plain contraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models.layers import dense


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

    ours = jax.value_and_grad(loss(lambda x, w: dense(x, w, num_in)), (0, 1))(x, kernel)
    ref = jax.value_and_grad(loss(lambda x, w: jnp.tensordot(x, w, axes)), (0, 1))(x, kernel)
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    for got, want in zip(ours[1], ref[1]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "relu"])
def test_mlp_equals_the_textbook_formula_with_gradients(activation):
    """The gated MLP orders its gate and up matmuls with a barrier; still the textbook block."""
    from flax import nnx

    from t5x_like.models.layers import MLP, MLP_ACTIVATIONS
    mlp = MLP(d_model=6, mlp_dim=10, activation=activation, dtype=jnp.float32,
              param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(mlp)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 6)), jnp.float32)
    act = MLP_ACTIVATIONS[activation]

    def textbook(p, x):
        w = {k: v[...] for k, v in p.items()}
        hidden = act(x @ w["gate"]) * (x @ w["up"]) if "gate" in w else act(x @ w["up"])
        return jnp.sum(jnp.sin(hidden @ w["down"]))

    def ours(p, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x)))

    np.testing.assert_allclose(ours(params, x), textbook(params, x), rtol=1e-6)
    got, want = jax.grad(ours, (0, 1))(params, x), jax.grad(textbook, (0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_attention_block_equals_separate_q_k_v_projections():
    """q, k and v run as one stacked matmul; query head h must still pair with kv head h // G."""
    from flax import nnx

    from t5x_like.models.attention import (apply_rope, attention_mask, dot_product_attention,
                                           rope_tables)
    from t5x_like.models.layers import Attention
    attn = Attention(d_model=8, num_heads=6, num_kv_heads=2, head_dim=4, rope_theta=1e4,
                     dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(attn)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 8)), jnp.float32)
    segments = jnp.asarray([[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
    positions = jnp.asarray([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    rope, mask = rope_tables(positions, 4, 1e4, max_position=5), attention_mask(
        segments, segments, causal=True)

    def separate(p, x):
        w = {k: v[...] for k, v in p.items()}
        q = apply_rope(jnp.einsum("bld,dhe->blhe", x, w["query"]), rope)
        k = apply_rope(jnp.einsum("bld,dke->blke", x, w["key"]), rope)
        v = jnp.einsum("bld,dke->blke", x, w["value"])
        out = dot_product_attention(q, k, v, mask)
        return jnp.sum(jnp.sin(jnp.einsum("blhe,hed->bld", out, w["out"])))

    def ours(p, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x, rope, mask)))

    np.testing.assert_allclose(ours(params, x), separate(params, x), rtol=1e-6)
    got, want = jax.grad(ours, (0, 1))(params, x), jax.grad(separate, (0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
