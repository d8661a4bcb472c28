"""MeCo's stage 1 for every objective: each document's metadata prefix, and what it cost.

:class:`DocumentPrefixes` tokenizes the prefix of every document of a prepared split (e.g.
``"URL: en.wikipedia.org\\n\\n"``, apart from the document) once; any objective's
``plan``/``rows`` take it through :func:`t5x_like.data.rows.open_rows`: causal rows become
``[BOS] prefix doc [EOS]`` with no loss on the prefix (:mod:`t5x_like.data.causal`), denoising
inputs ``[mode] prefix <noised text> [EOS]`` (:mod:`t5x_like.data.denoising`). The cooldown
(stage 2) reads the objective's plain rows; :class:`t5x_like.data.stages.StagedIterator`
switches between them.
"""

from __future__ import annotations

import numpy as np

from t5x_like.config import ObjectiveConfig
from t5x_like.data.prepared import PreparedDataset
from t5x_like.objectives import metadata as meta


class DocumentPrefixes:
    """The metadata prefix ids of every document of a prepared dataset (picklable).

    ``prefixes(d)`` gives document d's read-only int32 ids (empty under ``missing='skip'`` for a
    document without metadata); ``lengths_D`` their lengths; ``stats()`` the data summary's
    counts (each document counted once); ``identity`` names the rule in a plan's key.
    ``wrong_metadata`` gives every document the metadata of the next one (a rotation, so none
    keeps its own), for measuring how much the true metadata helps.
    """

    def __init__(self, dataset: PreparedDataset, spec: ObjectiveConfig, tokenizer,
                 wrong_metadata: bool = False):
        """Prefixes of ``dataset``'s stored metadata under ``spec``'s metadata fields, tokenized
        by ``tokenizer``."""
        doc_metadata = dataset.all_metadata()
        if wrong_metadata:
            doc_metadata = doc_metadata[1:] + doc_metadata[:1]
        self.spec, self.doc_metadata = spec, doc_metadata
        self.tokenizer = meta.PrefixTokenizer(tokenizer, spec)
        self.lengths_D = np.array([len(self.tokenizer.ids(m)) for m in doc_metadata], np.int64)
        rule = (spec.metadata_field, spec.metadata_kind, spec.metadata_template,
                spec.missing_metadata, spec.metadata_placeholder, spec.metadata_continuation)
        self.identity = repr((rule, tokenizer.file_hash(), wrong_metadata))

    @property
    def continuation(self) -> str:
        """Which pieces of a split document carry the prefix: 'repeat' or 'first_only'."""
        return self.spec.metadata_continuation

    def __call__(self, doc: int) -> np.ndarray:
        """Document ``doc``'s prefix ids."""
        return self.tokenizer.ids(self.doc_metadata[doc], count=False)

    def stats(self) -> dict[str, int]:
        """``PrefixTokenizer.stats()``: documents with / without metadata, prefix tokens."""
        return self.tokenizer.stats()


def stage1_summary(rows) -> dict[str, int]:
    """The data summary of MeCo stage-1 rows (any objective): the documents with, and without,
    metadata (``PrefixTokenizer.stats()``), and the pieces of split documents that are trained
    without their document's prefix (``continuation='first_only'``)."""
    plan = rows.plan
    prefixed_P = plan.piece_prefix_len_P > 0
    continuation_P = plan.piece_start_P > 0
    has_prefix_P = rows.prefixes.lengths_D[plan.piece_doc_P] > 0
    return rows.prefixes.stats() | {
        "pieces": int(len(prefixed_P)), "continuation_pieces": int(continuation_P.sum()),
        "continuations_without_prefix": int((continuation_P & has_prefix_P & ~prefixed_P).sum())}
