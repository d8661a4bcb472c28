"""Data that changes with the training step: MeCo's metadata phase, then its cooldown.

:class:`StagedIterator` serves batches from one iterator until a given step and from another
after it. It counts the batches it has served, and that count is part of its checkpointed state
together with both inner iterators' states, so the switch happens at exactly the same step
whether or not the run was interrupted, restored before, at or after the switch. The trainer
does not know about stages: it sees one resumable iterator.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from t5x_like.data.pipeline import SOURCE_KEY


class StagedIterator:
    """Batches from ``first`` for steps 1 .. switch_step - 1, from ``second`` from switch_step on.

    Step numbers are the trainer's (1-based: the batch drawn for optimizer step s is the s-th
    batch served). Both inner iterators must support ``get_state()`` / ``set_state()`` (grain
    iterators, or byte-state iterators such as the streaming packer).
    """

    def __init__(self, first: Iterator[dict], second: Iterator[dict], switch_step: int,
                 second_source_offset: int = 0):
        """Switch to ``second`` from optimizer step ``switch_step`` (>= 1) on.

        ``second_source_offset`` is added to the ``_source`` task index of ``second``'s batches
        when it reads other tasks than ``first`` (MeCo's separate cooldown source), so that
        per-task metrics name them right.
        """
        if switch_step < 1:
            raise ValueError(f"switch_step = {switch_step}: must be >= 1 (the first step is 1)")
        self.first, self.second, self.switch_step = first, second, switch_step
        self.second_source_offset = second_source_offset
        self.served = 0

    @property
    def stage(self) -> int:
        """0 while the next batch comes from ``first``, 1 once it comes from ``second``."""
        return int(self.served + 1 >= self.switch_step)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        """The batch of step ``served + 1``."""
        stage = self.stage
        batch = next(self.second if stage else self.first)
        self.served += 1
        if stage and self.second_source_offset and SOURCE_KEY in batch:
            batch = batch | {SOURCE_KEY: batch[SOURCE_KEY] + self.second_source_offset}
        return batch

    def get_state(self) -> bytes:
        """Batches served and both inner states, as JSON bytes (grain's checkpoint handler)."""
        return json.dumps({"served": self.served, "switch_step": self.switch_step,
                           "first": _state(self.first), "second": _state(self.second)}).encode()

    def set_state(self, state: bytes) -> None:
        """Resume exactly where ``state`` was taken; refuse a state with another switch step."""
        saved = json.loads(state)
        if saved["switch_step"] != self.switch_step:
            raise ValueError(
                f"the checkpoint's data switches stage at step {saved['switch_step']}, this run at "
                f"step {self.switch_step}: the cooldown step is floor(fraction * TRAIN_STEPS), so "
                "resume with the same TRAIN_STEPS and cooldown fraction (pin SCHEDULE_STEPS and "
                "the fraction to grow a run)")
        self.served = saved["served"]
        _set_state(self.first, saved["first"])
        _set_state(self.second, saved["second"])

    def start_prefetch(self) -> None:
        """Called by grain's checkpoint handler after a restore; the inner iterators prefetch."""


def _state(it: Any) -> Any:
    state = it.get_state()
    return {"bytes": state.decode()} if isinstance(state, bytes) else {"json": state}


def _set_state(it: Any, state: dict) -> None:
    it.set_state(state["bytes"].encode() if "bytes" in state else state["json"])
