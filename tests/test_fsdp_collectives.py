"""FSDP on 8 fake CPU devices: the compiled train step gathers weights, never reshards
activations through a weight-sized all-reduce in the forward pass, and moves no more than
ZeRO-3 would.

XLA:CPU has no reduce-scatter pass: it reduces a gradient with an all-reduce and keeps its own
shard (twice ZeRO-3's reduce-scatter traffic in the ring model). What the TPU compiler makes of
the same step is `t5x-like compile`'s report (tests/test_aot.py, docs/benchmarks.md).
"""

import pytest

from conftest import partitioner_for
from t5x_like import aot, hlo_collectives, optim, state as state_lib, trainer
from t5x_like.config import DataConfig, ModelConfig, RunConfig, TrainConfig


@pytest.fixture(scope="module", params=[("xla", True, 1), ("cpu", False, 1), ("xla", True, 4)],
                ids=["xla-scanned", "cpu-unrolled", "xla-4-loss-chunks"])
def compiled_fsdp_step(request):
    impl, scan, loss_chunks = request.param
    model = ModelConfig(vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, attention_impl=impl, scan_layers=scan)
    cfg = RunConfig(model=model, data=DataConfig(task_feature_lengths={"targets": 32}),
                    train=TrainConfig(batch_size=8, loss_chunks=loss_chunks))
    partitioner = partitioner_for((1, 8, 1))
    tx, schedule = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    layout = state_lib.state_layout(trainer.default_model_factory(cfg), tx, partitioner)
    compiled = trainer.lower_train_step(cfg, layout, partitioner, tx, schedule,
                                        aot.example_batch(cfg)).compile()
    counts = hlo_collectives.count_collectives(compiled.as_text(), 8, top=1000)
    return cfg, layout, partitioner, counts


def test_every_big_weight_is_all_gathered(compiled_fsdp_step):
    """The MLP, attention-output and output-projection kernels arrive whole for their matmuls."""
    cfg, _, _, counts = compiled_fsdp_step
    m = cfg.model
    gathered = {c.shape.split("[", 1)[1].rstrip("]").removeprefix("1,")
                for c in counts.largest if c.kind == "all-gather"}
    expected = {f"{m.d_model},{m.mlp_dim}", f"{m.mlp_dim},{m.d_model}",
                f"{m.num_heads},{m.head_dim},{m.d_model}",
                f"{m.d_model},{m.vocab_size // cfg.train.loss_chunks}"}  # a slice per piece
    assert expected <= gathered, gathered


def test_the_forward_pass_all_reduces_no_weight(compiled_fsdp_step):
    """An all-reduce outside the backward pass would mean activations were resharded instead
    of weights gathered (what dense's optimization barrier used to force)."""
    _, _, _, counts = compiled_fsdp_step
    for c in counts.largest:
        if c.kind == "all-reduce" and c.traffic_bytes > 4096:
            assert "transpose(" in c.op_name, c


def test_traffic_is_within_zero3_bounds(compiled_fsdp_step):
    cfg, layout, partitioner, counts = compiled_fsdp_step
    ideal_gather, ideal_scatter = aot.fsdp_ideal_bytes(cfg, layout, partitioner.mesh)
    traffic = counts.traffic_bytes
    assert 0 < traffic["all-gather"] <= 1.1 * ideal_gather
    # gradient reduction: reduce-scatter where the backend has one, else all-reduce (2x)
    reduction = traffic["reduce-scatter"] + traffic["all-reduce"]
    assert 0 < reduction <= 2.0 * ideal_scatter


def test_the_output_kernel_is_gathered_once_per_pass(compiled_fsdp_step):
    """However many pieces the loss takes, the [D, V] kernel is all-gathered once for the
    forward and once for the backward pass (ZeRO-3's two gathers), a slice per piece."""
    cfg, _, _, counts = compiled_fsdp_step
    m, pieces = cfg.model, cfg.train.loss_chunks
    runs = sum(c.runs for c in counts.largest if c.kind == "all-gather"
               and c.shape.endswith(f"[{m.d_model},{m.vocab_size // pieces}]"))
    assert pieces <= runs <= 2 * pieces, runs
