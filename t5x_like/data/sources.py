"""Uniform document sources: JSONL (plain/.gz/.zst), text files, Parquet, ArrayRecord, TFDS.

A source *spec* names files or a TFDS split::

    data/stdlib/train.jsonl                 one file; the extension picks the format
    corpus/*.jsonl.zst,extra/*.parquet      comma-separated globs (sorted within each)
    tfds:t5x_like_stdlib:train              'tfds:NAME[/CONFIG][:VERSION]:SPLIT'

:func:`list_shards` cuts a spec into :class:`SourceShard` s, independently
readable units (line-aligned byte ranges of big plain JSONL files, row ranges
of Parquet / ArrayRecord / TFDS, whole compressed or text files), so that
``prepare`` can read them in parallel processes. :func:`read_documents` yields
a shard's :class:`Document` s. Reading all shards of a spec in order yields
exactly the documents of reading the whole spec in file order.

Bad input never crashes and never silently vanishes: every record read is
either yielded or counted in :class:`ReadStats` under a reason, and the first
few per reason and file are logged as ``location: skipping <unit>: reason``.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Iterator, Sequence

from t5x_like.data import jsonl, source_formats

# One class for all readers, so JSONL-only callers and source callers can merge stats.
ReadStats = jsonl.ReadStats

FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "text", "parquet", "array_record", "tfds")
_ROW_FORMATS = ("parquet", "array_record", "tfds")
# Longest suffix first: ".jsonl.gz" must win over ".gz".
_SUFFIXES = (
    (".jsonl.gz", "jsonl.gz"), (".json.gz", "jsonl.gz"), (".ndjson.gz", "jsonl.gz"),
    (".jsonl.zst", "jsonl.zst"), (".json.zst", "jsonl.zst"), (".ndjson.zst", "jsonl.zst"),
    (".jsonl", "jsonl"), (".json", "jsonl"), (".ndjson", "jsonl"),
    (".txt", "text"), (".text", "text"),
    (".parquet", "parquet"),
    (".array_record", "array_record"),
)
# TFDS-style shard names: 'x.array_record-00000-of-00004'; bare 'x-00000-of-00004' is ArrayRecord.
_SHARD_SUFFIX = re.compile(r"-\d+-of-\d+$")
ACCEPTED = ("*.jsonl / *.json / *.ndjson (JSON lines, optionally .gz or .zst), *.txt / *.text, "
            "*.parquet, *.array_record and *-NNNNN-of-NNNNN ArrayRecord shards, or "
            "'tfds:NAME[/CONFIG][:VERSION]:SPLIT'")


@dataclasses.dataclass(frozen=True)
class SourceShard:
    """An independently readable part of a source.

    ``start``/``stop`` are byte offsets for plain JSONL (a line belongs to the
    shard in which it starts) and row/record indices for Parquet, ArrayRecord
    and TFDS; ``stop=-1`` means to the end. ``split`` is the TFDS split.
    """

    path: str  # file path, or 'tfds:NAME[/CONFIG][:VERSION]'
    format: str  # one of FORMATS
    start: int = 0
    stop: int = -1
    split: str = ""

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"SourceShard format {self.format!r} for {self.path!r} is not one of {FORMATS}")

    @property
    def label(self) -> str:
        """Short name for logs, e.g. ``train.jsonl[bytes 0:67108864]`` or ``tfds:x:train[rows 0:50000]``."""
        base = f"{self.path}:{self.split}" if self.format == "tfds" else os.path.basename(self.path)
        if (self.start, self.stop) == (0, -1):
            return base
        unit = "rows" if self.format in _ROW_FORMATS else "bytes"
        return f"{base}[{unit} {self.start}:{'' if self.stop < 0 else self.stop}]"


@dataclasses.dataclass(frozen=True)
class Document:
    """One document: its text, the requested metadata fields present, and where it came from.

    ``location`` is ``path:line`` (JSONL), ``path`` (text), ``path#row``
    (Parquet, ArrayRecord) or ``tfds:name:split#index``. A supervised record
    (read with ``inputs_field``) has its targets as ``text`` and its inputs
    (possibly empty) as ``inputs``; a text document has ``inputs`` None.
    """

    text: str
    metadata: dict
    location: str
    inputs: str | None = None


def detect_format(path: str) -> str:
    """The format of a file from its name (see :data:`ACCEPTED`); unknown names raise ValueError."""
    name = os.path.basename(path).lower()
    shard = _SHARD_SUFFIX.search(name)
    if shard:
        name = name[: shard.start()]
        if "." not in name:
            return "array_record"
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unknown file type; accepted: {ACCEPTED}")


def _expand(part: str, spec: str) -> list[str]:
    """Files named by one path or glob of ``spec`` (a glob's matches sorted); no match raises."""
    if glob.has_magic(part):
        paths = sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
    else:
        paths = [part] if os.path.isfile(part) else []
    if os.path.isdir(part):
        raise FileNotFoundError(f"{part!r} in source spec {spec!r} is a directory; name its files, "
                                f"e.g. {os.path.join(part, '*.jsonl')!r}")
    if not paths:
        where = "" if part == spec else f" (its part {part!r})"
        raise FileNotFoundError(f"source spec {spec!r}{where} matches no file; accepted: {ACCEPTED}")
    return paths


def _row_ranges(n: int, target_rows: int) -> list[tuple[int, int]]:
    """``[0, n)`` in ranges of ``target_rows``; an empty source is one empty shard."""
    return [(a, min(a + target_rows, n)) for a in range(0, n, target_rows)] or [(0, -1)]


def _file_ranges(path: str, fmt: str, target_bytes: int, target_rows: int
                 ) -> list[tuple[int, int]]:
    """The shards of one file; a Parquet or ArrayRecord file that does not open is one shard,
    which reading counts as unreadable_data."""
    try:
        if fmt == "jsonl":
            return _jsonl_ranges(path, target_bytes)
        if fmt == "parquet":
            return source_formats.parquet_ranges(path, target_rows)
        if fmt == "array_record":
            return _row_ranges(source_formats.array_record_count(path), target_rows)
    except source_formats.UnreadableFile:
        pass
    return [(0, -1)]


def _jsonl_ranges(path: str, target_bytes: int) -> list[tuple[int, int]]:
    """Line-aligned byte ranges of about ``target_bytes``; the last one runs to the end (-1)."""
    size = os.path.getsize(path)
    starts = [0]
    with open(path, "rb") as f:
        while starts[-1] + target_bytes < size:
            # The next line start at or after the target cut: skip to just past a newline.
            f.seek(starts[-1] + target_bytes - 1)
            f.readline()
            if f.tell() >= size:
                break
            starts.append(f.tell())
    return list(zip(starts, starts[1:] + [-1]))


def list_shards(
    spec: str,
    *,
    data_dir: str | os.PathLike | None = None,
    target_shard_bytes: int = 64 << 20,
    target_shard_rows: int = 50_000,
) -> list[SourceShard]:
    """Cut a source spec into independently readable shards, in a deterministic order.

    ``spec``: a comma-separated list of paths, globs (matches sorted) and
    ``'tfds:NAME[/CONFIG][:VERSION]:SPLIT'`` references (TFDS datasets live in
    ``<data_dir>/tfds``; ``t5x_like_stdlib`` is built there on demand). Plain
    JSONL files are cut into line-aligned byte ranges of about
    ``target_shard_bytes``; Parquet, ArrayRecord and TFDS into row ranges of
    about ``target_shard_rows``; compressed JSONL and text files are one shard
    each. Raises FileNotFoundError if any part of the spec matches nothing and
    ValueError for a file of unknown type.
    """
    if target_shard_bytes <= 0 or target_shard_rows <= 0:
        raise ValueError(f"target_shard_bytes ({target_shard_bytes}) and target_shard_rows "
                         f"({target_shard_rows}) must be positive")
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise FileNotFoundError(f"source spec {spec!r} is empty; accepted: {ACCEPTED}")
    shards: list[SourceShard] = []
    for part in parts:
        if part.startswith("tfds:"):
            ref, split = source_formats.parse_tfds_spec(part)
            n = source_formats.tfds_num_examples(ref, split, data_dir)
            shards.extend(SourceShard(f"tfds:{ref}", "tfds", a, b, split) for a, b in _row_ranges(n, target_shard_rows))
            continue
        paths = _expand(part, spec)
        formats = [detect_format(p) for p in paths]  # every name checked before any file is opened
        for path, fmt in zip(paths, formats):
            shards.extend(SourceShard(path, fmt, a, b)
                          for a, b in _file_ranges(path, fmt, target_shard_bytes, target_shard_rows))
    return shards


def read_documents(
    shard: SourceShard,
    *,
    text_field: str = "text",
    metadata_fields: Sequence[str] = (),
    stats: ReadStats | None = None,
    data_dir: str | os.PathLike | None = None,
    inputs_field: str = "",
) -> Iterator[Document]:
    """Yield the usable documents of one shard, in order.

    ``text_field`` names the text (JSON key, Parquet column, TFDS feature;
    ignored for text files). With ``inputs_field``, records are supervised
    (inputs, targets) pairs whose targets are ``text_field``
    (``jsonl.check_fields`` has the rules). ``metadata_fields`` are copied into
    ``Document.metadata`` when present with a JSON scalar value (text files
    offer ``path``). Every record read is counted in ``stats`` as yielded or
    skipped by reason; ``data_dir`` locates TFDS datasets as in
    :func:`list_shards`.
    """
    stats = stats if stats is not None else ReadStats()
    fmt, path = shard.format, shard.path
    if fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        picker = source_formats.MetadataPicker(metadata_fields)
        for line_no, record in jsonl.iter_jsonl(path, text_field, stats, start=shard.start,
                                                stop=shard.stop, inputs_field=inputs_field):
            location = f"{path}:{line_no}"
            yield Document(record[text_field], picker.pick(record.get, location), location,
                           record[inputs_field] if inputs_field else None)
        return
    if fmt == "text":
        if inputs_field:
            raise ValueError(f"{path}: a text file is one document without fields; a supervised "
                             f"task (inputs_field {inputs_field!r}) reads JSONL, Parquet, "
                             "ArrayRecord or TFDS records")
        records = source_formats.iter_text_file(path, metadata_fields, stats)
    elif fmt == "parquet":
        records = source_formats.iter_parquet(path, text_field, metadata_fields, stats, shard.start,
                                              shard.stop, inputs_field)
    elif fmt == "array_record":
        records = source_formats.iter_array_record(path, text_field, metadata_fields, stats,
                                                   shard.start, shard.stop, inputs_field)
    else:
        ref = path[len("tfds:"):] if path.startswith("tfds:") else path
        records = source_formats.iter_tfds(ref, shard.split, text_field, metadata_fields, stats,
                                           shard.start, shard.stop, data_dir, inputs_field)
    for text, metadata, location, inputs in records:
        yield Document(text, metadata, location, inputs)


def read_spec(spec: str, **kwargs) -> Iterator[Document]:
    """All documents of a spec, shard after shard (``kwargs`` go to :func:`read_documents`)."""
    data_dir = kwargs.get("data_dir")
    for shard in list_shards(spec, data_dir=data_dir):
        yield from read_documents(shard, **kwargs)
