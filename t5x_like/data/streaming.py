"""Streaming packing: documents read and tokenized on the fly, packed a window at a time.

For sources too large or too fresh to prepare, the train split can be read directly. Documents
are grouped into windows of at least ``window`` pieces shorter than the row (never across a
source shard), each window is packed with best-fit-decreasing and its rows are emitted in a
seeded shuffled order.

The checkpoint state is O(1): ``(epoch, shard, first document of the window, rows emitted)``.
Restoring re-reads the window from its first document (skipping earlier documents of the shard
without tokenizing them) and repacks it deterministically, so the next batch is exactly the one
an uninterrupted run would have produced.
"""

from __future__ import annotations

import itertools
import json
from typing import Iterator

import numpy as np

from t5x_like.data import packing, sources
from t5x_like.data.causal import FEATURES, CausalLMRows, InMemoryDocs
from t5x_like.data.tokenizer import Tokenizer

# Full-length pieces a window may hold per piece it counts (see _read_window).
FULL_PIECES_PER_WINDOW = 16


def _window_seed(seed: int, state: dict) -> int:
    """Row order of one window: fixed by the run's seed and the window's position."""
    entropy = [seed, state["epoch"], state["shard"], state["doc"]]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class StreamingPackedIterator:
    """Infinite iterator of packed batches straight from a source; checkpointable with grain."""

    def __init__(self, spec: str, tokenizer: Tokenizer, *, length: int, window: int,
                 batch_size: int, seed: int, text_field: str = "text", packer: str = "best_fit",
                 process_index: int = 0, process_count: int = 1, data_dir: str | None = None):
        """Read this process's shards of ``spec`` (shard ``i`` goes to process ``i % count``)."""
        if window < 1:
            raise ValueError(f"window = {window}: streaming packs windows of >= 1 pieces")
        shards = sources.list_shards(spec, data_dir=data_dir)
        if len(shards) < process_count:
            raise ValueError(f"{spec!r} has {len(shards)} shards for {process_count} processes; "
                             "streaming gives each process whole shards: split the files, or "
                             "prepare the data (offline packing splits by rows)")
        self.shards = shards[process_index::process_count]
        self.tokenizer, self.length, self.window = tokenizer, length, window
        self.batch_size, self.seed, self.packer = batch_size, seed, packer
        self.text_field, self.data_dir = text_field, data_dir
        self.stats = sources.ReadStats()
        self._state = {"epoch": 0, "shard": 0, "doc": 0, "emitted": 0}
        self._rows = None  # (features of the current window, position after it)

    # ------------------------------------------------------------------ windows
    def _documents(self, shard: int, skip: int) -> Iterator[str]:
        docs = sources.read_documents(self.shards[shard], text_field=self.text_field,
                                      stats=self.stats, data_dir=self.data_dir)
        return (d.text for d in itertools.islice(docs, skip, None))

    def _read_window(self, shard: int, doc: int) -> tuple[list[np.ndarray], int]:
        """Token arrays of the window starting at document ``doc`` of ``shard``; docs read.

        As for a prepared plan's windows, only pieces shorter than the row count: a full piece
        takes a row alone, so it adds nothing for best fit to pair up. Full pieces ride along up
        to ``FULL_PIECES_PER_WINDOW`` times the window, which bounds a window's memory.
        """
        short = full = 0
        tokens, texts = [], self._documents(shard, doc)
        bos = int(self.tokenizer.bos_id >= 0)
        while short < self.window and full < FULL_PIECES_PER_WINDOW * self.window:
            batch = list(itertools.islice(texts, 64))
            if not batch:
                break
            for ids in self.tokenizer.encode_batch(batch):
                tokens.append(np.asarray(ids, np.int32))
                n = len(ids) + bos if ids else 0
                short, full = short + bool(n % self.length), full + n // self.length
                if short >= self.window or full >= FULL_PIECES_PER_WINDOW * self.window:
                    break
        return tokens, len(tokens)

    def _load_window(self) -> None:
        """Pack the window the state points at; move to the next shard/epoch when one ends."""
        for _ in range(2 * len(self.shards) + 1):
            st = self._state
            tokens, count = self._read_window(st["shard"], st["doc"])
            tokens = [t for t in tokens if len(t)]
            if tokens:
                break
            st.update(shard=st["shard"] + 1, doc=0, emitted=0)
            if st["shard"] == len(self.shards):
                st.update(epoch=st["epoch"] + 1, shard=0)
        else:
            raise ValueError(f"no usable document in {[s.label for s in self.shards]} "
                             f"(skipped: {dict(self.stats.skipped)})")
        bos = int(self.tokenizer.bos_id >= 0)
        lengths_D = np.array([len(t) + bos for t in tokens])
        plan = packing.plan_packing(lengths_D, self.length, packer=self.packer,
                                    seed=_window_seed(self.seed, st))
        rows = CausalLMRows(InMemoryDocs(tokens), plan, self.tokenizer.bos_id,
                            self.tokenizer.eos_id)
        self._rows = (rows(np.arange(plan.num_rows)), st["doc"] + count)

    # ------------------------------------------------------------------ iteration
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """The next ``batch_size`` rows (a batch may span windows)."""
        out = {k: [] for k in FEATURES}
        need = self.batch_size
        while need:
            if self._rows is None:
                self._load_window()
            feats, next_doc = self._rows
            st = self._state
            take = min(need, len(feats[FEATURES[0]]) - st["emitted"])
            for k in FEATURES:
                out[k].append(feats[k][st["emitted"] : st["emitted"] + take])
            st["emitted"] += take
            need -= take
            if st["emitted"] == len(feats[FEATURES[0]]):
                st.update(doc=next_doc, emitted=0)
                self._rows = None
        return {k: np.concatenate(v) for k, v in out.items()}

    # ------------------------------------------------------------------ checkpointing
    def get_state(self) -> bytes:
        """Where the next batch starts (JSON bytes, as grain's checkpoint handler expects)."""
        return json.dumps(self._state).encode()

    def set_state(self, state: bytes) -> None:
        """Resume at ``state``; the window is re-read and repacked on the next batch."""
        self._state = json.loads(state)
        self._rows = None

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore; nothing runs ahead here."""
