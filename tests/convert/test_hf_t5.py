"""Hugging Face T5 / T5 v1.1 / UL2 directories <-> our EncoderDecoder: config, logits, round trip.

(tests/models/test_encoder_decoder.py checks the same name map on live state dicts, for both layer
layouts; here the checkpoints go through save_pretrained's files and config.json.)
"""

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.convert import hf
from t5x_like.convert.tensors import ConversionError, DictSource
from t5x_like.models.layers import relative_position_bucket

from .tiny_hf import (T5_VARIANTS, hf_t5, hf_t5_logits, state_dict_numpy, t5_max_diff_to_hf,
                      t5_model, tokens, torch, transformers)

L, M, V = 20, 12, 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """variant -> (random HF model, the directory save_pretrained wrote it to)."""
    out = {}
    for variant in T5_VARIANTS:
        model = hf_t5(variant)
        directory = tmp_path_factory.mktemp(variant)
        model.save_pretrained(directory)
        out[variant] = model, directory
    return out


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_config_json_gives_the_variant_and_logits_match(saved, variant):
    model, directory = saved[variant]
    cfg, params = hf.import_hf_dir(directory, scan_layers=False)
    _, activation, tied = T5_VARIANTS[variant]
    assert (cfg.mlp_activation, cfg.tie_embeddings) == (activation, tied)
    assert (cfg.num_encoder_layers, cfg.num_layers, cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance) == (2, 3, 8, 12)
    assert ("lm_head" in params) == (not tied)
    assert t5_max_diff_to_hf(model, t5_model(cfg, params)) < 1e-5


@pytest.mark.parametrize("variant", list(T5_VARIANTS))
def test_round_trip_gives_identical_tensors_that_transformers_loads(saved, variant, tmp_path):
    model, directory = saved[variant]
    cfg, params = hf.import_hf_dir(directory)  # scanned: the export unstacks the layers
    hf.export_hf_dir(params, cfg, tmp_path)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    before, after = state_dict_numpy(model), state_dict_numpy(reloaded)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    enc = tokens(np.ones((2, L), np.int32), V, 3)
    dec = tokens(np.ones((2, M), np.int32), V, 4)
    np.testing.assert_array_equal(hf_t5_logits(reloaded, enc, dec), hf_t5_logits(model, enc, dec))


def test_unscaled_t5_with_tied_weights_gets_a_copied_head(saved):
    """A v1.1-style (unscaled) config whose file stores no separate lm_head: the head is the
    embedding, copied into our untied lm_head."""
    model, directory = saved["t5_v1_1"]
    state = {k: v for k, v in state_dict_numpy(model).items() if k != "lm_head.weight"}
    cfg = hf.model_config(hf.read_hf_config(directory), scan_layers=False)
    params = hf.params_from_hf(DictSource(state), cfg)
    np.testing.assert_array_equal(params["lm_head"], state["shared.weight"].T)


def test_scaled_config_with_a_separate_head_is_refused(saved):
    model, directory = saved["t5_v1_1"]
    config = hf.read_hf_config(directory) | {"scale_decoder_outputs": True}
    cfg = hf.model_config(config)
    with pytest.raises(ConversionError, match="lm_head.weight differs from shared.weight"):
        hf.params_from_hf(DictSource(state_dict_numpy(model)), cfg)


def _our_buckets(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    got = relative_position_bucket(jnp.asarray(relative_position.numpy()),
                                   bidirectional=bidirectional, num_buckets=num_buckets,
                                   max_distance=max_distance)
    return torch.as_tensor(np.array(got), dtype=torch.long)


@pytest.mark.parametrize("buckets, max_distance, has_tie", [(17, 27, True), (32, 128, False)])
def test_logits_match_on_long_rows(buckets, max_distance, has_tie, monkeypatch):
    """Rows long enough to reach every bucket. HF's buckets equal ours except at float32 ties of
    T5's log formula (tests/models/test_encoder_decoder.py): 17 buckets with max distance 27 has
    one at distance 18, where HF is a bucket lower; there HF gets our buckets."""
    model = hf_t5("t5_v1_1", buckets=buckets, max_distance=max_distance)
    cfg = hf.model_config(model.config.to_dict(), scan_layers=False)
    ours = t5_model(cfg, hf.params_from_hf(DictSource(state_dict_numpy(model)), cfg))
    length = max_distance + 12
    seg, pos = np.ones((1, length), np.int32), np.arange(length, dtype=np.int32)[None]
    enc, dec = tokens(seg, V, 5), tokens(seg, V, 6)
    got = np.asarray(ours(enc, dec, seg, seg, pos, pos))
    if has_tie:
        monkeypatch.setattr(transformers.models.t5.modeling_t5.T5Attention,
                            "_relative_position_bucket", staticmethod(_our_buckets))
    np.testing.assert_allclose(got, hf_t5_logits(model, enc, dec), rtol=0, atol=1e-5)
