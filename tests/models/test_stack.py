"""Remat by name: what each policy keeps for the backward pass, whatever kernel ran the layer."""

import contextlib
import dataclasses
import io
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from conftest import MICRO_MODEL
from t5x_like.config import ConfigError, ModelConfig
from t5x_like.models import stack
from t5x_like.models.decoder import Decoder

# What a gated decoder block's backward pass needs of its projections (mlp_out is not among
# them: the residual add passes its gradient straight through).
NEEDED = {"query_proj", "key_proj", "value_proj", "out_proj", "mlp_gate", "mlp_up"}


def _residuals(policy: str, impl: str) -> list[str]:
    """`print_saved_residuals` of a one-layer decoder's loss, one line per residual."""
    cfg = dataclasses.replace(MICRO_MODEL, remat_policy=policy, attention_impl=impl,
                              scan_layers=False, num_layers=1)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    tokens = jnp.ones((2, 16), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(16), (2, 16))
    loss = lambda p: nnx.merge(graphdef, p)(tokens, tokens, positions).sum()  # noqa: E731
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        jax.ad_checkpoint.print_saved_residuals(loss, params)
    return out.getvalue().splitlines()


def _named(lines):
    return {m.group(1) for line in lines if (m := re.search(r"named '(\w+)'", line))}


def _activations(lines):
    """Residuals that are not parameters or constants (what remat trades for recompute)."""
    return [line for line in lines if "from the argument" not in line and "constant" not in line]


@pytest.mark.parametrize("impl", ["xla", "cpu"])
def test_each_policy_saves_what_it_says(impl):
    none, full, dots = (_residuals(p, impl) for p in ("none", "full", "dots"))
    assert _named(full) == set()
    assert _named(dots) == NEEDED
    assert _named(_residuals("save_names:mlp_up,context", impl)) == {"mlp_up", "context"}
    # full keeps the least, no remat the most; dots in between.
    assert len(_activations(full)) < len(_activations(dots)) < len(_activations(none))


def test_jax_policies_by_name_and_bad_names_fail_on_load():
    assert stack.remat_policy("none") is None
    assert stack.remat_policy("dots_with_no_batch_dims_saveable") is (
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    with pytest.raises(ConfigError, match="unknown names.*'q'"):
        ModelConfig(remat_policy="save_names:q")
    with pytest.raises(ConfigError, match="remat_policy"):
        ModelConfig(remat_policy="dotz")
