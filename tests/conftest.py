"""Shared test fixtures."""

import dataclasses
import pathlib

import pytest

from t5x_like.data import stdlib_corpus, tokenizer


@dataclasses.dataclass(frozen=True)
class StdlibData:
    """The real stdlib corpus and its tokenizer, built once per test session."""

    data_dir: pathlib.Path
    paths: dict  # split name / "manifest" -> pathlib.Path
    tokenizer: tokenizer.Tokenizer


@pytest.fixture(scope="session")
def stdlib_data(tmp_path_factory) -> StdlibData:
    """Build the stdlib corpus and default tokenizer in a temp dir (never the repo)."""
    data_dir = tmp_path_factory.mktemp("t5x_like_data")
    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(data_dir))
    return StdlibData(data_dir=data_dir, paths=paths, tokenizer=tokenizer.default_tokenizer(data_dir))
