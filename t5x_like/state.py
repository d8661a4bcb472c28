"""Train state creation, shapes first (big_vision style).

`jax.eval_shape` gives the parameter and optimizer-state shapes without allocating anything, the
partitioner turns the parameters' logical axis names into shardings, and the initializer is jitted
with those `out_shardings`: an 8B model's parameters are born sharded and never exist whole on one
device. The same abstract state, carrying the target shardings, is the orbax restore target, which
is how a checkpoint lands on a different mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from t5x_like.partitioning import Partitioner

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the step and the partitioner need to know about a model, without its values."""

    graphdef: nnx.GraphDef
    abstract_params: Any  # pure dict of ShapeDtypeStruct
    logical_names: Any  # pure dict of tuples of logical axis names, parallel to the params


def model_spec(factory: ModelFactory) -> ModelSpec:
    """Trace the model's construction abstractly: graph, parameter shapes and axis names."""
    abstract_model = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract_model, nnx.Param)
    names = jax.tree.map(lambda v: tuple(v.get_metadata()["out_sharding"]), params,
                         is_leaf=lambda v: isinstance(v, nnx.Variable))
    return ModelSpec(graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(names))


def _init_fn(factory: ModelFactory, tx: optax.GradientTransformation):
    def init(seed: jax.Array) -> dict[str, Any]:
        model = factory(nnx.Rngs(params=jax.random.key(seed)))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {"step": jnp.zeros((), jnp.int32), "params": params,
                "opt_state": tx.init(params)}
    return init


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Everything about a train state but its values, derived once per run from shapes alone."""

    graphdef: nnx.GraphDef
    abstract_state: Any  # {'step', 'params', 'opt_state'} of ShapeDtypeStruct
    shardings: Any  # the same tree of NamedSharding

    @property
    def restore_target(self) -> Any:
        """ShapeDtypeStructs carrying the target shardings: the orbax restore target, which is
        how a checkpoint lands on a different mesh."""
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            self.abstract_state, self.shardings)


def state_layout(factory: ModelFactory, tx: optax.GradientTransformation,
                 partitioner: Partitioner) -> StateLayout:
    """Shapes and shardings of the train state: parameters by their logical axis names,
    optimizer moments like their parameters."""
    spec = model_spec(factory)
    abstract_state = jax.eval_shape(_init_fn(factory, tx), jax.ShapeDtypeStruct((), jnp.uint32))
    param_shardings = partitioner.shardings(spec.abstract_params, spec.logical_names)
    shardings = {
        "step": partitioner.replicated(),
        "params": param_shardings,
        "opt_state": partitioner.matching_shardings(abstract_state["opt_state"],
                                                    spec.abstract_params, param_shardings),
    }
    return StateLayout(spec.graphdef, abstract_state, shardings)


def init_state(factory: ModelFactory, tx: optax.GradientTransformation, layout: StateLayout,
               partitioner: Partitioner, seed: int) -> dict[str, Any]:
    """A freshly initialized train state, created directly in its sharded layout."""
    init = jax.jit(_init_fn(factory, tx), out_shardings=layout.shardings)
    with partitioner.activation_context():
        # The seed is a raw uint32 so that it is identical on every host.
        return init(jnp.uint32(seed))


def state_from_params(params: Any, tx: optax.GradientTransformation, layout: StateLayout,
                      partitioner: Partitioner, step: int = 0) -> dict[str, Any]:
    """A train state at `step` around given sharded parameters (a converted, parameters-only
    checkpoint): fresh optimizer moments, created in their sharded layout. `params` is donated."""
    def wrap(params):
        return {"step": jnp.full((), step, jnp.int32), "params": params,
                "opt_state": tx.init(params)}

    with partitioner.activation_context():
        return jax.jit(wrap, out_shardings=layout.shardings, donate_argnums=0)(params)


def count_params(params: Any) -> int:
    """Total number of parameter elements."""
    return sum(x.size for x in jax.tree.leaves(params))
