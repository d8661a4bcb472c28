"""The layer stack both architectures share: build N layers, run them scanned or unrolled, with
the configured rematerialization.

Stacked layers carry their parameters on a leading 'layers' axis and run under `lax.scan`
(compile time independent of depth); unrolled layers are a list (per-layer parameters, easier
to inspect). Both compute the same function.

Remat policies select what the backward pass keeps of each layer by the `checkpoint_name`s that
`ops` puts on every projection and attention output (config.CHECKPOINT_NAMES), so they hold whatever kernel computed
the value (a hand-written backward pass, a Pallas call).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_like.config import PROJECTION_NAMES, ConfigError, ModelConfig
from t5x_like.models.kv_cache import KVCache


def remat_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy of a ModelConfig.remat_policy; None = no remat."""
    policies = jax.checkpoint_policies
    if name == "none":
        return None
    if name == "full":
        return policies.nothing_saveable
    if name == "dots":
        return policies.save_only_these_names(*PROJECTION_NAMES)
    if name.startswith("save_names:"):
        return policies.save_only_these_names(*name[len("save_names:"):].split(","))
    policy = getattr(policies, name, None)
    if policy is None:
        raise ConfigError(f"ModelConfig.remat_policy = {name!r}: jax.checkpoint_policies has no "
                          f"such policy in jax {jax.__version__}")
    return policy


def make_layers(cfg: ModelConfig, num_layers: int, make: Callable[..., nnx.Module],
                rngs: nnx.Rngs):
    """`num_layers` layers `make(cfg, rngs=...)`: stacked (scan_layers) or a list."""
    if not cfg.scan_layers:
        return nnx.List([make(cfg, rngs=rngs) for _ in range(num_layers)])

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stacked(rngs: nnx.Rngs):
        return make(cfg, rngs=rngs)

    return stacked(rngs)


def run_layers(cfg: ModelConfig, layers, x_BxLxD: jax.Array, *args) -> jax.Array:
    """Apply every layer in turn as layer(x, *args); `args` are shared by all layers."""
    def apply(layer, x):
        return layer(x, *args)

    policy = remat_policy(cfg.remat_policy)
    if policy is not None:
        apply = nnx.remat(apply, policy=policy, prevent_cse=not cfg.scan_layers)
    if not cfg.scan_layers:
        for layer in layers:
            x_BxLxD = apply(layer, x_BxLxD)
        return x_BxLxD
    graphdef, stacked_state = nnx.split(layers)

    def body(x, layer_state):
        return apply(nnx.merge(graphdef, layer_state), x), None

    x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, stacked_state)
    return x_BxLxD


def run_layers_cached(cfg: ModelConfig, layers, x_BxLxD: jax.Array, cache: KVCache,
                      prefill: bool, *args) -> tuple[jax.Array, KVCache]:
    """Apply every layer as layer(x, *args, cache=view), each writing its keys and values.

    The cache's stacked arrays ride along (a scan's carry when scanned), so every layer's
    write is in place. No remat: nothing is differentiated when decoding.
    """
    arrays = cache.layers()
    if not cfg.scan_layers:
        for i, layer in enumerate(layers):
            x_BxLxD, arrays = layer(x_BxLxD, *args, cache=cache.view(arrays, i, prefill))
        return x_BxLxD, cache.with_layers(arrays)
    graphdef, stacked_state = nnx.split(layers)

    def body(carry, layer_state):
        x, arrays, i = carry
        layer = nnx.merge(graphdef, layer_state)
        x, arrays = layer(x, *args, cache=cache.view(arrays, i, prefill))
        return (x, arrays, i + 1), None

    (x_BxLxD, arrays, _), _ = jax.lax.scan(body, (x_BxLxD, arrays, jnp.zeros((), jnp.int32)),
                                           stacked_state)
    return x_BxLxD, cache.with_layers(arrays)
