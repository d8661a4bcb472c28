"""Robust JSON-lines reader: bad lines are skipped, counted and logged, never fatal.

Real corpora contain a few broken records (truncated writes, stray binary,
schema drift). One bad line should not kill a multi-hour job, but it must
not go unnoticed either, so every skip is counted per reason in
:class:`ReadStats` and the first few of each reason are logged as
``file:line: reason``.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
from typing import Iterator

logger = logging.getLogger(__name__)

# Enough examples to diagnose a problem without flooding the log.
MAX_LOGGED_PER_REASON = 10


@dataclasses.dataclass
class ReadStats:
    """Counters for one or more :func:`read_jsonl` passes."""

    read: int = 0
    yielded: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def total_skipped(self) -> int:
        """Number of lines skipped, all reasons together."""
        return sum(self.skipped.values())


def _open_binary(path: str | os.PathLike):
    """Open ``path`` for binary reading, transparently un-gzipping ``.gz`` files."""
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _parse_line(raw: bytes, text_field: str) -> tuple[dict | None, str]:
    """Return ``(record, "")`` for a good line, or ``(None, reason)`` for a bad one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"invalid_utf8 (byte offset {err.start})"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return None, f"malformed_json ({err.msg} at column {err.colno})"
    if not isinstance(record, dict):
        return None, f"not_an_object (got {type(record).__name__})"
    if text_field not in record:
        return None, f"missing_text_field ({text_field!r} not in keys {sorted(record)[:5]})"
    text = record[text_field]
    if not isinstance(text, str):
        return None, f"non_string_text ({text_field!r} is {type(text).__name__})"
    if not text:
        return None, "empty_text"
    return record, ""


def read_jsonl(
    path: str | os.PathLike,
    text_field: str = "text",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """Yield the records of a ``.jsonl`` / ``.jsonl.gz`` file that have usable text.

    A record is yielded iff its line is valid UTF-8, parses as a JSON object
    and ``record[text_field]`` is a non-empty ``str``. Other lines (blank
    lines included) are skipped, counted in ``stats.skipped`` under a short
    reason key (``"malformed_json"``, ``"invalid_utf8"``, ``"not_an_object"``,
    ``"missing_text_field"``, ``"non_string_text"``, ``"empty_text"``,
    ``"blank_line"``) and logged with ``file:line`` (the first
    ``MAX_LOGGED_PER_REASON`` per reason, then a summary at the end).
    """
    stats = stats if stats is not None else ReadStats()
    logged: collections.Counter = collections.Counter()
    file_skipped: collections.Counter = collections.Counter()
    with _open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            stats.read += 1
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                record, detail = None, "blank_line"
            else:
                record, detail = _parse_line(raw, text_field)
            if record is None:
                reason = detail.split(" ", 1)[0]
                stats.skipped[reason] += 1
                file_skipped[reason] += 1
                if logged[reason] < MAX_LOGGED_PER_REASON:
                    logged[reason] += 1
                    logger.warning("%s:%d: skipping line: %s", os.fspath(path), line_no, detail)
                continue
            stats.yielded += 1
            yield record
    for reason, count in file_skipped.items():
        if count > logged[reason]:
            logger.warning(
                "%s: skipped %d lines in total for reason %s (only the first %d were logged)",
                os.fspath(path), count, reason, logged[reason],
            )
