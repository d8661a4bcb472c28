"""MeCo (metadata conditioning, then cooldown): metadata values, prefixes, piece cuts, the switch.

Pure numpy (spec: ``specs/meco.md``; the rules and their reasons: docs/data.md, "MeCo details").
A stage-1 causal example is ``[BOS] + prefix + doc + [EOS]``, the prefix tokenized on its own,
with weight 0 exactly on the targets that are prefix tokens (by position, not id). A long
document's pieces repeat the prefix (``continuation='repeat'``) or carry it on the first piece
only ('first_only'); a step is metadata-free from ``cooldown_step`` on.
"""

from __future__ import annotations

import collections
import fractions
import math
import re
import threading
import typing
from typing import Any, Mapping

import numpy as np

from t5x_like.config import Continuation, MetadataKind, ObjectiveConfig

KINDS = typing.get_args(MetadataKind)
CONTINUATIONS = typing.get_args(Continuation)

Piece = tuple[int, int, bool]  # (doc_start, doc_len, has_prefix)

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_HOST_END_RE = re.compile(r"[/?#\\]")
_LABEL_RE = re.compile(r"[\w\-]+")  # unicode letters and digits (IDN), '_' and '-'
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_NO_IDS = np.zeros(0, np.int32)
_NO_IDS.setflags(write=False)


# ---------------------------------------------------------------- metadata values


def _as_text(value: Any) -> Any:
    """``value`` with bytes decoded (None if not UTF-8) and numpy scalars made Python scalars."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def url_domain(url: str) -> str | None:
    """The host of ``url`` as MeCo's 'domain' metadata, or None if ``url`` has no usable host.

    ``'https://en.wikipedia.org/wiki/X'``, ``'en.wikipedia.org/wiki/X'`` and
    ``'//en.wikipedia.org/x'`` all give ``'en.wikipedia.org'``. Rules in docs/data.md, "MeCo details"
    (``www.`` kept, lower-cased, port / userinfo / trailing dot dropped, a dot required).
    """
    if not isinstance(url, str):
        return None
    s = url.strip()
    scheme = _SCHEME_RE.match(s)
    authority = bool(scheme) or s.startswith("//")
    s = s[scheme.end():] if scheme else s[2:] if s.startswith("//") else s
    host = _HOST_END_RE.split(s, maxsplit=1)[0]
    if "@" in host:
        if not authority:  # 'user@example.com' is an e-mail address, not a URL
            return None
        host = host.rpartition("@")[2]
    if host.startswith("["):  # IPv6 literal, '[::1]:8080'
        inner, close, rest = host[1:].partition("]")
        if not close or not _IPV6_RE.fullmatch(inner) or ":" not in inner or (
                rest and not re.fullmatch(r":\d*", rest)):
            return None
        return f"[{inner.lower()}]"
    host, colon, port = host.partition(":")
    if colon and port and not port.isdigit():  # 'mailto:x', 'javascript:void(0)'
        return None
    host = host.rstrip(".").lower()
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        return None
    return host


def metadata_value(metadata: Mapping[str, Any] | None, field: str, kind: str) -> str | None:
    """The metadata string of ``metadata[field]`` under ``kind`` ('domain', 'url' or 'value').

    None when the document has no usable value: the field is missing, None, empty or blank, not a
    scalar (list, dict, ...), NaN/inf, or (for 'domain') not a URL with a host. 'domain' and 'url'
    accept strings only (and UTF-8 bytes); 'value' accepts any scalar and gives ``str()`` of it.
    """
    if kind not in KINDS:
        raise ValueError(f"metadata kind {kind!r}: must be one of {KINDS}")
    if not metadata:
        return None
    value = _as_text(metadata.get(field))
    if kind == "domain":
        return url_domain(value) if isinstance(value, str) else None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if kind == "url" and not isinstance(value, str):
        return None
    if not isinstance(value, (str, int, float, bool)):
        return None
    text = str(value).strip()
    return text or None


# ---------------------------------------------------------------- spec and prefixes


def prefix_text(value: str | None, spec: ObjectiveConfig) -> str | None:
    """The template filled with ``value``, with the placeholder, or None (missing='skip')."""
    if value is None:
        if spec.missing_metadata == "skip":
            return None
        value = spec.metadata_placeholder
    return spec.metadata_template.format(value=value)


class PrefixTokenizer:
    """Tokenizes metadata prefixes, separately from documents, with a cache and counters.

    ``tokenizer``: anything with ``encode(text) -> list[int]`` (a ``t5x_like.data.tokenizer.
    Tokenizer``). Prefix ids are cached by prefix text (an LRU of ``cache_size`` entries: a
    'domain' corpus has few distinct prefixes, a 'url' one may have one per document).
    Thread-safe (grain reads with threads); picklable if the tokenizer is (each copy counts on
    its own).
    """

    def __init__(self, tokenizer, spec: ObjectiveConfig, *, cache_size: int = 65536):
        """Prefixes under ``spec``'s metadata fields, tokenized with ``tokenizer``; at most
        ``cache_size`` cached."""
        if cache_size < 0:
            raise ValueError(f"cache_size = {cache_size}: must be >= 0")
        self.tokenizer, self.spec, self.cache_size = tokenizer, spec, int(cache_size)
        self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("documents", "with_metadata", "placeholder", "no_prefix", "prefix_tokens",
             "cache_misses"), 0)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _encode(self, text: str) -> np.ndarray:
        """Cached read-only int32 ids of ``text``; call with the lock held."""
        ids = self._cache.get(text)
        if ids is not None:
            self._cache.move_to_end(text)
            return ids
        self._counts["cache_misses"] += 1
        ids = np.asarray(self.tokenizer.encode(text), np.int32).reshape(-1)
        ids.setflags(write=False)
        if self.cache_size:
            self._cache[text] = ids
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ids

    def ids(self, metadata: Mapping[str, Any] | None, *, count: bool = True) -> np.ndarray:
        """Read-only int32 ids of the document's prefix; empty when it gets none ('skip').

        ``count``: add the document to ``stats()``. Count each document once (pass
        ``count=False`` when the same document is looked up again, e.g. at row assembly after
        planning).
        """
        value = metadata_value(metadata, self.spec.metadata_field, self.spec.metadata_kind)
        text = prefix_text(value, self.spec)
        with self._lock:
            ids = _NO_IDS if text is None else self._encode(text)
            if count:
                c = self._counts
                c["documents"] += 1
                c["with_metadata"] += value is not None
                c["placeholder"] += value is None and text is not None
                c["no_prefix"] += text is None
                c["prefix_tokens"] += ids.size
        return ids

    def stats(self) -> dict[str, int]:
        """Counters for the data summary.

        ``documents`` (counted look-ups), ``with_metadata`` (a real value), ``without_metadata``
        (= ``placeholder`` + ``no_prefix``), ``placeholder`` (got the placeholder prefix),
        ``no_prefix`` (missing='skip': no prefix), ``prefix_tokens`` (prefix ids handed out, summed
        over counted documents), ``distinct_cached`` and ``cache_misses`` (tokenizer calls).
        """
        with self._lock:
            out = dict(self._counts)
            out["without_metadata"] = out["placeholder"] + out["no_prefix"]
            out["distinct_cached"] = len(self._cache)
        return out


# ---------------------------------------------------------------- stage-1 rows


def _check_continuation(continuation: str) -> None:
    if continuation not in CONTINUATIONS:
        raise ValueError(f"continuation = {continuation!r}: must be one of {CONTINUATIONS}")


def _head_len(piece: Piece, prefix_len: int, bos: bool) -> int:
    """Tokens before the piece's text: BOS + prefix (prefixed piece), BOS (an unprefixed first
    piece) or the one context token before the cut (a plain continuation)."""
    start, _, has_prefix = piece
    if has_prefix:
        return int(bos) + prefix_len
    return int(bos) if start == 0 else 1


def piece_length(piece: Piece, doc_len: int, prefix_len: int, *, bos: bool = True) -> int:
    """(input, target) pairs of ``piece`` of a document of ``doc_len`` tokens: the positions it
    takes in a packed row (its sequence length minus one)."""
    start, n, _ = piece
    return _head_len(piece, prefix_len, bos) + n + int(start + n == doc_len) - 1


def split_with_prefix(doc_len: int, prefix_len: int, length: int,
                      continuation: str = "repeat", *, bos: bool = True) -> list[Piece]:
    """Cut a document into pieces of at most ``length`` pairs each, prefix included.

    Each piece is ``(doc_start, doc_len, has_prefix)``: its text is ``doc[doc_start : doc_start +
    doc_len]``, appended after its head (``[BOS] + prefix`` when ``has_prefix``; for a plain
    continuation, the one document token before the cut, as ``CausalLMRows`` does); the piece
    that reaches the document's end also ends in EOS. Every document token is in exactly one
    piece's text and is a target exactly once (except the first token of a document with neither
    BOS nor prefix, an input only, as in ``CausalLMRows``); ``piece_length`` of every piece is
    ``<= length``.

    ``continuation``: 'repeat' gives every piece the prefix; 'first_only' only the first (see
    docs/data.md). ``prefix_len == 0`` (no prefix) gives the plain split of
    ``CausalLMRows``. No piece holds the EOS alone: the piece whose text reaches the document's
    end always has text and the EOS, so ``(doc_start, doc_len)`` alone says where the EOS is (this
    moves one token from the previous piece where ``CausalLMRows`` would cut the EOS off by
    itself). Raises ValueError if a prefixed piece cannot hold one document token and the EOS
    besides its prefix, or if ``length < 2``.
    A document with no pairs at all (no BOS, no prefix, no tokens) gives ``[]``.
    """
    _check_continuation(continuation)
    if doc_len < 0 or prefix_len < 0 or length < 2:
        raise ValueError(f"doc_len = {doc_len}, prefix_len = {prefix_len}, length = {length}: "
                         f"need doc_len >= 0, prefix_len >= 0 and length >= 2 (a token and its EOS)")
    b = int(bool(bos))
    if prefix_len and b + prefix_len + 1 > length:
        raise ValueError(
            f"a metadata prefix of {prefix_len} tokens{' (+ BOS)' if b else ''} leaves no room in "
            f"a row of {length} positions: a prefixed piece needs {b + prefix_len + 1} (prefix, "
            f"one document token, EOS); shorten the template/value or raise the length")
    pieces: list[Piece] = []
    start = 0
    while True:
        has_prefix = prefix_len > 0 and (start == 0 or continuation == "repeat")
        head = _head_len((start, 0, has_prefix), prefix_len, bos)
        rest = doc_len - start
        if head + rest <= length:  # the rest and the EOS fit
            if head + rest >= 1:
                pieces.append((start, rest, has_prefix))
            return pieces
        # Fill the row (pairs = head + take - 1 = length, no EOS), but leave at least one token
        # for the next piece so that the EOS never sits alone (rest >= 2 here, as length >= 2).
        take = min(length - head + 1, rest - 1)
        pieces.append((start, take, has_prefix))
        start += take


def piece_example(doc_ids, prefix_ids, piece: Piece, bos_id: int,
                  eos_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights) int32 of one piece from ``split_with_prefix``.

    Length ``piece_length(piece, len(doc_ids), len(prefix_ids), bos=bos_id >= 0)``. Weight 0
    exactly where the target is a prefix token (by position, whatever its id), 1 on text and EOS
    targets. ``bos_id < 0``: no BOS.
    """
    doc_N = np.asarray(doc_ids, np.int32).reshape(-1)
    prefix_M = np.asarray(prefix_ids, np.int32).reshape(-1)
    start, n, has_prefix = piece
    if not (0 <= start and 0 <= n and start + n <= doc_N.size):
        raise ValueError(f"piece {piece} is outside a document of {doc_N.size} tokens")
    if has_prefix and start > 0 and not prefix_M.size:
        raise ValueError(f"piece {piece} is a prefixed continuation but the prefix is empty")
    bos = [bos_id] if bos_id >= 0 else []
    if has_prefix:
        head = np.concatenate([np.asarray(bos, np.int32), prefix_M])
    elif start == 0:
        head = np.asarray(bos, np.int32)
    else:
        head = doc_N[start - 1 : start]
    tail = np.asarray([eos_id] if start + n == doc_N.size else [], np.int32)
    seq = np.concatenate([head, doc_N[start : start + n], tail])
    no_loss = np.zeros(seq.size, bool)
    no_loss[: head.size] = True  # BOS, prefix, or a context token: never a trained target
    return seq[:-1].copy(), seq[1:].copy(), (~no_loss[1:]).astype(np.int32)


# ---------------------------------------------------------------- the switch


def cooldown_step(train_steps: int, fraction: float) -> int:
    """The first step without metadata: ``floor(fraction * train_steps)``.

    ``fraction``: the share of training conditioned on metadata (0.9 = a 10% cooldown), in
    [0, 1]. Computed on the decimal ``fraction`` is written as (``str(0.57)``), so 0.57 * 100
    gives 57, not the 56 of binary floating point. 0 means no step has metadata; 1 still makes
    step ``train_steps`` (the last) metadata-free.
    """
    if isinstance(train_steps, bool) or int(train_steps) != train_steps or train_steps < 0:
        raise ValueError(f"train_steps = {train_steps!r}: must be an integer >= 0")
    try:
        exact = (fraction if isinstance(fraction, fractions.Fraction)
                 else fractions.Fraction(str(fraction)))
    except (ValueError, TypeError):
        exact = None
    if exact is None or not 0 <= exact <= 1:
        raise ValueError(f"metadata fraction = {fraction!r}: must be in [0, 1] (0.9 = 90% of the "
                         f"steps with metadata, then a 10% cooldown)")
    return math.floor(exact * int(train_steps))
