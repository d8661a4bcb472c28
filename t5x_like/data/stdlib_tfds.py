"""The embedded stdlib corpus as a TFDS dataset (``t5x_like_stdlib``), built without TensorFlow.

The same documents as ``<data_dir>/stdlib/{train,validation}.jsonl`` (see
:mod:`t5x_like.data.stdlib_corpus`), stored as ArrayRecord files under
``<data_dir>/tfds`` so anything that reads TFDS data sources (``tfds.data_source``,
grain, :mod:`t5x_like.data.sources` with ``tfds:t5x_like_stdlib:train``) can use it.

The corpus depends on the interpreter (its stdlib), so each Python version is
its own builder config, ``py<major.minor.micro>``; the default config is the
running interpreter's. Examples keep the JSONL order (shuffling is disabled):
the ``i``-th example of a split is the ``i``-th usable line of its JSONL file.

Importing this module registers the builder with TFDS.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time

import tensorflow_datasets as tfds
from etils import epath

from t5x_like.data import jsonl, stdlib_corpus

logger = logging.getLogger(__name__)

NAME = "t5x_like_stdlib"
FEATURES = ("text", "module", "url")


def tfds_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Return ``<data_dir>/tfds``, where this project keeps TFDS datasets.

    ``data_dir`` defaults to :func:`stdlib_corpus.default_data_dir`.
    """
    base = data_dir if data_dir is not None else stdlib_corpus.default_data_dir()
    return pathlib.Path(base) / "tfds"


def default_config_name() -> str:
    """The builder config of the running interpreter, e.g. ``py3.11.7``."""
    return f"py{stdlib_corpus.python_version()}"


class T5xLikeStdlib(tfds.core.GeneratorBasedBuilder):
    """The running interpreter's standard library sources, one example per ``.py`` file."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: text/module/url, train/validation."}
    # One config per interpreter: a different Python has a different stdlib.
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=default_config_name(),
            description=f"Standard library of Python {stdlib_corpus.python_version()}.",
        )
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's own lookup needs the ``importlib_resources`` backport, not installed here."""
        return epath.Path(__file__)

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        """Like any TFDS builder; ``source_dir`` overrides where the JSONL splits are read from.

        Without ``source_dir`` the stdlib corpus is (re)built in
        ``<data_dir>/stdlib`` next to ``<data_dir>/tfds``. Tests pass a small
        directory holding ``train.jsonl`` and ``validation.jsonl`` instead.
        """
        self._source_dir = pathlib.Path(source_dir) if source_dir is not None else None
        super().__init__(**kwargs)
        # TFDS re-creates builders from this dict (pickling); keep the override.
        self._original_state["source_dir"] = source_dir

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "The PSF-licensed CPython standard library of the interpreter that built it: one "
                "example per .py file (test suites and site-packages excluded). A module goes to "
                f"validation iff zlib.crc32(module) % {stdlib_corpus.VALIDATION_MODULUS} == 0."
            ),
            features=tfds.features.FeaturesDict({f: tfds.features.Text() for f in FEATURES}),
            homepage="https://github.com/python/cpython/tree/main/Lib",
            # Keep the JSONL order, so example i of a split is line-order document i.
            disable_shuffling=True,
        )

    def _jsonl_paths(self) -> dict[str, pathlib.Path]:
        """The JSONL file of each split, building the stdlib corpus if needed."""
        if self._source_dir is not None:
            return {s: self._source_dir / f"{s}.jsonl" for s in stdlib_corpus.SPLITS}
        # The TFDS root is <data_dir>/tfds (self.data_dir is <root>/<name>/<config>/<version>);
        # the corpus lives in <data_dir>/stdlib.
        root = getattr(self, "_data_dir_root", None) or pathlib.Path(self.data_dir).parents[2]
        corpus_dir = stdlib_corpus.stdlib_corpus_dir(pathlib.Path(root).parent)
        paths = stdlib_corpus.build_stdlib_corpus(corpus_dir)
        return {s: paths[s] for s in stdlib_corpus.SPLITS}

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the source is on this machine.
        return {split: self._generate_examples(path) for split, path in self._jsonl_paths().items()}

    def _generate_examples(self, path: pathlib.Path):
        """Yield ``(index, example)`` for each usable line; integer keys keep the file order."""
        stats = jsonl.ReadStats()
        for index, record in enumerate(jsonl.read_jsonl(path, "text", stats)):
            yield index, {f: _as_text(record.get(f)) for f in FEATURES}
        if stats.total_skipped:
            logger.warning("%s: skipped %d lines while building %s: %s", path, stats.total_skipped,
                           NAME, dict(stats.skipped))


def _as_text(value) -> str:
    """A metadata value as a Text feature: missing -> ``""``, non-strings -> their JSON-ish str."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def build_stdlib_tfds(
    data_dir: str | os.PathLike | None = None, *, source_dir: str | os.PathLike | None = None
) -> T5xLikeStdlib:
    """Prepare ``t5x_like_stdlib`` under ``<data_dir>/tfds`` (a no-op if already there); return the builder.

    ``source_dir`` (a directory with ``train.jsonl`` / ``validation.jsonl``)
    replaces the stdlib corpus, for tests. Writing goes to a temporary directory
    renamed at the end (TFDS does this), so an interrupted build is redone.
    """
    root = tfds_data_dir(data_dir)
    builder = T5xLikeStdlib(data_dir=os.fspath(root), source_dir=source_dir, file_format="array_record")
    if not builder.is_prepared():
        root.mkdir(parents=True, exist_ok=True)
        # Generated data: keep it out of git even when data_dir is the checkout's data/.
        if not (root / ".gitignore").exists():
            (root / ".gitignore").write_text("*\n")
        start = time.perf_counter()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
        logger.info("Built %s in %s in %.1f s", NAME, builder.data_dir, time.perf_counter() - start)
    return builder
