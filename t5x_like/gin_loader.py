"""Gin files and `--gin.KEY=VALUE` flags -> a validated RunConfig (T5X-style composition).

The dataclasses of `t5x_like.config` are registered with gin here and nowhere else. A run is
composed from files such as `configs/runs/pretrain.gin` (which includes a `configs/models/*.gin`)
plus overrides: `--gin.TRAIN_STEPS=100` sets a macro, `--gin.ModelConfig.num_layers=8` a field.
Every failure (unknown configurable or field, wrong type, out-of-range value, an override that
nothing reads) is a ConfigError naming the key and the reason, raised before anything compiles.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import pathlib
import re
from typing import Sequence

import gin

from t5x_like import config as cfg_lib, fileio, objectives
from t5x_like.data.tokenizer_training import DEFAULT_NUM_SENTINELS
from t5x_like.config import ConfigError, RunConfig

_PARTS = {"model": cfg_lib.ModelConfig, "mesh": cfg_lib.MeshConfig,
          "optimizer": cfg_lib.OptimizerConfig, "data": cfg_lib.DataConfig,
          "train": cfg_lib.TrainConfig, "objective": cfg_lib.ObjectiveConfig,
          "distributed": cfg_lib.DistributedConfig, "infer": cfg_lib.InferConfig}
CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
DEFAULT_GIN_FILE = "runs/pretrain.gin"
_registered: dict[str, object] = {}


def _plain_files_only() -> None:
    """Make gin resolve includes as plain files only.

    gin also tries every include as a Python package resource: 'runs/pretrain.gin' becomes
    package 'runs', and a runs/ directory in the working directory (our default MODEL_DIR's
    parent) is a namespace package without a file, which crashes that lookup with a TypeError.
    Our gin files are never package resources, so that reader has nothing to find.
    """
    readers = gin.config._FILE_READERS  # no public API removes a registered reader
    readers[:] = [(read, exists) for read, exists in readers if read is open]


def _register() -> dict[str, object]:
    if not _registered:
        _plain_files_only()
        for part, cls in _PARTS.items():
            _registered[part] = gin.external_configurable(cls, module="t5x_like")
        # Tasks are values of DataConfig.tasks (e.g. `@code/TaskConfig()`), not parts of the run.
        gin.external_configurable(cfg_lib.TaskConfig, module="t5x_like")
    return _registered


def resolve_gin_file(name: str) -> str:
    """A path as given, else relative to the repository's configs/ directory."""
    for candidate in (pathlib.Path(name), CONFIGS_DIR / name):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(f"gin file {name!r} not found (looked in the working directory and in "
                      f"{CONFIGS_DIR}); available: {', '.join(available_gin_files())}")


def available_gin_files() -> list[str]:
    """Gin files shipped under configs/, relative to it."""
    return sorted(str(p.relative_to(CONFIGS_DIR)) for p in CONFIGS_DIR.rglob("*.gin"))


def flag_to_binding(key: str, value: str) -> str:
    """`--gin.KEY=VALUE` -> a gin binding; bare words become strings (`MODEL_DIR=/tmp/x`)."""
    value = value.strip()
    if not value.startswith(("@", "%")):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            value = repr(value)
    return f"{key} = {value}"


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3)
    return f" Did you mean {', '.join(close)}?" if close else ""


def _explain(error: Exception) -> str:
    text = str(error).split("\n")[0]
    if m := re.search(r"Configurable '(\w+)' doesn't have a parameter named '(\w+)'", text):
        part = next(c for c in _PARTS.values() if c.__name__ == m[1])
        fields = [f.name for f in part.__dataclass_fields__.values()]
        return f"{text}{_suggest(m[2], fields)} Fields: {', '.join(fields)}."
    if m := re.search(r"No configurable matching '([\w.]+)'", text):
        names = [c.__name__ for c in _PARTS.values()]
        return f"{text}.{_suggest(m[1], names)} Configurables: {', '.join(names)}."
    if m := re.search(r"in scope '(\w+)'", str(error)):
        return f"macro %{m[1]} is used but never defined; define it in a gin file or flag"
    return str(error)


def _check_macros_used(files: Sequence[str], flags: dict[str, str]) -> None:
    text = "\n".join(pathlib.Path(f).read_text() for f in _with_includes(files))
    text += "\n".join(flags.values())
    known = sorted(set(re.findall(r"%(\w+)", text)))
    for key in flags:
        if "." not in key and key not in known:
            raise ConfigError(f"--gin.{key}: no gin file reads macro %{key}; known macros: "
                              f"{', '.join(known)}")


def _with_includes(files: Sequence[str]) -> list[str]:
    out, todo = [], list(files)
    while todo:
        path = todo.pop()
        out.append(path)
        for inc in re.findall(r"^include\s+['\"](.+?)['\"]", pathlib.Path(path).read_text(), re.M):
            todo.append(resolve_gin_file(inc))
    return out


def load_run_config(gin_files: Sequence[str] = (), flags: dict[str, str] | None = None,
                    *, model_dir: str | None = None) -> RunConfig:
    """Parse gin files and `--gin.` flags into a validated RunConfig."""
    flags = dict(flags or {})
    builders = _register()
    gin.clear_config()
    gin.add_config_file_search_path(str(CONFIGS_DIR))
    files = [resolve_gin_file(f) for f in gin_files]
    _check_macros_used(files, flags)
    bindings = [flag_to_binding(k, v) for k, v in flags.items()]
    try:
        gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
        parts = {name: build() for name, build in builders.items()}
        parts["data"] = _resolve_auto_targets(parts["data"], parts["objective"])
        run = RunConfig(**parts)
        _check_piece_budgets(run)
    except ConfigError as e:
        raise ConfigError(str(e).split("\n")[0]) from None
    except (ValueError, TypeError, KeyError, IOError) as e:
        raise ConfigError(_explain(e)) from None
    if model_dir is not None:
        run = with_model_dir(run, model_dir)
    return run


def _resolve_auto_targets(data: cfg_lib.DataConfig,
                          objective: cfg_lib.ObjectiveConfig) -> cfg_lib.DataConfig:
    """``'targets': 'auto'`` replaced by the budget that fits the objective's mixture."""
    lengths = data.task_feature_lengths
    denoisers = (objectives.denoisers_from_config(objective)
                 if objective.name in objectives.PRESETS else ())
    if lengths.get("targets") != "auto" or not denoisers or "inputs" not in lengths:
        return data  # a wrong combination is refused by RunConfig, naming the field
    auto = objectives.auto_targets_length(
        denoisers, lengths["inputs"],
        pieces_per_row=objective.pieces_per_row, use_mode_token=objective.use_mode_tokens,
        sentinel_policy=objective.sentinel_policy, random_roll=objective.random_roll,
        num_sentinels=data.tokenizer_extra_ids or DEFAULT_NUM_SENTINELS)
    return dataclasses.replace(data, task_feature_lengths=lengths | {"targets": auto})


def _check_piece_budgets(run: RunConfig) -> None:
    """Refuse lengths whose share per piece (``pieces_per_row``) holds no piece of a denoiser.

    The planner would refuse them too, but only once data is read; the denoiser maths lives
    in objectives, which config cannot import, so the check runs here, where gin files load.
    A metadata prefix takes more of the inputs: that part needs the data, and the plan checks it.
    """
    o, lengths = run.objective, run.data.task_feature_lengths
    if o.name not in objectives.PRESETS or o.name == "causal_lm" or "inputs" not in lengths:
        return  # no denoisers: pieces are not cut for a share of the budgets
    k = o.pieces_per_row
    for denoiser in objectives.denoisers_from_config(o):
        try:
            objectives.raw_length_for(
                lengths["inputs"] // k, lengths["targets"] // k, denoiser,
                combined=run.model.architecture != "encoder_decoder",
                use_mode_token=o.use_mode_tokens, sentinel_policy=o.sentinel_policy,
                random_roll=o.random_roll,
                num_sentinels=run.data.tokenizer_extra_ids or DEFAULT_NUM_SENTINELS)
        except ValueError as e:
            why = str(e).split("; ")[0]  # the planner's own advice is about metadata
            raise ConfigError(f"DataConfig.task_feature_lengths = {lengths!r} with "
                              f"ObjectiveConfig.pieces_per_row = {k} leaves each piece "
                              f"{lengths['inputs'] // k} + {lengths['targets'] // k}: {why}; "
                              f"lower pieces_per_row or raise the lengths") from None


def with_model_dir(run: RunConfig, model_dir: str) -> RunConfig:
    """`run` with TrainConfig.model_dir replaced."""
    return dataclasses.replace(run, train=dataclasses.replace(run.train, model_dir=model_dir))


def write_operative_config(model_dir: str) -> str:
    """Write every value the run used (defaults included) to MODEL_DIR/config.gin.

    Every launch rewrites it, so it is replaced whole: a kill mid-write leaves the old one."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "config.gin")
    fileio.atomic_write_text(path, gin.operative_config_str())
    return path


def load_model_dir_config(model_dir: str, flags: dict[str, str] | None = None) -> RunConfig:
    """The RunConfig a training run wrote to MODEL_DIR/config.gin (for eval and generate)."""
    path = os.path.join(model_dir, "config.gin")
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found: is {model_dir!r} the MODEL_DIR of a training run?")
    return load_run_config([path], flags, model_dir=model_dir)
