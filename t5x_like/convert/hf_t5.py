"""Hugging Face T5 (`T5ForConditionalGeneration`) <-> our EncoderDecoder.

Covers T5 v1.0 (ReLU MLP, logits from the shared embedding scaled by d_model**-0.5), T5 v1.1 and
Flan-T5 (gated GELU, untied), and UL2 (gated SiLU, untied). Torch Linear weights are (out, in):
they are the transposes of our kernels, with the heads joined (`H*E`).

Tied or not: transformers 5 always ties T5's `lm_head` to `shared` unless a checkpoint holds both
with different values, and reads the decoder-output scaling from `scale_decoder_outputs` (older
configs: `tie_word_embeddings`). Our `tie_embeddings` means T5 v1.0's *scaled, tied* logits; an
unscaled model whose checkpoint has no separate head (tied weights) imports with an `lm_head`
copied from the embedding. A scaled model with a separate head has no counterpart here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from t5x_like.config import ModelConfig
from t5x_like.convert.tensors import ConversionError, Source, Tensor, require_keys

_ACTIVATIONS = {"relu": "relu", "gated-gelu": "gelu_tanh", "gated-silu": "silu"}
# Tensors that carry nothing of ours: the stacks' aliases of `shared`, and a cross-attention
# bias table some old checkpoints hold but T5 never uses.
IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
           "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def is_scaled(hf_config: dict) -> bool:
    """Whether the decoder output is scaled by d_model**-0.5 before the logits (T5 v1.0)."""
    if "scale_decoder_outputs" in hf_config:
        return bool(hf_config["scale_decoder_outputs"])
    return hf_config.get("tie_word_embeddings", True) is not False


def model_config(hf_config: dict, **overrides: Any) -> ModelConfig:
    """Our ModelConfig of a Hugging Face T5 config.json (overrides: scan_layers, dtype, ...)."""
    if hf_config.get("model_type") not in ("t5", "mt5") or not hf_config.get(
            "is_encoder_decoder", True):
        raise ConversionError(f"config.json model_type {hf_config.get('model_type')!r}: expected "
                              f"a T5 encoder-decoder ('t5' or 'mt5')")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise ConversionError(f"feed_forward_proj {proj!r} is not supported; supported: "
                              f"{', '.join(_ACTIVATIONS)}")
    require_keys(hf_config, ("vocab_size", "d_model", "num_layers", "num_heads", "d_kv", "d_ff"),
                 "T5 config.json")
    encoder_layers = hf_config["num_layers"]
    fields = dict(
        architecture="encoder_decoder", vocab_size=hf_config["vocab_size"],
        d_model=hf_config["d_model"], num_layers=hf_config.get("num_decoder_layers") or
        encoder_layers, num_encoder_layers=encoder_layers, num_heads=hf_config["num_heads"],
        num_kv_heads=hf_config["num_heads"], head_dim=hf_config["d_kv"],
        mlp_dim=hf_config["d_ff"], mlp_activation=_ACTIVATIONS[proj],
        relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
        norm_eps=hf_config.get("layer_norm_epsilon", 1e-6), tie_embeddings=is_scaled(hf_config))
    return ModelConfig(**(fields | overrides))


def hf_config(cfg: ModelConfig, dtype: str) -> dict:
    """The config.json of `cfg` for `T5ForConditionalGeneration`."""
    check_supported(cfg)
    proj = {v: k for k, v in _ACTIVATIONS.items()}[cfg.mlp_activation]
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "is_encoder_decoder": True, "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
        "d_kv": cfg.head_dim, "d_ff": cfg.mlp_dim,
        "num_layers": cfg.num_encoder_layers or cfg.num_layers,
        "num_decoder_layers": cfg.num_layers, "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "layer_norm_epsilon": cfg.norm_eps, "feed_forward_proj": proj,
        "is_gated_act": cfg.mlp_activation != "relu",
        "dense_act_fn": {"relu": "relu", "gelu_tanh": "gelu_new", "silu": "silu"}[
            cfg.mlp_activation],
        # Read as "scale the decoder output" by every transformers version; 5.x also ties
        # unless the file holds a different lm_head, which an untied export does.
        "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.tie_embeddings,
        "dropout_rate": 0.0, "initializer_factor": 1.0, "pad_token_id": 0, "eos_token_id": 1,
        "decoder_start_token_id": 0, "dtype": dtype, "torch_dtype": dtype,  # 4.x reads the latter
        "use_cache": True,
    }


def check_supported(cfg: ModelConfig) -> None:
    """Raise ConversionError unless `cfg` is a model Hugging Face's T5 can hold."""
    if cfg.architecture != "encoder_decoder":
        raise ConversionError(f"architecture {cfg.architecture!r}: Hugging Face T5 is an "
                              f"encoder_decoder; use --format llama for decoders")
    if cfg.num_kv_heads != cfg.num_heads:
        raise ConversionError(f"num_kv_heads={cfg.num_kv_heads} != num_heads={cfg.num_heads}: "
                              f"Hugging Face T5 has no grouped-query attention")


def _attention(name: str, path: tuple, layer: int, cfg: ModelConfig) -> list[Tensor]:
    d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    shapes = {"q": (h * e, d), "k": (k * e, d), "v": (k * e, d), "o": (d, h * e)}
    ours = {"q": "query", "k": "key", "v": "value", "o": "out"}
    return [Tensor(f"{name}.{p}.weight", path + (ours[p],), shapes[p], layer, transpose=True)
            for p in ("q", "k", "v", "o")]


def _mlp(name: str, path: tuple, layer: int, cfg: ModelConfig) -> list[Tensor]:
    d, f = cfg.d_model, cfg.mlp_dim
    inputs = ({"wi": "up"} if cfg.mlp_activation == "relu"
              else {"wi_0": "gate", "wi_1": "up"})  # wi_0 goes through the activation
    return ([Tensor(f"{name}.{hf}.weight", path + (ours,), (f, d), layer, transpose=True)
             for hf, ours in inputs.items()]
            + [Tensor(f"{name}.wo.weight", path + ("down",), (d, f), layer, transpose=True)])


def _norm(name: str, path: tuple, layer: int | None, cfg: ModelConfig) -> Tensor:
    return Tensor(f"{name}.weight", path + ("scale",), (cfg.d_model,), layer)


def _encoder_layer(i: int, cfg: ModelConfig) -> list[Tensor]:
    block, ours = f"encoder.block.{i}.layer", ("encoder", "layers")
    return [_norm(f"{block}.0.layer_norm", ours + ("attention_norm",), i, cfg),
            *_attention(f"{block}.0.SelfAttention", ours + ("attention",), i, cfg),
            _norm(f"{block}.1.layer_norm", ours + ("mlp_norm",), i, cfg),
            *_mlp(f"{block}.1.DenseReluDense", ours + ("mlp",), i, cfg)]


def _decoder_layer(i: int, cfg: ModelConfig) -> list[Tensor]:
    block, ours = f"decoder.block.{i}.layer", ("decoder", "layers")
    return [_norm(f"{block}.0.layer_norm", ours + ("self_attention_norm",), i, cfg),
            *_attention(f"{block}.0.SelfAttention", ours + ("self_attention",), i, cfg),
            _norm(f"{block}.1.layer_norm", ours + ("cross_attention_norm",), i, cfg),
            *_attention(f"{block}.1.EncDecAttention", ours + ("cross_attention",), i, cfg),
            _norm(f"{block}.2.layer_norm", ours + ("mlp_norm",), i, cfg),
            *_mlp(f"{block}.2.DenseReluDense", ours + ("mlp",), i, cfg)]


def tensors(cfg: ModelConfig, lm_head_from_shared: bool = False) -> list[Tensor]:
    """Every tensor of the Hugging Face T5 checkpoint of `cfg`, mapped onto our tree.

    `lm_head_from_shared`: an unscaled model stored without a separate head (tied weights) takes
    our `lm_head` from `shared.weight`.
    """
    check_supported(cfg)
    v, d, r, h = cfg.vocab_size, cfg.d_model, cfg.relative_attention_num_buckets, cfg.num_heads
    out = [Tensor("shared.weight", ("token_embed",), (v, d))]
    for stack, count, layer in (("encoder", cfg.num_encoder_layers or cfg.num_layers,
                                 _encoder_layer), ("decoder", cfg.num_layers, _decoder_layer)):
        # Only the first block holds the table; every layer of the stack uses it.
        out.append(Tensor(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          (stack, "relative_bias", "embedding"), (r, h)))
        for i in range(count):
            out.extend(layer(i, cfg))
        out.append(_norm(f"{stack}.final_layer_norm", (stack, "final_norm"), None, cfg))
    if not cfg.tie_embeddings:
        name = "shared.weight" if lm_head_from_shared else "lm_head.weight"
        out.append(Tensor(name, ("lm_head",), (v, d), transpose=True))
    return out


def import_plan(source: Source, cfg: ModelConfig) -> tuple[list[Tensor], tuple[str, ...]]:
    """(tensors to read, names to ignore) for importing `source` into `cfg`'s model.

    Checks the tie: a scaled (tied) model's `lm_head.weight`, if stored, must equal `shared`.
    """
    names = source.names()
    has_head = "lm_head.weight" in names
    if cfg.tie_embeddings and has_head:
        if not np.array_equal(source.read("lm_head.weight"), source.read("shared.weight")):
            raise ConversionError(
                "lm_head.weight differs from shared.weight, but the config scales the decoder "
                "output as T5 v1.0 does (tie_embeddings): set scale_decoder_outputs / "
                "tie_word_embeddings to false in config.json for a T5 v1.1 / UL2 checkpoint")
        return tensors(cfg), IGNORED + ("lm_head.weight",)
    return tensors(cfg, lm_head_from_shared=not has_head), IGNORED
