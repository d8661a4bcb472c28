"""Mesh construction and logical-to-mesh sharding rules (8 fake CPU devices)."""

import importlib.util

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_like.config import DEFAULT_LOGICAL_AXIS_RULES as RULES, MeshConfig
from t5x_like.partitioning import Partitioner, logical_to_mesh_spec, make_mesh


def test_minus_one_fills_the_mesh():
    mesh = make_mesh((-1, 2, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_wrong_mesh_product_is_a_clear_error():
    with pytest.raises(ValueError, match="holds 6 devices, but 8"):
        make_mesh((3, 2, 1))


def test_a_mesh_the_devices_do_not_fill_names_its_config_keys():
    from t5x_like import trainer
    from t5x_like.config import ConfigError, RunConfig
    for mesh, message in (
            (MeshConfig(ici_data=3), r"MeshConfig.ici_data/ici_fsdp/ici_tensor = \(3, -1, 1\) "
             r"\(the mesh within a slice\): 8 devices do not divide by 3, e.g. "
             r"--gin.MeshConfig.ici_data=1 --gin.MeshConfig.ici_fsdp=-1"),
            (MeshConfig(dcn_data=3), r"MeshConfig.dcn_data/dcn_fsdp/dcn_tensor = \(3, 1, 1\) "
             r"\(the mesh across slices\): 8 devices do not split into 3 slices")):
        with pytest.raises(ConfigError, match=message):
            trainer.default_partitioner(RunConfig(mesh=mesh))


def test_dcn_axes_are_outermost_by_process():
    mesh = make_mesh((1, 4, 1), dcn_shape=(2, 1, 1))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_a_dcn_axis_varies_slowest_within_its_mesh_axis():
    # Devices 0-3 and 4-7 stand for two hosts; DCN on fsdp: each half of fsdp is one host.
    ids = np.vectorize(lambda d: d.id)(make_mesh((2, 2, 1), dcn_shape=(1, 2, 1)).devices)
    assert ids.shape == (2, 4, 1)
    assert (ids[:, :2] < 4).all() and (ids[:, 2:] >= 4).all()


def test_default_mesh_is_fsdp_within_a_slice_and_data_across():
    mesh_cfg = MeshConfig()
    mesh = make_mesh(mesh_cfg.ici_shape, mesh_cfg.dcn_shape)  # one process: one "slice"
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}


def test_rules_use_each_mesh_axis_once():
    mesh = make_mesh((2, 2, 2))
    assert logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(("vocab", "embed"), RULES) == P("tensor", "fsdp")
    assert logical_to_mesh_spec(("batch", "length", "embed"), RULES) == P(("data", "fsdp"),
                                                                         None, None)
    # A dimension the mesh axis does not divide is replicated along it instead of failing.
    assert logical_to_mesh_spec(("embed", "mlp"), RULES, (5, 8), mesh) == P(None, "tensor")


def test_global_batch_is_sharded_over_data_and_fsdp():
    partitioner = Partitioner(make_mesh((2, 4, 1)), RULES)
    batch = partitioner.global_batch({"x": np.arange(16 * 4).reshape(16, 4)})
    assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
    assert len(batch["x"].addressable_shards) == 8 and partitioner.data_parallel_size == 8
    np.testing.assert_array_equal(jax.device_get(batch["x"]), np.arange(64).reshape(16, 4))


# TPU topologies that exist only as descriptions (libtpu's AOT API): the same device objects a
# TPU pod's processes see, on this CPU host.
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason='libtpu is not installed: pip install -e ".[tpu]"')


@needs_libtpu
def test_a_single_tpu_slice_is_one_slice_however_many_hosts():
    from t5x_like.aot import topology_devices
    devices = topology_devices("v5e-16")  # 4 hosts of 4 chips, no slice index on the devices
    assert len({d.process_index for d in devices}) == 4
    mesh = make_mesh(MeshConfig().ici_shape, MeshConfig().dcn_shape, devices=devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 16, "tensor": 1}


@needs_libtpu
def test_tpu_slices_are_the_dcn_data_axis():
    from t5x_like.aot import topology_devices
    devices = topology_devices("v5e-4", num_slices=2)
    mesh = make_mesh(MeshConfig().ici_shape, MeshConfig().dcn_shape, devices=devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()
    # A physical axis split within each slice (4x4 chips as fsdp=8 x tensor=2) lays out too.
    mesh = make_mesh((1, 8, 2), (2, 1, 1), devices=topology_devices("v5e-16", num_slices=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "tensor": 2}
