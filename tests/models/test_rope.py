"""RoPE frequencies against Hugging Face's (plain, linear, Llama 3, YaRN), bit for bit."""

import dataclasses

import numpy as np
import pytest

from t5x_like.config import ConfigError, ModelConfig
from t5x_like.models import rope

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}


def hf_frequencies(head_dim: int, theta: float, params: dict | None = None):
    """(inv_freq, attention scaling) from transformers' own RoPE code."""
    cfg = transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2,
                                   head_dim=head_dim, max_position_embeddings=16384,
                                   rope_parameters={"rope_theta": theta, "rope_type": "default"}
                                   | (params or {}))
    kind = cfg.rope_parameters["rope_type"]
    if kind == "default":
        inv, scale = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding \
            .compute_default_rope_parameters(cfg)
    else:
        inv, scale = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
    return inv.numpy(), scale


def ours(head_dim: int, theta: float, params: dict | None = None):
    from t5x_like.convert.hf_llama import rope_fields
    hf_cfg = {"rope_parameters": {"rope_theta": theta, "rope_type": "default"} | (params or {}),
              "max_position_embeddings": 16384}
    cfg = ModelConfig(head_dim=head_dim, **rope_fields(hf_cfg))
    return rope.rope_frequencies(cfg)


@pytest.mark.parametrize("theta", [1e4, 5e5])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("params", [None, {"rope_type": "linear", "factor": 8.0}, LLAMA3,
                                    LLAMA3 | {"factor": 8.0}, YARN,
                                    YARN | {"beta_fast": 16.0, "truncate": False},
                                    YARN | {"mscale": 0.707, "mscale_all_dim": 1.0},
                                    YARN | {"attention_factor": 1.25}],
                         ids=["plain", "linear", "llama3_32", "llama3_8", "yarn", "yarn_untrunc",
                              "yarn_mscale", "yarn_attention"])
def test_frequencies_equal_hugging_face_bit_for_bit(theta, head_dim, params):
    want, want_scale = hf_frequencies(head_dim, theta, params)
    got, scale = ours(head_dim, theta, params)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert scale == pytest.approx(want_scale, rel=1e-12)


def test_other_thetas_differ_from_torch_by_at_most_two_ulps():
    """Torch's vectorized powf is within 1 ulp, ours correctly rounded: where they disagree
    (a few frequencies of some (theta, head_dim)) the power differs by one ulp, its reciprocal
    by at most two."""
    differing = 0
    for theta in (1e5, 1e6, 8e5, 3e4):
        for head_dim in (32, 80, 96, 160, 256):
            want, _ = hf_frequencies(head_dim, theta)
            got = rope.plain_frequencies(head_dim, theta)
            ulps = np.abs(got.view(np.int32) - want.view(np.int32))
            assert ulps.max() <= 2, (theta, head_dim)
            differing += int((ulps > 0).sum())
    assert differing < 40  # of 1,248 frequencies


def test_the_old_formula_is_off_in_a_third_of_the_frequencies():
    """theta**(-i/half), the formula before (the issue's repro: 14 of 32 with its numpy, 10
    with this one), pinned so that it is not brought back."""
    old = np.float32(5e5) ** (-np.arange(32, dtype=np.float32) / np.float32(32))
    want, _ = hf_frequencies(64, 5e5)
    assert int((old != want).sum()) >= 10
    assert int((rope.plain_frequencies(64, 5e5) != want).sum()) == 0


def test_scaling_config_is_validated():
    with pytest.raises(ConfigError, match="rope_scaling = 'dynamic'"):
        ModelConfig(rope_scaling="dynamic")
    with pytest.raises(ConfigError, match="rope_high_freq_factor"):
        ModelConfig(rope_scaling="llama3", rope_high_freq_factor=0.5)
    with pytest.raises(ConfigError, match="rope_beta_fast"):
        ModelConfig(rope_scaling="yarn", rope_beta_fast=0.5)
    cfg = ModelConfig(rope_scaling="linear", rope_factor=2.0)
    np.testing.assert_array_equal(rope.rope_frequencies(cfg)[0],
                                  rope.rope_frequencies(dataclasses.replace(
                                      cfg, rope_scaling="none"))[0] / np.float32(2))
