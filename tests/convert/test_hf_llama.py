"""Hugging Face Llama <-> our Decoder: logits parity (GQA, packed rows), round trip, RoPE trap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from t5x_like.convert import hf
from t5x_like.convert.tensors import DictSource
from t5x_like.models.decoder import Decoder
from t5x_like.state import model_spec

from conftest import segments

from .tiny_hf import as_torch, hf_llama, state_dict_numpy, tokens, torch, transformers

L, V = 16, 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random Llama (GQA) and the directory save_pretrained wrote it to."""
    model = hf_llama(V)
    directory = tmp_path_factory.mktemp("llama")
    model.save_pretrained(directory)
    return model, directory


def _ours(cfg, params) -> Decoder:
    spec = model_spec(lambda rngs: Decoder(cfg, rngs=rngs))
    return nnx.merge(spec.graphdef, jax.tree.map(jnp.asarray, params))


def _logits(model, ids, mask=None) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=as_torch(ids), attention_mask=as_torch(mask)).logits.numpy()


def _max_diff_to_hf(hf_model, ours) -> float:
    """Largest logit difference over rows 0-1 (one segment, row 1 padded; HF with an attention
    mask) and rows 2-3 (two packed segments; HF on each segment alone)."""
    seg, pos = segments([[L], [L - 5], [7, 9], [10, 6]], L)
    ids = tokens(seg, V, seed=1)
    forward = nnx.jit(Decoder.__call__) if ours.cfg.scan_layers else Decoder.__call__
    got = np.asarray(forward(ours, ids, seg, pos))
    ref = _logits(hf_model, ids[:2], seg[:2] > 0)
    diffs = [np.abs(got[:2][seg[:2] > 0] - ref[seg[:2] > 0]).max()]
    for r in (2, 3):
        for s in (1, 2):
            alone = _logits(hf_model, ids[r:r + 1, seg[r] == s])[0]
            diffs.append(np.abs(got[r, seg[r] == s] - alone).max())
    return float(max(diffs))


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_converted_logits_match_hugging_face_unpacked_and_packed(saved, scan_layers):
    model, directory = saved
    cfg, params = hf.import_hf_dir(directory, scan_layers=scan_layers)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.norm_eps,
            cfg.tie_embeddings) == (4, 2, 8, 500.0, 1e-5, False)
    assert _max_diff_to_hf(model, _ours(cfg, params)) < 1e-5


def test_meta_rope_layout_would_be_caught_by_the_tolerance(saved):
    """q/k rows in Meta's adjacent-pair order (what HF's converter permutes away) give logits far
    outside the parity tolerance, so the test above does pin the convention."""
    model, directory = saved
    cfg, _ = hf.import_hf_dir(directory, scan_layers=False)
    state = state_dict_numpy(model)
    for key in [k for k in state if k.endswith(("q_proj.weight", "k_proj.weight"))]:
        heads = state[key].shape[0] // cfg.head_dim
        w = state[key].reshape(heads, 2, cfg.head_dim // 2, cfg.d_model)  # rotate-half order
        state[key] = w.transpose(0, 2, 1, 3).reshape(-1, cfg.d_model)  # -> adjacent pairs
    wrong = hf.params_from_hf(DictSource(state), cfg)
    assert _max_diff_to_hf(model, _ours(cfg, wrong)) > 1e-3


def test_round_trip_gives_identical_tensors_that_transformers_loads(saved, tmp_path):
    model, directory = saved
    cfg, params = hf.import_hf_dir(directory)  # scanned: the export unstacks layers
    hf.export_hf_dir(params, cfg, tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager").eval()
    before, after = state_dict_numpy(model), state_dict_numpy(reloaded)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    ids = tokens(np.ones((2, L), np.int32), V, seed=3)
    np.testing.assert_array_equal(_logits(reloaded, ids), _logits(model, ids))


def test_tied_llama_converts_without_a_head_and_exports_bfloat16(tmp_path):
    model = hf_llama(V, tied=True)
    model.save_pretrained(tmp_path / "src")
    cfg, params = hf.import_hf_dir(tmp_path / "src", scan_layers=False)
    assert cfg.tie_embeddings and "lm_head" not in params
    assert _max_diff_to_hf(model, _ours(cfg, params)) < 1e-5
    hf.export_hf_dir(params, cfg, tmp_path / "bf16", dtype="bfloat16")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "bf16")
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    torch.testing.assert_close(reloaded.model.embed_tokens.weight.float(),
                               model.model.embed_tokens.weight.bfloat16().float(), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["sharded_safetensors", "pytorch_bin"])
def test_sharded_and_pytorch_bin_directories_import_the_same_tensors(saved, tmp_path, layout):
    model, directory = saved
    if layout == "pytorch_bin":
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    _, want = hf.import_hf_dir(directory, scan_layers=False)
    _, got = hf.import_hf_dir(tmp_path, scan_layers=False)
    jax.tree.map(np.testing.assert_array_equal, got, want)


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.mark.parametrize("theta,head_dim,scaling,length", [
    (1e4, 128, None, 8192), (5e5, 64, None, 8192), (5e5, 64, LLAMA3_ROPE, 8192),
    (5e5, 128, LLAMA3_ROPE, 2048), (1e4, 64, {"rope_type": "linear", "factor": 4.0}, 2048),
    (5e5, 64, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
     2048)], ids=["1e4_128_8k", "5e5_64_8k", "llama3_64_8k", "llama3_128_2k", "linear_2k",
                  "yarn_2k"])
def test_long_rows_match_hugging_face_with_plain_and_scaled_rope(theta, head_dim, scaling,
                                                                 length):
    """One layer, float32, one row of `length` tokens: the angles at the far positions are
    where rounding in the RoPE frequencies shows (5.8e-5 at 2,048 tokens before the fix)."""
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=2 * head_dim, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=head_dim,
        max_position_embeddings=length, rms_norm_eps=1e-5, attn_implementation="eager",
        rope_parameters={"rope_type": "default", "rope_theta": theta} | (scaling or {}))
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) scores, so that an angle error moves the logits
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    ours_cfg = hf.model_config(cfg.to_dict(), scan_layers=False)
    assert ours_cfg.rope_scaling == (scaling or {}).get("rope_type", "none")
    ours = _ours(ours_cfg, hf.params_from_hf(DictSource(state_dict_numpy(model)), ours_cfg))
    ids = tokens(np.ones((1, length), np.int32), V, seed=4)
    got = np.asarray(ours(ids, np.ones_like(ids), np.arange(length, dtype=np.int32)[None]))
    assert np.abs(got - _logits(model, ids)).max() < 1e-5


def test_scaled_rope_round_trips_through_config_json(tmp_path):
    """Export writes the scaling as rope_parameters that transformers reads back unchanged,
    and importing that config.json gives our config again."""
    model = hf_llama(V)
    model.config.rope_parameters = {"rope_theta": 500.0} | LLAMA3_ROPE
    cfg = hf.model_config(model.config.to_dict())
    hf.export_hf_dir(hf.params_from_hf(DictSource(state_dict_numpy(model)), cfg), cfg, tmp_path)
    reloaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert reloaded.rope_parameters == {"rope_theta": 500.0} | LLAMA3_ROPE
    assert hf.model_config(hf.read_hf_config(tmp_path)) == cfg
