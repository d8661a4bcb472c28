"""Supervised tasks: (inputs, targets) records, packed like pretraining data, for fine-tuning.

A supervised task (``TaskConfig.inputs_field`` and ``targets_field``) is prepared with both token
sequences of every record, uncut (``prepared.py``). The ``supervised`` objective makes each
example one piece, laid out as the denoisers lay out theirs (``objectives.build_example``)::

    inputs  = [mode] [metadata prefix] <inputs, cut to fit> [EOS]
    targets = <targets, cut to fit> [EOS]

and packs the pieces with the denoisers' packers and row builder (``denoising.ExampleRows``):

- encoder-decoder: 2-D best fit over the (inputs, targets) budgets; ``encoder_*`` and
  ``decoder_*`` features, decoder inputs the targets shifted right within each segment, loss on
  every target position;
- decoder-only: prefix-LM rows of ``inputs + targets`` positions, ``[inputs targets]`` per
  segment, the inputs attended bidirectionally (``decoder_causal_attention``) and without loss,
  as the UL2 decoder configs train and as ``generate`` prompts a prefix LM (``[0] inputs``).

The mode token (``TaskConfig.mode_token``, e.g. ``[S2S]``) is the task's, so a mixture may give
each task its own (``for_task``). MeCo's metadata prefix (``ObjectiveConfig.metadata_field``)
goes after it, without loss, as for the denoisers.

**Cuts.** Each part has its own budget on both architectures (a decoder-only row is their sum):
inputs longer than ``inputs_length - mode - prefix - 1`` and targets longer than
``targets_length - 1`` keep their beginning (the targets keep their EOS). The plan flags each
cut example (``Plan.piece_cut_P``), and its summary counts them (``cut_inputs``,
``cut_targets``: the plan's log line when it is built, and ``t5x-like prepare``'s line).

**Inference and scoring** read :class:`SupervisedExamples` (``inputs.supervised_examples``): the
examples of a split unpacked, in source order, by index, as the model sees them.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from t5x_like.config import SUPERVISED, ConfigError, RunConfig, TaskConfig
from t5x_like.data import packing, rows
from t5x_like.data.denoising import ExampleRows
from t5x_like.data.packing import Plan
from t5x_like.data.prepared import PreparedDataset

_NO_IDS = np.zeros(0, np.int32)


@rows.register(SUPERVISED, feature_keys=frozenset({"inputs", "targets"}))
@dataclasses.dataclass(frozen=True)
class Supervised:
    """Rows of supervised examples: an encoder-decoder's two budgets, or their sum in one
    decoder-only prefix-LM row. ``mode_token`` is the task's (``for_task``)."""

    inputs_length: int
    targets_length: int
    encoder_decoder: bool
    eos_id: int
    mode_token_ids: tuple[tuple[str, int], ...] = ()  # the tokenizer's mode tokens
    mode_token: str = ""
    packer: str = "best_fit"

    kind = "supervised"
    supervised = True  # reads supervised splits (rows.open_rows checks it)

    @classmethod
    def from_config(cls, cfg: RunConfig, tokenizer) -> Supervised:
        """The objective of a run, before ``for_task`` gives it a task's mode token."""
        lengths = cfg.data.task_feature_lengths
        return cls(lengths["inputs"], lengths["targets"],
                   cfg.model.architecture == "encoder_decoder", int(tokenizer.eos_id),
                   tuple(sorted(tokenizer.mode_tokens.items())), packer=cfg.data.packer)

    def for_task(self, task: TaskConfig) -> Supervised:
        """The objective for ``task``'s examples: its mode token in front of the inputs."""
        modes = dict(self.mode_token_ids)
        if task.mode_token and task.mode_token not in modes:
            raise ConfigError(f"TaskConfig.mode_token = {task.mode_token!r} (task {task.name!r}): "
                              f"the tokenizer has {sorted(modes) or 'no mode tokens'}; use a "
                              "tokenizer with mode tokens (t5x-like tokenizer train) or clear it")
        return dataclasses.replace(self, mode_token=task.mode_token)

    @property
    def budgets(self) -> tuple[int, ...]:
        """A row's positions: (inputs, targets), or their sum for a decoder-only row."""
        if self.encoder_decoder:
            return (self.inputs_length, self.targets_length)
        return (self.inputs_length + self.targets_length,)

    @property
    def head(self) -> np.ndarray:
        """The ids in front of every example's inputs: the mode token, if any."""
        if not self.mode_token:
            return _NO_IDS
        return np.array([dict(self.mode_token_ids)[self.mode_token]], np.int32)

    def kept(self, inputs_N, targets_N, prefix_N) -> tuple[np.ndarray, np.ndarray]:
        """Tokens kept of each example's inputs and targets: each cut to its budget, less the
        mode token, the ``prefix_N`` metadata tokens and the EOS that share it."""
        room_N = self.inputs_length - len(self.head) - np.asarray(prefix_N, np.int64) - 1
        if len(room_N) and room_N.min() < 1:
            raise ValueError(
                f"TASK_FEATURE_LENGTHS inputs = {self.inputs_length} leaves no room for an input "
                f"token after the mode token ({len(self.head)}), a metadata prefix of up to "
                f"{int(np.max(prefix_N))} tokens and EOS: raise it, or shorten the metadata "
                "template and values")
        return (np.minimum(np.asarray(inputs_N, np.int64), room_N),
                np.minimum(np.asarray(targets_N, np.int64), self.targets_length - 1))

    def plan(self, docs: rows.Documents, *, seed: int | None, window: int) -> Plan:
        """One piece per example, cut to the budgets, packed; cuts flagged per piece."""
        if docs.inputs_lengths_D is None:
            raise ValueError("objective 'supervised' plans (inputs, targets) examples, but these "
                             "documents are text: prepare a task with TaskConfig.inputs_field and "
                             "targets_field")
        inputs_D = docs.inputs_lengths_D.astype(np.int64)
        targets_D = docs.lengths_D - inputs_D
        prefix_D = (np.zeros_like(inputs_D) if docs.prefix_len_D is None
                    else docs.prefix_len_D.astype(np.int64))
        keep_in_D, keep_tg_D = self.kept(inputs_D, targets_D, prefix_D)
        in_size_D = len(self.head) + prefix_D + keep_in_D + 1
        tg_size_D = keep_tg_D + 1
        size_DxK = (np.stack([in_size_D, tg_size_D], 1) if self.encoder_decoder
                    else (in_size_D + tg_size_D)[:, None])
        row_ptr_R1, row_pieces_P = packing.pack_rows(size_DxK, self.budgets, packer=self.packer,
                                                     window=window, seed=seed)
        cut_D = (np.where(keep_in_D < inputs_D, packing.CUT_INPUTS, 0)
                 | np.where(keep_tg_D < targets_D, packing.CUT_TARGETS, 0))
        return Plan(np.array(self.budgets), np.arange(len(inputs_D), dtype=np.int64),
                    np.zeros_like(inputs_D), keep_in_D, size_DxK, row_ptr_R1, row_pieces_P,
                    piece_prefix_len_P=prefix_D, piece_targets_len_P=keep_tg_D,
                    piece_cut_P=cut_D)

    def example(self, inputs, targets, prefix=None) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) int32 of kept tokens: ``[mode] prefix inputs [EOS]``,
        ``targets [EOS]``."""
        eos = np.array([self.eos_id], np.int32)
        head = self.head if prefix is None else np.concatenate([self.head, prefix])
        return (np.concatenate([head, np.asarray(inputs), eos]).astype(np.int32),
                np.concatenate([np.asarray(targets), eos]).astype(np.int32))

    def rows(self, dataset_path: str, plan: Plan, prefixes, seed: int) -> SupervisedRows:
        """The rows of ``plan`` (``seed`` is unused: nothing is drawn at assembly)."""
        return SupervisedRows(dataset_path, plan, self, seed=seed, prefixes=prefixes)


def read_pairs(dataset: PreparedDataset, doc_P, inputs_len_P, targets_len_P) -> list:
    """``(inputs, targets)`` token arrays of examples ``doc_P``: the first ``inputs_len_P`` of
    their inputs and the first ``targets_len_P`` of their targets, in one batched read."""
    doc_P = np.asarray(doc_P, np.int64)
    n = len(doc_P)
    docs_Q = np.concatenate([doc_P, doc_P])
    starts_Q = np.concatenate([np.zeros(n, np.int64), dataset.inputs_lengths_D[doc_P]])
    lens_Q = np.concatenate([inputs_len_P, targets_len_P]).astype(np.int64)
    full_Q = lens_Q > 0  # an example's inputs may be empty: nothing to read
    read = iter(dataset.pieces(docs_Q[full_Q], starts_Q[full_Q], lens_Q[full_Q]))
    runs = [next(read) if full else _NO_IDS for full in full_Q]
    return list(zip(runs[:n], runs[n:]))


class SupervisedRows(ExampleRows):
    """Assembles the rows of a supervised plan (picklable, for grain workers)."""

    def _examples(self, rows_B: np.ndarray):
        """(row position, inputs, targets) of every piece of the given rows, in row order."""
        plan = self.plan
        row_of_P, pieces_P = self.row_pieces(rows_B)
        pairs = read_pairs(self.docs, plan.piece_doc_P[pieces_P], plan.piece_len_P[pieces_P],
                           plan.piece_targets_len_P[pieces_P])
        for r, p, (inputs, targets) in zip(row_of_P, pieces_P, pairs):
            yield (r, *self.objective.example(inputs, targets, self._metadata(int(p))))


class SupervisedExamples:
    """The examples of one prepared supervised split, unpacked, in source order, by index.

    ``len(examples)`` examples (the records that passed, ``manifest`` says what was skipped);
    ``examples[i]`` -> ``(inputs_ids, targets_ids)``, int32 arrays exactly as training rows hold
    them: ``[mode] [metadata prefix] inputs [EOS]`` and ``targets [EOS]``, each cut to its budget
    as in training (``cut(i)``: which part was). ``batch(indices)`` reads several at once.
    ``text(i)``: the record's raw ``(inputs, targets)`` strings, uncut (for predictions.jsonl);
    ``location(i)``: where the record was read (``file:line``, ``file#row``, ``tfds:...#i``);
    ``metadata(i)``: its kept metadata fields. Build it with
    ``t5x_like.inputs.supervised_examples(cfg, task, split)``.
    """

    def __init__(self, dataset_path: str | os.PathLike, objective: Supervised, prefixes=None):
        """``objective``: the run's, specialised to the task (``for_task``); ``prefixes``: MeCo's
        ``meco.DocumentPrefixes`` of the split, to put each record's prefix in its inputs."""
        self.dataset = PreparedDataset(dataset_path)
        if not self.dataset.supervised:
            raise ValueError(f"{dataset_path} holds text documents, not supervised examples")
        self.objective, self.prefixes = objective, prefixes
        self.manifest = self.dataset.manifest
        inputs_D = self.dataset.inputs_lengths_D
        self._prefix_D = (np.zeros_like(inputs_D) if prefixes is None
                          else prefixes.lengths_D.astype(np.int64))
        self._keep_in_D, self._keep_tg_D = objective.kept(
            inputs_D, self.dataset.lengths_D - inputs_D, self._prefix_D)

    def __len__(self) -> int:
        return self.dataset.num_documents

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        return self.batch([i % len(self)])[0]

    def batch(self, indices) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[examples[i] for i in indices]``, with one batched read."""
        doc_B = np.asarray(indices, np.int64)
        pairs = read_pairs(self.dataset, doc_B, self._keep_in_D[doc_B], self._keep_tg_D[doc_B])
        return [self.objective.example(inputs, targets,
                                       None if self.prefixes is None else self.prefixes(int(d)))
                for d, (inputs, targets) in zip(doc_B, pairs)]

    def cut(self, i: int) -> tuple[bool, bool]:
        """Whether example ``i``'s inputs, and its targets, were cut to their budget."""
        inputs = int(self.dataset.inputs_lengths_D[i])
        targets = int(self.dataset.lengths_D[i]) - inputs
        return bool(self._keep_in_D[i] < inputs), bool(self._keep_tg_D[i] < targets)

    def text(self, i: int) -> tuple[str, str]:
        """The record's raw (inputs, targets) strings."""
        header = self.dataset.header(i)
        return header["inputs"], header["targets"]

    def location(self, i: int) -> str:
        """Where example ``i`` was read: ``file:line``, ``file#row`` or ``tfds:name:split#i``."""
        return self.dataset.header(i)["loc"]

    def metadata(self, i: int) -> dict:
        """The metadata fields kept for example ``i``."""
        return self.dataset.metadata(i)
