"""Mesh construction and logical-to-mesh sharding rules (8 fake CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_like.config import DEFAULT_LOGICAL_AXIS_RULES as RULES, MeshConfig
from t5x_like.partitioning import (CPU_MATMUL_OPTIONS, Partitioner, compiler_options,
                                   logical_to_mesh_spec, make_mesh,
                                   onednn_fusions_with_several_dots)


def test_minus_one_fills_the_mesh():
    mesh = make_mesh((-1, 2, 1))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


def test_wrong_mesh_product_is_a_clear_error():
    with pytest.raises(ValueError, match="holds 6 devices, but 8"):
        make_mesh((3, 2, 1))


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


def test_cpu_matmul_library_is_a_cpu_only_compile_option():
    assert compiler_options("cpu", "onednn") == CPU_MATMUL_OPTIONS["onednn"] != {}
    assert compiler_options("cpu", "xla") == {}
    assert compiler_options("gpu", "onednn") == compiler_options("tpu", "onednn") == {}
    with pytest.raises(ValueError, match="cpu_matmul 'mkl'"):
        compiler_options("cpu", "mkl")


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 4, 2)])
def test_onednn_runs_the_dots_of_a_sharded_matmul(shape):
    mesh = make_mesh(shape, devices=jax.devices()[:int(np.prod(shape))])
    x = np.random.default_rng(0).standard_normal((64, 96), np.float32)
    w = np.random.default_rng(1).standard_normal((96, 32), np.float32)
    results = {}
    for library in ("xla", "onednn"):
        partitioner = Partitioner(mesh, RULES, library)
        specs = (logical_to_mesh_spec(("batch", "embed"), RULES, x.shape, mesh),
                 logical_to_mesh_spec(("embed", "mlp"), RULES, w.shape, mesh))
        shardings = [jax.sharding.NamedSharding(mesh, spec) for spec in specs]
        compiled = partitioner.compile(jax.jit(lambda a, b: a @ b, in_shardings=shardings).lower(
            *(jax.device_put(v, s) for v, s in zip((x, w), shardings))))
        assert ("__onednn_fusion" in compiled.as_text()) == (library == "onednn")
        results[library] = np.asarray(compiled(*(jax.device_put(v, s)
                                                 for v, s in zip((x, w), shardings))))
    np.testing.assert_allclose(results["onednn"], x @ w, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(results["onednn"], results["xla"], rtol=1e-5, atol=1e-4)


def test_a_onednn_fusion_of_several_dots_falls_back_to_xla_matmuls(caplog):
    # XLA fuses the second dot into the first one's oneDNN fusion; jaxlib 0.10.2's oneDNN cannot
    # build that and kills the process (SIGILL) when it first runs, so it must never run.
    x = np.random.default_rng(0).standard_normal((64, 256), np.float32)
    w = np.random.default_rng(1).standard_normal((256, 64), np.float32)
    lowered = jax.jit(lambda x, w: x @ w + (2 * x) @ w).lower(x, w)
    assert onednn_fusions_with_several_dots(
        lowered.compile(CPU_MATMUL_OPTIONS["onednn"]).as_text())  # compiled, never run
    partitioner = Partitioner(make_mesh((1, 1, 1), devices=jax.devices()[:1]), RULES, "onednn")
    compiled = partitioner.compile(lowered)
    assert "__onednn_fusion" not in compiled.as_text()
    assert "would fail at run time" in caplog.text
    np.testing.assert_allclose(np.asarray(compiled(x, w)), 3 * (x @ w), rtol=1e-5, atol=1e-3)
