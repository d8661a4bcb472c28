"""SentencePiece tokenizer: training on JSONL corpora and a thin, lossless wrapper.

Id layout (T5 convention plus BOS): pad=0, eos=1, unk=2, bos=3. Models that
have no BOS (T5's own 32k ``spiece.model``: pad 0, eos 1, unk 2) are accepted
with ``bos_id == -1``, meaning "no BOS token".

Our trained models are byte-exact on arbitrary text, which matters for
source code: identity normalization, no whitespace collapsing, no dummy
prefix, byte fallback for unseen characters, and ``"\\n"`` / ``"\\t"`` as
user-defined symbols because SentencePiece otherwise drops newlines.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pathlib
import time
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from t5x_like.data import jsonl, stdlib_corpus

logger = logging.getLogger(__name__)

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
NO_BOS = -1
DEFAULT_VOCAB_SIZE = 2048
# A bounded sample keeps training to about a second; 3 MB of code is plenty
# to estimate a 2k vocabulary.
DEFAULT_SAMPLE_BYTES = 3_000_000
# Below SentencePiece's own ``max_sentence_length`` (4192), which silently
# drops longer sentences from training.
DEFAULT_MAX_SENTENCE_BYTES = 4000
SEED = 0


def _sentences(text: str, max_sentence_bytes: int) -> Iterator[str]:
    """Cut ``text`` into runs of whole lines of at most ``max_sentence_bytes`` bytes.

    Lines keep their ``"\\n"`` so the trainer sees newlines and indentation in
    context; a single over-long line is cut by characters (4 bytes/char worst case).
    """
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        nbytes = len(line.encode("utf-8"))
        if nbytes > max_sentence_bytes:
            step = max(1, max_sentence_bytes // 4)
            yield from (line[i : i + step] for i in range(0, len(line), step))
            continue
        if chunk and size + nbytes > max_sentence_bytes:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += nbytes
    if chunk:
        yield "".join(chunk)


def _sample_sentences(
    jsonl_paths: Iterable[str | os.PathLike], text_field: str, sample_bytes: int, max_sentence_bytes: int
) -> list[str]:
    """Read documents in file order until ``sample_bytes`` of text were collected."""
    sentences: list[str] = []
    total = 0
    for path in jsonl_paths:
        for record in jsonl.read_jsonl(path, text_field=text_field):
            sentences.extend(_sentences(record[text_field], max_sentence_bytes))
            total += len(record[text_field].encode("utf-8"))
            if total >= sample_bytes:
                return sentences
    return sentences


def train_tokenizer(
    jsonl_paths: Sequence[str | os.PathLike],
    model_path: str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    text_field: str = "text",
    max_sentence_bytes: int = DEFAULT_MAX_SENTENCE_BYTES,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
) -> pathlib.Path:
    """Train a BPE SentencePiece model on the first ``sample_bytes`` of text; write ``model_path``.

    Deterministic: same inputs give byte-identical model files. That relies on
    a fixed seed and ``num_threads=1`` (the BPE merge order depends on the
    thread count); BPE on 3 MB still takes well under a second.
    """
    model_path = pathlib.Path(model_path)
    sentences = _sample_sentences(jsonl_paths, text_field, sample_bytes, max_sentence_bytes)
    if not sentences:
        raise ValueError(f"no usable {text_field!r} text in {list(map(str, jsonl_paths))}; cannot train a tokenizer")
    start = time.perf_counter()
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=["\n", "\t"],
        max_sentence_length=max_sentence_bytes + 192,
        num_threads=1,
        minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(model_path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, model_path)
    logger.info(
        "Trained %d-piece tokenizer on %d sentences in %.2fs -> %s",
        vocab_size, len(sentences), time.perf_counter() - start, model_path,
    )
    return model_path


class Tokenizer:
    """A SentencePiece model with the pad=0, eos=1, unk=2, bos=3 (or no BOS) layout."""

    def __init__(self, model_path: str | os.PathLike, num_threads: int | None = None):
        """Load ``model_path`` and check its special ids; raise ValueError if they differ."""
        self.model_path = pathlib.Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.model_path} does not exist; train one with train_tokenizer()")
        self._sp = spm.SentencePieceProcessor(model_file=os.fspath(self.model_path))
        self._num_threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        got = {"pad": self._sp.pad_id(), "eos": self._sp.eos_id(), "unk": self._sp.unk_id()}
        want = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID}
        if got != want or self._sp.bos_id() not in (BOS_ID, NO_BOS):
            raise ValueError(
                f"{self.model_path}: special ids {got | {'bos': self._sp.bos_id()}} do not match the "
                f"expected layout {want | {'bos': f'{BOS_ID} or {NO_BOS}'}}; retrain with train_tokenizer()"
            )

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the model (ids are ``0 .. vocab_size - 1``)."""
        return self._sp.vocab_size()

    @property
    def pad_id(self) -> int:
        """Padding id (always 0)."""
        return PAD_ID

    @property
    def eos_id(self) -> int:
        """End-of-sequence id (always 1)."""
        return EOS_ID

    @property
    def unk_id(self) -> int:
        """Unknown-piece id (always 2; unused by byte-fallback models)."""
        return UNK_ID

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id: 3, or -1 if the model has no BOS."""
        return self._sp.bos_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by SentencePiece's thread pool."""
        return self._sp.encode(list(texts), num_threads=self._num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; padding and ids outside the model (e.g. a padded vocab) are dropped."""
        vocab = self.vocab_size
        return self._sp.decode([int(i) for i in ids if 0 < int(i) < vocab])

    def file_hash(self) -> str:
        """Short content hash of the model file, for cache keys."""
        return hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:16]


def default_tokenizer(
    data_dir: str | os.PathLike | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Tokenizer:
    """The stdlib-trained tokenizer, trained once and cached at ``<data_dir>/stdlib/sp<vocab>.model``."""
    corpus_dir = stdlib_corpus.stdlib_corpus_dir(data_dir)
    paths = stdlib_corpus.build_stdlib_corpus(corpus_dir)
    model_path = corpus_dir / f"sp{vocab_size}.model"
    # A model older than the manifest was trained on a previous corpus build
    # (e.g. another Python version), so retrain it.
    if not model_path.is_file() or model_path.stat().st_mtime_ns < paths["manifest"].stat().st_mtime_ns:
        train_tokenizer([paths["train"]], model_path, vocab_size=vocab_size)
    return Tokenizer(model_path)
