"""A new objective in one module: right-to-left language modelling (docs/data.md shows it).

Every document is read backwards; pieces, packing and row layout are the causal LM's. Importing
this module registers ``ObjectiveConfig.name = 'reverse_lm'``.
"""

from __future__ import annotations

import dataclasses

from t5x_like.data import causal, rows
from t5x_like.data.prepared import PreparedDataset


class ReversedDocs:
    """A prepared dataset whose documents read backwards (the document-store interface)."""

    def __init__(self, path: str):
        self.dataset = PreparedDataset(path)
        self.lengths_D = self.dataset.lengths_D

    def pieces(self, docs_P, starts_P, lens_P):
        ends_P = self.lengths_D[docs_P] - starts_P  # [start, start + n) of the reversed document
        return [p[::-1] for p in self.dataset.pieces(docs_P, ends_P - lens_P, lens_P)]


@rows.register("reverse_lm", feature_keys=frozenset({"targets"}))
@dataclasses.dataclass(frozen=True)
class ReverseLM(causal.CausalLM):
    """The causal LM's plan, over reversed documents."""

    kind = "reverse"

    def rows(self, dataset_path, plan, prefixes, seed):
        if prefixes is not None:
            raise ValueError("reverse_lm has no metadata stage: clear ObjectiveConfig.metadata_field")
        return causal.CausalLMRows(ReversedDocs(dataset_path), plan, self.bos_id, self.eos_id)
