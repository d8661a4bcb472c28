"""Device mesh, logical axis rules and the shardings derived from them.

The partitioner is the seam between the model and the hardware (as in T5X): models name the axes
of their parameters and activations logically ('embed', 'mlp', 'batch', ...), and only this module
maps those names onto the mesh axes ('data', 'fsdp', 'tensor'). The trainer asks for shardings
and never looks at the mesh itself. Plain values in, no config system.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]


class MeshShapeError(ValueError):
    """A mesh shape that the devices do not fill; `level` is 'ici' or 'dcn', `shape` the
    (data, fsdp, tensor) sizes asked for, so a caller can name its own config keys."""

    def __init__(self, reason: str, level: str, shape: Sequence[int]):
        super().__init__(f"{level} mesh shape {tuple(shape)}: {reason}")
        self.reason, self.level, self.shape = reason, level, tuple(shape)


def _fill(shape: Sequence[int], total: int, level: str) -> tuple[int, ...]:
    """Resolve one -1 entry so the product equals `total`."""
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if total % known:
            raise MeshShapeError(f"{total} devices do not divide by {known}", level, shape)
        shape = [total // known if s == -1 else s for s in shape]
    if math.prod(shape) != total:
        raise MeshShapeError(f"holds {math.prod(shape)} devices, but {total} are available; "
                             "make the product match or set one axis to -1", level, shape)
    return tuple(shape)


def make_mesh(ici_shape: Sequence[int], dcn_shape: Sequence[int] = (1, 1, 1),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh: ICI sizes within a slice times DCN sizes across slices.

    With one slice (all DCN sizes 1) the devices are laid out by `create_device_mesh`, which knows
    the TPU torus; across slices `create_hybrid_device_mesh` keeps the DCN axes outermost so only
    the cheap collectives (data-parallel gradient reductions by default) cross slices.
    """
    devices = list(devices if devices is not None else jax.devices())
    dcn = _fill(dcn_shape, _num_slices(devices) if -1 in dcn_shape else math.prod(dcn_shape),
                "dcn")
    if len(devices) % math.prod(dcn):
        raise MeshShapeError(f"{len(devices)} devices do not split into {math.prod(dcn)} "
                             "slices", "dcn", dcn_shape)
    ici = _fill(ici_shape, len(devices) // math.prod(dcn), "ici")
    if math.prod(dcn) == 1:
        grid = mesh_utils.create_device_mesh(ici, devices=devices, allow_split_physical_axes=True)
    elif not _has_slices(devices):
        # No slice topology (GPU nodes, CPU processes): processes stand in for slices. Each DCN
        # coordinate is one group of processes, and within a mesh axis it varies slowest.
        by_process = sorted(devices, key=lambda d: (d.process_index, d.id))
        grid = (np.array(by_process).reshape(tuple(dcn) + tuple(ici))
                .transpose(0, 3, 1, 4, 2, 5).reshape(tuple(d * i for d, i in zip(dcn, ici))))
    else:
        # Splitting a physical axis (a 16x16 slice as fsdp=128 x data=2, say) is as fine per
        # slice as it is for one slice; without it such meshes fail to lay out.
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                                    allow_split_physical_axes=True)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _has_slices(devices: Sequence[jax.Device]) -> bool:
    """TPUs know their slice; elsewhere `slice_index` is absent or 0 on every process."""
    return devices[0].platform == "tpu" and getattr(devices[0], "slice_index", None) is not None


def _num_slices(devices: Sequence[jax.Device]) -> int:
    """TPU slices; where devices carry no slice (GPU, CPU), the processes stand in for them.

    A TPU device without a slice index is in the only slice: a single-slice topology's devices
    (an AOT compile for v5e-256, 64 hosts of 4 chips) have none, and counting their processes
    instead would split one ICI-connected slice into 64 data-parallel "slices" by host.
    """
    if devices[0].platform == "tpu":
        return len({getattr(d, "slice_index", None) or 0 for d in devices})
    return len({d.process_index for d in devices})


def logical_to_mesh_spec(names: Sequence[str | None], rules: Rules,
                         shape: Sequence[int] | None = None,
                         mesh: Mesh | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec; each mesh axis is used at most once.

    With `shape` and `mesh`, a mesh axis that does not divide the dimension is dropped (the
    dimension is then replicated along it) instead of failing: tiny test models on 8 devices and
    odd vocabularies stay valid, at the cost of less sharding for that array.
    """
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        chosen = None
        for logical, mesh_axes in rules:
            if logical != name or mesh_axes is None:
                continue
            axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            axes = tuple(a for a in axes if a not in used)
            if shape is not None and mesh is not None:
                axes = _divisible_prefix(axes, shape[dim], mesh)
            if axes:
                chosen = axes
                break
        if chosen:
            used.update(chosen)
            spec.append(chosen[0] if len(chosen) == 1 else chosen)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def _divisible_prefix(axes: tuple[str, ...], size: int, mesh: Mesh) -> tuple[str, ...]:
    kept, prod = [], 1
    for axis in axes:
        if size % (prod * mesh.shape[axis]) == 0:
            kept.append(axis)
            prod *= mesh.shape[axis]
    return tuple(kept)


def tree_shardings(abstract_tree: Any, logical_names: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of arrays given a parallel tree of logical-name tuples."""
    return jax.tree.map(
        lambda x, names: NamedSharding(mesh, logical_to_mesh_spec(names, rules, x.shape, mesh)),
        abstract_tree, logical_names, is_leaf=lambda n: isinstance(n, tuple))


def matching_shardings(abstract_tree: Any, abstract_params: Any, param_shardings: Any,
                       mesh: Mesh) -> Any:
    """Shardings for a tree that embeds copies of the parameters (optimizer state, say).

    A leaf whose key path ends with a parameter's key path and has that parameter's shape takes
    its sharding (Adam moments); anything else (step counts, Adafactor's factored row/column
    statistics) is replicated, which is cheap because those leaves are small.
    """
    flatten = jax.tree_util.tree_flatten_with_path
    shapes = {path: x.shape for path, x in flatten(abstract_params)[0]}
    by_path = {path: s for path, s in flatten(param_shardings)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        for start in range(len(path)):
            suffix = path[start:]
            if suffix in by_path and shapes[suffix] == leaf.shape:
                return by_path[suffix]
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_tree)


# --------------------------------------------------------------------------------------------
# Activation constraints: models call `constrain`; it is a no-op unless a partitioner context
# (mesh + rules) is active, so the same model code runs unsharded in tests and notebooks.
# --------------------------------------------------------------------------------------------
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "t5x_like_partitioning", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules):
    """Within this context, `constrain` shards activations on `mesh` by `rules`."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical axis names (no-op outside a context)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_mesh_spec(names, rules, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def active_mesh() -> Mesh | None:
    """The mesh of the active partitioner context (kernels that run under shard_map need it)."""
    active = _ACTIVE.get()
    return None if active is None else active[0]


def active_platform() -> str:
    """Platform the traced computation is for: the active mesh's devices (an AOT compile for a
    TPU topology runs on a CPU host), else JAX's default backend."""
    mesh = active_mesh()
    return mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()


def active_spec(names: Sequence[str | None], shape: Sequence[int]) -> PartitionSpec:
    """PartitionSpec of an activation named logically, under the active context."""
    mesh, rules = _ACTIVE.get()
    return logical_to_mesh_spec(names, rules, shape, mesh)


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Sharding of an input batch: batch dimension by the 'batch' rule, the rest replicated."""
    names = ("batch",) + ("length",) * (ndim - 1)
    return NamedSharding(mesh, logical_to_mesh_spec(names, rules))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    """Assemble global arrays from this process's slice of the batch (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(sharding, v)
            for k, v in local_batch.items()}


class Partitioner:
    """The trainer's only view of the hardware: shardings, global batches, compile context."""

    def __init__(self, mesh: Mesh, rules: Rules):
        self.mesh, self.rules = mesh, tuple(rules)

    def shardings(self, abstract_tree: Any, logical_names: Any) -> Any:
        """NamedShardings for arrays named logically (parameters)."""
        return tree_shardings(abstract_tree, logical_names, self.mesh, self.rules)

    def matching_shardings(self, abstract_tree: Any, abstract_params: Any,
                           param_shardings: Any) -> Any:
        """Shardings for trees holding parameter-shaped leaves (optimizer state)."""
        return matching_shardings(abstract_tree, abstract_params, param_shardings, self.mesh)

    def replicated(self) -> NamedSharding:
        """A fully replicated sharding (scalars such as the step counter)."""
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch_sharding(self) -> NamedSharding:
        """Sharding of [B, L] input features."""
        return batch_sharding(self.mesh, self.rules)

    @property
    def data_parallel_size(self) -> int:
        """How many ways the batch dimension is split; the global batch must divide by it."""
        spec = self.batch_sharding.spec[0]
        axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
        return math.prod(self.mesh.shape[a] for a in axes)

    def global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global [B, L] arrays from this process's rows."""
        return global_batch(local_batch, self.batch_sharding)

    def activation_context(self):
        """Context under which models' `constrain` calls shard activations."""
        return activation_sharding(self.mesh, self.rules)

    def describe(self) -> str:
        """One line for the log, e.g. 'mesh data=2 fsdp=4 tensor=1 (8 cpu devices)'."""
        sizes = " ".join(f"{k}={v}" for k, v in self.mesh.shape.items())
        device = self.mesh.devices.flat[0]
        return f"mesh {sizes} ({self.mesh.size} {device.platform} devices)"
