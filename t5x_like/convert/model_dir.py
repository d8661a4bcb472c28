"""Our side of a conversion: a MODEL_DIR written from, or read into, a numpy parameter tree.

A converted MODEL_DIR is what a training run would leave behind, minus the optimizer: a
parameters-only checkpoint at step 0 (`checkpoints/0/{params,model}`), `model.gin` (the
ModelConfig bindings, to include in other runs) and `config.gin` (the operative config of a run
on that model, as `t5x-like train` writes it). So `t5x-like eval --gin_file=DST/config.gin`,
`t5x-like generate --model_dir=DST` and `t5x-like train --gin_file=DST/config.gin` use it as it
is; training starts at step 0 with fresh optimizer moments.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any, Sequence

import numpy as np

from t5x_like import checkpointing, gin_loader
from t5x_like.config import ModelConfig, RunConfig
from t5x_like.convert.tensors import ConversionError, numpy_dtype

# The run a converted model gets by default: the tiny pretraining run's data and optimizer
# settings, with the converted model (its model.gin is included last).
DEFAULT_RUN_GIN = {"decoder": ("runs/pretrain.gin",), "encoder_decoder": ("runs/ul2_tiny.gin",)}


def abstract_params(cfg: ModelConfig) -> Any:
    """Our model's parameter tree as ShapeDtypeStructs, traced without allocating anything."""
    from t5x_like.state import model_spec
    from t5x_like.trainer import default_model_factory
    return model_spec(default_model_factory(RunConfig(model=cfg))).abstract_params


def model_gin(cfg: ModelConfig) -> str:
    """Gin bindings of every ModelConfig field."""
    lines = ["# Written by `t5x-like convert`: the converted checkpoint's model."]
    lines += [f"ModelConfig.{k} = {v!r}" for k, v in cfg.to_dict().items()]
    return "\n".join(lines) + "\n"


def find_checkpoint(path: str | os.PathLike) -> tuple[pathlib.Path, int]:
    """(MODEL_DIR, step) of a MODEL_DIR (its latest step) or of a checkpoints/<step> directory."""
    path = pathlib.Path(path).resolve()
    if path.name.isdigit() and path.parent.name == "checkpoints":
        return path.parent.parent, int(path.name)
    steps = sorted(int(p.name) for p in (path / "checkpoints").glob("*")
                   if p.name.isdigit() and (p / "model").is_dir())
    if not steps:
        raise ConversionError(f"{path}: no checkpoints/<step>/ with a model item; give a "
                              f"MODEL_DIR of t5x_like or one of its checkpoints/<step> dirs")
    return path, steps[-1]


def read_params(path: str | os.PathLike) -> tuple[ModelConfig, Any, int]:
    """(ModelConfig, numpy parameter tree, step) of a MODEL_DIR's latest or a given checkpoint."""
    model_dir, step = find_checkpoint(path)
    checkpointer = checkpointing.Checkpointer(str(model_dir), keep=10**6, every=1,
                                                async_save=False)  # reads, deletes nothing
    try:
        # Fields a checkpoint predates had their defaults (as in check_same_model).
        cfg = ModelConfig(**(ModelConfig().to_dict() | checkpointer.model_config(step)))
        params = checkpointer.restore_params(step, abstract_params(cfg), None, as_numpy=True)
    finally:
        checkpointer.close()
    return cfg, params, step


def _cast(tree: Any, dtype: np.dtype) -> Any:
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    return tree if tree.dtype == dtype else tree.astype(dtype)


def write_model_dir(directory: str | os.PathLike, cfg: ModelConfig, params: Any, *,
                    run_gin_files: Sequence[str] | None = None,
                    bindings: dict[str, str] | None = None,
                    tokenizer: str | os.PathLike | None = None,
                    param_dtype: str | None = None) -> pathlib.Path:
    """Write a MODEL_DIR holding `params` as a parameters-only checkpoint at step 0.

    `run_gin_files` (default: by architecture, `DEFAULT_RUN_GIN`) and `bindings`
    (`--gin.KEY=VALUE` style) make up config.gin with the model; `tokenizer`, a sentencepiece
    model, is copied in and becomes DataConfig.tokenizer_path. `param_dtype` (e.g. 'bfloat16')
    stores the parameters in that dtype and records it in the model config (a cast copy: to
    avoid it, import in that dtype). `params`' numpy leaves are consumed: replaced in place by
    CPU jax arrays while saving (`checkpointing.save_params`), so one copy exists at a time.
    """
    out = pathlib.Path(directory).resolve()
    if (out / "checkpoints").exists():
        raise ConversionError(f"{out}/checkpoints exists: convert into a new directory")
    if param_dtype is not None:
        cfg = dataclasses.replace(cfg, param_dtype=param_dtype)
        params = _cast(params, numpy_dtype(param_dtype))
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.gin").write_text(model_gin(cfg))
    flags = {"MODEL_DIR": repr(str(out)), **(bindings or {})}
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.model")
        flags["DataConfig.tokenizer_path"] = repr(str(out / "tokenizer.model"))
    files = list(run_gin_files or DEFAULT_RUN_GIN[cfg.architecture]) + [str(out / "model.gin")]
    gin_loader.load_run_config(files, flags)  # validates the whole run before writing anything
    gin_loader.write_operative_config(str(out))
    checkpointing.save_params(str(out), 0, params, cfg.to_dict())
    return out
