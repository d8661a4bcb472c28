"""Training SentencePiece models with the project's reserved-id layout.

Layout of every model trained here (``num_sentinels=n``, ``m`` mode tokens)::

    0 pad   1 eos   2 unk   3 bos   4 "\\n"   5 "\\t"
    6 .. 5+m                 mode tokens, in the given order ([NLU]=6, [NLG]=7, [S2S]=8)
    6+m .. 5+m+n             <extra_id_{n-1}>, ..., <extra_id_0>
    then 256 byte-fallback pieces, then learned pieces up to ``vocab_size``

so sentinel ``i`` has id ``sentinel_base - i`` with ``sentinel_base = 5 + m + n``
(the id of ``<extra_id_0>``), counting down like T5's ``<extra_id_0> = 32099``.
Mode tokens come before the sentinels so that their ids do not depend on
``num_sentinels``. SentencePiece assigns user-defined symbols the first free ids
after the special ids, in list order, which is what makes this layout exact.

Sentinels and mode tokens are *user-defined symbols*: single ids, never split,
rendered back as their text by ``decode``, and matched in input text, so
``encode("a<extra_id_5>b")`` yields the sentinel id of ``<extra_id_5>``
(a corpus that contains that literal text gets the real sentinel id).
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
import re
import time
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm

from t5x_like.data import jsonl

logger = logging.getLogger(__name__)

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
NO_BOS = -1
DEFAULT_VOCAB_SIZE = 2048
DEFAULT_NUM_SENTINELS = 100
DEFAULT_MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
# SentencePiece otherwise drops newlines and tabs, which source code needs.
WHITESPACE_SYMBOLS = ("\n", "\t")
# A mode token is a bracketed name; the pattern is also how a loaded model's
# mode tokens are recognized among its user-defined pieces.
MODE_TOKEN_RE = re.compile(r"^\[[^\[\]\s,]+\]$")
SENTINEL_RE = re.compile(r"^<extra_id_(0|[1-9][0-9]*)>$")
MODEL_TYPES = ("bpe", "unigram")
# A bounded sample keeps training to about a second; 3 MB of code is plenty
# to estimate a 2k vocabulary.
DEFAULT_SAMPLE_BYTES = 3_000_000
# Below SentencePiece's own ``max_sentence_length`` (4192), which silently
# drops longer sentences from training.
DEFAULT_MAX_SENTENCE_BYTES = 4000
NUM_BYTE_PIECES = 256
SEED = 0


def sentinel_piece(i: int) -> str:
    """The text of sentinel ``i``: ``<extra_id_i>``."""
    return f"<extra_id_{i}>"


def reserved_symbols(num_sentinels: int, mode_tokens: Sequence[str]) -> list[str]:
    """The user-defined symbols of a trained model, in id order (see the module docstring).

    Raises ValueError for a negative sentinel count or a mode token that is not a
    bracketed name like ``[NLU]`` (the form loaders recognize), or is repeated.
    """
    if num_sentinels < 0:
        raise ValueError(f"num_sentinels = {num_sentinels} must be >= 0")
    mode_tokens = list(mode_tokens)
    for name in mode_tokens:
        if not isinstance(name, str) or not MODE_TOKEN_RE.match(name):
            raise ValueError(
                f"mode token {name!r} must be a bracketed name without spaces or commas, e.g. '[NLU]'")
    duplicates = sorted({n for n in mode_tokens if mode_tokens.count(n) > 1})
    if duplicates:
        raise ValueError(f"mode tokens {duplicates} are listed more than once in {mode_tokens}")
    sentinels = [sentinel_piece(i) for i in reversed(range(num_sentinels))]
    return [*WHITESPACE_SYMBOLS, *mode_tokens, *sentinels]


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


def _check_vocab_size(vocab_size: int, symbols: Sequence[str], num_sentinels: int) -> None:
    """Fail early, with the arithmetic, when reserved ids leave no room for learned pieces."""
    reserved = 4 + len(symbols) + NUM_BYTE_PIECES
    if vocab_size <= reserved:
        raise ValueError(
            f"vocab_size = {vocab_size} leaves no room for learned pieces: 4 special ids + "
            f"{len(symbols) - num_sentinels} whitespace/mode tokens + {num_sentinels} sentinels + "
            f"{NUM_BYTE_PIECES} byte pieces = {reserved} reserved ids; raise vocab_size or lower num_sentinels")


def train_tokenizer(
    jsonl_paths: Sequence[str | os.PathLike],
    model_path: str | os.PathLike,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    text_field: str = "text",
    max_sentence_bytes: int = DEFAULT_MAX_SENTENCE_BYTES,
    sample_bytes: int = DEFAULT_SAMPLE_BYTES,
    num_sentinels: int = DEFAULT_NUM_SENTINELS,
    mode_tokens: Sequence[str] = DEFAULT_MODE_TOKENS,
    model_type: str = "bpe",
) -> pathlib.Path:
    """Train a SentencePiece model on the first ``sample_bytes`` of text; write ``model_path``.

    ``vocab_size`` counts every id, reserved ones included (see the module
    docstring for the layout). Deterministic: same inputs give byte-identical
    model files. That relies on a fixed seed and ``num_threads=1`` (the BPE
    merge order depends on the thread count); BPE on 3 MB still takes well
    under a second.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type = {model_type!r}; expected one of {MODEL_TYPES}")
    symbols = reserved_symbols(num_sentinels, mode_tokens)
    _check_vocab_size(vocab_size, symbols, num_sentinels)
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
        model_type=model_type,
        vocab_size=vocab_size,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=symbols,
        max_sentence_length=max_sentence_bytes + 192,
        num_threads=1,
        minloglevel=2,
    )
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(model_path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(model.getvalue())
    os.replace(tmp, model_path)
    logger.info(
        "Trained %d-piece %s tokenizer (%d sentinels, mode tokens %s) on %d sentences in %.2fs -> %s",
        vocab_size, model_type, num_sentinels, list(mode_tokens), len(sentences),
        time.perf_counter() - start, model_path,
    )
    return model_path
