"""One way from an objective to packed rows: the contract, the registry, plans on disk.

Every objective (causal LM, prefix LM, span corruption, the UL2 mixtures, each with or without a
metadata prefix) is a :class:`RowObjective`: it cuts documents into pieces, packs them with its
1-D or 2-D packer into a :class:`~t5x_like.data.packing.Plan`, and builds the features of any
rows of that plan. :func:`open_rows` does the rest the same way for all of them: document
selection by score, the plan's file under ``<prepared split>/plans/`` (built once, keyed by
everything it depends on), and the row source the grain pipeline reads by index. seqio's Task +
feature converter is the pattern; here the plan is computed ahead, so rows are random-access.

An objective module registers its class with :func:`register` (docs/data.md shows one); the
config then accepts its name, and ``t5x_like.inputs`` knows nothing of any objective by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from typing import Callable, Protocol

import numpy as np

from t5x_like import config as config_lib
from t5x_like.config import RunConfig
from t5x_like.data import packing
from t5x_like.data.packing import Plan
from t5x_like.data.plan_files import load_or_build
from t5x_like.data.prepared import PreparedDataset

logger = logging.getLogger(__name__)


class RowSource(Protocol):
    """Rows by index: ``rows(rows_B)`` gives every feature as ``[len(rows_B), ...]`` int32."""

    plan: Plan
    num_rows: int

    def __call__(self, rows_B: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class Documents:
    """What an objective plans over: document lengths and, under MeCo, their prefixes."""

    lengths_D: np.ndarray
    prefix_len_D: np.ndarray | None = None  # metadata prefix ids per document; None: no prefix
    continuation: str = "repeat"  # which pieces of a split document carry the prefix
    # A supervised split's inputs tokens per example (lengths_D less these are its targets);
    # None: text documents.
    inputs_lengths_D: np.ndarray | None = None


class RowObjective(Protocol):
    """An objective's piece cutter, packer and row builder.

    ``supervised`` (optional, default False): it reads supervised splits, (inputs, targets)
    examples, rather than text. ``for_task(task)`` (optional): the objective specialised to one
    task of a mixture (the supervised objective's mode token is the task's).
    """

    kind: str  # names its plan files

    def plan(self, docs: Documents, *, seed: int | None, window: int) -> Plan:
        """Cut ``docs`` into pieces and pack them; ``seed`` None keeps rows unshuffled (eval)."""

    def rows(self, dataset_path: str, plan: Plan, prefixes, seed: int) -> RowSource:
        """The row source of ``plan`` over a prepared dataset (picklable, for grain workers)."""


class DocumentRows:
    """Base of the row builders: a plan over a lazily opened document store (picklable)."""

    def __init__(self, docs, plan: Plan):
        """``docs``: a prepared dataset's path (opened on first use, so the object pickles small
        for grain workers) or any store with ``lengths_D`` and ``pieces`` (``InMemoryDocs``)."""
        self._path = str(docs) if isinstance(docs, (str, os.PathLike)) else None
        self._docs = None if self._path else docs
        self.plan = plan

    def __getstate__(self):
        return self.__dict__ | ({"_docs": None} if self._path else {})  # readers reopen per worker

    @property
    def num_rows(self) -> int:
        """Rows in the plan."""
        return self.plan.num_rows

    @property
    def docs(self):
        """The document store."""
        if self._docs is None:
            self._docs = PreparedDataset(self._path)
        return self._docs

    def row_pieces(self, rows_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row position, piece) of every piece of rows ``rows_B``, in row order."""
        plan = self.plan
        lo_B, hi_B = plan.row_ptr_R1[rows_B], plan.row_ptr_R1[rows_B + 1]
        pieces_P = np.concatenate([np.zeros(0, np.int64)] +
                                  [plan.row_pieces_P[a:b] for a, b in zip(lo_B, hi_B)])
        return np.repeat(np.arange(len(rows_B)), hi_B - lo_B), pieces_P


_REGISTRY: dict[str, Callable] = {}


def register(*names: str, feature_keys: frozenset[str]):
    """Class decorator: ``cls.from_config(cfg, tokenizer)`` builds the objective of ``names``.

    ``feature_keys``: the TASK_FEATURE_LENGTHS keys its rows need, checked at config load.
    """
    def add(cls):
        for name in names:
            config_lib.register_objective(name, feature_keys)
            _REGISTRY[name] = cls.from_config
        return cls
    return add


def for_task(objective: RowObjective, task) -> RowObjective:
    """``objective`` as it applies to ``task`` (a TaskConfig): its ``for_task``, if it has one."""
    specialise = getattr(objective, "for_task", None)
    return specialise(task) if specialise else objective


def objective_for(cfg: RunConfig, tokenizer) -> RowObjective:
    """The run's objective, built from its config once."""
    name = cfg.objective.name
    if name not in _REGISTRY:
        raise config_lib.ConfigError(
            f"ObjectiveConfig.name = {name!r} has no row builder: import its module first "
            f"(in gin: `import my_package.my_objective`); registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](cfg, tokenizer)


def _sampled_documents(dataset: PreparedDataset, temperature: float, seed: int) -> np.ndarray:
    """Quality-weighted data selection (QuRating): draw documents with softmax(score / T).

    As many draws as there are documents, with replacement, so an epoch keeps its size while
    high-scoring documents repeat and low-scoring ones drop out.
    """
    logits_D = dataset.scores().astype(np.float64) / temperature
    probs_D = np.exp(logits_D - logits_D.max())
    probs_D /= probs_D.sum()
    rng = np.random.default_rng([seed, 0x5C0E])
    return np.sort(rng.choice(len(probs_D), size=len(probs_D), p=probs_D))


# Bumped when a plan's content changes for the same key (2: the paired cut of prefixed
# denoising pieces, windows that count only short pieces; 3: best fit's repair pass), so stale
# plans under plans/ are rebuilt, not reused.
_PLAN_VERSION = 3


def open_rows(objective: RowObjective, dataset_path: str | os.PathLike, *, seed: int | None,
              window: int = 0, prefixes=None, score_temperature: float = 0.0) -> RowSource:
    """The rows of ``objective`` over a prepared split; the plan is built once, kept in plans/.

    ``prefixes``: MeCo's per-document metadata prefixes (``meco.DocumentPrefixes``) or None.
    ``score_temperature`` > 0: documents drawn by score (``_sampled_documents``) before cutting;
    the plan's pieces still index the dataset's documents.
    """
    dataset = PreparedDataset(dataset_path)
    if dataset.supervised != bool(getattr(objective, "supervised", False)):
        what = "supervised (inputs, targets) examples" if dataset.supervised else "text"
        raise ValueError(f"{dataset_path} holds {what}, which objective {objective.kind!r} does "
                         "not read: ObjectiveConfig.name = 'supervised' reads supervised tasks "
                         "(TaskConfig.inputs_field/targets_field), the others text tasks")
    identity = repr((_PLAN_VERSION, objective, seed, window, score_temperature,
                     None if prefixes is None else prefixes.identity))
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = dataset.path / "plans" / f"{objective.kind}_{key}.npz"

    def build() -> Plan:
        docs_D = (_sampled_documents(dataset, score_temperature, seed or 0)
                  if score_temperature > 0 else np.arange(dataset.num_documents))
        inputs_D = dataset.inputs_lengths_D
        docs = Documents(dataset.lengths_D[docs_D],
                         None if prefixes is None else prefixes.lengths_D[docs_D],
                         "repeat" if prefixes is None else prefixes.continuation,
                         None if inputs_D is None else inputs_D[docs_D])
        plan = objective.plan(docs, seed=seed, window=window)
        return dataclasses.replace(plan, piece_doc_P=docs_D[plan.piece_doc_P])

    plan, built = load_or_build(path, Plan, build)
    if built:
        logger.info("Packing plan %s: %s", path, summary(plan))
    return objective.rows(str(dataset_path), plan, prefixes, seed or 0)


def summary(plan: Plan) -> dict:
    """Rows, fill of each budget and of all positions, distance to the lower bound, cuts; a
    supervised plan adds the examples whose inputs, and whose targets, their budget cut."""
    fills = [round(100 * float(f), 4) for f in plan.fill_K]
    out = {"rows": plan.num_rows, "lower_bound_rows": plan.lower_bound,
           "fill_pct": round(100 * plan.fill, 4), "truncated_docs": plan.num_truncated_docs}
    if len(fills) == 2:
        out |= {"inputs_fill_pct": fills[0], "targets_fill_pct": fills[1]}
    if plan.piece_targets_len_P.any():  # only supervised pieces have a targets run
        out |= {"cut_inputs": int(np.count_nonzero(plan.piece_cut_P & packing.CUT_INPUTS)),
                "cut_targets": int(np.count_nonzero(plan.piece_cut_P & packing.CUT_TARGETS))}
    return out
