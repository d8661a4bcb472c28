"""Schedules and optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import optim
from t5x_like.config import OptimizerConfig


def lr(schedule, step):
    return float(schedule(jnp.asarray(step)))


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd", "constant"])
def test_warmup_is_linear_to_the_peak(name):
    s = optim.make_schedule(OptimizerConfig(schedule=name, warmup_steps=10, learning_rate=1.0),
                            100)
    assert lr(s, 0) == pytest.approx(0.1)
    assert lr(s, 4) == pytest.approx(0.5)
    assert lr(s, 9) == pytest.approx(1.0)


def test_cosine_and_linear_end_at_the_end_fraction():
    for name in ("cosine", "linear"):
        s = optim.make_schedule(OptimizerConfig(schedule=name, warmup_steps=10, learning_rate=2.0,
                                                end_lr_fraction=0.1), 100)
        assert lr(s, 100) == pytest.approx(0.2, rel=1e-4)
        assert lr(s, 55) < 2.0


def test_wsd_holds_then_decays_over_the_last_fraction():
    s = optim.make_schedule(OptimizerConfig(schedule="wsd", warmup_steps=10, learning_rate=1.0,
                                            decay_fraction=0.2, end_lr_fraction=0.0), 100)
    assert lr(s, 10) == lr(s, 79) == 1.0
    assert lr(s, 90) == pytest.approx(0.5)
    assert lr(s, 100) == pytest.approx(0.0)


def test_rsqrt_matches_t5():
    s = optim.make_schedule(OptimizerConfig(schedule="rsqrt", warmup_steps=100,
                                            learning_rate=1.0), 1000)
    assert lr(s, 99) == pytest.approx(1.0)
    assert lr(s, 399) == pytest.approx(0.5)  # sqrt(100 / 400)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_weight_decay_skips_vectors(name):
    cfg = OptimizerConfig(name=name, learning_rate=1e-2, warmup_steps=0, weight_decay=0.5,
                          schedule="constant", grad_clip_norm=0.0)
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {"kernel": jnp.ones((4, 4)), "scale": jnp.ones((4,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["scale"]).max()) == 0.0
    assert float(jnp.abs(updates["kernel"]).max()) > 0.0


def test_gradients_are_clipped_before_the_optimizer():
    # With a huge eps, AdamW's first update is -lr * g / (|g| + eps): linear in g, so clipping
    # (which Adam's scale invariance would otherwise hide) shows in the update.
    def first_update(clip):
        cfg = OptimizerConfig(name="adamw", learning_rate=1.0, warmup_steps=0, eps=1e3,
                              schedule="constant", grad_clip_norm=clip, weight_decay=0.0)
        tx, _ = optim.make_optimizer(cfg, 10)
        params = {"w": jnp.zeros((3,))}
        grads = {"w": jnp.array([30.0, 40.0, 0.0])}  # global norm 50
        return np.asarray(tx.update(grads, tx.init(params), params)[0]["w"])

    clipped_g = np.array([0.6, 0.8, 0.0])
    np.testing.assert_allclose(first_update(1.0), -clipped_g / (np.abs(clipped_g) + 1e3),
                               rtol=1e-4)
    raw_g = np.array([30.0, 40.0, 0.0])
    np.testing.assert_allclose(first_update(0.0), -raw_g / (np.abs(raw_g) + 1e3), rtol=1e-4)
