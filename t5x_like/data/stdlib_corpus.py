"""The embedded default corpus: the running interpreter's standard library.

Every machine that can run this package has a real, non-trivial text corpus
offline: the PSF-licensed CPython sources of the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``). We turn its ``.py``
files into ``train.jsonl`` / ``validation.jsonl`` so the default training run
needs no download.

The corpus is deterministic per Python version (major.minor.micro): files are
visited in sorted relative-path order and the split is a hash of the module
name, so two machines with the same interpreter build identical files.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys
import sysconfig
import zlib

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
# Path components that mark test suites (not pretraining text) or code that is not the stdlib's.
TEST_SUITE_DIRS = frozenset({"test", "tests", "idle_test"})
_EXCLUDED_DIRS = frozenset({"site-packages", "__pycache__"}) | TEST_SUITE_DIRS
# One module in VALIDATION_MODULUS goes to validation (~2%).
VALIDATION_MODULUS = 50
_MANIFEST_VERSION = 1


def python_version() -> str:
    """Return the running interpreter's ``major.minor.micro`` version string."""
    return "{}.{}.{}".format(*sys.version_info[:3])


def default_data_dir() -> pathlib.Path:
    """Return the directory holding generated data (corpus, tokenizer, caches).

    ``$T5X_LIKE_DATA_DIR`` wins; otherwise the checkout's ``data/`` directory
    (recognised by its ``README.md``) when running from a source tree;
    otherwise ``~/.cache/t5x_like/data`` for installed packages.
    """
    override = os.environ.get("T5X_LIKE_DATA_DIR")
    if override:
        return pathlib.Path(override).expanduser()
    repo_data = pathlib.Path(__file__).resolve().parents[2] / "data"
    if (repo_data / "README.md").is_file():
        return repo_data
    return pathlib.Path.home() / ".cache" / "t5x_like" / "data"


def module_name(relpath: pathlib.PurePath) -> str:
    """Map a stdlib-relative path to its dotted module name.

    ``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``.
    """
    parts = list(relpath.with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def split_of(module: str) -> str:
    """Return ``"validation"`` for ~2% of modules (stable hash), else ``"train"``."""
    return "validation" if zlib.crc32(module.encode()) % VALIDATION_MODULUS == 0 else "train"


def _iter_source_files(stdlib: pathlib.Path, test_suites: bool = False):
    """Yield stdlib-relative paths of candidate ``.py`` files, sorted: the corpus's, or with
    ``test_suites`` only those of the test suites it leaves out."""
    relpaths = []
    for path in stdlib.rglob("*.py"):
        rel = path.relative_to(stdlib)
        dirs = set(rel.parts[:-1])
        excluded = _EXCLUDED_DIRS - TEST_SUITE_DIRS if test_suites else _EXCLUDED_DIRS
        if excluded & dirs or (test_suites and not TEST_SUITE_DIRS & dirs):
            continue
        relpaths.append(rel)
    # Sort on the POSIX string so the order does not depend on the filesystem.
    yield from sorted(relpaths, key=lambda p: p.as_posix())


def is_built(out_dir: pathlib.Path, manifest_version: int) -> bool:
    """True iff ``out_dir`` holds complete splits written for this interpreter by the builder
    whose manifest format is ``manifest_version``."""
    manifest_path = out_dir / "manifest.json"
    if not all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS) or not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        manifest.get("python_version") == python_version()
        and manifest.get("manifest_version") == manifest_version
    )


def split_paths(out_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{"train": ..., "validation": ..., "manifest": ...}`` paths of a built directory."""
    return {s: out_dir / f"{s}.jsonl" for s in SPLITS} | {"manifest": out_dir / "manifest.json"}


def stdlib_path() -> pathlib.Path:
    """The running interpreter's standard library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def read_sources(stdlib: pathlib.Path, skipped: dict[str, int], test_suites: bool = False):
    """Yield ``(relative path, module name, text)`` of every candidate source file, sorted
    (with ``test_suites``: of the test suites instead, which the corpus leaves out).

    Files that are not UTF-8 (``not_utf8``) or whitespace only (``empty``: an empty
    ``__init__.py`` carries nothing to learn) are counted in ``skipped``.
    """
    for rel in _iter_source_files(stdlib, test_suites):
        try:
            text = (stdlib / rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped["not_utf8"] += 1
            continue
        if not text.strip():
            skipped["empty"] += 1
            continue
        yield rel, module_name(rel), text


def source_url(rel: pathlib.PurePath, line: int = 0) -> str:
    """The file's URL in CPython's repository at this interpreter's version (and line)."""
    url = f"https://github.com/python/cpython/blob/v{python_version()}/Lib/{rel.as_posix()}"
    return f"{url}#L{line}" if line else url


def write_splits(out_dir: pathlib.Path, records, manifest) -> dict[str, pathlib.Path]:
    """Write ``(split, record)`` pairs as JSON lines to ``<out_dir>/<split>.jsonl``, in order.

    ``manifest(counts)`` (records per split) gives the manifest, written last: its presence
    marks the directory complete. Files are written to temporary names and renamed, so an
    interrupted build never leaves half-written splits that a later call would trust.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = split_paths(out_dir)
    tmp = {s: paths[s].with_suffix(f".jsonl.tmp{os.getpid()}") for s in SPLITS}
    counts = {s: 0 for s in SPLITS}
    handles = {s: open(tmp[s], "w", encoding="utf-8") for s in SPLITS}
    try:
        for split, record in records:
            handles[split].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[split] += 1
    finally:
        for handle in handles.values():
            handle.close()
    for split in SPLITS:
        os.replace(tmp[split], paths[split])
    content = manifest(counts)
    tmp_manifest = paths["manifest"].with_suffix(f".json.tmp{os.getpid()}")
    tmp_manifest.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, paths["manifest"])
    logger.info("Built %s: %s", out_dir, content)
    return paths


def build_stdlib_corpus(out_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Build (or reuse) the stdlib corpus in ``out_dir``: one JSON line per module.

    Returns ``{"train": path, "validation": path, "manifest": path}`` (see :func:`write_splits`).
    """
    out_dir = pathlib.Path(out_dir)
    if is_built(out_dir, _MANIFEST_VERSION):
        return split_paths(out_dir)
    stdlib = stdlib_path()
    nbytes = {s: 0 for s in SPLITS}
    skipped = {"not_utf8": 0, "empty": 0}

    def records():
        for rel, module, text in read_sources(stdlib, skipped):
            split = split_of(module)
            nbytes[split] += len(text.encode("utf-8"))
            yield split, {"text": text, "module": module, "url": source_url(rel)}

    return write_splits(out_dir, records(), lambda counts: {
        "manifest_version": _MANIFEST_VERSION,
        "python_version": python_version(),
        "source": str(stdlib),
        "documents": counts,
        "text_bytes": nbytes,
        "skipped": skipped,
        "validation_rule": f"zlib.crc32(module) % {VALIDATION_MODULUS} == 0",
    })


def stdlib_corpus_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Return ``<data_dir>/stdlib`` (``data_dir`` defaults to :func:`default_data_dir`)."""
    return pathlib.Path(data_dir if data_dir is not None else default_data_dir()) / "stdlib"
