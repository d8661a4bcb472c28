"""T5X legacy checkpoints (msgpack + TensorStore zarr) -> our EncoderDecoder, unscanned and scanned.

The checkpoints are written here from a random Hugging Face T5 by the spec's names and layout
(independently of the importer's name map), so matching the HF model's logits checks the map.
"""

import pathlib

import flax.serialization
import numpy as np
import pytest
import tensorstore as ts

from t5x_like import cli
from t5x_like.convert import t5x_legacy
from t5x_like.convert.model_dir import read_params
from t5x_like.convert.tensors import ConversionError

from .tiny_hf import hf_t5, state_dict_numpy, t5_max_diff_to_hf, t5_model

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}


def _layer(hf: dict, prefix: str, parts: list[tuple[str, str, str]], gated: bool,
           split_heads: bool, heads: int) -> dict[str, np.ndarray]:
    """One T5X layer's arrays from HF's block `prefix`: (T5X name, HF sub-layer, kind) parts."""
    out = {}
    for name, sub, kind in parts:
        if kind == "norm":
            out[f"{name}/scale"] = hf[f"{prefix}.{sub}.layer_norm.weight"]
        elif kind == "attention":
            for p, ours in _ATTENTION.items():
                kernel = hf[f"{prefix}.{sub}.{p}.weight"].T  # (in, out)
                if split_heads:  # T5X's DenseGeneral kernels: (embed, heads, kv) / (heads, kv, embed)
                    kernel = (kernel.reshape(heads, -1, kernel.shape[1]) if p == "o"
                              else kernel.reshape(kernel.shape[0], heads, -1))
                out[f"{name}/{ours}/kernel"] = kernel
        else:
            inputs = {"wi_0": "wi_0", "wi_1": "wi_1"} if gated else {"wi": "wi"}
            for t5x, hf_name in inputs.items():
                out[f"{name}/{t5x}/kernel"] = hf[f"{prefix}.{sub}.{hf_name}.weight"].T
            out[f"{name}/wo/kernel"] = hf[f"{prefix}.{sub}.wo.weight"].T
    return out


def _t5x_params(hf: dict, gated: bool, tied: bool, split_heads: bool, heads: int):
    """Flat {name: array} of the T5.1.1 parameter tree, unscanned."""
    flat = {"token_embedder/embedding": hf["shared.weight"]}
    encoder = [("pre_attention_layer_norm", "layer.0", "norm"),
               ("attention", "layer.0.SelfAttention", "attention"),
               ("pre_mlp_layer_norm", "layer.1", "norm"), ("mlp", "layer.1.DenseReluDense", "mlp")]
    decoder = [("pre_self_attention_layer_norm", "layer.0", "norm"),
               ("self_attention", "layer.0.SelfAttention", "attention"),
               ("pre_cross_attention_layer_norm", "layer.1", "norm"),
               ("encoder_decoder_attention", "layer.1.EncDecAttention", "attention"),
               ("pre_mlp_layer_norm", "layer.2", "norm"), ("mlp", "layer.2.DenseReluDense", "mlp")]
    for stack, parts, norm in (("encoder", encoder, "encoder_norm"),
                               ("decoder", decoder, "decoder_norm")):
        flat[f"{stack}/relpos_bias/rel_embedding"] = hf[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T
        flat[f"{stack}/{norm}/scale"] = hf[f"{stack}.final_layer_norm.weight"]
        i = 0
        while f"{stack}.block.{i}.layer.0.layer_norm.weight" in hf:
            for name, value in _layer(hf, f"{stack}.block.{i}", parts, gated, split_heads,
                                      heads).items():
                flat[f"{stack}/layers_{i}/{name}"] = value
            i += 1
    if not tied:
        flat["decoder/logits_dense/kernel"] = hf["lm_head.weight"].T
    return flat


def _scan(flat: dict, axis: int) -> dict:
    """Stack `layers_i` along `axis` under `layers`, as T5X's scanned models store them."""
    out, stacks = {}, {}
    for name, value in flat.items():
        parts = name.split("/")
        if parts[1].startswith("layers_"):
            key = "/".join([parts[0], "layers", *parts[2:]])
            stacks.setdefault(key, {})[int(parts[1][len("layers_"):])] = value
        else:
            out[name] = value
    for key, layers in stacks.items():
        out[key] = np.stack([layers[i] for i in sorted(layers)], axis=axis)
    return out


def write_t5x_checkpoint(directory: pathlib.Path, flat: dict, step: int) -> None:
    """msgpack `checkpoint` + one gzip zarr per array of rank >= 2 (norm scales stay inline)."""
    directory.mkdir(parents=True)
    target = {}
    for name, value in flat.items():
        node = target
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        value = np.ascontiguousarray(value, np.float32)
        if value.ndim < 2:
            node[leaf] = value
            continue
        dotted = "target." + name.replace("/", ".")
        metadata = {"shape": list(value.shape), "chunks": list(value.shape), "dtype": "<f4",
                    "compressor": {"id": "gzip", "level": 1}}
        store = ts.open({"driver": "zarr", "kvstore": {"driver": "file",
                                                       "path": str(directory / dotted)},
                         "metadata": metadata}, create=True).result()
        store.write(value).result()
        # T5X keeps the path relative to the checkpoint directory.
        node[leaf] = {"driver": "zarr", "kvstore": {"driver": "file", "path": dotted},
                      "metadata": metadata}
    state = {"version": 3, "optimizer": {"target": target,
                                         "state": {"step": np.int32(step), "param_states": {}}}}
    (directory / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(state))


@pytest.mark.parametrize("variant,layout,ours_scanned", [
    ("ul2", "unscanned", True), ("ul2", "scanned", False), ("t5_v1_0", "scanned", False)])
def test_imported_t5x_checkpoint_matches_the_model_it_was_written_from(tmp_path, variant, layout,
                                                                       ours_scanned):
    model = hf_t5(variant)
    gated, tied = variant != "t5_v1_0", variant == "t5_v1_0"
    flat = _t5x_params(state_dict_numpy(model), gated, tied, split_heads=layout == "scanned",
                       heads=4)
    if layout == "scanned":
        flat = _scan(flat, axis=1)
    write_t5x_checkpoint(tmp_path / "checkpoint_1234", flat, step=1234)
    overrides = {"mlp_activation": "silu"} if gated else {}
    cfg, params, step = t5x_legacy.import_t5x_dir(
        tmp_path / "checkpoint_1234", relative_attention_max_distance=12,
        scan_layers=ours_scanned, **overrides)
    assert step == 1234
    assert (cfg.num_encoder_layers, cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
            cfg.relative_attention_num_buckets, cfg.tie_embeddings) == (2, 3, 4, 4, 32, 8, tied)
    assert t5_max_diff_to_hf(model, t5_model(cfg, params)) < 1e-5


def test_gated_checkpoint_needs_the_activation_and_a_missing_layer_is_named(tmp_path):
    flat = _t5x_params(state_dict_numpy(hf_t5("ul2")), True, False, False, 4)
    write_t5x_checkpoint(tmp_path / "ckpt", flat, step=1)
    with pytest.raises(ConversionError, match="mlp_activation=gelu_tanh .* or silu"):
        t5x_legacy.import_t5x_dir(tmp_path / "ckpt")
    with pytest.raises(ConversionError, match=r"lacks .*'decoder/layers_3/.*' of shape"):
        t5x_legacy.import_t5x_dir(tmp_path / "ckpt", mlp_activation="silu", num_layers=4)


def test_cli_converts_a_t5x_checkpoint_into_a_model_dir(tmp_path, capsys):
    model = hf_t5("ul2")
    write_t5x_checkpoint(tmp_path / "checkpoint_7",
                         _t5x_params(state_dict_numpy(model), True, False, False, 4), step=7)
    args = ["convert", "--from", "t5x", "--to", "t5x_like", str(tmp_path / "checkpoint_7"),
            str(tmp_path / "run"), "--gin.ModelConfig.relative_attention_max_distance=12",
            "--gin.ModelConfig.scan_layers=False"]
    assert cli.main(args) == 2
    assert "mlp_activation" in capsys.readouterr().err
    assert cli.main(args + ["--gin.ModelConfig.mlp_activation=silu"]) == 0
    assert "from T5X step 7" in capsys.readouterr().out
    cfg, params, step = read_params(tmp_path / "run")
    assert step == 0 and cfg.mlp_activation == "silu"
    assert t5_max_diff_to_hf(model, t5_model(cfg, params)) < 1e-5
