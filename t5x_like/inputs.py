"""From a RunConfig's data section to what the loop consumes (the config -> data bridge)."""

from __future__ import annotations

import dataclasses
import glob
import pathlib
from typing import Iterator

import jax
import numpy as np

from t5x_like.config import RunConfig
from t5x_like.data import pipeline, stdlib_corpus
from t5x_like.data.tokenizer import Tokenizer, default_tokenizer


@dataclasses.dataclass
class Inputs:
    """A resumable iterator of this process's train batches, and fixed eval batches."""

    train_iter: Iterator[dict[str, np.ndarray]]  # grain DatasetIterator (get_state/set_state)
    eval_batches: list[dict[str, np.ndarray]]


def _files(pattern: str, what: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{what} = {pattern!r} matches no file; give 'stdlib' (the "
                                f"embedded corpus) or a path/glob of JSONL files")
    return files


def load_tokenizer(cfg: RunConfig) -> Tokenizer:
    """The configured sentencepiece model, or the one trained on the embedded corpus."""
    if cfg.data.tokenizer_path:
        return Tokenizer(cfg.data.tokenizer_path)
    return default_tokenizer(cfg.data.data_dir or None)


def split_files(cfg: RunConfig, split: str) -> list:
    """The JSONL files of the 'train' or 'eval' split of the configured task."""
    data = cfg.data
    if split == "eval" and data.eval_files:
        return _files(data.eval_files, "DataConfig.eval_files")
    if data.mixture_or_task_name == "stdlib":
        data_dir = _data_dir(cfg)
        paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(data_dir))
        return [paths["train" if split == "train" else "validation"]]
    if split == "eval":
        raise ValueError(f"MIXTURE_OR_TASK_NAME = {data.mixture_or_task_name!r} is a JSONL "
                         "task: set DataConfig.eval_files to its held-out JSONL path/glob")
    return _files(data.mixture_or_task_name, "MIXTURE_OR_TASK_NAME")


def _data_dir(cfg: RunConfig) -> pathlib.Path:
    return (pathlib.Path(cfg.data.data_dir) if cfg.data.data_dir
            else stdlib_corpus.default_data_dir())


def packed_rows(cfg: RunConfig, tokenizer: Tokenizer, split: str) -> dict[str, np.ndarray]:
    """Packed [N, L] features of one split ('train' rows shuffled, 'eval' rows in order)."""
    return pipeline.prepare_packed_rows(
        jsonl_paths=split_files(cfg, split), tokenizer=tokenizer, length=cfg.data.seq_len,
        text_field=cfg.data.text_field, cache_dir=_data_dir(cfg) / "cache",
        seed=cfg.data.seed if split == "train" else None)


def _checked_tokenizer(cfg: RunConfig) -> Tokenizer:
    tokenizer = load_tokenizer(cfg)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"ModelConfig.vocab_size = {cfg.model.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.vocab_size} ids; raise it")
    return tokenizer


def _shard_args(cfg: RunConfig) -> dict:
    return dict(global_batch_size=cfg.train.batch_size, process_index=jax.process_index(),
                process_count=jax.process_count())


def build_eval_batches(cfg: RunConfig, tokenizer: Tokenizer | None = None
                       ) -> list[dict[str, np.ndarray]]:
    """This process's share of the fixed eval batches (the train split is not touched)."""
    rows = packed_rows(cfg, tokenizer or _checked_tokenizer(cfg), "eval")
    return pipeline.eval_batches(rows, max_batches=cfg.train.eval_batches, **_shard_args(cfg))


def build_inputs(cfg: RunConfig) -> tuple[Tokenizer, Inputs]:
    """Tokenizer and this process's share of the train/eval batches."""
    tokenizer = _checked_tokenizer(cfg)
    train_iter = pipeline.make_train_iterator(packed_rows(cfg, tokenizer, "train"),
                                              seed=cfg.data.seed, **_shard_args(cfg))
    return tokenizer, Inputs(train_iter, build_eval_batches(cfg, tokenizer))
