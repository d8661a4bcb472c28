"""Tests for the robust JSONL reader."""

import gzip
import logging

import pytest

from t5x_like.data import jsonl

BAD_FILE_LINES = [
    b'{"text": "good one", "id": 1}',
    b'{"text": "truncated',  # malformed JSON
    b'{"text": "caf\xe9"}',  # Latin-1 byte: invalid UTF-8
    b'["text", "an array"]',  # not an object
    b'{"body": "no text field"}',
    b'{"text": 42}',  # non-string text
    b'{"text": ""}',  # empty text
    b"",  # blank line
    b'{"text": "good two \\u00e9 \\n with newline"}',
]


def _write(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_line_accounted_for(tmp_path, caplog):
    path = _write(tmp_path / "bad.jsonl", BAD_FILE_LINES)
    stats = jsonl.ReadStats()
    with caplog.at_level(logging.WARNING):
        records = list(jsonl.read_jsonl(path, stats=stats))
    assert [r["text"] for r in records] == ["good one", "good two \u00e9 \n with newline"]
    assert records[0]["id"] == 1
    assert stats.read == len(BAD_FILE_LINES)
    assert stats.yielded == 2
    assert stats.read == stats.yielded + stats.total_skipped
    assert dict(stats.skipped) == {
        "malformed_json": 1, "invalid_utf8": 1, "not_an_object": 1, "missing_text_field": 1,
        "non_string_text": 1, "empty_text": 1, "blank_line": 1,
    }
    # Each skip names file:line.
    assert f"{path}:2: skipping line: malformed_json" in caplog.text
    assert f"{path}:3: skipping line: invalid_utf8" in caplog.text
    assert f"{path}:7: skipping line: empty_text" in caplog.text


def test_custom_text_field_and_gzip(tmp_path):
    lines = [b'{"body": "a"}', b'{"text": "b"}', b'{"body": "c"}']
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines))  # no trailing newline on the last line
    stats = jsonl.ReadStats()
    assert [r["body"] for r in jsonl.read_jsonl(path, text_field="body", stats=stats)] == ["a", "c"]
    assert stats.skipped == {"missing_text_field": 1}


def test_log_lines_are_capped(tmp_path, caplog):
    path = _write(tmp_path / "many.jsonl", [b"not json"] * 50 + [b'{"text": "ok"}'])
    stats = jsonl.ReadStats()
    with caplog.at_level(logging.WARNING):
        assert len(list(jsonl.read_jsonl(path, stats=stats))) == 1
    per_line = [r for r in caplog.records if "skipping line" in r.getMessage()]
    assert len(per_line) == jsonl.MAX_LOGGED_PER_REASON
    assert "skipped 50 lines in total for reason malformed_json" in caplog.text
    assert stats.skipped["malformed_json"] == 50


def test_stats_accumulate_across_files(tmp_path):
    a = _write(tmp_path / "a.jsonl", [b'{"text": "x"}', b"{"])
    b = _write(tmp_path / "b.jsonl", [b'{"text": "y"}'])
    stats = jsonl.ReadStats()
    for p in (a, b):
        list(jsonl.read_jsonl(p, stats=stats))
    assert (stats.read, stats.yielded, stats.total_skipped) == (3, 2, 1)


def test_zstd_whitespace_null_and_surrogates(tmp_path):
    import zstandard

    lines = [b'{"text": "ok"}', b'{"text": " \\t\\n"}', b'{"text": null}', b'{"text": "a\\uD83D"}',
             b'{"text": "pair \\ud83d\\ude00"}']  # an escaped surrogate *pair* is valid
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(lines) + b"\n"))
    stats = jsonl.ReadStats()
    assert [r["text"] for r in jsonl.read_jsonl(path, stats=stats)] == ["ok", "pair \U0001f600"]
    assert dict(stats.skipped) == {"empty_text": 1, "null_text": 1, "invalid_unicode": 1}


def test_byte_ranges_keep_absolute_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "_COUNT_CHUNK", 7)  # newline counting across many small chunks
    lines = [f'{{"text": "line {i}"}}'.encode() for i in range(1, 21)]
    path = _write(tmp_path / "r.jsonl", lines)
    data = path.read_bytes()
    cut = data.index(b'{"text": "line 8"}') + 3  # inside line 8: it belongs to the first range
    first = list(jsonl.iter_jsonl(path, start=0, stop=cut))
    second = list(jsonl.iter_jsonl(path, start=cut))
    assert [n for n, _ in first] == list(range(1, 9))
    assert [n for n, _ in second] == list(range(9, 21))
    assert [r["text"] for _, r in first + second] == [f"line {i}" for i in range(1, 21)]


def test_byte_ranges_need_an_uncompressed_file(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"text": "a"}\n')
    with pytest.raises(ValueError, match="need an uncompressed file"):
        list(jsonl.iter_jsonl(path, start=5))
