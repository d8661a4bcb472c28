"""Hugging Face model directories <-> our parameter trees (T5 family and Llama).

Import reads `config.json` for the architecture and the safetensors (or PyTorch bin) shards
lazily; export writes `config.json` and one `model.safetensors`, tensor by tensor. Which format
module applies follows from `config.json`'s `model_type` on import and from
`ModelConfig.architecture` on export.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from t5x_like import fileio
from t5x_like.config import ModelConfig
from t5x_like.convert import hf_llama, hf_t5
from t5x_like.convert.model_dir import abstract_params
from t5x_like.convert.tensors import (ConversionError, HFSource, Source, export_tensors,
                                      import_params, numpy_dtype, write_safetensors)

_BY_MODEL_TYPE = {"t5": hf_t5, "mt5": hf_t5, "llama": hf_llama}


def format_of(cfg: ModelConfig):
    """The format module (hf_t5 or hf_llama) for our architecture."""
    return hf_t5 if cfg.architecture == "encoder_decoder" else hf_llama


def read_hf_config(directory: str | os.PathLike) -> dict:
    """The model directory's config.json."""
    path = pathlib.Path(directory, "config.json")
    if not path.is_file():
        raise ConversionError(f"{path} not found: a Hugging Face model directory holds "
                              f"config.json next to its weights")
    return json.loads(path.read_text())


def model_config(hf_config: dict, **overrides: Any) -> ModelConfig:
    """Our ModelConfig of a Hugging Face config.json (T5 family or Llama)."""
    kind = hf_config.get("model_type")
    if kind not in _BY_MODEL_TYPE:
        raise ConversionError(f"config.json model_type {kind!r} is not supported; supported: "
                              f"{', '.join(sorted(_BY_MODEL_TYPE))}")
    return _BY_MODEL_TYPE[kind].model_config(hf_config, **overrides)


def params_from_hf(source: Source, cfg: ModelConfig) -> Any:
    """Our parameter tree (numpy, cfg.param_dtype, cfg's layer layout) from Hugging Face tensors.

    `source` is an `HFSource` (a directory) or a `DictSource` (e.g. a live state_dict).
    """
    fmt = format_of(cfg)
    entries, ignored = fmt.import_plan(source, cfg)
    return import_params(source, entries, abstract_params(cfg), scanned=cfg.scan_layers,
                         dtype=numpy_dtype(cfg.param_dtype), ignored=ignored,
                         what=f"Hugging Face {fmt.__name__.rsplit('.', 1)[1]} checkpoint")


def import_hf_dir(directory: str | os.PathLike, **overrides: Any) -> tuple[ModelConfig, Any]:
    """(ModelConfig, parameter tree) of a local Hugging Face model directory."""
    cfg = model_config(read_hf_config(directory), **overrides)
    return cfg, params_from_hf(HFSource(directory), cfg)


def export_hf_dir(params: Any, cfg: ModelConfig, directory: str | os.PathLike,
                  dtype: str = "float32") -> pathlib.Path:
    """Write config.json and model.safetensors that transformers' `from_pretrained` loads."""
    fmt = format_of(cfg)
    config = fmt.hf_config(cfg, dtype)
    entries = fmt.tensors(cfg)
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    np_dtype = numpy_dtype(dtype)
    header = [(e.name, np_dtype, e.shape) for e in entries]
    write_safetensors(out / "model.safetensors", header,
                      lambda: export_tensors(params, entries, scanned=cfg.scan_layers,
                                             dtype=np_dtype))
    fileio.atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    return out

