"""Tests for the uniform document-source layer (every format, sharding, bad input)."""

import gzip
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from array_record.python.array_record_module import ArrayRecordWriter

from t5x_like.data import jsonl, sources

RECORDS = [
    {"text": "first document\nwith two lines", "id": 1, "lang": "en", "score": 0.5},
    {"text": "second \u00e9\u4e2d\U0001f600", "id": 2, "ok": True},
    {"text": "third", "id": 3, "tags": ["a", "b"]},  # a list: not a JSON scalar, dropped
]


def _jsonl_bytes(records) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def _read_all(spec, **kwargs):
    """(documents, stats) of a whole spec, shard after shard."""
    stats = sources.ReadStats()
    shard_kwargs = {k: kwargs.pop(k) for k in ("target_shard_bytes", "target_shard_rows") if k in kwargs}
    docs = [d for shard in sources.list_shards(spec, data_dir=kwargs.get("data_dir"), **shard_kwargs)
            for d in sources.read_documents(shard, stats=stats, **kwargs)]
    return docs, stats


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_round_trip_with_metadata(tmp_path, suffix):
    data = _jsonl_bytes(RECORDS)
    path = tmp_path / f"corpus{suffix}"
    if suffix.endswith(".gz"):
        data = gzip.compress(data)
    elif suffix.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    shards = sources.list_shards(str(path))
    assert [s.format for s in shards] == [{"jsonl.gz": "jsonl.gz", "jsonl.zst": "jsonl.zst"}.get(
        suffix[1:], "jsonl")]
    docs, stats = _read_all(str(path), metadata_fields=("id", "ok", "tags", "absent"))
    assert [d.text for d in docs] == [r["text"] for r in RECORDS]
    assert [d.metadata for d in docs] == [{"id": 1}, {"id": 2, "ok": True}, {"id": 3}]
    assert [d.location for d in docs] == [f"{path}:{i}" for i in (1, 2, 3)]
    assert stats.as_dict() == {"read": 3, "yielded": 3, "skipped": {}, "total_skipped": 0}
    assert list(sources.read_spec(str(path), metadata_fields=("id", "ok", "tags", "absent"))) == docs


def test_text_files(tmp_path, caplog):
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello\nworld\n")  # BOM stripped
    (tmp_path / "b.text").write_text("  \n\t")  # whitespace only
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")  # Latin-1: not UTF-8
    (tmp_path / "d.txt").write_text("x" * 10)
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(f"{tmp_path}/*.txt,{tmp_path}/*.text", metadata_fields=("path", "other"))
    assert [(d.text, d.metadata, d.location) for d in docs] == [
        ("hello\nworld\n", {"path": f"{tmp_path}/a.txt"}, f"{tmp_path}/a.txt"),
        ("x" * 10, {"path": f"{tmp_path}/d.txt"}, f"{tmp_path}/d.txt"),
    ]
    assert dict(stats.skipped) == {"invalid_utf8": 1, "empty_text": 1} and stats.accounted
    assert f"{tmp_path}/c.txt: skipping file: invalid_utf8" in caplog.text


def test_parquet_row_groups_nulls_and_shards(tmp_path, caplog):
    texts = [f"row {i}" for i in range(10)]
    texts[4] = None  # null text
    texts[7] = "   "  # whitespace only
    table = pa.table({
        "content": texts,
        "n": list(range(10)),
        "w": [float(i) / 2 for i in range(10)],
        "label": ["x", None] * 5,  # null metadata: absent
        "vec": [[i] for i in range(10)],  # a list: dropped
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=3)  # groups: 0-3, 3-6, 6-9, 9-10
    shards = sources.list_shards(str(path), target_shard_rows=4)
    assert [(s.start, s.stop) for s in shards] == [(0, 6), (6, 10)]  # cut at row-group boundaries
    assert shards[0].label == "t.parquet[rows 0:6]"
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path), text_field="content", metadata_fields=("n", "w", "label", "vec", "gone"),
                                target_shard_rows=4)
    whole, whole_stats = _read_all(str(path), text_field="content", metadata_fields=("n", "w", "label", "vec"))
    assert docs == whole and stats == whole_stats
    assert [d.text for d in docs] == [t for t in texts if t and t.strip()]
    assert docs[0].metadata == {"n": 0, "w": 0.0, "label": "x"}
    assert docs[1].metadata == {"n": 1, "w": 0.5}
    assert [d.location for d in docs][:5] == [f"{path}#{i}" for i in (0, 1, 2, 3, 5)]
    assert (stats.read, stats.yielded, dict(stats.skipped)) == (10, 8, {"null_text": 1, "empty_text": 1})
    assert f"{path}#4: skipping row: null_text" in caplog.text
    assert "metadata field 'vec' is a list" in caplog.text
    # A file without the text column: every row counted, nothing raised.
    docs, stats = _read_all(str(path), text_field="body")
    assert docs == [] and dict(stats.skipped) == {"missing_text_field": 10} and stats.accounted


def test_array_record_json_records(tmp_path, caplog):
    path = tmp_path / "docs.array_record-00000-of-00001"
    writer = ArrayRecordWriter(str(path), "group_size:2")
    raws = [json.dumps({"text": f"doc {i}", "i": i}).encode() for i in range(7)]
    raws[2] = b"{broken"
    raws[5] = b'{"text": "caf\xe9"}'
    for raw in raws:
        writer.write(raw)
    writer.close()
    shards = sources.list_shards(str(path), target_shard_rows=3)
    assert [(s.format, s.start, s.stop) for s in shards] == [("array_record", 0, 3), ("array_record", 3, 6),
                                                            ("array_record", 6, 7)]
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path), metadata_fields=("i",), target_shard_rows=3)
    assert [(d.text, d.metadata, d.location) for d in docs] == [
        (f"doc {i}", {"i": i}, f"{path}#{i}") for i in (0, 1, 3, 4, 6)]
    assert dict(stats.skipped) == {"malformed_json": 1, "invalid_utf8": 1} and stats.accounted
    assert f"{path}#2: skipping record: malformed_json" in caplog.text


def _varied_jsonl(path, n=300):
    """Lines of very different lengths, some of them bad, to put shard cuts everywhere."""
    lines = []
    for i in range(n):
        if i % 17 == 3:
            lines.append(b"{not json")
        elif i % 23 == 5:
            lines.append(b"")
        else:
            lines.append(json.dumps({"text": f"doc {i} " + "w" * (i * 37 % 400), "i": i}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def test_byte_range_shards_concatenate_to_whole_read(tmp_path, caplog):
    path = tmp_path / "big.jsonl"
    lines = _varied_jsonl(path)
    whole, whole_stats = _read_all(str(path), metadata_fields=("i",))
    assert len(sources.list_shards(str(path))) == 1
    shards = sources.list_shards(str(path), target_shard_bytes=1000)
    assert len(shards) > 20 and shards[-1].stop == -1
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    # Every cut is at a line start.
    data = path.read_bytes()
    assert all(data[s.start - 1 : s.start] == b"\n" for s in shards[1:])
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path), metadata_fields=("i",), target_shard_bytes=1000)
    assert docs == whole and stats == whole_stats and stats.accounted
    assert stats.read == len(lines)
    # Absolute line numbers: document i sits on line i + 1.
    assert all(d.location == f"{path}:{d.metadata['i'] + 1}" for d in docs)
    assert f"{path}:4: skipping line: malformed_json" in caplog.text
    # Arbitrary (unaligned) cuts partition the file too: a line belongs to the range it starts in.
    cuts = [0, 1, 150, 151, 999, 5000, 5001, len(data) - 3]
    parts = [sources.SourceShard(str(path), "jsonl", a, b) for a, b in zip(cuts, cuts[1:] + [-1])]
    assert [d for p in parts for d in sources.read_documents(p, metadata_fields=("i",))] == whole


def test_bad_input_corpus(tmp_path, caplog):
    big = "def f():\n    return 'x'\n" * 200_000  # ~5 MB, about a million tokens of code
    lines = [
        b'{"text": "good one", "id": 1}',
        b'{"text": "truncated',  # malformed JSON
        b'{"text": "caf\xe9"}',  # invalid UTF-8
        b'["text", "an array"]',  # not an object
        b'{"body": "no text field"}',  # missing field
        b'{"text": 42}',  # non-string text
        b'{"text": " \\n "}',  # empty (whitespace-only) text
        b"",  # blank line
        b'{"text": null}',  # null text
        b'{"text": "lone \\ud800 surrogate"}',  # not encodable as UTF-8
        json.dumps({"text": big, "id": 2}).encode(),
        b'{"text": "good two", "id": 3}',
    ]
    reasons = {2: "malformed_json", 3: "invalid_utf8", 4: "not_an_object", 5: "missing_text_field",
               6: "non_string_text", 7: "empty_text", 8: "blank_line", 9: "null_text", 10: "invalid_unicode"}
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path), metadata_fields=("id",))
    assert [d.metadata["id"] for d in docs] == [1, 2, 3]
    assert docs[1].text == big and docs[1].location == f"{path}:11"
    assert stats.read == len(lines) == stats.yielded + stats.total_skipped
    assert dict(stats.skipped) == {r: 1 for r in reasons.values()}
    for line_no, reason in reasons.items():
        assert f"{path}:{line_no}: skipping line: {reason}" in caplog.text
    # Sharded in small byte ranges: same documents, same counts.
    sharded, sharded_stats = _read_all(str(path), metadata_fields=("id",), target_shard_bytes=64)
    assert sharded == docs and sharded_stats == stats


def test_truncated_gzip_is_counted_not_raised(tmp_path, caplog):
    data = gzip.compress(_jsonl_bytes([{"text": f"doc {i} " + "y" * 200} for i in range(200)]))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path))
    assert 0 < len(docs) < 200 and stats.skipped == {"unreadable_data": 1} and stats.accounted
    assert "skipping line: unreadable_data" in caplog.text


def test_spec_errors_name_the_problem(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "notes.md").write_text("# hi")
    with pytest.raises(FileNotFoundError, match=r"nothing\*\.jsonl.*matches no file; accepted: .*parquet"):
        sources.list_shards(f"{tmp_path}/nothing*.jsonl")
    with pytest.raises(FileNotFoundError, match="its part"):
        sources.list_shards(f"{tmp_path}/a.jsonl,{tmp_path}/missing.jsonl")
    with pytest.raises(ValueError, match=r"notes\.md: unknown file type; accepted: .*\.jsonl"):
        sources.list_shards(f"{tmp_path}/*")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        sources.list_shards(str(tmp_path))
    with pytest.raises(ValueError, match="expected 'tfds:NAME"):
        sources.list_shards("tfds:only_a_name")
    with pytest.raises(ValueError, match="format 'csv'"):
        sources.SourceShard("x.csv", "csv")


@pytest.mark.parametrize("name, fmt", [
    ("a.jsonl", "jsonl"), ("A.JSON", "jsonl"), ("a.ndjson", "jsonl"), ("a.json.gz", "jsonl.gz"),
    ("c4-train.00000-of-01024.json.gz", "jsonl.gz"), ("a.jsonl.zst", "jsonl.zst"), ("a.txt", "text"),
    ("a.text", "text"), ("a.parquet", "parquet"), ("a.array_record", "array_record"),
    ("x-train.array_record-00001-of-00004", "array_record"), ("shard-00000-of-00004", "array_record"),
    ("d.jsonl-00000-of-00002", "jsonl"),
])
def test_detect_format(name, fmt):
    assert sources.detect_format(f"/d/{name}") == fmt


@pytest.mark.parametrize("name", ["a.py", "a.md", "a.gz", "a.tfrecord-00000-of-00001", "a.csv"])
def test_detect_format_rejects(name):
    with pytest.raises(ValueError, match="unknown file type"):
        sources.detect_format(name)


def test_read_stats_merge_and_summary():
    a = jsonl.ReadStats(read=3, yielded=2)
    a.skipped["malformed_json"] += 1
    b = jsonl.ReadStats(read=2, yielded=1)
    b.skipped.update({"malformed_json": 1})
    assert sources.ReadStats is jsonl.ReadStats
    assert a.merge(b) is a and a.accounted
    assert a.as_dict() == {"read": 5, "yielded": 3, "skipped": {"malformed_json": 2}, "total_skipped": 2}
    a.read += 1
    assert not a.accounted


def test_labels():
    assert sources.SourceShard("/d/train.jsonl", "jsonl").label == "train.jsonl"
    assert sources.SourceShard("/d/train.jsonl", "jsonl", 0, 67108864).label == "train.jsonl[bytes 0:67108864]"
    assert sources.SourceShard("/d/train.jsonl", "jsonl", 5).label == "train.jsonl[bytes 5:]"
    assert sources.SourceShard("tfds:x/c:1.0.0", "tfds", 0, 9, "train").label == "tfds:x/c:1.0.0:train[rows 0:9]"


def test_files_that_do_not_open_are_counted_not_raised(tmp_path, caplog):
    """A truncated Parquet file (no footer), or one in another format, is lost whole and
    counted, as a truncated .gz is; the good file beside it is read in full."""
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(50)]}), good, row_group_size=10)
    (tmp_path / "cut.parquet").write_bytes(good.read_bytes()[:-100])
    (tmp_path / "fake.parquet").write_text('{"text": "not parquet"}\n')
    (tmp_path / "fake.array_record").write_text("not array_record\n")
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(f"{tmp_path}/*.parquet,{tmp_path}/fake.array_record")
    assert len(docs) == 50 and stats.skipped == {"unreadable_data": 3} and stats.accounted
    for name, kind in (("cut", "Parquet"), ("fake", "Parquet"), ("fake", "ArrayRecord")):
        suffix = "parquet" if kind == "Parquet" else "array_record"
        assert (f"{tmp_path}/{name}.{suffix}: skipping file: unreadable_data (not a readable "
                f"{kind} file") in caplog.text
    assert "the whole file is lost: fix it, or remove it from the source spec" in caplog.text


def test_corrupt_array_record_chunk_costs_only_its_records(tmp_path, caplog):
    path = tmp_path / "c.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:10,uncompressed")
    for i in range(1000):
        writer.write(json.dumps({"text": f"doc {i} " + "z" * 100}).encode())
    writer.close()
    data = bytearray(path.read_bytes())
    data[50_000:50_100] = bytes(b ^ 0xFF for b in data[50_000:50_100])  # break one or two chunks
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path))
    lost = stats.skipped["unreadable_data"]
    assert 0 < lost <= 20 and len(docs) == 1000 - lost and stats.accounted
    assert "skipping record: unreadable_data (Corrupted" in caplog.text


def test_supervised_records_in_parquet_count_their_reasons(tmp_path, caplog):
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": ["a", "", None, "d", "e"], "t": ["x", "y", "z", " ", b"\xff"]}),
                   path, row_group_size=2)
    with caplog.at_level(logging.WARNING):
        docs, stats = _read_all(str(path), text_field="t", inputs_field="q")
    assert [(d.inputs, d.text, d.location) for d in docs] == [
        ("a", "x", f"{path}#0"), ("", "y", f"{path}#1")]  # empty inputs are an example
    assert dict(stats.skipped) == {"null_inputs": 1, "empty_targets": 1, "invalid_utf8": 1}
    assert stats.accounted and f"{path}#2: skipping row: null_inputs" in caplog.text
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ValueError, match="a text file is one document without fields"):
        _read_all(str(tmp_path / "a.txt"), inputs_field="q")
