"""Hugging Face T5 (`T5ForConditionalGeneration`) state_dict -> EncoderDecoder parameters.

Covers T5 v1.0 (relu, tied and scaled logits), T5 v1.1 (gated-gelu), UL2 / Flan-T5 style
(gated-silu) checkpoints, into the scanned ('layers' axis first) or unscanned (one entry per layer)
layout that `cfg.scan_layers` selects. The result is the pure-dict parameter tree of
`nnx.state(EncoderDecoder(cfg, ...), nnx.Param)`, ready for `nnx.update`. Kept free of torch and
of test helpers so that it can move into the checkpoint converter as it is.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from t5x_like.config import ModelConfig

# Keys that carry no parameter of ours: the stacks' copies of the shared embedding, and a
# cross-attention bias table some old checkpoints hold but T5 never uses.
_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def _numpy(tensor: Any) -> np.ndarray:
    """A torch tensor (any dtype, any device) or array-like as a numpy array."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()  # numpy has no bfloat16; cast to param_dtype below
        tensor = tensor.numpy()
    return np.asarray(tensor)


class _Reader:
    """Takes tensors out of the state_dict by name, checking shapes and remembering what it took."""

    def __init__(self, state_dict: Mapping[str, Any], dtype: np.dtype):
        self.state_dict, self.dtype, self.used = state_dict, dtype, set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.state_dict:
            raise KeyError(f"Hugging Face T5 state_dict has no {key!r}")
        value = _numpy(self.state_dict[key])
        if value.shape != shape:
            raise ValueError(f"{key}: shape {value.shape}, the config expects {shape}")
        self.used.add(key)
        return value

    def linear(self, key: str, in_dim: int, out_dim: int) -> np.ndarray:
        """A torch Linear weight [out, in] as our [in, out] kernel."""
        return self.take(f"{key}.weight", (out_dim, in_dim)).T

    def cast(self, tree: Any) -> Any:
        if isinstance(tree, dict):
            return {k: self.cast(v) for k, v in tree.items()}
        return np.ascontiguousarray(tree, dtype=self.dtype)


def _attention(read: _Reader, prefix: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
    d, h, e = cfg.d_model, cfg.num_heads, cfg.head_dim
    return {
        "query": read.linear(f"{prefix}.q", d, h * e).reshape(d, h, e),
        "key": read.linear(f"{prefix}.k", d, h * e).reshape(d, h, e),
        "value": read.linear(f"{prefix}.v", d, h * e).reshape(d, h, e),
        "out": read.linear(f"{prefix}.o", h * e, d).reshape(h, e, d),
    }


def _mlp(read: _Reader, prefix: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
    d, f = cfg.d_model, cfg.mlp_dim
    if cfg.mlp_activation == "relu":  # ungated: wi -> up
        return {"up": read.linear(f"{prefix}.wi", d, f), "down": read.linear(f"{prefix}.wo", f, d)}
    return {"gate": read.linear(f"{prefix}.wi_0", d, f), "up": read.linear(f"{prefix}.wi_1", d, f),
            "down": read.linear(f"{prefix}.wo", f, d)}


def _norm(read: _Reader, key: str, cfg: ModelConfig) -> dict[str, np.ndarray]:
    return {"scale": read.take(f"{key}.weight", (cfg.d_model,))}


def _encoder_layer(read: _Reader, i: int, cfg: ModelConfig) -> dict[str, Any]:
    block = f"encoder.block.{i}.layer"
    return {"attention_norm": _norm(read, f"{block}.0.layer_norm", cfg),
            "attention": _attention(read, f"{block}.0.SelfAttention", cfg),
            "mlp_norm": _norm(read, f"{block}.1.layer_norm", cfg),
            "mlp": _mlp(read, f"{block}.1.DenseReluDense", cfg)}


def _decoder_layer(read: _Reader, i: int, cfg: ModelConfig) -> dict[str, Any]:
    block = f"decoder.block.{i}.layer"
    return {"self_attention_norm": _norm(read, f"{block}.0.layer_norm", cfg),
            "self_attention": _attention(read, f"{block}.0.SelfAttention", cfg),
            "cross_attention_norm": _norm(read, f"{block}.1.layer_norm", cfg),
            "cross_attention": _attention(read, f"{block}.1.EncDecAttention", cfg),
            "mlp_norm": _norm(read, f"{block}.2.layer_norm", cfg),
            "mlp": _mlp(read, f"{block}.2.DenseReluDense", cfg)}


def _layers(layers: list[dict[str, Any]], scanned: bool) -> dict[Any, Any]:
    """Per-layer trees as {0: ..., 1: ...}, or stacked leaf by leaf on a leading axis."""
    if not scanned:
        return dict(enumerate(layers))

    def stack(trees):
        if isinstance(trees[0], dict):
            return {k: stack([t[k] for t in trees]) for k in trees[0]}
        return np.stack(trees)

    return stack(layers)


def _stack(read: _Reader, name: str, num_layers: int, make_layer, cfg: ModelConfig):
    # Only the first block holds the table; every layer of the stack uses it.
    table = read.take(f"{name}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      (cfg.relative_attention_num_buckets, cfg.num_heads))
    return {"relative_bias": {"embedding": table},
            "layers": _layers([make_layer(read, i, cfg) for i in range(num_layers)],
                              cfg.scan_layers),
            "final_norm": _norm(read, f"{name}.final_layer_norm", cfg)}


def t5_params_from_hf(state_dict: Mapping[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Our EncoderDecoder parameter tree from a Hugging Face T5 state_dict.

    `cfg` must describe the checkpoint: multi-head attention (num_kv_heads == num_heads),
    `mlp_activation` relu for `feed_forward_proj='relu'`, gelu_tanh for 'gated-gelu', silu for
    'gated-silu', and `tie_embeddings` True exactly for T5 v1.0-style checkpoints, whose logits
    are the scaled decoder output times the shared embedding. Every other key of the state_dict
    must be consumed, so a mismatched config fails loudly instead of loading half a model.
    Arrays are numpy, in `cfg.param_dtype`; the layout (scanned or not) follows
    `cfg.scan_layers`.
    """
    if cfg.architecture != "encoder_decoder":
        raise ValueError(f"architecture {cfg.architecture!r}: T5 weights need encoder_decoder")
    if cfg.num_kv_heads != cfg.num_heads:
        raise ValueError("T5 uses multi-head attention: set num_kv_heads == num_heads")
    read = _Reader(state_dict, jnp.dtype(cfg.param_dtype))  # numpy dtypes, bfloat16 included
    params = {
        "token_embed": read.take("shared.weight", (cfg.vocab_size, cfg.d_model)),
        "encoder": _stack(read, "encoder", cfg.num_encoder_layers or cfg.num_layers,
                          _encoder_layer, cfg),
        "decoder": _stack(read, "decoder", cfg.num_layers, _decoder_layer, cfg),
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = read.linear("lm_head", cfg.d_model, cfg.vocab_size)
    elif "lm_head.weight" in state_dict:
        # A tied checkpoint may still list lm_head; it must then be the embedding itself.
        if not np.array_equal(_numpy(state_dict["lm_head.weight"]), params["token_embed"]):
            raise ValueError("tie_embeddings=True but lm_head.weight differs from shared.weight: "
                             "an untied (T5 v1.1 / UL2) checkpoint needs tie_embeddings=False")
        read.used.add("lm_head.weight")
    unused = sorted(set(state_dict) - read.used - set(_IGNORED))
    if unused:
        raise ValueError(f"state_dict keys the config does not account for: {unused[:8]}"
                         f"{' ...' if len(unused) > 8 else ''} (more layers than num_layers / "
                         f"num_encoder_layers, or a gated MLP under mlp_activation='relu'?)")
    return read.cast(params)
