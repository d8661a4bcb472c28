"""T5X legacy checkpoints (msgpack + TensorStore zarr) -> our EncoderDecoder.

A T5X checkpoint directory `checkpoint_<step>/` holds a msgpack file `checkpoint`:
{'version': 3, 'optimizer': {'target': params, 'state': {'step', 'param_states'}}}. Large arrays
are replaced by TensorStore specs of zarr directories next to it, named by the dotted path
(`target.encoder.layers_0.attention.query.kernel`); small ones are inline. Names are T5.1.1's
(UL2 20B and Flan-UL2 were released this way): kernels are (in, out) like ours, with the heads
joined (`embed, heads*kv`) or split (`embed, heads, kv`); `relpos_bias/rel_embedding` is
(heads, buckets), the transpose of ours.

Scanned checkpoints (`encoder/layers/...` with a layer axis, T5X's `param_scan_axis`, default 1)
are read one layer slice at a time, as if they were unscanned; our side may be either layout.
T5X records no model config: shapes give most of it, but not the gated MLP's activation, which
must be given (gelu_tanh for T5.1.1 / Flan-T5, silu for UL2).
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

import numpy as np

from t5x_like.config import ModelConfig
from t5x_like.convert.model_dir import abstract_params
from t5x_like.convert.tensors import ConversionError, Tensor, import_params, numpy_dtype

_SCANNED = re.compile(r"^(encoder|decoder)/layers/(.+)$")


def _is_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not _is_spec(value):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


class T5XSource:
    """The parameters of a T5X checkpoint directory, read one tensor (or layer slice) at a time.

    Scanned stacks are presented under unscanned names (`encoder/layers_3/...`).
    """

    def __init__(self, directory: str | os.PathLike, scan_axis: int = 1):
        import flax.serialization
        self.directory = pathlib.Path(directory)
        path = self.directory / "checkpoint"
        if not path.is_file():
            raise ConversionError(f"{path} not found: a T5X checkpoint directory "
                                  f"(checkpoint_<step>/) holds a msgpack file 'checkpoint'")
        raw = flax.serialization.msgpack_restore(path.read_bytes())
        if raw.get("version", 0) < 2 or "optimizer" not in raw:
            raise ConversionError(f"{path}: version {raw.get('version')!r} without an 'optimizer' "
                                  f"entry is not a T5X checkpoint this reader knows (want 3)")
        self.step = int(np.asarray(raw["optimizer"].get("state", {}).get("step", 0)))
        self.scan_axis = scan_axis
        self._leaves = _flatten(raw["optimizer"]["target"])
        self._virtual: dict[str, tuple[str, int]] = {}  # unscanned name -> (stored name, layer)
        for name in list(self._leaves):
            if m := _SCANNED.match(name):
                for i in range(self._stored_shape(name)[scan_axis]):
                    self._virtual[f"{m[1]}/layers_{i}/{m[2]}"] = (name, i)

    def _resolve(self, spec: dict) -> dict:
        """The spec with its zarr path made absolute (T5X stores it relative to the directory)."""
        spec = dict(spec)
        kvstore = dict(spec.get("kvstore", {}))
        rel = "/".join(p for p in (kvstore.get("path", ""), spec.pop("path", "")) if p)
        path = pathlib.Path(rel)
        if not path.is_absolute() or not path.exists():  # relative, or a moved checkpoint
            path = self.directory / path.name
        spec["kvstore"] = {"driver": "file", "path": str(path)}
        return spec

    def _open(self, name: str):
        import tensorstore as ts
        return ts.open(self._resolve(self._leaves[name]), open=True).result()

    def _stored_shape(self, name: str) -> tuple[int, ...]:
        leaf = self._leaves[name]
        return tuple(self._open(name).shape) if _is_spec(leaf) else tuple(np.shape(leaf))

    def names(self) -> set[str]:
        """Parameter names ('encoder/layers_0/attention/query/kernel'), scanned ones per layer."""
        return {n for n in self._leaves if not _SCANNED.match(n)} | set(self._virtual)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of one tensor (of one layer, for a scanned stack)."""
        if name in self._virtual:
            stored, _ = self._virtual[name]
            shape = list(self._stored_shape(stored))
            del shape[self.scan_axis]
            return tuple(shape)
        return self._stored_shape(name)

    def read(self, name: str) -> np.ndarray:
        """The values of one tensor; a scanned stack's layer is read as a slice from disk."""
        stored, layer = self._virtual.get(name, (name, None))
        leaf = self._leaves[stored]
        index = () if layer is None else (slice(None),) * self.scan_axis + (layer,)
        if _is_spec(leaf):
            return np.asarray(self._open(stored)[index].read().result())
        return np.asarray(leaf)[index]


def _pick(source, name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """Whichever accepted shape the tensor is stored in (joined or split heads); else the first,
    so that the shape error names what was expected."""
    stored = source.shape(name) if name in source.names() else None
    return stored if stored in shapes else shapes[0]


def _attention(source, name: str, path: tuple, layer: int, cfg: ModelConfig) -> list[Tensor]:
    d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    out = []
    for part, heads in (("query", h), ("key", k), ("value", k)):
        key = f"{name}/{part}/kernel"
        out.append(Tensor(key, path + (part,), _pick(source, key, (d, heads * e), (d, heads, e)),
                          layer))
    key = f"{name}/out/kernel"
    out.append(Tensor(key, path + ("out",), _pick(source, key, (h * e, d), (h, e, d)), layer))
    return out


def _mlp(name: str, path: tuple, layer: int, cfg: ModelConfig) -> list[Tensor]:
    d, f = cfg.d_model, cfg.mlp_dim
    inputs = {"wi": "up"} if cfg.mlp_activation == "relu" else {"wi_0": "gate", "wi_1": "up"}
    return ([Tensor(f"{name}/{t5x}/kernel", path + (ours,), (d, f), layer)
             for t5x, ours in inputs.items()]
            + [Tensor(f"{name}/wo/kernel", path + ("down",), (f, d), layer)])


def _norm(name: str, path: tuple, layer: int | None, cfg: ModelConfig) -> Tensor:
    return Tensor(f"{name}/scale", path + ("scale",), (cfg.d_model,), layer)


def tensors(source, cfg: ModelConfig) -> list[Tensor]:
    """Every parameter of the T5X checkpoint of `cfg`, mapped onto our EncoderDecoder tree."""
    if cfg.architecture != "encoder_decoder":
        raise ConversionError(f"architecture {cfg.architecture!r}: T5X T5.1.1 checkpoints are "
                              f"encoder_decoder models")
    v, d, r, h = cfg.vocab_size, cfg.d_model, cfg.relative_attention_num_buckets, cfg.num_heads
    out = [Tensor("token_embedder/embedding", ("token_embed",), (v, d))]
    for i in range(cfg.num_encoder_layers or cfg.num_layers):
        t5x, ours = f"encoder/layers_{i}", ("encoder", "layers")
        out += [_norm(f"{t5x}/pre_attention_layer_norm", ours + ("attention_norm",), i, cfg),
                *_attention(source, f"{t5x}/attention", ours + ("attention",), i, cfg),
                _norm(f"{t5x}/pre_mlp_layer_norm", ours + ("mlp_norm",), i, cfg),
                *_mlp(f"{t5x}/mlp", ours + ("mlp",), i, cfg)]
    for i in range(cfg.num_layers):
        t5x, ours = f"decoder/layers_{i}", ("decoder", "layers")
        out += [
            _norm(f"{t5x}/pre_self_attention_layer_norm", ours + ("self_attention_norm",), i,
                  cfg),
            *_attention(source, f"{t5x}/self_attention", ours + ("self_attention",), i, cfg),
            _norm(f"{t5x}/pre_cross_attention_layer_norm", ours + ("cross_attention_norm",), i,
                  cfg),
            *_attention(source, f"{t5x}/encoder_decoder_attention", ours + ("cross_attention",),
                        i, cfg),
            _norm(f"{t5x}/pre_mlp_layer_norm", ours + ("mlp_norm",), i, cfg),
            *_mlp(f"{t5x}/mlp", ours + ("mlp",), i, cfg)]
    for stack, norm in (("encoder", "encoder_norm"), ("decoder", "decoder_norm")):
        out += [Tensor(f"{stack}/relpos_bias/rel_embedding", (stack, "relative_bias", "embedding"),
                       (h, r), transpose=True),
                _norm(f"{stack}/{norm}", (stack, "final_norm"), None, cfg)]
    if not cfg.tie_embeddings:
        out.append(Tensor("decoder/logits_dense/kernel", ("lm_head",), (d, v)))
    return out


def _count_layers(names: set[str], stack: str) -> int:
    return len({m[1] for n in names if (m := re.match(rf"^{stack}/layers_(\d+)/", n))})


def model_config(source, **overrides: Any) -> ModelConfig:
    """Our ModelConfig from the checkpoint's shapes; `overrides` fill in (or correct) the rest.

    A gated MLP needs `mlp_activation` in `overrides`: T5X does not record it.
    """
    names = source.names()
    for need in ("token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
                 "encoder/layers_0/attention/query/kernel"):
        if need not in names:
            raise ConversionError(f"T5X checkpoint {source.directory} has no {need!r}: not a "
                                  f"T5.1.1-style encoder-decoder (found e.g. {sorted(names)[:3]})")
    vocab, d = source.shape("token_embedder/embedding")
    heads, buckets = source.shape("encoder/relpos_bias/rel_embedding")
    gated = "encoder/layers_0/mlp/wi_0/kernel" in names
    if gated and "mlp_activation" not in overrides:
        raise ConversionError("T5X checkpoints do not record the MLP activation: pass "
                              "--gin.ModelConfig.mlp_activation=gelu_tanh (T5.1.1, Flan-T5) or "
                              "silu (UL2, Flan-UL2)")
    query = source.shape("encoder/layers_0/attention/query/kernel")
    fields = dict(
        architecture="encoder_decoder", vocab_size=vocab, d_model=d,
        num_layers=_count_layers(names, "decoder"),
        num_encoder_layers=_count_layers(names, "encoder"), num_heads=heads, num_kv_heads=heads,
        head_dim=int(np.prod(query)) // (d * heads),
        mlp_dim=source.shape("encoder/layers_0/mlp/wo/kernel")[0],
        mlp_activation="relu", relative_attention_num_buckets=buckets,
        tie_embeddings="decoder/logits_dense/kernel" not in names)
    return ModelConfig(**(fields | overrides))


def import_t5x_dir(directory: str | os.PathLike, scan_axis: int = 1,
                   **overrides: Any) -> tuple[ModelConfig, Any, int]:
    """(ModelConfig, our numpy parameter tree, T5X step) of a T5X checkpoint directory."""
    source = T5XSource(directory, scan_axis)
    cfg = model_config(source, **overrides)
    params = import_params(source, tensors(source, cfg), abstract_params(cfg),
                           scanned=cfg.scan_layers, dtype=numpy_dtype(cfg.param_dtype),
                           what=f"T5X checkpoint {directory}")
    return cfg, params, source.step
