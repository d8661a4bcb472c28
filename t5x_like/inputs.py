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


def packed_rows(cfg: RunConfig, tokenizer: Tokenizer) -> tuple[dict, dict]:
    """(train rows, eval rows) of packed [N, L] features for the configured task."""
    data, length = cfg.data, cfg.data.seq_len
    data_dir = pathlib.Path(data.data_dir) if data.data_dir else stdlib_corpus.default_data_dir()
    cache = data_dir / "cache"
    if data.mixture_or_task_name == "stdlib":
        paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(data_dir))
        train_files, eval_files = [paths["train"]], [paths["validation"]]
        if data.eval_files:
            eval_files = _files(data.eval_files, "DataConfig.eval_files")
    else:
        train_files = _files(data.mixture_or_task_name, "MIXTURE_OR_TASK_NAME")
        if not data.eval_files:
            raise ValueError(f"MIXTURE_OR_TASK_NAME = {data.mixture_or_task_name!r} is a JSONL "
                             "task: set DataConfig.eval_files to its held-out JSONL path/glob")
        eval_files = _files(data.eval_files, "DataConfig.eval_files")
    common = dict(tokenizer=tokenizer, length=length, text_field=data.text_field, cache_dir=cache)
    train = pipeline.prepare_packed_rows(jsonl_paths=train_files, seed=data.seed, **common)
    evals = pipeline.prepare_packed_rows(jsonl_paths=eval_files, seed=None, **common)
    return train, evals


def build_inputs(cfg: RunConfig) -> tuple[Tokenizer, Inputs]:
    """Tokenizer and this process's share of the train/eval batches."""
    tokenizer = load_tokenizer(cfg)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"ModelConfig.vocab_size = {cfg.model.vocab_size} is smaller than the "
                         f"tokenizer's {tokenizer.vocab_size} ids; raise it")
    train_rows, eval_rows = packed_rows(cfg, tokenizer)
    shard = dict(global_batch_size=cfg.train.batch_size, process_index=jax.process_index(),
                 process_count=jax.process_count())
    train_iter = pipeline.make_train_iterator(train_rows, seed=cfg.data.seed, **shard)
    evals = pipeline.eval_batches(eval_rows, max_batches=cfg.train.eval_batches, **shard)
    return tokenizer, Inputs(train_iter, evals)
