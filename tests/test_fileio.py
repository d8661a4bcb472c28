"""Writes a SIGKILL cannot leave half done, and the JSONL log's reader and truncation.

The kill tests run the real function in a subprocess on a file of tens of MB, which widens the
window to a sizeable fraction of a second, and SIGKILL it at several points: whichever instant
the kill lands at, the file must hold the old content or the new, never less.
"""

import json
import pathlib
import subprocess
import sys
import time

import pytest

from t5x_like import fileio

REPO = pathlib.Path(__file__).resolve().parents[1]
KILL_DELAYS_S = (0.0, 0.05, 0.15, 0.4)
KILL_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.85, 0.95)


def _killed_at(delay_s: float | None, program: str, *args: str) -> float:
    """Run `program` (which prints "ready" once imports are done) and SIGKILL it `delay_s`
    after it is ready, or let it finish if None; returns the seconds from ready to the end."""
    proc = subprocess.Popen([sys.executable, "-c", program, *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        ready = time.perf_counter()
        if delay_s is None:
            assert proc.wait() == 0
        else:
            time.sleep(delay_s)
        return time.perf_counter() - ready
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- atomic_write_text

def test_atomic_write_text_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.gin"
    path.write_text("old")
    fileio.atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.gin"]


def test_atomic_writer_that_raises_keeps_the_old_file(tmp_path):
    path = tmp_path / "plan.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with fileio.atomic_writer(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("mid-write")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.npz"]


_REWRITE_FOREVER = """
import sys
from t5x_like import fileio
path, texts = sys.argv[1], ("a" * 8_000_000, "b" * 9_000_000)
print("ready", flush=True)
for i in range(10**9):
    fileio.atomic_write_text(path, texts[i % 2])
"""


def test_atomic_write_text_killed_mid_write_leaves_old_or_new(tmp_path):
    path = tmp_path / "config.gin"
    path.write_text("a" * 8_000_000)
    for delay in KILL_DELAYS_S:
        _killed_at(delay, _REWRITE_FOREVER, str(path))
        assert path.read_text() in ("a" * 8_000_000, "b" * 9_000_000)


# ---------------------------------------------------------------- the JSONL log

def _log(path, steps, pad=0) -> list[bytes]:
    lines = [(json.dumps({"step": s, "loss": 1.0 / (i + 1), "pad": "x" * pad}) + "\n").encode()
             for i, s in enumerate(steps)]
    path.write_bytes(b"".join(lines))
    return lines


def test_jsonl_rows_skips_blank_lines_and_yields_offsets(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n\n{"step": 1}\n')
    assert list(fileio.jsonl_rows(path)) == [(0, {"step": 0}), (13, {"step": 1})]


def test_torn_last_line_is_yielded_as_none(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1, "lo')
    assert list(fileio.jsonl_rows(path)) == [(0, {"step": 0}), (12, None)]


@pytest.mark.parametrize("bad", [b'{"step": 1, "lo\n', b"[1, 2]\n"])
def test_malformed_middle_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n' + bad + b'{"step": 2}\n')
    with pytest.raises(fileio.LogFileError, match=r"metrics.jsonl, line 2 \(byte 12\) is not a "
                                                  r"JSON object .* Fix or delete that line"):
        list(fileio.jsonl_rows(path))


def test_truncate_cuts_the_tail_and_keeps_the_rest_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _log(path, [0, 1, 2, 3, 4])
    assert fileio.truncate_jsonl(path, lambda r: r["step"] > 2) == 2
    assert path.read_bytes() == b"".join(lines[:3])


def test_truncate_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _log(path, [0, 1])
    path.write_bytes(b"".join(lines) + b'{"step": 2, "lo')
    assert fileio.truncate_jsonl(path, lambda r: r["step"] > 5) == 0
    assert path.read_bytes() == b"".join(lines)


def test_truncate_with_nothing_to_drop_leaves_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _log(path, [0, 1])
    before = path.stat()
    assert fileio.truncate_jsonl(path, lambda r: r["step"] > 5) == 0
    assert path.read_bytes() == b"".join(lines)
    assert path.stat().st_ino == before.st_ino


def test_truncate_rewrites_when_a_kept_row_follows_a_dropped_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = _log(path, [0, 3, 1, 4, 2])
    assert fileio.truncate_jsonl(path, lambda r: r["step"] > 2) == 2
    assert path.read_bytes() == lines[0] + lines[2] + lines[4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


_TRUNCATE = """
import sys
from t5x_like import fileio
print("ready", flush=True)
fileio.truncate_jsonl(sys.argv[1], lambda row: row["step"] > 2)
"""


@pytest.mark.parametrize("redone", [[3, 4, 5], [3, 1, 4]], ids=["tail", "interleaved"])
def test_truncate_killed_at_any_moment_keeps_every_checkpointed_row(tmp_path, redone):
    """The issue's run: a long history at steps <= 2 (checkpointed), then steps being redone;
    "interleaved" puts a kept row among them, which takes the rewrite path."""
    path = tmp_path / "metrics.jsonl"
    steps = [i * 3 // 60_000 for i in range(60_000)] + redone
    lines = _log(path, steps, pad=400)  # about 26 MB
    before = b"".join(lines)
    after = b"".join(line for line, step in zip(lines, steps) if step <= 2)
    # Kills spread over the time one uninterrupted truncation takes on this machine.
    duration = _killed_at(None, _TRUNCATE, str(path))
    for fraction in KILL_FRACTIONS:
        path.write_bytes(before)
        _killed_at(fraction * duration, _TRUNCATE, str(path))
        assert path.read_bytes() in (before, after)
    fileio.truncate_jsonl(path, lambda row: row["step"] > 2)  # the relaunch after the kill
    assert path.read_bytes() == after
