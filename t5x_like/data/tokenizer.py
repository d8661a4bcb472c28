"""SentencePiece tokenizer: a thin, lossless wrapper that knows sentinels and mode tokens.

Id layout (T5 convention plus BOS): pad=0, eos=1, unk=2, bos=3. Models that
have no BOS (T5's own 32k ``spiece.model``: pad 0, eos 1, unk 2) are accepted
with ``bos_id == -1``, meaning "no BOS token".

Sentinels (``<extra_id_i>``, for span corruption) and UL2 mode tokens
(``[NLU]``, ``[NLG]``, ``[S2S]``) come from one of two places:

* pieces of the SentencePiece model, found by name. Models trained by
  :func:`train_tokenizer` have them as user-defined symbols at low ids with
  ``sentinel_id(i) = sentinel_base - i`` (layout in
  :mod:`t5x_like.data.tokenizer_training`); ``encode`` maps their literal text
  to their ids.
* ``extra_ids=N`` ids appended after the model (T5: 32000 pieces + 100 extra
  ids, vocab 32100), ``sentinel_id(i) = vocab_size - 1 - i``. The model does not
  know them, so ``encode`` never produces them (literal ``<extra_id_0>`` text is
  split like any text); ``decode`` renders them as ``<extra_id_i>``. Mode tokens
  for such a model must be declared with ``mode_token_ids``.

Our trained models are byte-exact on arbitrary text, which matters for
source code: identity normalization, no whitespace collapsing, no dummy
prefix, byte fallback for unseen characters, and ``"\\n"`` / ``"\\t"`` as
user-defined symbols because SentencePiece otherwise drops newlines.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import sentencepiece as spm

from t5x_like.data import stdlib_corpus
from t5x_like.data.tokenizer_training import (  # noqa: F401  (re-exported)
    BOS_ID, DEFAULT_MAX_SENTENCE_BYTES, DEFAULT_MODE_TOKENS, DEFAULT_NUM_SENTINELS,
    DEFAULT_SAMPLE_BYTES, DEFAULT_VOCAB_SIZE, EOS_ID, MODE_TOKEN_RE, NO_BOS, PAD_ID, SEED,
    SENTINEL_RE, UNK_ID, sentinel_piece, train_tokenizer,
)

logger = logging.getLogger(__name__)

# Bumped whenever the default tokenizer's id layout changes, so that a cached
# model of an older layout is never picked up (v2: sentinels and mode tokens).
LAYOUT_VERSION = 2
# SentencePiece's ModelProto.SentencePiece.Type values.
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


class SentinelExhaustedError(ValueError):
    """A sentinel index at or beyond the tokenizer's number of sentinels was requested."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode the protobuf varint at ``buf[pos]``; return ``(value, next_pos)``."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes):
    """Yield ``(field_number, wire_type, value)`` of a protobuf message; LEN values as bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in a SentencePiece model")
        yield field, wire, value


def _piece_types(serialized_model: bytes) -> list[int]:
    """The type of every piece of a serialized SentencePiece ModelProto, in id order.

    The Python binding exposes is_control/is_byte/... but not "user-defined",
    which is what tells a reserved ``[NLU]`` from a learned piece of that text;
    a minimal reader avoids depending on protobuf's generated classes.
    """
    types = []
    for field, wire, value in _fields(serialized_model):
        if field == 1 and wire == 2:  # repeated SentencePiece pieces
            types.append(next((v for f, w, v in _fields(value) if f == 3 and w == 0), _NORMAL))
    return types


def _check_special_ids(sp: spm.SentencePieceProcessor, model_path: pathlib.Path) -> None:
    """Raise ValueError unless the model has pad 0, eos 1, unk 2 and bos 3 or none."""
    got = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    want = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID}
    if got != want or sp.bos_id() not in (BOS_ID, NO_BOS):
        raise ValueError(
            f"{model_path}: special ids {got | {'bos': sp.bos_id()}} do not match the "
            f"expected layout {want | {'bos': f'{BOS_ID} or {NO_BOS}'}}; retrain with train_tokenizer()"
        )


def _model_reserved_pieces(sp: spm.SentencePieceProcessor, model_path: pathlib.Path):
    """Sentinel ids (index i -> id), mode tokens (name -> id) and piece types found in the model."""
    types = _piece_types(sp.serialized_model_proto())
    sentinels, modes = {}, {}
    for i, piece in enumerate(sp.id_to_piece(list(range(sp.vocab_size())))):
        if match := SENTINEL_RE.match(piece):
            sentinels[int(match.group(1))] = i
        elif MODE_TOKEN_RE.match(piece) and types[i] in (_USER_DEFINED, _CONTROL):
            modes[piece] = i
    missing = sorted(set(range(len(sentinels))) - set(sentinels))
    if missing:
        raise ValueError(f"{model_path}: sentinel pieces are not numbered 0..{len(sentinels) - 1} "
                         f"(missing <extra_id_{missing[0]}>); declare a model with consecutive sentinels")
    return [sentinels[i] for i in range(len(sentinels))], modes, types


class Tokenizer:
    """A SentencePiece model (pad=0, eos=1, unk=2, bos=3 or none) plus sentinels and mode tokens."""

    def __init__(self, model_path: str | os.PathLike, *, extra_ids: int = 0,
                 mode_token_ids: Mapping[str, int] | None = None, num_threads: int | None = None):
        """Load ``model_path``; append ``extra_ids`` ids; set up sentinels and mode tokens.

        ``mode_token_ids`` (name -> id) replaces the mode tokens found in the
        model. Declared ids must be in range and not special ids or sentinels;
        ones among the extra ids must be the lowest extra ids, so that the
        sentinels keep counting down from ``vocab_size - 1`` (with 100 extra ids
        and 3 mode tokens on 32000..32002 there are 97 sentinels). Raises
        ValueError for a model or declaration that breaks these rules.
        """
        self.model_path = pathlib.Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"tokenizer model {self.model_path} does not exist; train one with train_tokenizer()")
        self._sp = spm.SentencePieceProcessor(model_file=os.fspath(self.model_path))
        self._num_threads = num_threads if num_threads is not None else (os.cpu_count() or 1)
        _check_special_ids(self._sp, self.model_path)
        if extra_ids < 0:
            raise ValueError(f"extra_ids = {extra_ids} must be >= 0")
        self.extra_ids = int(extra_ids)
        self._num_pieces = self._sp.vocab_size()
        sentinels, modes, types = _model_reserved_pieces(self._sp, self.model_path)
        if sentinels and extra_ids:
            raise ValueError(f"{self.model_path} already has {len(sentinels)} sentinel pieces; "
                             f"load it with extra_ids=0 instead of {extra_ids}")
        if mode_token_ids is not None:
            modes = self._check_declared_modes(dict(mode_token_ids), set(sentinels), types)
        in_extra = sum(i >= self._num_pieces for i in modes.values())
        top = self.vocab_size - 1
        sentinels = sentinels or [top - i for i in range(self.extra_ids - in_extra)]
        self._sentinel_ids = np.asarray(sentinels, np.int32)
        self._sentinel_ids.setflags(write=False)
        self._sentinel_mask = np.zeros(self.vocab_size, bool)
        self._sentinel_mask[self._sentinel_ids] = True
        self._mode_tokens = modes
        # Ids SentencePiece cannot render itself: extra ids, and control pieces
        # (which it decodes to nothing).
        named = {i: sentinel_piece(k) for k, i in enumerate(sentinels)} | {i: n for n, i in modes.items()}
        self._named = {i: t for i, t in named.items() if i >= self._num_pieces or types[i] == _CONTROL}

    def _check_declared_modes(self, declared: dict, sentinels: set, types: list) -> dict:
        """Validate declared mode-token ids (see ``__init__``); return them as name -> int id."""
        for name in declared:
            if not isinstance(name, str) or not MODE_TOKEN_RE.match(name):
                raise ValueError(f"mode token name {name!r} must be a bracketed name like '[NLU]'")
        modes = {name: int(i) for name, i in declared.items()}
        if len(set(modes.values())) != len(modes):
            raise ValueError(f"mode_token_ids {modes} maps several names to the same id")
        specials = {PAD_ID: "pad", EOS_ID: "eos", UNK_ID: "unk", self.bos_id: "bos"}
        n, top = self._num_pieces, self.vocab_size - 1
        lowest_extra = range(n, n + sum(i >= n for i in modes.values()))
        for name, i in modes.items():
            if not 0 <= i <= top:
                raise ValueError(f"mode token {name} = {i} is outside the vocabulary 0..{top} "
                                 f"({n} pieces + {self.extra_ids} extra ids)")
            if i in specials:
                raise ValueError(f"mode token {name} = {i} collides with the {specials[i]} id")
            if i in sentinels:
                raise ValueError(f"mode token {name} = {i} collides with a sentinel piece {self._sp.id_to_piece(i)!r}")
            if i >= n and i not in lowest_extra:
                raise ValueError(
                    f"mode token {name} = {i} collides with sentinel <extra_id_{top - i}> (extra ids count "
                    f"down from {top}); mode tokens among the extra ids must take the lowest ones, "
                    f"{lowest_extra[0]}..{lowest_extra[-1]}")
            if i < n and types[i] not in (_USER_DEFINED, _CONTROL):
                logger.warning("mode token %s = %d is the ordinary piece %r, which encode() also produces "
                               "for text", name, i, self._sp.id_to_piece(i))
        return modes

    @property
    def vocab_size(self) -> int:
        """Number of ids, extra ids included (ids are ``0 .. vocab_size - 1``)."""
        return self._num_pieces + self.extra_ids

    @property
    def num_pieces(self) -> int:
        """Number of pieces in the SentencePiece model itself (``vocab_size - extra_ids``)."""
        return self._num_pieces

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

    @property
    def num_sentinels(self) -> int:
        """How many sentinels (``<extra_id_0>`` ..) this tokenizer has; 0 if none."""
        return len(self._sentinel_ids)

    @property
    def sentinel_ids(self) -> np.ndarray:
        """Read-only int32 array: index i -> id of sentinel i (decreasing for our and T5's layouts)."""
        return self._sentinel_ids

    def sentinel_id(self, i: int) -> int:
        """Id of sentinel ``i``; raises SentinelExhaustedError (a ValueError) if there is no sentinel ``i``."""
        if not 0 <= i < self.num_sentinels:
            raise SentinelExhaustedError(
                f"sentinel {i} requested but {self.model_path.name} has {self.num_sentinels} sentinels "
                f"(valid indices 0..{self.num_sentinels - 1}); cap the number of noise spans at "
                f"{self.num_sentinels} or use a tokenizer with more sentinels")
        return int(self._sentinel_ids[i])

    def is_sentinel(self, ids) -> np.ndarray:
        """Bool array of ``ids``' shape: which ids are sentinels (out-of-range ids are not)."""
        ids = np.asarray(ids, dtype=np.int64)
        valid = (ids >= 0) & (ids < self.vocab_size)
        return np.where(valid, self._sentinel_mask[np.where(valid, ids, 0)], False)

    @property
    def mode_tokens(self) -> dict[str, int]:
        """Mode tokens, name -> id (a copy); empty if the tokenizer has none."""
        return dict(self._mode_tokens)

    def mode_token_id(self, name: str) -> int:
        """Id of mode token ``name`` (e.g. ``"[NLU]"``); ValueError listing the available ones if absent."""
        if name not in self._mode_tokens:
            raise ValueError(
                f"{self.model_path.name} has no mode token {name!r}; available: {sorted(self._mode_tokens) or 'none'}"
                " (train with mode_tokens=..., or declare mode_token_ids= when loading)")
        return self._mode_tokens[name]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel by SentencePiece's thread pool."""
        return self._sp.encode(list(texts), num_threads=self._num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: sentinels render as ``<extra_id_i>``, mode tokens as their name.

        Padding and ids outside the vocabulary (e.g. a padded embedding table) are dropped.
        """
        ids = [int(i) for i in ids]
        if not self._named:
            return self._sp.decode([i for i in ids if 0 < i < self._num_pieces])
        parts: list[str] = []
        run: list[int] = []
        for i in [*[i for i in ids if 0 < i < self._num_pieces or i in self._named], None]:  # None flushes
            if i is not None and i < self._num_pieces and i not in self._named:
                run.append(i)
                continue
            if run:
                text = self._sp.decode(run)
                # Models with a dummy prefix (T5) drop the leading space of what
                # they decode; a run after a sentinel is not the text's start.
                if parts and self._sp.id_to_piece(run[0]).startswith("\u2581") and not text.startswith(" "):
                    text = " " + text
                parts.append(text)
                run = []
            if i is not None:
                parts.append(self._named[i])
        return "".join(parts)

    def file_hash(self) -> str:
        """Short content hash of the model file, for cache keys."""
        return hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:16]


def _load_default_layout(model_path: pathlib.Path, vocab_size: int) -> Tokenizer | None:
    """The cached model at ``model_path`` if it has the default layout, else None (to retrain)."""
    try:
        tok = Tokenizer(model_path)
    except (ValueError, RuntimeError, OSError) as e:
        logger.warning("Ignoring unreadable cached tokenizer %s (%s); retraining", model_path, e)
        return None
    layout = (tok.vocab_size, tok.bos_id, tok.num_sentinels, tuple(tok.mode_tokens))
    want = (vocab_size, BOS_ID, DEFAULT_NUM_SENTINELS, DEFAULT_MODE_TOKENS)
    if layout != want:
        logger.warning("Cached tokenizer %s has layout (vocab, bos, sentinels, mode tokens) = %s, not %s; "
                       "retraining", model_path, layout, want)
        return None
    return tok


def default_tokenizer(
    data_dir: str | os.PathLike | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> Tokenizer:
    """The stdlib-trained tokenizer, trained once and cached at ``<data_dir>/stdlib/sp<vocab>_v2.model``.

    It has the default layout: 100 sentinels and the mode tokens [NLU] [NLG]
    [S2S] within ``vocab_size`` ids. A cached file that lacks them (an older
    layout) is retrained, never reused.
    """
    corpus_dir = stdlib_corpus.stdlib_corpus_dir(data_dir)
    paths = stdlib_corpus.build_stdlib_corpus(corpus_dir)
    model_path = corpus_dir / f"sp{vocab_size}_v{LAYOUT_VERSION}.model"
    # A model older than the manifest was trained on a previous corpus build
    # (e.g. another Python version), so retrain it.
    if model_path.is_file() and model_path.stat().st_mtime_ns >= paths["manifest"].stat().st_mtime_ns:
        tok = _load_default_layout(model_path, vocab_size)
        if tok is not None:
            return tok
    train_tokenizer([paths["train"]], model_path, vocab_size=vocab_size)
    return Tokenizer(model_path)
