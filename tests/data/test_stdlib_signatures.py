"""The embedded supervised task: built offline from the stdlib, split by module, deterministic."""

import ast
import json

import pytest

from t5x_like.data import stdlib_corpus, stdlib_signatures


def _records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def built(stdlib_data):
    paths = stdlib_signatures.build_stdlib_signatures(
        stdlib_signatures.stdlib_signatures_dir(stdlib_data.data_dir))
    return paths, {s: _records(paths[s]) for s in stdlib_corpus.SPLITS}


def test_records_pair_a_docstring_with_the_signature_of_its_def(built):
    paths, splits = built
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["examples"] == {s: len(r) for s, r in splits.items()}
    assert manifest["examples"]["train"] > 3000 and manifest["examples"]["validation"] > 10
    for r in splits["train"][:300] + splits["validation"]:
        assert set(r) == {"docstring", "signature", "module", "qualname", "url"}
        assert r["docstring"] and len(r["docstring"]) <= stdlib_signatures.MAX_DOCSTRING_CHARS
        assert " ".join(r["docstring"].split()) == r["docstring"]
        assert not any(p.startswith("_") for p in r["module"].split(".") + r["qualname"].split("."))
        # The target is a def line: it parses, and names the function the record is about.
        node = ast.parse(f"def {r['signature']}: pass").body[0]
        assert node.name == r["qualname"].rsplit(".", 1)[-1]
        assert "\n" not in r["signature"]
    pairs = [(r["docstring"], r["signature"]) for s in splits.values() for r in s]
    assert len(set(pairs)) == len(pairs)  # deduplicated
    assert {"docstrings_capped", "duplicates", "signature_docstrings"} <= set(manifest)


def test_splits_follow_the_pretraining_corpus_modules(built, stdlib_data):
    _, splits = built
    corpus = {s: {json.loads(line)["module"] for line in open(stdlib_data.paths[s])}
              for s in stdlib_corpus.SPLITS}
    # Validation functions come from modules pretraining never saw: held out, or test suites
    # (which training shares, by other modules).
    validation = {r["module"] for r in splits["validation"]}
    assert not validation & corpus["train"] and validation & corpus["validation"]
    test_suites = {m for s in splits.values() for r in s if (m := r["module"]) not in
                   corpus["train"] | corpus["validation"]}
    assert all(m.split(".")[0] in ("test", "idlelib") or ".test" in m for m in test_suites)
    assert test_suites & validation and test_suites - validation
    assert not {r["module"] for r in splits["train"]} & {r["module"] for r in splits["validation"]}


def test_known_function_and_the_rules_for_docstrings(built):
    _, splits = built
    by_name = {(r["module"], r["qualname"]): r for s in splits.values() for r in s}
    dumps = by_name[("json", "dumps")]
    assert dumps["signature"].startswith("dumps(obj, *, skipkeys=False")
    assert dumps["docstring"].startswith("Serialize ``obj`` to a JSON formatted ``str``.")
    docstring = "f(x) -> int\n\nReturn x."  # C style: the signature first, then the text
    assert stdlib_signatures.docstring_input(docstring, "f") == ("Return x.", False)
    assert stdlib_signatures.docstring_input("f(x) -> int", "f") == (None, False)
    text, capped = stdlib_signatures.docstring_input("word " * 200, "g")
    assert capped and len(text) <= stdlib_signatures.MAX_DOCSTRING_CHARS and text.endswith("word")


def test_a_second_build_reuses_and_a_fresh_one_is_byte_identical(built, tmp_path):
    paths, _ = built
    mtime = paths["train"].stat().st_mtime_ns
    stdlib_signatures.build_stdlib_signatures(paths["train"].parent)
    assert paths["train"].stat().st_mtime_ns == mtime
    fresh = stdlib_signatures.build_stdlib_signatures(tmp_path / "again")
    for split in stdlib_corpus.SPLITS:
        assert fresh[split].read_bytes() == paths[split].read_bytes()
