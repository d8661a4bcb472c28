"""How a trained model decodes and scores: `t5x-like infer` / `score`, and the metric passes of
`eval` and of training."""

from __future__ import annotations

import dataclasses
from typing import Literal

from t5x_like.config.base import _Validated


@dataclasses.dataclass(frozen=True)
class InferConfig(_Validated):
    """Decoding settings (T5X's infer.gin), shared by every command that decodes a split."""

    split: Literal["train", "eval"] = "eval"  # which split of the run's supervised tasks
    batch_size: int = 32  # global, in examples (rounded up to the mesh's data axes)
    max_new_tokens: int = 0  # 0 = the targets budget (TASK_FEATURE_LENGTHS['targets'])
    num_beams: int = 1  # 1 = greedy or sampled (temperature); > 1 = beam search
    alpha: float = 0.6  # beam search's length penalty exponent, as T5X (0 = log-likelihood)
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    # Examples per shard file: a rerun skips finished shards, so a killed run loses at most one.
    shard_size: int = 1024
    output_dir: str = ""  # '' = MODEL_DIR/inference/<task>_<split>_step<N>
    max_examples: int = 0  # 0 = the whole split; else its first N examples
    # Decoded examples per task in each eval pass of training (0 = none: loss metrics only;
    # -1 = the whole split); the pass computes the task's TaskConfig.metrics over them.
    train_eval_examples: int = 0

    def _validate(self):
        self._require(self.batch_size > 0, "batch_size", "must be positive")
        self._require(self.max_new_tokens >= 0, "max_new_tokens", "must be >= 0")
        self._require(self.num_beams >= 1, "num_beams", "must be >= 1")
        self._require(self.alpha >= 0, "alpha", "must be >= 0 (beam search's early stop "
                                                "assumes a penalty that grows with length)")
        self._require(self.temperature >= 0, "temperature", "must be >= 0")
        self._require(self.top_k >= 0, "top_k", "must be >= 0")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        self._require(self.shard_size > 0, "shard_size", "must be positive")
        self._require(self.max_examples >= 0, "max_examples", "must be >= 0")
        self._require(self.train_eval_examples >= -1, "train_eval_examples",
                      "must be -1 (all), 0 (none) or a count")
