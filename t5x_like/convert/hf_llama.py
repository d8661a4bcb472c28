"""Hugging Face Llama (`LlamaForCausalLM`) <-> our decoder-only Decoder.

RoPE convention: our `apply_rope` rotates halves (dimension i with i + head_dim/2), as Hugging
Face does. Hugging Face's Llama checkpoints are stored for that convention already (its converter
permuted the rows of q and k inside each head away from Meta's adjacent pairs), so q and k are
copied as they are, in both directions. Meta's original `consolidated.*.pth` files rotate adjacent
pairs and are not read here: convert them with transformers' script first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_like.config import ModelConfig
from t5x_like.models import rope as rope_lib
from t5x_like.convert.tensors import ConversionError, Source, Tensor, require_keys


# Hugging Face rope_parameters keys -> our ModelConfig fields, per rope_type we compute exactly.
_ROPE_FIELDS = {
    "linear": {"factor": "rope_factor"},
    "llama3": {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
               "high_freq_factor": "rope_high_freq_factor",
               "original_max_position_embeddings": "rope_original_max_positions"},
    "yarn": {"factor": "rope_factor", "beta_fast": "rope_beta_fast",
             "beta_slow": "rope_beta_slow", "attention_factor": "rope_attention_factor",
             "original_max_position_embeddings": "rope_original_max_positions",
             "truncate": "rope_truncate"},
}
_ROPE_IGNORED = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def _yarn_attention_factor(rope: dict) -> dict:
    """DeepSeek-style YaRN gives mscale and mscale_all_dim instead of attention_factor: their
    ratio (as HF computes it), so that the config holds one number."""
    mscale, all_dim = rope.pop("mscale", None), rope.pop("mscale_all_dim", None)
    if rope.get("attention_factor") is None and mscale and all_dim:
        factor = rope["factor"]
        rope["attention_factor"] = (rope_lib.yarn_attention_factor(factor, mscale)
                                    / rope_lib.yarn_attention_factor(factor, all_dim))
    return rope


def rope_fields(hf_config: dict) -> dict[str, Any]:
    """Our rope_* fields of a Llama config.json's rope_parameters (transformers 5) or
    rope_scaling (4.x); refuses, naming it, any RoPE we do not compute as HF does."""
    rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConversionError(f"partial_rotary_factor {rope['partial_rotary_factor']}: our "
                              f"RoPE rotates the whole head")
    if kind == "default":
        return {"rope_theta": theta}
    if kind not in _ROPE_FIELDS:
        raise ConversionError(f"RoPE scaling {kind!r} ({rope}) is not implemented here; we "
                              f"convert rope_type default, {', '.join(_ROPE_FIELDS)}")
    if kind == "yarn":
        rope = _yarn_attention_factor(rope)
        rope.setdefault("original_max_position_embeddings",
                        hf_config.get("max_position_embeddings"))  # transformers 4.x's default
    unknown = sorted(set(rope) - set(_ROPE_FIELDS[kind]) - _ROPE_IGNORED)
    if unknown:
        raise ConversionError(f"RoPE scaling {kind!r}: parameters {unknown} are not "
                              f"implemented here ({rope})")
    missing = [k for k in ("factor",) if rope.get(k) is None]
    if missing:
        raise ConversionError(f"RoPE scaling {kind!r} needs {missing} ({rope})")
    fields = {ours: rope[theirs] for theirs, ours in _ROPE_FIELDS[kind].items()
              if rope.get(theirs) is not None}
    return {"rope_theta": theta, "rope_scaling": kind} | fields


def hf_rope_parameters(cfg: ModelConfig) -> dict[str, Any]:
    """The rope_parameters of cfg's RoPE, the inverse of `rope_fields`."""
    kind = "default" if cfg.rope_scaling == "none" else cfg.rope_scaling
    out = {"rope_type": kind, "rope_theta": cfg.rope_theta}
    for theirs, ours in _ROPE_FIELDS.get(kind, {}).items():
        value = getattr(cfg, ours)
        if not (theirs == "attention_factor" and value == 0.0):  # 0: HF's default from factor
            out[theirs] = value
    return out


def model_config(hf_config: dict, **overrides: Any) -> ModelConfig:
    """Our ModelConfig of a Hugging Face Llama config.json (overrides: scan_layers, dtype, ...)."""
    if hf_config.get("model_type") != "llama":
        raise ConversionError(f"config.json model_type {hf_config.get('model_type')!r}: expected "
                              f"'llama'")
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag):
            raise ConversionError(f"{flag}=true: our decoder has no biases")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"hidden_act {hf_config['hidden_act']!r}: only silu (SwiGLU)")
    rope = rope_fields(hf_config)
    require_keys(hf_config, ("vocab_size", "hidden_size", "num_hidden_layers",
                             "num_attention_heads", "intermediate_size"), "Llama config.json")
    heads = hf_config["num_attention_heads"]
    fields = dict(
        architecture="decoder", vocab_size=hf_config["vocab_size"],
        d_model=hf_config["hidden_size"], num_layers=hf_config["num_hidden_layers"],
        num_heads=heads, num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        mlp_dim=hf_config["intermediate_size"], mlp_activation="silu",
        norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False))) | rope
    return ModelConfig(**(fields | overrides))


def check_supported(cfg: ModelConfig) -> None:
    """Raise ConversionError unless `cfg` is a model Hugging Face's Llama can hold."""
    if cfg.architecture != "decoder":
        raise ConversionError(f"architecture {cfg.architecture!r}: Hugging Face Llama is a "
                              f"decoder; use --format t5 for encoder_decoder models")
    if cfg.mlp_activation != "silu":
        raise ConversionError(f"mlp_activation {cfg.mlp_activation!r}: Llama's MLP is SwiGLU "
                              f"(silu)")


def hf_config(cfg: ModelConfig, dtype: str, max_position_embeddings: int = 2048) -> dict:
    """The config.json of `cfg` for `LlamaForCausalLM`."""
    check_supported(cfg)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": hf_rope_parameters(cfg),
        "max_position_embeddings": max_position_embeddings, "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": dtype, "torch_dtype": dtype,  # transformers 4.x reads the latter
        "use_cache": True,
    }


def tensors(cfg: ModelConfig) -> list[Tensor]:
    """Every tensor of the Hugging Face Llama checkpoint of `cfg`, mapped onto our tree."""
    check_supported(cfg)
    v, d, h, k, e, f = (cfg.vocab_size, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
                        cfg.head_dim, cfg.mlp_dim)
    out = [Tensor("model.embed_tokens.weight", ("token_embed",), (v, d))]
    for i in range(cfg.num_layers):
        p, ours = f"model.layers.{i}", ("layers",)
        out += [
            Tensor(f"{p}.input_layernorm.weight", ours + ("attention_norm", "scale"), (d,), i),
            Tensor(f"{p}.self_attn.q_proj.weight", ours + ("attention", "query"), (h * e, d), i,
                   transpose=True),
            Tensor(f"{p}.self_attn.k_proj.weight", ours + ("attention", "key"), (k * e, d), i,
                   transpose=True),
            Tensor(f"{p}.self_attn.v_proj.weight", ours + ("attention", "value"), (k * e, d), i,
                   transpose=True),
            Tensor(f"{p}.self_attn.o_proj.weight", ours + ("attention", "out"), (d, h * e), i,
                   transpose=True),
            Tensor(f"{p}.post_attention_layernorm.weight", ours + ("mlp_norm", "scale"), (d,),
                   i),
            Tensor(f"{p}.mlp.gate_proj.weight", ours + ("mlp", "gate"), (f, d), i,
                   transpose=True),
            Tensor(f"{p}.mlp.up_proj.weight", ours + ("mlp", "up"), (f, d), i, transpose=True),
            Tensor(f"{p}.mlp.down_proj.weight", ours + ("mlp", "down"), (d, f), i,
                   transpose=True),
        ]
    out.append(Tensor("model.norm.weight", ("final_norm", "scale"), (d,)))
    if not cfg.tie_embeddings:
        out.append(Tensor("lm_head.weight", ("lm_head",), (v, d), transpose=True))
    return out


def import_plan(source: Source, cfg: ModelConfig) -> tuple[list[Tensor], tuple[str, ...]]:
    """(tensors to read, names to ignore): a tied model may still store `lm_head.weight`."""
    ignored = ("lm_head.weight",) if cfg.tie_embeddings else ()
    if cfg.tie_embeddings and "lm_head.weight" in source.names():
        if not np.array_equal(source.read("lm_head.weight"),
                              source.read("model.embed_tokens.weight")):
            raise ConversionError("tie_word_embeddings=true but lm_head.weight differs from "
                                  "model.embed_tokens.weight: fix config.json")
    return tensors(cfg), ignored
