"""Tests for the embedded stdlib corpus."""

import json
import pathlib
import sys

import pytest

from t5x_like.data import stdlib_corpus


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_manifest_matches_files(stdlib_data):
    manifest = json.loads(stdlib_data.paths["manifest"].read_text())
    assert manifest["python_version"] == "{}.{}.{}".format(*sys.version_info[:3])
    for split in stdlib_corpus.SPLITS:
        records = _records(stdlib_data.paths[split])
        assert len(records) == manifest["documents"][split]
        assert sum(len(r["text"].encode()) for r in records) == manifest["text_bytes"][split]
    # A real corpus: hundreds of modules, megabytes of text, ~2% validation.
    assert manifest["documents"]["train"] > 300
    assert manifest["text_bytes"]["train"] > 3_000_000
    total = manifest["documents"]["train"] + manifest["documents"]["validation"]
    assert 0.005 < manifest["documents"]["validation"] / total < 0.05


def test_records_are_well_formed_and_sorted(stdlib_data):
    version = stdlib_corpus.python_version()
    for split in stdlib_corpus.SPLITS:
        records = _records(stdlib_data.paths[split])
        relpaths = []
        for r in records:
            assert set(r) == {"text", "module", "url"}
            assert r["text"].strip()
            assert stdlib_corpus.split_of(r["module"]) == split
            prefix = f"https://github.com/python/cpython/blob/v{version}/Lib/"
            assert r["url"].startswith(prefix), r["url"]
            rel = pathlib.PurePosixPath(r["url"][len(prefix):])
            assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(rel.parts[:-1])
            assert stdlib_corpus.module_name(rel) == r["module"]
            relpaths.append(rel.as_posix())
        assert relpaths == sorted(relpaths)


def test_known_modules_present(stdlib_data):
    modules = {r["module"] for s in stdlib_corpus.SPLITS for r in _records(stdlib_data.paths[s])}
    assert {"json", "json.decoder", "collections", "os"} <= modules
    assert not any(m.startswith("test.") for m in modules)
    text = {r["module"]: r["text"] for r in _records(stdlib_data.paths["train"])}
    if "json.decoder" in text:
        import json.decoder
        assert text["json.decoder"] == pathlib.Path(json.decoder.__file__).read_text(encoding="utf-8")


def test_module_name():
    assert stdlib_corpus.module_name(pathlib.PurePath("json/decoder.py")) == "json.decoder"
    assert stdlib_corpus.module_name(pathlib.PurePath("json/__init__.py")) == "json"
    assert stdlib_corpus.module_name(pathlib.PurePath("os.py")) == "os"


def test_reuse_rebuild_and_determinism(stdlib_data, tmp_path):
    # Reuse: a second call must not rewrite the files.
    mtime = stdlib_data.paths["train"].stat().st_mtime_ns
    assert stdlib_corpus.build_stdlib_corpus(stdlib_data.paths["train"].parent) == stdlib_data.paths
    assert stdlib_data.paths["train"].stat().st_mtime_ns == mtime
    # A fresh build is byte-identical; a stale manifest triggers a rebuild.
    paths = stdlib_corpus.build_stdlib_corpus(tmp_path)
    assert paths["train"].read_bytes() == stdlib_data.paths["train"].read_bytes()
    manifest = json.loads(paths["manifest"].read_text())
    manifest["python_version"] = "2.7.18"
    paths["manifest"].write_text(json.dumps(manifest))
    paths["validation"].write_text("stale\n")
    stdlib_corpus.build_stdlib_corpus(tmp_path)
    assert paths["validation"].read_bytes() == stdlib_data.paths["validation"].read_bytes()
    assert not list(tmp_path.glob("*.tmp*"))


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("T5X_LIKE_DATA_DIR", str(tmp_path))
    assert stdlib_corpus.default_data_dir() == tmp_path
    monkeypatch.delenv("T5X_LIKE_DATA_DIR")
    repo_data = pathlib.Path(stdlib_corpus.__file__).resolve().parents[2] / "data"
    if (repo_data / "README.md").is_file():
        assert stdlib_corpus.default_data_dir() == repo_data
    else:
        pytest.skip("not running from a source checkout")
