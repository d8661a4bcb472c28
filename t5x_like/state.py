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


def state_shardings(factory: ModelFactory, tx: optax.GradientTransformation,
                    partitioner: Partitioner) -> tuple[Any, Any]:
    """(abstract state, its shardings): parameters by their logical names, moments alike."""
    spec = model_spec(factory)
    abstract_state = jax.eval_shape(_init_fn(factory, tx), jax.ShapeDtypeStruct((), jnp.uint32))
    param_shardings = partitioner.shardings(spec.abstract_params, spec.logical_names)
    shardings = {
        "step": partitioner.replicated(),
        "params": param_shardings,
        "opt_state": partitioner.matching_shardings(abstract_state["opt_state"],
                                                    spec.abstract_params, param_shardings),
    }
    return abstract_state, shardings


def abstract_state_with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: the orbax restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state, shardings)


def init_state(factory: ModelFactory, tx: optax.GradientTransformation,
               partitioner: Partitioner, seed: int) -> tuple[dict[str, Any], Any]:
    """A freshly initialized train state, created directly in its sharded layout."""
    _, shardings = state_shardings(factory, tx, partitioner)
    init = jax.jit(_init_fn(factory, tx), out_shardings=shardings)
    with partitioner.activation_context():
        # The seed is a raw uint32 so that it is identical on every host.
        state = init(jnp.uint32(seed))
    return state, shardings


def count_params(params: Any) -> int:
    """Total number of parameter elements."""
    return sum(x.size for x in jax.tree.leaves(params))
