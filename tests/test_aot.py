"""`t5x-like compile`: the train step compiled by the real TPU compiler for a named topology on
this CPU host (needs libtpu; the tests that compile skip without it)."""

import dataclasses
import importlib.util

import numpy as np
import pytest

from conftest import MICRO_MODEL
from t5x_like import aot, cli
from t5x_like.config import ConfigError, DataConfig, ModelConfig, ObjectiveConfig, RunConfig, \
    TrainConfig

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason='libtpu is not installed: pip install -e ".[tpu]"')


def micro_run(batch_size: int = 16, length: int = 256) -> RunConfig:
    return RunConfig(model=MICRO_MODEL, train=TrainConfig(batch_size=batch_size),
                     data=DataConfig(task_feature_lengths={"targets": length}))


@pytest.fixture(scope="module")
def report() -> aot.CompileReport:
    return aot.compile_for_topology(micro_run(), "v5e-8")


@needs_libtpu
def test_compiles_for_a_topology_with_memory_and_flops(report):
    assert (report.chips, report.device_kind) == (8, "TPU v5 lite")
    assert report.mesh == {"data": 1, "fsdp": 8, "tensor": 1}
    memory = report.memory
    assert memory.argument > 0 and memory.temp > 0 and 0 < memory.alias <= memory.output
    assert memory.total == memory.argument + memory.output - memory.alias + memory.temp
    assert 0 < report.hbm_fraction < 0.01
    assert report.flops_per_chip > 0 and report.model_flops_per_chip > 0
    assert report.compile_seconds > 0


@needs_libtpu
def test_an_fsdp_step_gathers_weights_and_reduces_gradients(report):
    traffic = report.collective_traffic_bytes
    assert report.collective_ops["all-gather"] > 0 and traffic["all-gather"] > 0
    assert traffic["reduce-scatter"] + traffic["all-reduce"] > 0  # tiny shapes: all-reduce
    assert report.ideal_all_gather_bytes == pytest.approx(2 * report.ideal_reduce_scatter_bytes)


@needs_libtpu
def test_loss_chunks_move_no_more_bytes_than_the_whole_row(report):
    """The output kernel is gathered, and its gradient reduced, once per pass, a slice per piece
    of the vocabulary: no more than the whole row's traffic, plus the backward pass's second
    gather of the kernel (the pieces are recomputed). Pieces of the row gathered the whole
    kernel per piece: 1.39x ZeRO-3's all-gather bytes for Llama-3-8B on v5e-256."""
    cfg = micro_run()
    chunked = aot.compile_for_topology(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, loss_chunks=4)), "v5e-8")
    whole, pieces = report.collective_traffic_bytes, chunked.collective_traffic_bytes
    kernel_gather = (cfg.model.d_model * cfg.model.vocab_size * 7 / 8
                     * np.dtype(cfg.model.dtype).itemsize)
    assert pieces["all-gather"] <= whole["all-gather"] + kernel_gather
    for kind in ("all-reduce", "reduce-scatter"):
        assert pieces[kind] <= whole[kind], kind


@needs_libtpu
def test_report_formats_as_a_table_and_as_json(report):
    text = aot.format_report(report)
    for label in ("arguments", "temporaries", "usable HBM", "cost model", "all-gather",
                  "reduce-scatter", "x ideal"):
        assert label in text
    assert cli.json.loads(cli.json.dumps(report.to_dict()))["memory"]["total"] > 0


@needs_libtpu
def test_out_of_memory_is_a_clear_error():
    with pytest.raises(aot.CompileOOMError) as e:
        aot.compile_for_topology(micro_run(batch_size=4096, length=4096), "v5e-4")
    message = str(e.value)
    assert "does not fit in v5e-4's HBM (15.75G usable per chip)" in message
    assert "remat_policy = 'full'" in message and "TrainConfig.batch_size (now 4096)" in message
    assert "Traceback" not in message


@needs_libtpu
def test_the_cli_exits_2_on_out_of_memory(capsys):
    code = cli.main(["compile", "--topology=v5e-4", "--gin.BATCH_SIZE=4096",
                     "--gin.TASK_FEATURE_LENGTHS={'targets': 8192}"])
    assert code == 2
    assert "out of memory" in capsys.readouterr().err


def test_a_misspelt_topology_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"'v5e-255'.*Did you mean v5e-256.*v6e-8"):
        aot.topology("v5e-255")


def test_a_missing_libtpu_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(aot.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tpu\]"'):
        aot.topology_devices("v5e-8")


def test_topology_names_count_chips_or_cores_as_maxtext_does():
    assert aot.TOPOLOGIES["v5e-256"].topology_name == "v5e:16x16"
    assert aot.TOPOLOGIES["v5p-128"].topology_name == "v5p:4x4x4"
    assert aot.TOPOLOGIES["v5p-128"].chips == 64 and aot.TOPOLOGIES["v6e-8"].chips == 8


def test_example_batch_has_the_features_of_each_objective():
    causal = aot.example_batch(micro_run(length=64))
    assert set(causal) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                           "decoder_positions", "decoder_loss_weights"}
    assert causal["decoder_input_tokens"].shape == (1, 64)
    lengths = {"inputs": 48, "targets": 16}
    prefix_lm = dataclasses.replace(micro_run(), objective=ObjectiveConfig(name="prefix_lm"),
                                    data=DataConfig(task_feature_lengths=lengths))
    batch = aot.example_batch(prefix_lm)
    assert batch["decoder_causal_attention"].shape == (1, 64)
    seq2seq = dataclasses.replace(prefix_lm, model=ModelConfig(architecture="encoder_decoder"))
    batch = aot.example_batch(seq2seq)
    assert batch["encoder_input_tokens"].shape == (1, 48)
    assert batch["decoder_target_tokens"].shape == (1, 16)
    assert "decoder_causal_attention" not in batch
