"""Conversion errors name the tensor and both shapes; architecture mismatches say what differs."""

import dataclasses

import numpy as np
import pytest

from t5x_like.convert import hf, hf_llama, hf_t5
from t5x_like.convert.tensors import ConversionError, DictSource

from .tiny_hf import hf_llama as make_llama, state_dict_numpy


@pytest.fixture(scope="module")
def llama():
    """(our ModelConfig, HF state dict as numpy) of a tiny GQA Llama."""
    model = make_llama(64)
    return hf.model_config(model.config.to_dict(), scan_layers=False), state_dict_numpy(model)


def test_wrong_shape_names_the_tensor_and_both_shapes(llama):
    cfg, state = llama
    state = state | {"model.layers.1.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}
    with pytest.raises(ConversionError, match=r"'model\.layers\.1\.self_attn\.k_proj\.weight' has "
                                              r"shape \(32, 32\), the model config expects "
                                              r"\(16, 32\) \(ours: layers/attention/key\[layer 1\]"):
        hf.params_from_hf(DictSource(state), cfg)


def test_missing_and_extra_tensors_are_named_with_their_shapes(llama):
    cfg, state = llama
    missing = {k: v for k, v in state.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(ConversionError, match=r"lacks 1 tensor.*'model\.layers\.1\.mlp\.up_proj"
                                              r"\.weight' of shape \(48, 32\)"):
        hf.params_from_hf(DictSource(missing), cfg)
    with pytest.raises(ConversionError, match=r"does not account for: 'model\.layers\.2\.input_"
                                              r"layernorm\.weight' \(32,\)"):
        hf.params_from_hf(DictSource(state | {"model.layers.2.input_layernorm.weight":
                                              np.ones(32, np.float32)}), cfg)


def test_architecture_mismatches_are_refused_with_the_reason(llama):
    cfg, _ = llama
    with pytest.raises(ConversionError, match="Hugging Face T5 is an encoder_decoder"):
        hf_t5.tensors(cfg)
    t5 = dataclasses.replace(cfg, architecture="encoder_decoder", mlp_activation="gelu_tanh")
    with pytest.raises(ConversionError, match="num_kv_heads=2 != num_heads=4"):
        hf_t5.hf_config(t5, "float32")
    with pytest.raises(ConversionError, match="Hugging Face Llama is a decoder"):
        hf_llama.tensors(t5)
    with pytest.raises(ConversionError, match="model_type 'bert' is not supported"):
        hf.model_config({"model_type": "bert"})
    with pytest.raises(ConversionError, match="RoPE scaling 'dynamic'.*we convert rope_type "
                                              "default, linear, llama3, yarn"):
        hf.model_config({"model_type": "llama", "rope_scaling": {"rope_type": "dynamic"}})
    with pytest.raises(ConversionError, match=r"RoPE scaling 'llama3': parameters \['beta'\]"):
        hf.model_config({"model_type": "llama", "rope_scaling": {"rope_type": "llama3",
                                                                 "factor": 8.0, "beta": 1}})
    with pytest.raises(ConversionError, match=r"RoPE scaling 'linear' needs \['factor'\]"):
        hf.model_config({"model_type": "llama", "rope_parameters": {"rope_type": "linear"}})
    with pytest.raises(ConversionError, match="partial_rotary_factor 0.5"):
        hf.model_config({"model_type": "llama", "rope_parameters": {
            "rope_type": "default", "partial_rotary_factor": 0.5}})
    with pytest.raises(ConversionError, match="Llama config.json lacks 'hidden_size'"):
        hf.model_config({"model_type": "llama", "vocab_size": 64})
