"""Per-format readers behind :mod:`t5x_like.data.sources` (text, Parquet, ArrayRecord, TFDS).

Each ``iter_*`` function reads one shard and yields ``(text, metadata,
location, inputs)`` records (``inputs`` None for a text task; a supervised
task's ``text`` is its targets), counting every record it reads into a
:class:`~t5x_like.data.jsonl.ReadStats` as yielded or skipped (with the
reason logged through :class:`~t5x_like.data.jsonl.SkipLog`). Heavy libraries
(pyarrow, array_record, tensorflow_datasets) are imported only by the format
that needs them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Any, Callable, Iterator, Sequence

from t5x_like.data.jsonl import (ReadStats, SkipLog, check_fields, check_text, keys_if_missing,
                                 parse_record)

logger = logging.getLogger(__name__)

Record = tuple[str, dict, str, "str | None"]  # (text, metadata, location, inputs)
# Rows per Parquet batch / records per ArrayRecord or TFDS read: bounded memory even for
# multi-MB documents, big enough to amortize per-call overhead.
_BATCH = 256
_VERSION = re.compile(r"\d+\.\d+\.\d+")


def json_scalar(value) -> tuple[bool, Any]:
    """``(True, v)`` if ``value`` is (or converts to) a JSON scalar str/int/float/bool, else ``(False, None)``.

    NumPy scalars (TFDS) become Python scalars and UTF-8 ``bytes`` become ``str``;
    ``None`` and containers are not scalars.
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar / 0-d array
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return False, None
    if isinstance(value, (str, int, float, bool)):
        return True, value
    return False, None


class MetadataPicker:
    """Selects the requested metadata fields of a record, keeping JSON scalars only.

    A missing or null field is simply absent. A field whose value is not a
    scalar (list, dict, timestamp, ...) is dropped too, with one warning per
    field per shard so schema surprises are visible without flooding the log.
    """

    def __init__(self, fields: Sequence[str]):
        """``fields``: the metadata field names to keep, in order."""
        self.fields = tuple(fields)
        self._warned: set[str] = set()

    def pick(self, get: Callable[[str], Any], location: str) -> dict:
        """Return ``{field: value}`` using ``get(field)`` (``None`` when absent)."""
        metadata = {}
        for field in self.fields:
            value = get(field)
            if value is None:
                continue
            ok, scalar = json_scalar(value)
            if ok:
                metadata[field] = scalar
            elif field not in self._warned:
                self._warned.add(field)
                logger.warning("%s: metadata field %r is a %s, not a JSON scalar; dropping it "
                               "(not logged again for this shard)", location, field, type(value).__name__)
        return metadata


def iter_text_file(path: str, metadata_fields: Sequence[str], stats: ReadStats) -> Iterator[Record]:
    """One plain-text file = one document; the only metadata field is ``path``."""
    skips = SkipLog(path, stats, unit="file")
    stats.read += 1
    with open(path, "rb") as f:
        raw = f.read()
    # A UTF-8 byte-order mark is an encoding artifact, not text.
    text, detail = check_text(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw)
    if text is None:
        skips.skip(path, detail)
        return
    stats.yielded += 1
    yield text, ({"path": path} if "path" in metadata_fields else {}), path, None


class UnreadableFile(ValueError):
    """A Parquet or ArrayRecord file that does not open (truncated, corrupt, or another format).

    Listing makes it one shard and reading that shard counts the file as ``unreadable_data``,
    as a truncated ``.gz`` is: bad input never stops a job.
    """


def _lost_file(path: str, stats: ReadStats, unit: str, err: UnreadableFile) -> None:
    """Count a file that does not open as one skipped ``unit``: it is lost whole."""
    stats.read += 1
    skips = SkipLog(path, stats, unit=unit)
    skips.skip(path, f"unreadable_data ({err}; the whole file is lost: fix it, or remove it "
               "from the source spec)")
    skips.finish()


def _open_parquet(path: str):
    """``pyarrow.parquet.ParquetFile`` for ``path``; raises UnreadableFile if it does not open."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as err:
        raise UnreadableFile(f"not a readable Parquet file: {err}") from err


def parquet_ranges(path: str, target_rows: int) -> list[tuple[int, int]]:
    """Cut a Parquet file into row ranges of about ``target_rows``, at row-group boundaries.

    Row groups are the unit Parquet decodes, so shards follow them; only a row
    group bigger than ``target_rows`` is cut inside.
    """
    metadata = _open_parquet(path).metadata
    bounds, pos = [0], 0
    for i in range(metadata.num_row_groups):
        group_start = pos
        pos += metadata.row_group(i).num_rows
        if pos - group_start > target_rows:
            if bounds[-1] != group_start:
                bounds.append(group_start)
            bounds.extend(range(group_start + target_rows, pos, target_rows))
            bounds.append(pos)
        elif pos - bounds[-1] >= target_rows:
            bounds.append(pos)
    if bounds[-1] != pos:
        bounds.append(pos)
    return list(zip(bounds, bounds[1:])) or [(0, -1)]


def _overlapping_groups(metadata, start: int, stop: int) -> tuple[list[int], int]:
    """Indices of the row groups that overlap rows ``[start, stop)``, and the first one's first row."""
    groups, row, first_row = [], 0, start
    for i in range(metadata.num_row_groups):
        n = metadata.row_group(i).num_rows
        if row < stop and row + n > start:
            first_row = row if not groups else first_row
            groups.append(i)
        row += n
    return groups, first_row


def iter_parquet(path: str, text_field: str, metadata_fields: Sequence[str], stats: ReadStats,
                 start: int = 0, stop: int = -1, inputs_field: str = "") -> Iterator[Record]:
    """Rows ``[start, stop)`` of a Parquet file, read batch by batch (never the whole file).

    ``inputs_field``: supervised rows, whose targets are ``text_field`` (``jsonl.check_fields``).
    """
    import pyarrow

    try:
        pf = _open_parquet(path)
    except UnreadableFile as err:
        _lost_file(path, stats, "file", err)
        return
    metadata = pf.metadata
    stop = metadata.num_rows if stop < 0 else min(stop, metadata.num_rows)
    skips = SkipLog(path, stats, unit="row")
    names = set(pf.schema_arrow.names)
    if stop <= start:
        return
    fields = [text_field] + ([inputs_field] if inputs_field else [])
    _, _, missing = check_fields(dict.fromkeys(names, "x"), *fields)  # only a column can fail
    if missing:
        # Schema drift between files is a data problem: count the rows, do not crash.
        absent = next(f for f in fields if f not in names)
        stats.read += stop - start
        skips.skip(f"{path}#{start}", f"{missing.split(' ', 1)[0]} ({absent!r} not in columns "
                   f"{sorted(names)[:8]}; all {stop - start} rows)", count=stop - start,
                   fields=sorted(names))
        skips.finish()
        return
    columns = fields + [f for f in dict.fromkeys(metadata_fields) if f in names and f not in fields]
    picker = MetadataPicker(metadata_fields)
    groups, row = _overlapping_groups(metadata, start, stop)
    done = start  # rows before this one are accounted for
    try:
        for batch in pf.iter_batches(batch_size=_BATCH, row_groups=groups, columns=columns, use_threads=False):
            lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
            if lo < hi:
                values = {c: batch.column(c).slice(lo, hi - lo).to_pylist() for c in columns}
                for j in range(hi - lo):
                    location = f"{path}#{row + lo + j}"
                    stats.read += 1
                    done = row + lo + j + 1
                    text, inputs, detail = check_fields({f: values[f][j] for f in fields}, *fields)
                    if text is None:
                        skips.skip(location, detail)
                        continue
                    stats.yielded += 1
                    get = lambda f: values[f][j] if f in values else None  # noqa: E731
                    yield text, picker.pick(get, location), location, inputs
            row += batch.num_rows
            if row >= stop:
                break
    except (pyarrow.ArrowException, OSError) as err:
        if stop > done:
            stats.read += stop - done
            skips.skip(f"{path}#{done}", f"unreadable_data (rows {done}:{stop} lost: {err})", count=stop - done)
    finally:
        skips.finish()


def _array_record_reader(path: str):
    """An ``ArrayRecordReader`` for sequential reading; raises UnreadableFile if it does not open."""
    from array_record.python.array_record_module import ArrayRecordReader

    try:
        reader = ArrayRecordReader(path)
        if reader.ok():
            return reader
        reader.close()  # A reader that is not ok() reports its error on close.
        detail = "reader not ok"
    except (RuntimeError, ValueError, OSError) as err:
        detail = str(err)
    raise UnreadableFile(f"not a readable ArrayRecord file: {detail}")


def array_record_count(path: str) -> int:
    """Number of records in an ArrayRecord file."""
    reader = _array_record_reader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def iter_array_record(path: str, text_field: str, metadata_fields: Sequence[str], stats: ReadStats,
                      start: int = 0, stop: int = -1, inputs_field: str = "") -> Iterator[Record]:
    """Records ``[start, stop)`` of an ArrayRecord file of UTF-8 JSON objects (JSONL record rules,
    supervised ones with ``inputs_field``)."""
    try:
        reader = _array_record_reader(path)
    except UnreadableFile as err:
        _lost_file(path, stats, "file", err)
        return
    stop = reader.num_records() if stop < 0 else min(stop, reader.num_records())
    skips = SkipLog(path, stats, unit="record")
    picker = MetadataPicker(metadata_fields)
    try:
        for lo in range(start, stop, _BATCH):
            hi = min(lo + _BATCH, stop)
            for index, raw in zip(range(lo, hi), _read_records(reader, lo, hi)):
                location = f"{path}#{index}"
                stats.read += 1
                if isinstance(raw, Exception):
                    record, detail = None, f"unreadable_data ({raw})"
                else:
                    record, detail = parse_record(raw, text_field, inputs_field)
                if record is None:
                    skips.skip(location, detail, fields=keys_if_missing(raw, detail))
                    continue
                stats.yielded += 1
                yield (record[text_field], picker.pick(record.get, location), location,
                       record[inputs_field] if inputs_field else None)
    finally:
        reader.close()
        skips.finish()


def _read_records(reader, lo: int, hi: int) -> list:
    """Records ``[lo, hi)``; on a read error, retry one by one so one bad chunk costs only its records."""
    try:
        return reader.read(lo, hi)
    except (RuntimeError, ValueError, OSError):  # what the C++ reader raises on corrupt data
        records = []
        for i in range(lo, hi):
            try:
                records.append(reader.read([i])[0])
            except (RuntimeError, ValueError, OSError) as err:
                records.append(err)
        return records


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """Split ``'tfds:NAME[/CONFIG][:VERSION]:SPLIT'`` into ``('NAME[/CONFIG][:VERSION]', 'SPLIT')``.

    The split may use TFDS slicing (``train[:10%]``), whose colons stay in the split.
    """
    if not spec.startswith("tfds:"):
        raise ValueError(f"{spec!r} is not a tfds spec; expected 'tfds:NAME[/CONFIG][:VERSION]:SPLIT'")
    name, *rest = spec[len("tfds:"):].split(":")
    version = rest.pop(0) if rest and _VERSION.fullmatch(rest[0]) else ""
    split = ":".join(rest)
    if not name or not split:
        raise ValueError(f"{spec!r} names no dataset or no split; expected "
                         "'tfds:NAME[/CONFIG][:VERSION]:SPLIT', e.g. 'tfds:t5x_like_stdlib:train'")
    return name + (f":{version}" if version else ""), split


def _tfds_dir(data_dir: str | os.PathLike | None) -> str:
    """``<data_dir>/tfds`` as a string."""
    from t5x_like.data import stdlib_tfds  # Also registers the t5x_like_stdlib builder.

    return os.fspath(stdlib_tfds.tfds_data_dir(data_dir))


def tfds_num_examples(ref: str, split: str, data_dir: str | os.PathLike | None) -> int:
    """Examples in ``split`` of the prepared TFDS dataset ``ref``, found in ``<data_dir>/tfds``.

    ``t5x_like_stdlib`` (default config) is built on demand; other datasets must
    already be prepared there: this never downloads.
    """
    import tensorflow_datasets as tfds

    from t5x_like.data import stdlib_tfds

    tfds_dir = _tfds_dir(data_dir)
    if ref.split(":")[0] in (stdlib_tfds.NAME, f"{stdlib_tfds.NAME}/{stdlib_tfds.default_config_name()}"):
        stdlib_tfds.build_stdlib_tfds(data_dir)
    try:
        builder = tfds.builder(ref, data_dir=tfds_dir, try_gcs=False)
    # TFDS reports an unavailable version with an AssertionError.
    except (tfds.core.registered.DatasetNotFoundError, AssertionError) as err:
        reason = str(err).splitlines()[0]
        raise FileNotFoundError(f"tfds dataset {ref!r} not found in {tfds_dir} ({reason}); prepare it "
                                "there first, or pass the data_dir whose tfds/ holds it") from err
    if not builder.is_prepared():
        raise FileNotFoundError(f"tfds dataset {ref!r} is not prepared in {tfds_dir}; prepare it there "
                                "first (sources never download)")
    return builder.info.splits[split].num_examples


@functools.lru_cache(maxsize=8)
def _tfds_source(ref: str, split: str, tfds_dir: str):
    """Random-access data source of a prepared TFDS split (cached: shards of one split share it)."""
    import tensorflow_datasets as tfds

    return tfds.data_source(ref, split=split, data_dir=tfds_dir, download=False)


def iter_tfds(ref: str, split: str, text_field: str, metadata_fields: Sequence[str], stats: ReadStats,
              start: int = 0, stop: int = -1, data_dir: str | os.PathLike | None = None,
              inputs_field: str = "") -> Iterator[Record]:
    """Examples ``[start, stop)`` of a TFDS split via ``tfds.data_source`` (no TensorFlow needed);
    supervised ones with ``inputs_field`` (its targets are ``text_field``)."""
    source = _tfds_source(ref, split, _tfds_dir(data_dir))
    stop = len(source) if stop < 0 else min(stop, len(source))
    label = f"tfds:{ref}:{split}"
    skips = SkipLog(label, stats, unit="example")
    picker = MetadataPicker(metadata_fields)
    try:
        for lo in range(start, stop, _BATCH):
            indices = list(range(lo, min(lo + _BATCH, stop)))
            for index, example in zip(indices, source.__getitems__(indices)):
                for field, role in ((text_field, "targets_field" if inputs_field else "text_field"),
                                    (inputs_field, "inputs_field")):
                    if field and field not in example:
                        # Every example has the same features: a wrong argument, not bad data.
                        raise ValueError(f"{label}: no feature {field!r}; its features are "
                                         f"{sorted(example)}; pass one of them as {role}")
                location = f"{label}#{index}"
                stats.read += 1
                text, inputs, detail = check_fields(example, text_field, inputs_field)
                if text is None:
                    skips.skip(location, detail)
                    continue
                stats.yielded += 1
                yield text, picker.pick(example.get, location), location, inputs
    finally:
        skips.finish()
