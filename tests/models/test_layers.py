"""Building blocks equal their textbook formulas, with gradients, on every CPU-runnable kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_like.models.attention import apply_rope, attention_mask, dot_product_attention
from t5x_like.models.layers import MLP, MLP_ACTIVATIONS, Attention
from t5x_like.models.ops import Kernels
from t5x_like.models.rope import plain_frequencies

KERNELS = [Kernels("xla"), Kernels("cpu")]


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda k: k.attention_impl)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "relu"])
def test_mlp_equals_the_textbook_formula_with_gradients(activation, kernels):
    mlp = MLP(d_model=6, mlp_dim=10, activation=activation, dtype=jnp.float32,
              param_dtype=jnp.float32, kernels=kernels, rngs=nnx.Rngs(0))
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


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda k: k.attention_impl)
def test_attention_block_equals_separate_q_k_v_projections(kernels):
    """Query head h must pair with kv head h // G whichever way q, k and v are computed."""
    attn = Attention(d_model=8, num_heads=6, num_kv_heads=2, head_dim=4, dtype=jnp.float32,
                     param_dtype=jnp.float32, kernels=kernels, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(attn)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 8)), jnp.float32)
    segments = jnp.asarray([[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]])
    positions = jnp.asarray([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]])
    rope = Kernels("xla").rope(positions, plain_frequencies(4, 1e4))
    mask = attention_mask(segments, segments, causal=True)

    def separate(p, x):
        w = {k: v[...] for k, v in p.items()}
        q = apply_rope(jnp.einsum("bld,dhe->blhe", x, w["query"]), rope) * 0.5
        k = apply_rope(jnp.einsum("bld,dke->blke", x, w["key"]), rope)
        v = jnp.einsum("bld,dke->blke", x, w["value"])
        out = dot_product_attention(q, k, v, mask)
        return jnp.sum(jnp.sin(jnp.einsum("blhe,hed->bld", out, w["out"])))

    def ours(p, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x, rope, segments)))

    np.testing.assert_allclose(ours(params, x), separate(params, x), rtol=1e-5)
    got, want = jax.grad(ours, (0, 1))(params, x), jax.grad(separate, (0, 1))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
