"""The embedded supervised task: a standard-library function's docstring -> its signature.

Built offline, like the pretraining corpus (``stdlib_corpus``), from the running interpreter's
standard library: for every public function and public method (of a public class at module
level) of a public module (no dotted part starting with ``_``) that has a docstring, one record

    {"docstring": "Read a config file.", "signature": "read_config(path, *, strict=False)",
     "module": "...", "qualname": "...", "url": "...#L12"}

- inputs (``docstring``): the docstring's first paragraph, whitespace folded to single spaces,
  at most ``MAX_DOCSTRING_CHARS`` characters (cut at a word, counted in the manifest). A
  paragraph that starts with the signature itself (C-style docstrings: ``name(a, b) -> x``)
  would give the answer away; the next paragraph is taken, or the function skipped.
- targets (``signature``): the name and the ``def`` line's parameters with their defaults and
  annotations and any return annotation, as ``ast.unparse`` writes them (one line, the source's
  own expressions; ``self`` included for methods).
- Pairs repeated verbatim (the same docstring and signature in two places) are kept once, the
  first in sorted file order; the split follows the module of the kept one.
- Split: ``stdlib_corpus.split_of(module)``, the pretraining corpus's hash of the module name,
  so the corpus's validation modules stay out of training. The held-out modules alone give a
  few dozen examples, too few to tell one model from another by exact match, so the test suites
  (``test/``, ``tests/``, ``idle_test/``, which the corpus leaves out) join too, split half and
  half by module (``crc32 % 2``): every validation function comes from a module the quick-start
  model never pretrained on, and training sees test code like the validation's.

Written to ``<data_dir>/stdlib_signatures/{train,validation}.jsonl`` on first use; the manifest
counts examples per split and everything left out, by reason.
"""

from __future__ import annotations

import ast
import itertools
import os
import pathlib
import re
import zlib
from typing import Iterator

from t5x_like.data import stdlib_corpus

NAME = "stdlib_signatures"
INPUTS_FIELD, TARGETS_FIELD = "docstring", "signature"
# The 99th percentile of first paragraphs is ~390 characters: a cap that cuts only outliers.
MAX_DOCSTRING_CHARS = 512
_MANIFEST_VERSION = 2  # 2: the test suites' functions join, half of their modules validating
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """``name(parameters) [-> annotation]`` of a ``def``, as ``ast.unparse`` writes it."""
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{node.name}({ast.unparse(node.args)}){returns}"


def docstring_input(docstring: str, name: str) -> tuple[str | None, bool]:
    """(the docstring's first paragraph that does not open with ``name(``, whether it was
    capped); None when every paragraph does (the docstring is the signature)."""
    for paragraph in _PARAGRAPH_BREAK.split(docstring):
        text = " ".join(paragraph.split())
        if text and not text.startswith(f"{name}("):
            if len(text) <= MAX_DOCSTRING_CHARS:
                return text, False
            return text[:MAX_DOCSTRING_CHARS].rsplit(" ", 1)[0], True
    return None, False


def public_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef]]:
    """``(qualname, def)`` of the module's public functions and its public classes' public
    methods, in source order."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if not node.name.startswith("_"):
                yield node.name, node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                        and not item.name.startswith("_")):
                    yield f"{node.name}.{item.name}", item


def _test_suite_split(module: str) -> str:
    """Half the test-suite modules validate, by a stable hash of the name."""
    return "validation" if zlib.crc32(module.encode()) % 2 else "train"


def _records(stdlib: pathlib.Path, counts: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """``(split, record)`` of every example, in sorted file order; ``counts`` what was left."""
    seen: set[tuple[str, str]] = set()
    sources = itertools.chain(  # (split, rel, module, text)
        ((stdlib_corpus.split_of(source[1]), *source)
         for source in stdlib_corpus.read_sources(stdlib, counts)),
        ((_test_suite_split(source[1]), *source)
         for source in stdlib_corpus.read_sources(stdlib, counts, test_suites=True)))
    for split, rel, module, text in sources:
        if any(part.startswith("_") for part in module.split(".")):
            counts["private_modules"] += 1
            continue
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a file of another Python version's syntax: no functions to read
            counts["unparsable_modules"] += 1
            continue
        for qualname, node in public_functions(tree):
            docstring = ast.get_docstring(node)
            if not docstring:
                continue
            counts["documented_functions"] += 1
            inputs, capped = docstring_input(docstring, node.name)
            if inputs is None:
                counts["signature_docstrings"] += 1
                continue
            pair = (inputs, signature(node))
            if pair in seen:
                counts["duplicates"] += 1
                continue
            seen.add(pair)
            counts["docstrings_capped"] += capped
            yield split, {
                INPUTS_FIELD: inputs, TARGETS_FIELD: pair[1], "module": module,
                "qualname": qualname, "url": stdlib_corpus.source_url(rel, node.lineno)}


def build_stdlib_signatures(out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Build (or reuse) the task's splits in ``out_dir``: ``{"train", "validation",
    "manifest"}`` paths (``stdlib_corpus.write_splits``)."""
    out_dir = pathlib.Path(out_dir)
    if stdlib_corpus.is_built(out_dir, _MANIFEST_VERSION):
        return stdlib_corpus.split_paths(out_dir)
    stdlib = stdlib_corpus.stdlib_path()
    counts = dict.fromkeys(("not_utf8", "empty", "private_modules", "unparsable_modules",
                            "documented_functions", "signature_docstrings", "duplicates",
                            "docstrings_capped"), 0)
    return stdlib_corpus.write_splits(out_dir, _records(stdlib, counts), lambda examples: {
        "manifest_version": _MANIFEST_VERSION,
        "python_version": stdlib_corpus.python_version(),
        "source": str(stdlib),
        "examples": examples,
        "fields": {"inputs": INPUTS_FIELD, "targets": TARGETS_FIELD},
        "max_docstring_chars": MAX_DOCSTRING_CHARS,
        **counts,
        "validation_rule": f"zlib.crc32(module) % {stdlib_corpus.VALIDATION_MODULUS} == 0; "
                           "test-suite modules: zlib.crc32(module) % 2 == 1",
    })


def stdlib_signatures_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``<data_dir>/stdlib_signatures`` (``data_dir`` defaults to the corpus's)."""
    base = data_dir if data_dir is not None else stdlib_corpus.default_data_dir()
    return pathlib.Path(base) / NAME
