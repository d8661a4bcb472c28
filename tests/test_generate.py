"""Sampling rules and the decode loop."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from conftest import MICRO_MODEL
from t5x_like.generate import generate, sample_logits
from t5x_like.models.decoder import Decoder

LOGITS = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))


def _draws(n=400, **kw):
    keys = jax.random.split(jax.random.key(0), n)
    return np.asarray(jax.vmap(lambda k: sample_logits(LOGITS, k, **kw))(keys))


def test_greedy_is_argmax():
    assert int(sample_logits(LOGITS, jax.random.key(0), temperature=0.0, top_k=0,
                             top_p=1.0)) == 0


def test_top_k_and_top_p_restrict_the_support():
    assert set(_draws(temperature=1.0, top_k=2, top_p=1.0)) == {0, 1}
    assert set(_draws(temperature=1.0, top_k=0, top_p=0.7)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(_draws(temperature=1.0, top_k=0, top_p=0.4)) == {0}
    assert set(_draws(temperature=1.0, top_k=0, top_p=1.0)) == {0, 1, 2, 3}


def test_greedy_decode_matches_step_by_step_argmax():
    model = Decoder(MICRO_MODEL, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    prompt = [3, 17, 42]
    out = generate(nnx.to_pure_dict(params), graphdef, prompt, max_new_tokens=5, eos_id=-1)
    seq = list(prompt)
    for _ in range(5):
        n = len(seq)
        logits = model(np.array([seq]), np.ones((1, n), np.int32), np.arange(n)[None])
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert out == seq[3:]
