"""From a RunConfig's data section to what the loop consumes (the config -> data bridge).

A run names a task, a mixture of tasks, or a source path. Every task's splits are prepared once
(tokenized into ArrayRecord shards under ``<data_dir>/prepared/<task>/<split>``), packed by an
offline plan stored next to them, and served by a resumable grain iterator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Iterator

import jax
import numpy as np

from t5x_like.config import RunConfig, TaskConfig
from t5x_like.data import pipeline, prepared, stdlib_corpus
from t5x_like.data.tokenizer import Tokenizer, default_tokenizer

SPLITS = ("train", "eval")


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


def resolve_tasks(cfg: RunConfig, name: str = "") -> tuple[list[TaskConfig], list[float]]:
    """The tasks of ``name`` (default: MIXTURE_OR_TASK_NAME) and their mixing rates."""
    data = cfg.data
    name = name or data.mixture_or_task_name
    by_name = {"stdlib": TaskConfig()} | {t.name: t for t in data.tasks}
    if name in data.mixtures:
        rates = data.mixtures[name]
        return [by_name[t] for t in rates], list(rates.values())
    if name in by_name:
        return [by_name[name]], [1.0]
    if any(c in name for c in "/.*") or name.startswith("tfds:"):
        digest = hashlib.sha256(f"{name}|{data.eval_files}|{data.text_field}".encode()).hexdigest()
        return [TaskConfig(name=f"source-{digest[:12]}", train_source=name,
                           eval_source=data.eval_files, text_field=data.text_field)], [1.0]
    key = ("MIXTURE_OR_TASK_NAME" if name == data.mixture_or_task_name
           else "DataConfig.cooldown_mixture_or_task_name")
    raise ValueError(f"{key} = {name!r} is neither a task "
                     f"({sorted(by_name)}), a mixture ({sorted(data.mixtures)}) nor a source "
                     "path/glob or 'tfds:NAME:SPLIT'")


def source_spec(cfg: RunConfig, task: TaskConfig, split: str) -> str:
    """The source spec of one split of a task ('' when the task has no such split)."""
    spec = task.train_source if split == "train" else task.eval_source
    if split == "eval" and not spec and task.train_source == "stdlib":
        spec = "stdlib"
    if spec == "stdlib":
        paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(_data_dir(cfg)))
        return str(paths["train" if split == "train" else "validation"])
    return spec


def _metadata_fields(cfg: RunConfig, task: TaskConfig) -> tuple[str, ...]:
    """The task's metadata fields, plus MeCo's field when metadata conditioning is on."""
    extra = (cfg.objective.metadata_field,) if cfg.objective.metadata_field else ()
    return tuple(dict.fromkeys(task.metadata_fields + extra))


def prepare_task(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer,
                 progress: bool = False) -> pathlib.Path:
    """Prepare (or reuse) one split of a task; return its directory."""
    spec = source_spec(cfg, task, split)
    out = _data_dir(cfg) / "prepared" / task.name / split
    options = prepared.PrepareOptions(
        text_field=task.text_field, metadata_fields=_metadata_fields(cfg, task),
        score_field=task.score_field if split == "train" else "",
        num_workers=cfg.data.prepare_workers, progress=progress, data_dir=str(_data_dir(cfg)))
    if jax.process_count() > 1:
        manifest = prepared.read_manifest(out)
        if manifest is None or manifest.get("source") != spec:
            raise FileNotFoundError(
                f"{out} is not prepared for {spec!r}; in a multi-process run prepare first, "
                "once: `t5x-like prepare` with the same gin flags")
        return out
    prepared.prepare(spec, out, tokenizer, options)
    return out


def _plan_options(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer):
    train = split == "train"
    return pipeline.PlanOptions(
        length=cfg.data.seq_len, packer=cfg.data.packer,
        window=cfg.data.pack_window if train else 0, seed=cfg.data.seed if train else None,
        bos=tokenizer.bos_id >= 0,
        score_temperature=task.score_temperature if (train and task.score_field) else 0.0)


def task_rows(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer):
    """The packed rows of one split of a task (prepared and planned on first use)."""
    path = prepare_task(cfg, task, split, tokenizer)
    if cfg.objective.name != "causal_lm":
        return _denoising_rows(cfg, task, split, tokenizer, path)
    return pipeline.open_task(path, _plan_options(cfg, task, split, tokenizer),
                              tokenizer.bos_id, tokenizer.eos_id)


def _example_options(cfg: RunConfig, tokenizer: Tokenizer):
    """How the denoising objective's pieces become examples (budgets, architecture, switches)."""
    from t5x_like.data import denoising
    lengths = cfg.data.task_feature_lengths
    return denoising.ExampleOptions(
        inputs_length=lengths["inputs"], targets_length=lengths["targets"],
        encoder_decoder=cfg.model.architecture == "encoder_decoder",
        use_mode_tokens=cfg.objective.use_mode_tokens,
        sentinel_policy=cfg.objective.sentinel_policy, random_roll=cfg.objective.random_roll,
        num_sentinels=tokenizer.num_sentinels)


def _refuse_scores(task: TaskConfig, split: str, what: str) -> None:
    """Score-weighted sampling lives in the causal plan only: refuse it rather than drop it."""
    if task.score_field and split == "train":
        raise ValueError(f"task {task.name!r}: score-weighted sampling (score_field = "
                         f"{task.score_field!r}) is implemented for plain causal_lm only, not "
                         f"for {what}; clear TaskConfig.score_field")


def _denoising_rows(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer, path):
    from t5x_like import objectives
    from t5x_like.data import denoising
    _refuse_scores(task, split, f"objective {cfg.objective.name!r}")
    return denoising.open_task(path, objectives.denoisers_from_config(cfg.objective),
                               objectives.SpecialIds.from_tokenizer(tokenizer),
                               _example_options(cfg, tokenizer),
                               seed=cfg.data.seed if split == "train" else None)


def metadata_rows(cfg: RunConfig, task: TaskConfig, split: str, tokenizer: Tokenizer,
                  wrong_metadata: bool = False):
    """MeCo's stage-1 rows of one split of a task, for the run's objective and architecture.

    causal_lm: ``[BOS] prefix doc [EOS]`` rows (``meco.open_task``); a denoising objective: its
    rows with each piece's inputs behind the prefix (``meco.open_denoising_task``).
    ``wrong_metadata``: every document behind another one's prefix (eval only).
    """
    from t5x_like import objectives
    from t5x_like.data import meco
    _refuse_scores(task, split, "MeCo's metadata stage")
    path = prepare_task(cfg, task, split, tokenizer)
    seed = cfg.data.seed if split == "train" else None
    if cfg.objective.name == "causal_lm":
        return meco.open_task(path, metadata_spec(cfg), tokenizer, cfg.data.seq_len, seed=seed,
                              wrong_metadata=wrong_metadata)
    return meco.open_denoising_task(path, metadata_spec(cfg), tokenizer,
                                    objectives.denoisers_from_config(cfg.objective),
                                    _example_options(cfg, tokenizer), seed=seed,
                                    wrong_metadata=wrong_metadata)


def _checked_tokenizer(cfg: RunConfig) -> Tokenizer:
    tokenizer = load_tokenizer(cfg)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"ModelConfig.vocab_size = {cfg.model.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.vocab_size} ids; raise it")
    return tokenizer


def _shard_args(cfg: RunConfig) -> dict:
    return dict(global_batch_size=cfg.train.batch_size, process_index=jax.process_index(),
                process_count=jax.process_count())


def build_eval_batches(cfg: RunConfig, tokenizer: Tokenizer | None = None,
                       metadata: str = "none") -> list[dict[str, np.ndarray]]:
    """This process's share of the fixed eval batches of every task that has an eval split.

    ``metadata`` (MeCo models): 'none' evaluates plain documents; 'true' prefixes each with its
    own metadata, 'wrong' with another document's. The prefix carries no loss. For causal_lm
    all three score exactly the same target tokens when the eval covers the whole split; for a
    denoising objective the prefix takes room from the inputs budget, so pieces are cut (and
    then noised) differently: the same documents, not the same targets.
    """
    tokenizer = tokenizer or _checked_tokenizer(cfg)
    tasks, _ = resolve_tasks(cfg)
    with_eval = [t for t in tasks if source_spec(cfg, t, "eval")]
    if not with_eval:
        raise ValueError(f"no task of {cfg.data.mixture_or_task_name!r} has an eval split: set "
                         "TaskConfig.eval_source (or DataConfig.eval_files for a source path)")
    batches = []
    if metadata not in ("none", "true", "wrong"):
        raise ValueError(f"metadata = {metadata!r}: choose none, true or wrong")
    if metadata != "none" and not cfg.objective.metadata_field:
        raise ValueError("evaluating with metadata needs ObjectiveConfig.metadata_field")
    for task in with_eval:
        if metadata == "none":
            rows = task_rows(cfg, task, "eval", tokenizer)
        else:
            rows = metadata_rows(cfg, task, "eval", tokenizer, wrong_metadata=metadata == "wrong")
        batches += pipeline.eval_batches(rows, max_batches=cfg.train.eval_batches,
                                         **_shard_args(cfg))
    return batches


def prepare_all(cfg: RunConfig, progress: bool = True) -> list[dict]:
    """Prepare and plan every split of every task of the run (`t5x-like prepare`)."""
    tokenizer = _checked_tokenizer(cfg)
    tasks, _ = resolve_tasks(cfg)
    stage1 = {t.name for t in tasks} if cfg.objective.metadata_field else set()
    if cfg.data.cooldown_mixture_or_task_name:
        cooldown, _ = resolve_tasks(cfg, cfg.data.cooldown_mixture_or_task_name)
        tasks += [t for t in cooldown if t.name not in {u.name for u in tasks}]
    summaries = []
    for task in tasks:
        for split in SPLITS:
            if not source_spec(cfg, task, split):
                continue
            path = prepare_task(cfg, task, split, tokenizer, progress=progress)
            rows = pipeline.open_task(path, _plan_options(cfg, task, split, tokenizer),
                                      tokenizer.bos_id, tokenizer.eos_id)
            manifest = prepared.read_manifest(path)
            summaries.append({
                "task": task.name, "split": split, "path": str(path),
                "documents": manifest["documents"], "tokens": manifest["tokens"],
                "records_read": manifest["records_read"], "skipped": manifest["skipped"],
                "rows": rows.num_rows, "fill_pct": round(100 * rows.plan.fill, 4),
                "truncated_docs": rows.plan.num_truncated_docs})
            if task.name in stage1:  # MeCo: documents without metadata are counted
                from t5x_like.data import meco
                summaries[-1]["metadata"] = meco.stage1_summary(
                    metadata_rows(cfg, task, split, tokenizer))
    return summaries


def metadata_spec(cfg: RunConfig):
    """MeCo's prefix rule from the objective config."""
    from t5x_like.objectives.metadata import MetadataSpec
    o = cfg.objective
    return MetadataSpec(field=o.metadata_field, kind=o.metadata_kind, template=o.metadata_template,
                        missing=o.missing_metadata, placeholder=o.metadata_placeholder,
                        continuation=o.metadata_continuation)


def _meco_iterator(cfg: RunConfig, tasks, rates, tokenizer: Tokenizer):
    """MeCo: metadata-prefixed rows until the cooldown step, then plain rows of the objective.

    The cooldown reads ``DataConfig.cooldown_mixture_or_task_name`` from its first batch on if
    set; otherwise the same source continues: cooldown step s draws exactly the batch a run
    without metadata draws at step s (streaming data restarts its stream instead).
    """
    from t5x_like.data.stages import StagedIterator
    from t5x_like.objectives.metadata import cooldown_step
    switch = cooldown_step(cfg.schedule_steps, cfg.objective.cooldown_fraction)
    separate = cfg.data.cooldown_mixture_or_task_name
    plain_tasks, plain_rates = resolve_tasks(cfg, separate) if separate else (tasks, rates)
    cooldown = _plain_iterator(cfg, plain_tasks, plain_rates, tokenizer,
                               start_batch=0 if separate else max(switch - 1, 0))
    if switch < 1:
        return cooldown  # fraction 0: the whole run is cooldown
    rows = [metadata_rows(cfg, t, "train", tokenizer) for t in tasks]
    first = pipeline.make_train_iterator(rows, rates=rates, seed=cfg.data.seed,
                                         **_shard_args(cfg))
    return StagedIterator(first, cooldown, switch,
                          second_source_offset=len(tasks) if separate else 0)


def _plain_iterator(cfg: RunConfig, tasks, rates, tokenizer: Tokenizer, start_batch: int = 0):
    """The train batches of the objective's plain rows (no metadata), from batch `start_batch`."""
    if cfg.data.streaming:
        return _streaming_iterator(cfg, tasks, tokenizer)
    rows = [task_rows(cfg, t, "train", tokenizer) for t in tasks]
    return pipeline.make_train_iterator(rows, rates=rates, seed=cfg.data.seed,
                                        start_batch=start_batch, **_shard_args(cfg))


def _streaming_iterator(cfg: RunConfig, tasks: list[TaskConfig], tokenizer: Tokenizer):
    from t5x_like.data.streaming import StreamingPackedIterator
    if len(tasks) != 1:
        raise ValueError(f"DataConfig.streaming reads one task; {cfg.data.mixture_or_task_name!r}"
                         f" mixes {[t.name for t in tasks]}: prepare them (streaming=False)")
    if tasks[0].score_field:
        raise ValueError(f"task {tasks[0].name!r} samples by {tasks[0].score_field!r}, which "
                         "needs every score up front: prepare it (streaming=False)")
    shard = _shard_args(cfg)
    return StreamingPackedIterator(
        source_spec(cfg, tasks[0], "train"), tokenizer, length=cfg.data.seq_len,
        window=cfg.data.pack_window, batch_size=cfg.train.batch_size // shard["process_count"],
        seed=cfg.data.seed, text_field=tasks[0].text_field, packer=cfg.data.packer,
        process_index=shard["process_index"], process_count=shard["process_count"],
        data_dir=str(_data_dir(cfg)))


def build_inputs(cfg: RunConfig) -> tuple[Tokenizer, Inputs]:
    """Tokenizer and this process's share of the train/eval batches."""
    tokenizer = _checked_tokenizer(cfg)
    tasks, rates = resolve_tasks(cfg)
    names = tuple(t.name for t in tasks)
    if cfg.objective.metadata_field:
        train_iter = _meco_iterator(cfg, tasks, rates, tokenizer)
        if cfg.data.cooldown_mixture_or_task_name:  # its batches' task indices follow stage 1's
            names += tuple(t.name for t in resolve_tasks(
                cfg, cfg.data.cooldown_mixture_or_task_name)[0])
    else:
        train_iter = _plain_iterator(cfg, tasks, rates, tokenizer)
    return tokenizer, Inputs(train_iter, build_eval_batches(cfg, tokenizer), names)
