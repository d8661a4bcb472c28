"""What a run learns and reads: the objective, its tasks and the data pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

from t5x_like.config.base import ConfigError, _Validated

# The objectives `t5x_like.data` builds rows for, and the TASK_FEATURE_LENGTHS keys each needs.
# An objective module adds itself with `t5x_like.data.rows.register` (docs/data.md).
OBJECTIVE_FEATURES: dict[str, frozenset[str]] = {
    "causal_lm": frozenset({"targets"}),
    **{name: frozenset({"inputs", "targets"})
       for name in ("prefix_lm", "span_corruption", "ul2", "ul2r", "supervised")},
}
# The objective whose rows are the (inputs, targets) records of supervised tasks
# (t5x_like.data.supervised).
SUPERVISED = "supervised"
# Metrics of decoded outputs a task may declare (t5x_like.task_metrics).
METRIC_NAMES = ("exact_match", "accuracy", "bleu", "rouge")
# Mode tokens a supervised task may put in front of its inputs (UL2's paradigm switches).
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
Paradigm = Literal["R", "X", "S"]
SentinelPolicy = Literal["cap", "error"]  # cap: merge spans beyond the sentinels | error: refuse
MetadataKind = Literal["domain", "url", "value"]
MissingMetadata = Literal["placeholder", "skip"]
Continuation = Literal["repeat", "first_only"]
Packer = Literal["best_fit", "first_fit", "concat"]


def register_objective(name: str, feature_keys: frozenset[str]) -> None:
    """Let ObjectiveConfig.name take ``name``, whose rows need ``feature_keys`` lengths."""
    OBJECTIVE_FEATURES[name] = frozenset(feature_keys)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(_Validated):
    """What the model learns to predict from each packed piece of text (t5x_like.objectives)."""

    # causal_lm: next-token prediction. prefix_lm: the S-denoiser alone. span_corruption: T5
    # (15% noise, mean span 3). ul2: the paper's seven denoisers, sampled uniformly. ul2r: U-PaLM's
    # continued-training mixture. supervised: the (inputs, targets) records of supervised tasks
    # (TaskConfig.inputs_field/targets_field), for fine-tuning. Every one but causal_lm needs
    # TASK_FEATURE_LENGTHS inputs+targets.
    name: str = "causal_lm"
    # Overrides the preset's table: (paradigm R|X|S, mean span length, noise rate, mixing rate,
    # mode token or ''). For S, the "noise rate" is the mean target fraction d: the split is
    # uniform so that the target fraction is ~U[0, 2d].
    denoisers: tuple[tuple[Paradigm, float, float, float, str], ...] = ()
    use_mode_tokens: bool = True  # prepend each denoiser's mode token to its inputs
    sentinel_policy: SentinelPolicy = "cap"
    random_roll: bool = False  # roll each noise mask by a random offset (sentinels still pair up)
    # Cut denoising pieces for 1/k of each budget, so that k or more share a row and rows mix
    # piece shapes: less padding, shorter examples (docs/data.md, "Denoising rows"). MeCo's
    # prefixed pieces may be cut in pairs instead, fewer a row, when that packs better.
    pieces_per_row: int = 1
    # MeCo (metadata conditioning, then cooldown): '' = off; else the record field whose value
    # prefixes each document ("URL: en.wikipedia.org\n\n") until the cooldown step. Composes with
    # every objective: causal_lm rows are [BOS] prefix doc [EOS]; denoising inputs are
    # [mode] prefix <noised text> [EOS] (never noised, no loss, counted in the inputs budget).
    metadata_field: str = ""
    metadata_kind: MetadataKind = "domain"  # the host of a URL | the URL as given | any scalar
    # The prefix text; '{value}' is replaced, literal braces are doubled.
    metadata_template: str = "URL: {value}\n\n"
    missing_metadata: MissingMetadata = "placeholder"  # the placeholder below | no prefix
    metadata_placeholder: str = "unknown"
    # A long document's continuation pieces: 'repeat' the prefix on each, or 'first_only'.
    metadata_continuation: Continuation = "repeat"
    # From step floor(cooldown_fraction * schedule steps) on, no example carries metadata.
    cooldown_fraction: float = 0.9

    def _validate(self):
        self._require(self.name in OBJECTIVE_FEATURES, "name",
                      f"choose one of {tuple(OBJECTIVE_FEATURES)}")
        try:
            ok = "{value}" in self.metadata_template and bool(
                self.metadata_template.format(value="x"))
        except (KeyError, IndexError, ValueError):
            ok = False
        self._require(ok, "metadata_template", "must contain {value} and no other field "
                                               "(double literal braces: '{{', '}}')")
        self._require(self.missing_metadata == "skip" or bool(self.metadata_placeholder.strip()),
                      "metadata_placeholder", "missing_metadata='placeholder' needs a non-blank "
                                              "placeholder (the paper's 'unknown'), or use 'skip'")
        self._require(0.0 <= self.cooldown_fraction <= 1.0, "cooldown_fraction",
                      "must be in [0, 1]")
        self._require(self.pieces_per_row >= 1, "pieces_per_row", "must be >= 1")
        for i, (kind, mu, rate, weight, _) in enumerate(self.denoisers):
            self._require(weight > 0 and 0 < rate < 1, "denoisers",
                          f"row {i}: need 0 < noise rate < 1 and a positive mixing rate")
            self._require(kind == "S" or mu >= 1, "denoisers", f"row {i}: mean span must be >= 1")


@dataclasses.dataclass(frozen=True)
class TaskConfig(_Validated):
    """One named source of documents (seqio's Task): where its splits live and what to read."""

    name: str = "stdlib"
    # 'stdlib' (the embedded corpus), 'stdlib_signatures' (the embedded supervised task), a
    # path/glob of .jsonl[.gz|.zst], .txt, .parquet or .array_record files (comma-separated for
    # several), or 'tfds:NAME[/CONFIG][:VERSION]:SPLIT'.
    train_source: str = "stdlib"
    eval_source: str = ""  # same syntax; '' = none (embedded sources: their validation split)
    text_field: str = "text"
    # A supervised task (ObjectiveConfig.name = 'supervised') reads two fields of each record
    # instead of text_field: its inputs (a string, may be empty) and its targets (non-blank).
    # Both '' = a text task.
    inputs_field: str = ""
    targets_field: str = ""
    # A supervised task's mode token, put first in its inputs: '[NLU]', '[NLG]', '[S2S]'; '' = none.
    mode_token: str = ""
    # Metrics of a supervised task's decoded eval split (seqio's metric_fns): any of
    # METRIC_NAMES, computed by `t5x-like infer`, `eval` and training's eval passes
    # (InferConfig.train_eval_examples).
    metrics: tuple[str, ...] = ()
    metadata_fields: tuple[str, ...] = ()  # record fields kept next to the tokens
    # QuRating-style selection: documents are drawn with softmax(score / temperature).
    score_field: str = ""  # '' = every document once per epoch
    score_temperature: float = 1.0

    def _validate(self):
        self._require(bool(self.name) and "/" not in self.name, "name",
                      "a non-empty name without '/'")
        self._require(bool(self.train_source), "train_source", "name a source")
        self._require(self.score_temperature > 0, "score_temperature", "must be positive")
        if bool(self.inputs_field) != bool(self.targets_field):
            raise ConfigError(
                f"TaskConfig.inputs_field = {self.inputs_field!r} and TaskConfig.targets_field = "
                f"{self.targets_field!r} (task {self.name!r}): set both (a supervised task) or "
                "neither (a text task, read from text_field)")
        self._require(not self.supervised or self.inputs_field != self.targets_field,
                      "inputs_field", "the inputs and the targets must be different fields")
        self._require(not self.mode_token or self.mode_token in MODE_TOKENS, "mode_token",
                      f"choose one of {MODE_TOKENS} or ''")
        unknown = sorted(set(self.metrics) - set(METRIC_NAMES))
        self._require(not unknown, "metrics", f"unknown {unknown}; choose from {METRIC_NAMES}")
        self._require(not self.metrics or self.supervised, "metrics",
                      "score decoded targets: a supervised task's (set inputs_field and "
                      "targets_field)")
        self._require(not self.mode_token or self.supervised, "mode_token",
                      "goes in front of a supervised task's inputs: set inputs_field and "
                      "targets_field, or clear it (denoisers carry their own mode tokens)")

    @property
    def supervised(self) -> bool:
        """Whether the task's records are (inputs, targets) pairs."""
        return bool(self.targets_field)

    @property
    def document_field(self) -> str:
        """The field read as each record's document: the text, or a supervised task's targets."""
        return self.targets_field or self.text_field


def builtin_tasks() -> dict[str, TaskConfig]:
    """The tasks every run may name without defining them: the embedded sources."""
    return {"stdlib": TaskConfig(),
            "stdlib_signatures": TaskConfig(name="stdlib_signatures",
                                            train_source="stdlib_signatures",
                                            inputs_field="docstring", targets_field="signature",
                                            metrics=("exact_match",))}


@dataclasses.dataclass(frozen=True)
class DataConfig(_Validated):
    """Where the tokens come from and how they become packed rows."""

    # A task or mixture named below, 'stdlib' (the embedded corpus), 'stdlib_signatures' (the
    # embedded supervised task), or a source path/glob (JSONL, text, Parquet, ArrayRecord or
    # 'tfds:...') read as an unnamed task.
    mixture_or_task_name: str = "stdlib"
    tasks: tuple[TaskConfig, ...] = ()  # named tasks, e.g. [@code/TaskConfig(), ...] in gin
    mixtures: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> {task: rate}
    eval_files: str = ""  # eval source of an unnamed task given as a path
    text_field: str = "text"  # text field of an unnamed task given as a path
    # Fields of an unnamed supervised task given as a path (TaskConfig.inputs_field/targets_field).
    inputs_field: str = ""
    targets_field: str = ""
    # Row budgets: {'targets': L} for causal_lm, {'inputs': Li, 'targets': Lt} for the denoisers
    # and supervised tasks (whose inputs and targets are cut to them, and counted);
    # 'targets': 'auto' fits Lt to the mixture's targets per input (resolved by gin_loader).
    task_feature_lengths: dict[str, int | Literal["auto"]] = dataclasses.field(
        default_factory=lambda: {"targets": 256})
    tokenizer_path: str = ""  # sentencepiece .model; '' = trained on the stdlib corpus
    tokenizer_extra_ids: int = 0  # ids appended after the sentencepiece model (T5: 100 sentinels)
    data_dir: str = ""  # '' = the repository's data/ (or ~/.cache/t5x_like/data)
    seed: int = 0  # row order, per-epoch reshuffles and score sampling
    packer: Packer = "best_fit"  # best_fit (OBFD) | first_fit | concat (concatenate-then-split)
    pack_window: int = 0  # pieces packed together; 0 = the whole dataset (offline plan)
    # Read and pack the train split on the fly (windows of pack_window pieces), no prepare step.
    streaming: bool = False
    prepare_workers: int = 0  # tokenizer processes for `prepare`; 0 = one per core
    # MeCo's cooldown source (a task, mixture or source path, like mixture_or_task_name): the
    # reference cools down on a disjoint subset of its corpus. '' = the same source as stage 1.
    cooldown_mixture_or_task_name: str = ""

    def _validate(self):
        lengths = self.task_feature_lengths
        self._require(set(lengths) in ({"targets"}, {"inputs", "targets"}), "task_feature_lengths",
                      "give {'targets': L}, or {'inputs': Li, 'targets': Lt} for denoising")
        self._require(all(v == "auto" or v > 0 for v in lengths.values()),
                      "task_feature_lengths", "lengths must be positive")
        self._require(lengths.get("targets") != "auto" or isinstance(lengths.get("inputs"), int),
                      "task_feature_lengths", "'targets': 'auto' needs an inputs length")
        self._require(bool(self.mixture_or_task_name), "mixture_or_task_name",
                      "name a task or mixture, 'stdlib', or give a source path/glob")
        self._require(self.pack_window >= 0, "pack_window", "must be >= 0")
        self._require(not self.streaming or self.pack_window > 0, "pack_window",
                      "streaming packs windows: set a window of pieces, e.g. 10000")
        self._require(self.tokenizer_extra_ids >= 0, "tokenizer_extra_ids", "must be >= 0")
        if bool(self.inputs_field) != bool(self.targets_field):
            raise ConfigError(
                f"DataConfig.inputs_field = {self.inputs_field!r} and DataConfig.targets_field = "
                f"{self.targets_field!r}: set both (a supervised source) or neither (text, read "
                "from DataConfig.text_field)")
        names = [t.name for t in self.tasks]
        self._require(len(set(names)) == len(names), "tasks", f"task names repeat: {names}")
        for mixture, rates in self.mixtures.items():
            unknown = sorted(set(rates) - set(names) - set(builtin_tasks()))
            self._require(not unknown, "mixtures",
                          f"mixture {mixture!r} names unknown tasks {unknown}; defined: {names}")
            self._require(bool(rates) and all(r > 0 for r in rates.values()), "mixtures",
                          f"mixture {mixture!r} needs positive rates")
            self._require(mixture not in names, "mixtures",
                          f"{mixture!r} is both a task and a mixture")

    @property
    def seq_len(self) -> int:
        """Packed row length of the decoder (decoder-only denoising: inputs + targets)."""
        return sum(self.task_feature_lengths.values())

    def tasks_of(self, name: str = "") -> tuple[tuple[TaskConfig, ...], tuple[float, ...]]:
        """The tasks of ``name`` (default: mixture_or_task_name) and their mixing rates.

        A source path, glob or 'tfds:...' is an unnamed task named after a hash of its spec,
        so that its prepared data has a directory of its own.
        """
        name = name or self.mixture_or_task_name
        by_name = builtin_tasks() | {t.name: t for t in self.tasks}
        if name in self.mixtures:
            rates = self.mixtures[name]
            return tuple(by_name[t] for t in rates), tuple(rates.values())
        if name in by_name:
            return (by_name[name],), (1.0,)
        if any(c in name for c in "/.*") or name.startswith("tfds:"):
            key = f"{name}|{self.eval_files}|{self.text_field}"
            if self.targets_field:  # only then, so that a text task keeps its directory's name
                key += f"|{self.inputs_field}|{self.targets_field}"
            digest = hashlib.sha256(key.encode())
            return (TaskConfig(name=f"source-{digest.hexdigest()[:12]}", train_source=name,
                               eval_source=self.eval_files, text_field=self.text_field,
                               inputs_field=self.inputs_field,
                               targets_field=self.targets_field),), (1.0,)
        key = ("mixture_or_task_name" if name == self.mixture_or_task_name
               else "cooldown_mixture_or_task_name")
        raise ConfigError(f"DataConfig.{key} = {name!r} is neither a task ({sorted(by_name)}), "
                          f"a mixture ({sorted(self.mixtures)}) nor a source path/glob or "
                          "'tfds:NAME:SPLIT'")
