"""The step-switched iterator behind MeCo's cooldown: exact switch, exact resume."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from t5x_like.data import pipeline
from t5x_like.data.stages import StagedIterator

SWITCH = 7


def _rows(stage: int) -> pipeline.ArrayRows:
    ids = np.arange(40, dtype=np.int32)[:, None] * np.ones((1, 4), np.int32)
    return pipeline.ArrayRows({"row": ids, "stage": np.full((40, 4), stage, np.int32)})


def _staged(switch=SWITCH):
    make = lambda stage: pipeline.make_train_iterator([_rows(stage)], global_batch_size=2,  # noqa: E731
                                                      seed=stage, prefetch=0)
    return StagedIterator(make(1), make(2), switch)


def _stream(it, n):
    return [(int(b["stage"][0, 0]), b["row"][:, 0].tolist()) for b in (next(it) for _ in range(n))]


def test_switches_at_exactly_the_step():
    stages = [s for s, _ in _stream(_staged(), 12)]
    assert stages == [1] * (SWITCH - 1) + [2] * (12 - SWITCH + 1)  # step 7 is the first cooldown step
    with pytest.raises(ValueError, match="switch_step = 0"):
        StagedIterator(iter([]), iter([]), 0)


@pytest.mark.parametrize("stop", [3, SWITCH - 1, SWITCH, SWITCH + 3])
def test_resume_before_at_and_after_the_switch(stop, tmp_path):
    reference = _stream(_staged(), 14)
    it = _staged()
    _stream(it, stop)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(stop, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    fresh = _staged()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(stop, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert _stream(fresh, 14 - stop) == reference[stop:]


def test_a_state_with_another_switch_step_is_refused():
    it = _staged()
    _stream(it, 2)
    with pytest.raises(ValueError, match="switches stage at step 7, this run at step 9"):
        _staged(switch=9).set_state(it.get_state())


def test_the_second_stage_can_name_other_tasks():
    make = lambda stage: pipeline.make_train_iterator([_rows(stage)], global_batch_size=2,  # noqa: E731
                                                      seed=stage, prefetch=0)
    it = StagedIterator(make(1), make(2), 3, second_source_offset=1)
    sources = [b["_source"].tolist() for b in (next(it) for _ in range(4))]
    assert sources == [[0, 0]] * 2 + [[1, 1]] * 2  # step 3 is the second stage's first
