"""metrics.jsonl: what a relaunch drops, and reading a log a kill or a power loss left torn."""

import json

import pytest

from t5x_like import fileio, metrics


def _write(model_dir, rows, tail=b""):
    lines = [(json.dumps(r) + "\n").encode() for r in rows]
    (model_dir / "metrics.jsonl").write_bytes(b"".join(lines) + tail)
    return lines


EVAL0 = {"step": 0, "eval_loss": 5.0}


def test_relaunch_from_a_checkpoint_keeps_its_step_and_drops_later_ones(tmp_path):
    rows = [EVAL0, {"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.0},
            {"step": 2, "eval_loss": 3.5}, {"step": 3, "loss": 2.0}]
    lines = _write(tmp_path, rows)
    assert metrics.drop_rows_to_redo(str(tmp_path), 2) == 1
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"".join(lines[:4])


def test_relaunch_before_the_first_checkpoint_drops_the_step0_eval_it_writes_again(tmp_path):
    _write(tmp_path, [EVAL0, {"step": 1, "loss": 4.0}, EVAL0])
    assert metrics.drop_rows_to_redo(str(tmp_path), 0) == 3
    assert metrics.read_metrics(str(tmp_path)) == []


def test_no_log_yet_is_nothing_to_drop(tmp_path):
    assert metrics.drop_rows_to_redo(str(tmp_path), 0) == 0
    assert metrics.read_metrics(str(tmp_path)) == []


def test_a_torn_last_line_is_dropped_by_the_reader_and_the_relaunch(tmp_path):
    lines = _write(tmp_path, [EVAL0, {"step": 1, "loss": 4.0}], tail=b'{"step": 2, "lo')
    assert metrics.read_metrics(str(tmp_path)) == [EVAL0, {"step": 1, "loss": 4.0}]
    metrics.drop_rows_to_redo(str(tmp_path), 1)
    assert (tmp_path / "metrics.jsonl").read_bytes() == b"".join(lines)


def test_a_malformed_middle_line_stops_the_relaunch_naming_file_and_line(tmp_path):
    _write(tmp_path, [EVAL0], tail=b'{"step": 1, "lo\n{"step": 2, "loss": 3.0}\n')
    with pytest.raises(fileio.LogFileError, match=r"metrics.jsonl, line 2 .* Fix or delete"):
        metrics.drop_rows_to_redo(str(tmp_path), 1)


def test_writer_appends_whole_lines_after_a_dropped_torn_line(tmp_path):
    _write(tmp_path, [EVAL0], tail=b'{"step": 1, "lo')
    metrics.drop_rows_to_redo(str(tmp_path), 1)
    writer = metrics.MetricsWriter(str(tmp_path))
    try:
        writer.write(1, {"loss": 4.0})
    finally:
        writer.close()
    assert metrics.read_metrics(str(tmp_path)) == [EVAL0, {"step": 1, "loss": 4.0}]
