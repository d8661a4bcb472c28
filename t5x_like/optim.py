"""Optimizers and learning-rate schedules (optax). Knows nothing about models.

Weight decay skips every parameter of rank < 2 (norm scales), decided from the parameter tree's
shapes, so no parameter names leak in here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from t5x_like.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step: linear warmup, then the configured decay."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    end = peak * cfg.end_lr_fraction
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "rsqrt":
        # T5's inverse square root, with a linear warmup into the same curve.
        scale = max(warmup, 1)
        return lambda step: peak * jnp.minimum(
            (step + 1) / scale, jnp.sqrt(scale / jnp.maximum(step + 1, scale)))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:  # wsd: hold the peak, then decay linearly over the last decay_fraction of the run
        decay = max(int(round(cfg.decay_fraction * total_steps)), 1)
        stable = max(total_steps - warmup - decay, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, end, decay)], [stable])
    warm = optax.linear_schedule(peak / max(warmup, 1), peak, max(warmup - 1, 0))
    return optax.join_schedules([warm, after], [warmup]) if warmup else after


def _decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The gradient transformation (clipping included) and its schedule."""
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                         weight_decay=cfg.weight_decay, mask=_decay_mask)
    else:
        # T5's Adafactor (second-moment decay t^-0.8, factored, no momentum); an explicit
        # schedule replaces its relative step size, so parameter-scale multiplication is off.
        tx = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None,
                             weight_decay_mask=_decay_mask, multiply_by_parameter_scale=False)
    if cfg.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, schedule
