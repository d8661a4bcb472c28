"""Robust JSON-lines reader: bad lines are skipped, counted and logged, never fatal.

Real corpora contain a few broken records (truncated writes, stray binary,
schema drift). One bad line should not kill a multi-hour job, but it must
not go unnoticed either, so every skip is counted per reason in
:class:`ReadStats` and the first few of each reason are logged as
``file:line: reason``.

Plain, gzip (``.gz``) and zstandard (``.zst``) files are supported; plain files
can also be read in line-aligned byte ranges (:func:`iter_jsonl`) so that one
big file can be processed by several workers. The record rules
(:func:`parse_record`, :func:`check_text`) and the skip bookkeeping
(:class:`ReadStats`, :class:`SkipLog`) are shared with
:mod:`t5x_like.data.sources` for the other formats.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import json
import logging
import os
import zlib
from typing import Iterator

logger = logging.getLogger(__name__)

# Enough examples to diagnose a problem without flooding the log.
MAX_LOGGED_PER_REASON = 10
# Field names kept per record that lacks a field: enough to spot a misnamed one.
MAX_FIELDS_KEPT = 50
# Buffer for counting newlines before a byte offset: big enough for memchr speed, small in RAM.
_COUNT_CHUNK = 8 << 20


@dataclasses.dataclass
class ReadStats:
    """Counters for one or more reading passes: records read, yielded, and skipped per reason.

    Every record read is either yielded or skipped, so :attr:`accounted` holds
    after any complete pass. Plain data (picklable), so worker processes can
    return their stats to be :meth:`merge`-d.
    """

    read: int = 0
    yielded: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    # Field names of the records skipped for lacking a field, so that an error can say which
    # fields the records do have.
    fields_seen: set = dataclasses.field(default_factory=set)

    @property
    def total_skipped(self) -> int:
        """Number of records skipped, all reasons together."""
        return sum(self.skipped.values())

    @property
    def accounted(self) -> bool:
        """True iff every record read was yielded or skipped for a counted reason."""
        return self.read == self.yielded + self.total_skipped

    def merge(self, other: "ReadStats") -> "ReadStats":
        """Add ``other``'s counts to this one (e.g. per-process stats); return ``self``."""
        self.read += other.read
        self.yielded += other.yielded
        self.skipped.update(other.skipped)
        self.fields_seen |= other.fields_seen
        return self

    def as_dict(self) -> dict:
        """JSON-ready summary: ``read``, ``yielded``, ``skipped`` (by reason) and ``total_skipped``."""
        return {"read": self.read, "yielded": self.yielded, "skipped": dict(sorted(self.skipped.items())),
                "total_skipped": self.total_skipped}


class SkipLog:
    """Counts skipped records of one source into a :class:`ReadStats` and logs the first few.

    One instance per file (or shard): the first :data:`MAX_LOGGED_PER_REASON`
    skips of each reason are logged as ``location: skipping <unit>: <detail>``,
    and :meth:`finish` logs how many more there were, so a million bad lines
    cost a few log lines, not a million.
    """

    def __init__(self, source: str, stats: ReadStats, unit: str = "record"):
        """``source`` names the file in the summary; ``unit`` is ``line``, ``record``, ``file``..."""
        self.source, self.stats, self.unit = source, stats, unit
        self.logged: collections.Counter = collections.Counter()
        self.counts: collections.Counter = collections.Counter()

    def skip(self, location: str, detail: str, count: int = 1, fields=()) -> None:
        """Count ``count`` records as skipped; ``detail`` is ``"<reason> (<explanation>)"``;
        ``fields``: the field names of a record that lacks a field it needs."""
        reason = detail.split(" ", 1)[0]
        self.stats.skipped[reason] += count
        self.stats.fields_seen.update(list(fields)[:MAX_FIELDS_KEPT])
        self.counts[reason] += count
        if self.logged[reason] < MAX_LOGGED_PER_REASON:
            self.logged[reason] += 1
            logger.warning("%s: skipping %s: %s", location, self.unit, detail)

    def finish(self) -> None:
        """Log a one-line total for every reason that was skipped more often than logged."""
        for reason, count in self.counts.items():
            if count > self.logged[reason]:
                logger.warning(
                    "%s: skipped %d %ss in total for reason %s (only the first %d were logged)",
                    self.source, count, self.unit, reason, self.logged[reason],
                )


def open_binary(path: str | os.PathLike):
    """Open ``path`` for binary line reading, decompressing ``.gz`` and ``.zst`` transparently."""
    name = os.fspath(path)
    if name.endswith(".gz"):
        return gzip.open(name, "rb")
    if name.endswith(".zst"):
        import zstandard  # Imported here: only .zst inputs need it.

        # Streaming: never holds more than a buffer of the decompressed file.
        raw = zstandard.ZstdDecompressor().stream_reader(open(name, "rb"), read_across_frames=True)
        return io.BufferedReader(raw, buffer_size=1 << 20)
    return open(name, "rb")


def _stream_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean a (compressed) stream is truncated or corrupt, not a bug."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def check_text(value, role: str = "text", allow_empty: bool = False) -> tuple[str | None, str]:
    """Return ``(text, "")`` if ``value`` is usable document text, else ``(None, "<reason> (...)")``.

    ``bytes`` are decoded as UTF-8 (TFDS ``Text`` features and binary Parquet
    columns arrive as bytes). Empty and whitespace-only texts are ``empty_text``:
    they carry nothing to learn from. ``role`` names the value in the reasons
    (``null_<role>``, ``non_string_<role>``, ``empty_<role>``): ``text``, or a
    supervised record's ``targets`` and ``inputs``; ``allow_empty`` accepts an
    empty or blank string (a supervised record's inputs may be empty).
    """
    if value is None:
        return None, f"null_{role}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            return None, f"invalid_utf8 (byte offset {err.start})"
    if not isinstance(value, str):
        return None, f"non_string_{role} (got {type(value).__name__})"
    if not allow_empty and (not value or value.isspace()):
        return None, f"empty_{role}"
    return value, ""


_MISSING = object()


def check_fields(record, text_field: str,
                 inputs_field: str = "") -> tuple[str | None, str | None, str]:
    """``(text, inputs, "")`` of a usable record (a mapping), else
    ``(None, None, "<reason> (...)")``.

    A text record (``inputs_field`` empty) needs non-blank text in ``text_field``
    (``missing_text_field``, ``null_text``, ``non_string_text``, ``empty_text``)
    and gives ``inputs`` None. A supervised record names its targets by
    ``text_field`` and needs them non-blank (``missing_targets_field``,
    ``null_targets``, ``non_string_targets``, ``empty_targets``), and a string
    in ``inputs_field``, which may be empty (``missing_inputs_field``,
    ``null_inputs``, ``non_string_inputs``).
    """
    fields = ((text_field, "targets" if inputs_field else "text", False),) + (
        ((inputs_field, "inputs", True),) if inputs_field else ())
    values = []
    for field, role, allow_empty in fields:
        value = record.get(field, _MISSING)
        if value is _MISSING:
            return None, None, f"missing_{role}_field ({field!r} not in keys {sorted(record)[:8]})"
        value, detail = check_text(value, role, allow_empty)
        if value is None:
            return None, None, detail
        values.append(value)
    return values[0], (values[1] if inputs_field else None), ""


def parse_record(raw: bytes, text_field: str, inputs_field: str = "") -> tuple[dict | None, str]:
    """Return ``(record, "")`` for a usable JSON object, or ``(None, "<reason> (...)")``.

    Usable: valid UTF-8, a JSON object whose fields pass :func:`check_fields`
    (``record[text_field]`` a non-blank ``str``; with ``inputs_field``, a
    supervised record: ``record[inputs_field]`` a ``str`` too), valid Unicode.
    Used for JSONL lines and ArrayRecord records.
    """
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
    text, inputs, detail = check_fields(record, text_field, inputs_field)
    if text is None:
        return None, detail
    # A "\ud800" escape decodes to a lone surrogate that no UTF-8 encoder (tokenizer,
    # writer) accepts later; only lines containing such an escape need the check.
    if b"\\ud" in raw or b"\\uD" in raw:
        for value in (text, inputs or ""):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                return None, f"invalid_unicode (lone surrogate at character {err.start})"
    return record, ""


def count_newlines(f, stop: int) -> int:
    """Number of ``\\n`` bytes in ``f[0:stop]`` (``f`` a seekable binary file), read in chunks."""
    f.seek(0)
    buf = bytearray(_COUNT_CHUNK)
    count, pos = 0, 0
    while pos < stop:
        n = f.readinto(memoryview(buf)[: min(_COUNT_CHUNK, stop - pos)])
        if not n:
            break
        count += buf.count(b"\n", 0, n)
        pos += n
    return count


def _seek_line_start(f, start: int) -> tuple[int, int]:
    """Position ``f`` at the first line starting at or after ``start``; return (offset, line number).

    A line belongs to the range in which it starts, so a ``start`` inside a line
    skips the rest of that line (the previous range reads it).
    """
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":
            f.readline()
            start = f.tell()
    line_no = count_newlines(f, start) + 1 if start > 0 else 1
    f.seek(start)
    return start, line_no


def iter_jsonl(
    path: str | os.PathLike,
    text_field: str = "text",
    stats: ReadStats | None = None,
    *,
    start: int = 0,
    stop: int = -1,
    inputs_field: str = "",
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)`` for the usable lines of a JSONL file (1-based line numbers).

    ``inputs_field``: read supervised records, whose targets are ``text_field``
    (:func:`check_fields`).

    With ``start``/``stop`` (plain, uncompressed files only) only the lines that
    *start* in the byte range ``[start, stop)`` are read (``stop=-1``: to the
    end), so adjacent ranges partition the file; line numbers stay absolute.
    Skips follow :func:`read_jsonl`. A truncated or corrupt compressed stream
    ends the file with one ``unreadable_data`` skip instead of an exception.
    """
    stats = stats if stats is not None else ReadStats()
    name = os.fspath(path)
    skips = SkipLog(name, stats, unit="line")
    line_no = 0
    with open_binary(name) as f:
        if (start, stop) != (0, -1):
            if name.endswith((".gz", ".zst")):
                raise ValueError(f"{name}: byte ranges [{start}:{stop}] need an uncompressed file; "
                                 "read compressed files whole (start=0, stop=-1)")
            pos, first = _seek_line_start(f, start)
            line_no = first - 1
        else:
            pos = 0
        try:
            for raw in f:
                if 0 <= stop <= pos:
                    break
                line_no += 1
                pos += len(raw)
                stats.read += 1
                raw = raw.rstrip(b"\r\n")
                record, detail = (parse_record(raw, text_field, inputs_field) if raw.strip()
                                  else (None, "blank_line"))
                if record is None:
                    skips.skip(f"{name}:{line_no}", detail, fields=keys_if_missing(raw, detail))
                    continue
                stats.yielded += 1
                yield line_no, record
        except _stream_errors() as err:
            stats.read += 1
            skips.skip(f"{name}:{line_no + 1}", f"unreadable_data (rest of the file lost: {err!r})")
        finally:
            skips.finish()


def keys_if_missing(raw: bytes, detail: str) -> list[str]:
    """The keys of a record skipped for lacking a field (parsed again: such skips are rare)."""
    if not detail.startswith("missing_"):
        return []
    return sorted(json.loads(raw))


def read_jsonl(
    path: str | os.PathLike,
    text_field: str = "text",
    stats: ReadStats | None = None,
) -> Iterator[dict]:
    """Yield the records of a ``.jsonl`` / ``.jsonl.gz`` / ``.jsonl.zst`` file that have usable text.

    A record is yielded iff its line is valid UTF-8, parses as a JSON object
    and ``record[text_field]`` is a ``str`` that is not empty or whitespace
    only. Other lines (blank lines included) are skipped, counted in
    ``stats.skipped`` under a short reason key (``"malformed_json"``,
    ``"invalid_utf8"``, ``"not_an_object"``, ``"missing_text_field"``,
    ``"null_text"``, ``"non_string_text"``, ``"empty_text"``,
    ``"invalid_unicode"``, ``"blank_line"``, ``"unreadable_data"``) and logged
    with ``file:line`` (the first ``MAX_LOGGED_PER_REASON`` per reason, then a
    summary at the end).
    """
    for _, record in iter_jsonl(path, text_field, stats):
        yield record
