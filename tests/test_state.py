"""Shapes-first state: an 8B model's shardings are derived without allocating anything."""

import jax
import numpy as np

from t5x_like import optim, state as state_lib, trainer
from t5x_like.gin_loader import load_run_config
from t5x_like.partitioning import Partitioner, make_mesh


def _bytes_per_device(abstract, shardings):
    total = 0
    for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        shard_shape = s.shard_shape(x.shape)
        total += int(np.prod(shard_shape)) * x.dtype.itemsize
    return total


def test_llama3_8b_state_is_fully_sharded_by_fsdp_on_8_devices():
    cfg = load_run_config(["models/llama3_8b.gin"])
    partitioner = Partitioner(make_mesh((1, 8, 1)), cfg.mesh.logical_axis_rules)
    tx, _ = optim.make_optimizer(cfg.optimizer, 1000)
    layout = state_lib.state_layout(trainer.default_model_factory(cfg), tx, partitioner)
    abstract, shardings = layout.abstract_state, layout.shardings
    assert state_lib.count_params(abstract["params"]) == 8_030_261_248
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    per_device = _bytes_per_device(abstract, shardings)
    # Params + two Adam moments (~96 GB in fp32) split 8 ways; only norm scales and scalars
    # are replicated.
    assert per_device < total / 8 * 1.001
    kernel = shardings["params"]["layers"]["mlp"]["gate"]
    assert kernel.spec[:2] == (None, "fsdp")  # (layers, embed, mlp); tensor has size 1 here
    moment = shardings["opt_state"][1][0].mu["layers"]["mlp"]["gate"]
    assert moment == kernel
