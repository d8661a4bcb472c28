"""From a RunConfig's data section to what the loop consumes (the config -> data bridge).

A run names a task, a mixture of tasks, or a source path. Every task's splits are prepared once
(tokenized into ArrayRecord shards under ``<data_dir>/prepared/<task>/<split>``); the run's
objective (:func:`t5x_like.data.rows.objective_for`) plans its rows over them, and a resumable
grain iterator serves them. Nothing here depends on which objective it is.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator, Literal

import jax
import numpy as np

from t5x_like.config import RunConfig, TaskConfig
# The built-in objectives register their row builders on import.
from t5x_like.data import (causal, denoising, meco, pipeline, prepared, rows,  # noqa: F401
                           stdlib_corpus, stdlib_signatures, supervised)
from t5x_like.data.stages import StagedIterator
from t5x_like.data.streaming import StreamingPackedIterator
from t5x_like.data.tokenizer import Tokenizer, default_tokenizer
from t5x_like.objectives.metadata import cooldown_step

SPLITS = ("train", "eval")
Metadata = Literal["none", "true", "wrong"]  # MeCo prefixes: none, each document's own, another's


@dataclasses.dataclass
class Inputs:
    """A resumable iterator of this process's train batches, fixed eval batches, task names."""

    train_iter: Iterator[dict[str, np.ndarray]]  # grain DatasetIterator (get_state/set_state)
    eval_batches: list[dict[str, np.ndarray]]
    task_names: tuple[str, ...] = ("stdlib",)  # index -> name of the batches' `_source` ids


def load_tokenizer(cfg: RunConfig) -> Tokenizer:
    """The configured sentencepiece model, or the one trained on the embedded corpus."""
    if cfg.data.tokenizer_path:
        return Tokenizer(cfg.data.tokenizer_path, extra_ids=cfg.data.tokenizer_extra_ids)
    return default_tokenizer(cfg.data.data_dir or None)


def _data_dir(cfg: RunConfig) -> pathlib.Path:
    return (pathlib.Path(cfg.data.data_dir) if cfg.data.data_dir
            else stdlib_corpus.default_data_dir())


# The sources built offline on first use, by name: directory and builder.
_EMBEDDED = {
    "stdlib": (stdlib_corpus.stdlib_corpus_dir, stdlib_corpus.build_stdlib_corpus),
    stdlib_signatures.NAME: (stdlib_signatures.stdlib_signatures_dir,
                             stdlib_signatures.build_stdlib_signatures),
}


def source_spec(cfg: RunConfig, task: TaskConfig, split: str) -> str:
    """The source spec of one split of a task ('' when the task has no such split)."""
    spec = task.train_source if split == "train" else task.eval_source
    if split == "eval" and not spec and task.train_source in _EMBEDDED:
        spec = task.train_source  # an embedded source has its own validation split
    if spec in _EMBEDDED:
        directory, build = _EMBEDDED[spec]
        paths = build(directory(_data_dir(cfg)))
        return str(paths["train" if split == "train" else "validation"])
    return spec


def prepare_task(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer,
                 progress: bool = False) -> pathlib.Path:
    """Prepare (or reuse) one split of a task; return its directory."""
    spec = source_spec(cfg, task, split)
    out = _data_dir(cfg) / "prepared" / task.name / split
    metadata = (cfg.objective.metadata_field,) if cfg.objective.metadata_field else ()
    options = prepared.PrepareOptions(
        text_field=task.document_field, inputs_field=task.inputs_field,
        metadata_fields=tuple(dict.fromkeys(task.metadata_fields + metadata)),
        score_field=task.score_field if split == "train" else "",
        num_workers=cfg.data.prepare_workers, progress=progress, data_dir=str(_data_dir(cfg)),
        task=f"{task.name!r}, {split} split")
    if jax.process_count() > 1:
        manifest = prepared.read_manifest(out)
        if manifest is None or manifest.get("source") != spec:
            raise FileNotFoundError(
                f"{out} is not prepared for {spec!r}; in a multi-process run prepare first, "
                "once: `t5x-like prepare` with the same gin flags")
        return out
    prepared.prepare(spec, out, tokenizer, options)
    return out


def task_rows(cfg: RunConfig, objective: rows.RowObjective, task: TaskConfig, split: str,
              tokenizer: Tokenizer, metadata: Metadata = "none") -> rows.RowSource:
    """The objective's packed rows of one split of a task (prepared and planned on first use).

    ``metadata``: 'true' puts every document behind its own MeCo prefix (stage 1), 'wrong'
    behind another document's (eval only), 'none' gives the plain rows.
    """
    path = prepare_task(cfg, task, split, tokenizer)
    train = split == "train"
    prefixes = None if metadata == "none" else meco.DocumentPrefixes(
        prepared.PreparedDataset(path), cfg.objective, tokenizer, metadata == "wrong")
    return rows.open_rows(
        rows.for_task(objective, task), path, seed=cfg.data.seed if train else None,
        window=cfg.data.pack_window if train else 0, prefixes=prefixes,
        score_temperature=task.score_temperature if (train and task.score_field) else 0.0)


def supervised_examples(cfg: RunConfig, task: TaskConfig, split: str,
                        metadata: bool | None = None) -> supervised.SupervisedExamples:
    """The examples of a supervised task's split (prepared on first use), unpacked, in source
    order, as the run's model sees them (``data.supervised.SupervisedExamples``): the task's
    mode token and, with ``metadata`` (default: when the run sets
    ObjectiveConfig.metadata_field), each record's MeCo prefix in front of the inputs."""
    if not task.supervised:
        raise ValueError(f"task {task.name!r} is a text task: supervised examples need "
                         "TaskConfig.inputs_field and targets_field")
    if split not in SPLITS or not source_spec(cfg, task, split):
        raise ValueError(f"task {task.name!r} has no {split!r} split; splits: "
                         f"{[s for s in SPLITS if source_spec(cfg, task, s)]}")
    if set(cfg.data.task_feature_lengths) != {"inputs", "targets"}:
        raise ValueError(f"DataConfig.task_feature_lengths = {cfg.data.task_feature_lengths!r}: "
                         "supervised examples are cut to an inputs and a targets budget; give "
                         "both (runs/finetune.gin does)")
    metadata = bool(cfg.objective.metadata_field) if metadata is None else metadata
    if metadata and not cfg.objective.metadata_field:
        raise ValueError("metadata=True needs ObjectiveConfig.metadata_field (MeCo's prefixes)")
    tokenizer = _checked_tokenizer(cfg)
    path = prepare_task(cfg, task, split, tokenizer)
    prefixes = meco.DocumentPrefixes(prepared.PreparedDataset(path), cfg.objective,
                                     tokenizer) if metadata else None
    objective = supervised.Supervised.from_config(cfg, tokenizer).for_task(task)
    return supervised.SupervisedExamples(path, objective, prefixes)


def _checked_tokenizer(cfg: RunConfig) -> Tokenizer:
    tokenizer = load_tokenizer(cfg)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"ModelConfig.vocab_size = {cfg.model.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.vocab_size} ids; raise it")
    return tokenizer


def _shard_args(cfg: RunConfig) -> dict:
    return dict(global_batch_size=cfg.train.batch_size, process_index=jax.process_index(),
                process_count=jax.process_count())


def _eval_tasks(cfg: RunConfig) -> list[TaskConfig]:
    tasks, _ = cfg.data.tasks_of()
    with_eval = [t for t in tasks if source_spec(cfg, t, "eval")]
    if not with_eval:
        raise ValueError(f"no task of {cfg.data.mixture_or_task_name!r} has an eval split: set "
                         "TaskConfig.eval_source (or DataConfig.eval_files for a source path)")
    return with_eval


def build_eval_batches(cfg: RunConfig, tokenizer: Tokenizer | None = None,
                       metadata: Metadata = "none",
                       objective: rows.RowObjective | None = None) -> list[dict[str, np.ndarray]]:
    """This process's share of the fixed eval batches of every task that has an eval split.

    ``metadata`` (MeCo models): as in :func:`task_rows`; the prefix carries no loss. For
    causal_lm all three score exactly the same target tokens when the eval covers the whole
    split; for a denoising objective the prefix takes room from the inputs budget, so pieces are
    cut (and then noised) differently: the same documents, not the same targets.
    """
    tokenizer = tokenizer or _checked_tokenizer(cfg)
    if metadata not in ("none", "true", "wrong"):
        raise ValueError(f"metadata = {metadata!r}: choose none, true or wrong")
    if metadata != "none" and not cfg.objective.metadata_field:
        raise ValueError("evaluating with metadata needs ObjectiveConfig.metadata_field")
    objective = objective or rows.objective_for(cfg, tokenizer)
    batches = []
    for task in _eval_tasks(cfg):
        batches += pipeline.eval_batches(task_rows(cfg, objective, task, "eval", tokenizer, metadata),
                                         max_batches=cfg.train.eval_batches or None, **_shard_args(cfg))
    return batches


def _rows_read(cfg: RunConfig) -> list[tuple[TaskConfig, str, Metadata]]:
    """Every (task, split, metadata) whose rows a training run reads, in reading order."""
    tasks, _ = cfg.data.tasks_of()
    separate = cfg.data.cooldown_mixture_or_task_name
    meco_on = bool(cfg.objective.metadata_field)
    read = []
    if meco_on and cooldown_step(cfg.schedule_steps, cfg.objective.cooldown_fraction) >= 1:
        read += [(t, "train", "true") for t in tasks]
    if not cfg.data.streaming:
        plain = cfg.data.tasks_of(separate)[0] if (meco_on and separate) else tasks
        read += [(t, "train", "none") for t in plain]
    return read + [(t, "eval", "none") for t in _eval_tasks(cfg)]


def prepare_all(cfg: RunConfig, progress: bool = True) -> list[dict]:
    """Prepare every split a run reads and build exactly its plans (`t5x-like prepare`).

    One summary per plan: the prepared split's counts, then the plan's rows, its distance to
    the lower bound and its fill (per budget for an encoder-decoder); MeCo's stage-1 plans add
    the documents with and without metadata.
    """
    tokenizer = _checked_tokenizer(cfg)
    objective = rows.objective_for(cfg, tokenizer)
    summaries = []
    for task, split, metadata in _rows_read(cfg):
        path = prepare_task(cfg, task, split, tokenizer, progress=progress)
        task_split_rows = task_rows(cfg, objective, task, split, tokenizer, metadata)
        manifest = prepared.read_manifest(path)
        summaries.append({
            "task": task.name, "split": split, "metadata": metadata, "path": str(path),
            **{k: manifest[k] for k in ("documents", "tokens", "inputs_tokens", "targets_tokens",
                                        "records_read", "skipped") if k in manifest},
            **rows.summary(task_split_rows.plan)})
        if metadata != "none":
            summaries[-1]["metadata_summary"] = meco.stage1_summary(task_split_rows)
    return summaries


def _train_iterator(cfg: RunConfig, objective, tasks, rates, tokenizer: Tokenizer,
                    metadata: Metadata = "none", start_batch: int = 0):
    """The train batches of the objective's rows of ``tasks``, from batch ``start_batch``."""
    if cfg.data.streaming and metadata == "none":
        shard, (task,) = _shard_args(cfg), tasks
        return StreamingPackedIterator(
            source_spec(cfg, task, "train"), tokenizer, length=cfg.data.seq_len,
            window=cfg.data.pack_window, batch_size=cfg.train.batch_size // shard["process_count"],
            seed=cfg.data.seed, text_field=task.text_field, packer=cfg.data.packer,
            process_index=shard["process_index"], process_count=shard["process_count"],
            data_dir=str(_data_dir(cfg)))
    sources = [task_rows(cfg, objective, t, "train", tokenizer, metadata) for t in tasks]
    return pipeline.make_train_iterator(sources, rates=rates, seed=cfg.data.seed,
                                        start_batch=start_batch, **_shard_args(cfg))


def _meco_iterator(cfg: RunConfig, objective, tasks, rates, tokenizer: Tokenizer):
    """MeCo: metadata-prefixed rows until the cooldown step, then plain rows of the objective.

    The cooldown reads ``DataConfig.cooldown_mixture_or_task_name`` from its first batch on if
    set; otherwise the same source continues: cooldown step s draws exactly the batch a run
    without metadata draws at step s (streaming data restarts its stream instead).
    """
    switch = cooldown_step(cfg.schedule_steps, cfg.objective.cooldown_fraction)
    separate = cfg.data.cooldown_mixture_or_task_name
    plain_tasks, plain_rates = cfg.data.tasks_of(separate) if separate else (tasks, rates)
    cooldown = _train_iterator(cfg, objective, plain_tasks, plain_rates, tokenizer,
                               start_batch=0 if separate else max(switch - 1, 0))
    if switch < 1:
        return cooldown  # fraction 0: the whole run is cooldown
    first = _train_iterator(cfg, objective, tasks, rates, tokenizer, metadata="true")
    return StagedIterator(first, cooldown, switch,
                          second_source_offset=len(tasks) if separate else 0)


def build_inputs(cfg: RunConfig) -> tuple[Tokenizer, Inputs]:
    """Tokenizer and this process's share of the train/eval batches."""
    tokenizer = _checked_tokenizer(cfg)
    objective = rows.objective_for(cfg, tokenizer)
    tasks, rates = cfg.data.tasks_of()
    names = tuple(t.name for t in tasks)
    if cfg.objective.metadata_field:
        train_iter = _meco_iterator(cfg, objective, tasks, rates, tokenizer)
        if cfg.data.cooldown_mixture_or_task_name:  # its batches' task indices follow stage 1's
            names += tuple(t.name for t in cfg.data.tasks_of(
                cfg.data.cooldown_mixture_or_task_name)[0])
    else:
        train_iter = _train_iterator(cfg, objective, tasks, rates, tokenizer)
    return tokenizer, Inputs(train_iter, build_eval_batches(cfg, tokenizer, objective=objective),
                             names)
