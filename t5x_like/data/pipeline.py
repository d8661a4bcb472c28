"""Training and evaluation input pipelines over packed, pre-tokenized rows.

Text is tokenized and packed once (:func:`prepare_packed_rows`, cached as an
``.npz``), then served from memory: a grain pipeline with exact, checkpointable
resume for training (:func:`make_train_iterator`) and a deterministic, padded
list of batches for evaluation (:func:`eval_batches`).

Batch features, all int32 ``[batch, length]``: ``decoder_input_tokens``,
``decoder_target_tokens``, ``decoder_segment_ids``, ``decoder_positions``,
``decoder_loss_weights`` (0 on padding).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import time
from typing import Sequence

import grain
import numpy as np

from t5x_like.data import jsonl, packing, stdlib_corpus, tokenizer as tokenizer_lib

logger = logging.getLogger(__name__)

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
# Documents per encode_batch call: large enough for SentencePiece's thread
# pool to pay off, small enough to bound peak memory on big corpora.
_ENCODE_CHUNK = 256
# Bump when the packed layout changes, so stale caches are not reused.
_CACHE_VERSION = 1


def _cache_key(texts, jsonl_paths, tok: tokenizer_lib.Tokenizer, length: int, extra: str) -> str:
    """Content hash of everything that determines the packed rows."""
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{extra}".encode())
    if jsonl_paths is not None:
        for path in jsonl_paths:
            manifest = pathlib.Path(path).parent / "manifest.json"
            # The manifest of a generated corpus identifies its content cheaply;
            # hash it together with the file itself to stay safe for other files.
            if manifest.is_file():
                h.update(manifest.read_bytes())
            h.update(pathlib.Path(path).read_bytes())
    else:
        for text in texts:
            h.update(text.encode("utf-8"))
            h.update(b"\0")
    return f"{h.hexdigest()[:12]}_tok{tok.file_hash()[:8]}_L{length}"


def _load_texts(texts, jsonl_paths, text_field: str, max_documents: int | None) -> list[str]:
    """Materialize documents from exactly one of ``texts`` / ``jsonl_paths``."""
    if (texts is None) == (jsonl_paths is None):
        raise ValueError("pass exactly one of texts= or jsonl_paths=")
    if texts is None:
        stats = jsonl.ReadStats()
        texts = [r[text_field] for p in jsonl_paths for r in jsonl.read_jsonl(p, text_field, stats)]
        if stats.total_skipped:
            logger.warning("Skipped %d malformed lines in %s: %s", stats.total_skipped, jsonl_paths, dict(stats.skipped))
    texts = [t for t in texts if t]
    return texts[:max_documents] if max_documents is not None else texts


def _tokenize_and_pack(texts: list[str], tok: tokenizer_lib.Tokenizer, length: int, seed: int | None,
                       source: str):
    """Tokenize, build decoder-only pieces, pack; return rows and summary stats."""
    pieces: list[dict[str, np.ndarray]] = []
    num_tokens = num_split = 0
    for start in range(0, len(texts), _ENCODE_CHUNK):
        for ids in tok.encode_batch(texts[start : start + _ENCODE_CHUNK]):
            doc_pieces = packing.decoder_only_pieces(ids, length, tok.bos_id, tok.eos_id)
            num_tokens += sum(len(p["decoder_input_tokens"]) for p in doc_pieces)
            num_split += len(doc_pieces) > 1
            pieces.extend(doc_pieces)
    if not pieces:
        raise ValueError(
            f"no usable document in {source}: {len(texts)} documents yielded no tokens (skipped "
            "records are logged with file:line and reason)"
        )
    packed = packing.pack_pieces(pieces, length, seed=seed)
    rows = {
        "decoder_input_tokens": packed["decoder_input_tokens"],
        "decoder_target_tokens": packed["decoder_target_tokens"],
        "decoder_segment_ids": packed["segment_ids"],
        "decoder_positions": packed["positions"],
        "decoder_loss_weights": packed["decoder_loss_weights"],
    }
    num_rows = rows["decoder_input_tokens"].shape[0]
    summary = dict(
        documents=len(texts), tokens=num_tokens, pieces=len(pieces), rows=num_rows,
        fill_percent=round(100.0 * num_tokens / (num_rows * length), 2), documents_split=num_split,
    )
    return rows, summary


def prepare_packed_rows(
    *,
    tokenizer: tokenizer_lib.Tokenizer,
    length: int,
    texts: Sequence[str] | None = None,
    jsonl_paths: Sequence[str | os.PathLike] | None = None,
    text_field: str = "text",
    cache_dir: str | os.PathLike | None = None,
    max_documents: int | None = None,
    seed: int | None = 0,
) -> dict[str, np.ndarray]:
    """Tokenize documents and pack them into int32 ``[rows, length]`` features.

    Documents come from exactly one of ``texts`` or ``jsonl_paths`` (bad JSONL
    lines are skipped and counted). Each becomes ``[bos] + ids + [eos]`` for
    next-token prediction, cut into ``length`` pieces and packed. With
    ``cache_dir`` the result is stored as
    ``packed_<corpus hash>_tok<tokenizer hash>_L<length>.npz`` and reloaded on
    later calls with the same inputs.
    """
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    cache_file = None
    if cache_dir is not None:
        if jsonl_paths is not None:
            jsonl_paths = [pathlib.Path(p) for p in jsonl_paths]
        key = _cache_key(texts, jsonl_paths, tokenizer, length, f"{text_field}|{max_documents}|{seed}")
        cache_file = pathlib.Path(cache_dir) / f"packed_{key}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as data:
                rows = {k: data[k] for k in FEATURES}
            logger.info("Loaded %d packed rows from %s", len(rows[FEATURES[0]]), cache_file)
            return rows
    start = time.perf_counter()
    docs = _load_texts(texts, jsonl_paths, text_field, max_documents)
    source = [str(p) for p in jsonl_paths] if jsonl_paths is not None else "the given texts"
    rows, summary = _tokenize_and_pack(docs, tokenizer, length, seed, source)
    logger.info("Packed rows in %.1fs: %s", time.perf_counter() - start, summary)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, **rows)
        os.replace(tmp, cache_file)
    return rows


class _GatherRows:
    """Map a batch of row indices to a feature dict (picklable, for grain workers)."""

    def __init__(self, rows: dict[str, np.ndarray]):
        self.rows = rows

    def __call__(self, indices_B: np.ndarray) -> dict[str, np.ndarray]:
        """Gather rows ``indices_B`` of every feature."""
        return {k: v[indices_B] for k, v in self.rows.items()}


def _num_rows(rows: dict[str, np.ndarray]) -> int:
    """Row count shared by all features; raise if they disagree."""
    counts = {k: v.shape[0] for k, v in rows.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"features have different row counts: {counts}")
    return next(iter(counts.values()))


def _per_process_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    """Validate the sharding arguments; return the per-process batch size."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} must be a positive multiple of "
            f"process_count {process_count}; pick a batch size divisible by the number of hosts"
        )
    return global_batch_size // process_count


def make_train_iterator(
    rows: dict[str, np.ndarray],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
    """Infinite, reshuffled-every-epoch iterator of this process's training batches.

    Each process sees the rows ``[process_index::process_count]``, shuffled with
    ``seed`` and a fresh permutation every epoch (grain reseeds the shuffle per
    epoch when it comes before ``repeat``). Batches are
    ``global_batch_size // process_count`` rows and may straddle epochs. The
    returned iterator supports ``get_state()`` / ``set_state()`` for exact
    resume and is checkpointable with ``grain.checkpoint.CheckpointSave``.
    """
    batch_size = _per_process_batch(global_batch_size, process_index, process_count)
    num_rows = _num_rows(rows)
    if num_rows < process_count:
        raise ValueError(f"only {num_rows} rows for {process_count} processes; need at least one row per process")
    ds = (
        grain.MapDataset.source(np.arange(num_rows))[process_index::process_count]
        .seed(seed)
        .shuffle()
        .repeat(None)
        # Batch the indices, then gather all rows of a batch with one fancy
        # index per feature: much cheaper than per-row dicts plus a stack.
        .batch(batch_size, drop_remainder=True, batch_fn=np.asarray)
        .map(_GatherRows(rows))
    )
    # Rows are in memory; grain recommends no reader threads for that case.
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def eval_batches(
    rows: dict[str, np.ndarray],
    *,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """Deterministic evaluation batches (no shuffle) for this process.

    Rows are padded with all-zero rows (loss weight 0) up to a multiple of
    ``global_batch_size``, so every process gets the same number of batches and
    every real row is counted exactly once across processes. Global batch ``b``
    is rows ``[b*G, (b+1)*G)``; process ``p`` takes its contiguous share.
    """
    batch_size = _per_process_batch(global_batch_size, process_index, process_count)
    num_rows = _num_rows(rows)
    num_batches = -(-num_rows // global_batch_size)
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)
    batches = []
    for b in range(num_batches):
        lo = b * global_batch_size + process_index * batch_size
        batch = {}
        for k, v in rows.items():
            chunk = v[lo : lo + batch_size]
            pad = np.zeros((batch_size - len(chunk),) + v.shape[1:], dtype=v.dtype)
            batch[k] = np.concatenate([chunk, pad]) if len(pad) else chunk
        batches.append(batch)
    return batches


def stdlib_datasets(
    data_dir: str | os.PathLike | None, length: int, vocab_size: int = tokenizer_lib.DEFAULT_VOCAB_SIZE
) -> tuple[tokenizer_lib.Tokenizer, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Default-run data: ``(tokenizer, train_rows, eval_rows)`` from the stdlib corpus.

    Builds (or reuses) ``<data_dir>/stdlib/`` and the cached tokenizer there,
    and caches packed rows under ``<data_dir>/cache/``. ``data_dir=None`` means
    :func:`stdlib_corpus.default_data_dir`.
    """
    data_dir = pathlib.Path(data_dir) if data_dir is not None else stdlib_corpus.default_data_dir()
    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(data_dir))
    tok = tokenizer_lib.default_tokenizer(data_dir, vocab_size=vocab_size)
    cache_dir = data_dir / "cache"
    train_rows = prepare_packed_rows(tokenizer=tok, length=length, jsonl_paths=[paths["train"]], cache_dir=cache_dir)
    eval_rows = prepare_packed_rows(
        tokenizer=tok, length=length, jsonl_paths=[paths["validation"]], cache_dir=cache_dir, seed=None
    )
    return tok, train_rows, eval_rows
