"""Prepared data: a corpus tokenized once into ArrayRecord shards, read by index at train time.

``prepare`` reads any source that :mod:`t5x_like.data.sources` understands, tokenizes it in
parallel worker processes (one source shard per task) and writes, into one directory::

    tokens-00000-of-000NN.array_record   one record per chunk of at most CHUNK_TOKENS tokens
    lengths.npy                          int64 token count per document, in corpus order
    inputs_lengths.npy                   int64 inputs tokens per example (supervised tasks only)
    scores.npy                           float32 per document (only with a score field)
    manifest.json                        written last: the directory is complete iff it exists

A record is ``<u32 header size><JSON header><tokens>``; the header holds the document's
metadata and location, so a piece of a document costs one or two small reads and never the
whole (possibly million-token) document. Documents stay in source order whatever the worker
count, so the same corpus always prepares to the same bytes.

A supervised task's example (``PrepareOptions.inputs_field``) is stored as one document whose
tokens are its inputs then its targets, uncut (the budgets belong to a run, not to the data),
with ``inputs_lengths.npy`` marking the split and the raw strings in its first record's header
(``inputs``, ``targets``), for predictions.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import struct
import time
from typing import Sequence

import numpy as np

from t5x_like.config import ConfigError
from t5x_like.data import sources
from t5x_like.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# 1: text documents. 2: supervised examples as well (inputs_lengths.npy, raw strings in the
# header). Text datasets are still written as 1, their bytes unchanged, so that older code keeps
# reading them and refuses supervised ones, which it would misread as text.
FORMAT_VERSION = 2
TEXT_FORMAT_VERSION = 1
READABLE_VERSIONS = (TEXT_FORMAT_VERSION, FORMAT_VERSION)
# Long documents are stored in chunks so that reading one piece never decodes the rest.
CHUNK_TOKENS = 1 << 16
# Documents per SentencePiece batch call inside a worker.
_ENCODE_BATCH = 256
_HEADER = struct.Struct("<I")
_WRITER_OPTIONS = "group_size:1,uncompressed"  # random access by record: one record per group


@dataclasses.dataclass(frozen=True)
class _ShardJob:
    """Everything a worker process needs to prepare one source shard (picklable)."""

    shard: sources.SourceShard
    out_path: str
    tokenizer_path: str
    tokenizer_extra_ids: int
    text_field: str
    metadata_fields: tuple[str, ...]
    score_field: str
    token_dtype: str
    data_dir: str | None
    inputs_field: str = ""


def _encode_record(tokens: np.ndarray, header: dict) -> bytes:
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _HEADER.pack(len(head)) + head + tokens.tobytes()


def decode_record(record: bytes, token_dtype: str) -> tuple[dict, np.ndarray]:
    """Split one prepared record into its JSON header and its token array."""
    (size,) = _HEADER.unpack_from(record)
    header = json.loads(record[_HEADER.size : _HEADER.size + size])
    return header, np.frombuffer(record, dtype=token_dtype, offset=_HEADER.size + size)


def _score(doc: sources.Document, score_field: str) -> tuple[float, str]:
    """The document's score, or (nan, reason) when a score field is required but unusable."""
    value = doc.metadata.get(score_field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        return float("nan"), f"bad_score ({score_field!r} = {value!r})"
    return float(value), ""


def _flush(docs, tok, job, writer, out, stats):
    """Tokenize a batch of documents and append their chunks to the shard file.

    ``out`` collects per document ``lengths``, ``inputs_lengths`` (supervised) and ``scores``.
    """
    encoded = tok.encode_batch([d.text for d in docs])
    inputs = tok.encode_batch([d.inputs for d in docs]) if job.inputs_field else [[]] * len(docs)
    for doc, ids, input_ids in zip(docs, encoded, inputs):
        if not ids:  # text the tokenizer maps to nothing; count it rather than drop it silently
            stats.yielded -= 1
            stats.skipped["no_tokens"] += 1
            logger.warning("%s: skipping document: no_tokens", doc.location)
            continue
        tokens = np.asarray(input_ids + ids, dtype=job.token_dtype)
        head = {"loc": doc.location, "chunk": 0, "metadata": doc.metadata}
        if job.inputs_field:
            head |= {"inputs": doc.inputs, "targets": doc.text}
        for c, start in enumerate(range(0, len(tokens), CHUNK_TOKENS)):
            header = head if c == 0 else {"chunk": c}
            writer.write(_encode_record(tokens[start : start + CHUNK_TOKENS], header))
        out["lengths"].append(len(tokens))
        out["inputs_lengths"].append(len(input_ids))
        if job.score_field:
            out["scores"].append(float(doc.metadata[job.score_field]))


def _prepare_shard(job: _ShardJob) -> dict:
    """Worker: tokenize one source shard into one ArrayRecord file; return its lengths and stats."""
    from array_record.python.array_record_module import ArrayRecordWriter

    tok = Tokenizer(job.tokenizer_path, extra_ids=job.tokenizer_extra_ids, num_threads=1)
    stats = sources.ReadStats()
    out: dict[str, list] = {"lengths": [], "inputs_lengths": [], "scores": []}
    writer = ArrayRecordWriter(job.out_path, _WRITER_OPTIONS)
    batch: list[sources.Document] = []
    fields = tuple(dict.fromkeys(job.metadata_fields + ((job.score_field,) if job.score_field else ())))
    for doc in sources.read_documents(job.shard, text_field=job.text_field, metadata_fields=fields,
                                      stats=stats, data_dir=job.data_dir,
                                      inputs_field=job.inputs_field):
        if job.score_field:
            _, reason = _score(doc, job.score_field)
            if reason:
                stats.yielded -= 1
                stats.skipped[reason.split(" ", 1)[0]] += 1
                logger.warning("%s: skipping document: %s", doc.location, reason)
                continue
        batch.append(doc)
        if len(batch) == _ENCODE_BATCH:
            _flush(batch, tok, job, writer, out, stats)
            batch = []
    _flush(batch, tok, job, writer, out, stats)
    writer.close()
    return {"lengths": np.asarray(out["lengths"], np.int64),
            "inputs_lengths": np.asarray(out["inputs_lengths"], np.int64),
            "scores": np.asarray(out["scores"], np.float32), "stats": stats}


def source_fingerprint(spec: str, data_dir: str | None = None) -> str:
    """Cheap identity of a source: file paths, sizes and modification times (or the tfds spec)."""
    h = hashlib.sha256(spec.encode())
    for shard in sources.list_shards(spec, data_dir=data_dir):
        if shard.format != "tfds" and os.path.exists(shard.path):
            st = os.stat(shard.path)
            h.update(f"{shard.path}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(shard.path.encode())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """What to read from each record, and how to parallelize."""

    text_field: str = "text"  # the document text, or a supervised task's targets
    inputs_field: str = ""  # a supervised task's inputs ('' = a text task)
    metadata_fields: tuple[str, ...] = ()
    score_field: str = ""  # a numeric field; documents without a finite value are skipped
    num_workers: int = 0  # 0 = one per core
    progress: bool = True
    data_dir: str | None = None  # where tfds datasets live
    task: str = ""  # names the task (and split) in error messages, e.g. "'qa', train split"


def _run_jobs(jobs: Sequence[_ShardJob], num_workers: int, progress: bool) -> list[dict]:
    """Run the shard jobs in worker processes (in-process for a single worker)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="shard", desc="prepare", disable=not progress)
    if num_workers <= 1 or len(jobs) == 1:
        results = []
        for job in jobs:
            results.append(_prepare_shard(job))
            bar.update()
        bar.close()
        return results
    # spawn: the parent may have started JAX's threads, which fork() would copy half-alive.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
        futures = [pool.submit(_prepare_shard, job) for job in jobs]
        for _ in concurrent.futures.as_completed(futures):
            bar.update()
        bar.close()
        return [f.result() for f in futures]


def _plan_shards(spec: str, num_workers: int, data_dir: str | None) -> list[sources.SourceShard]:
    """Cut the source into enough shards to keep every worker busy."""
    shards = sources.list_shards(spec, data_dir=data_dir)
    total = sum(os.path.getsize(s.path) for s in shards if os.path.isfile(s.path))
    target = int(min(64 << 20, max(1 << 20, total // max(1, 4 * num_workers))))
    return sources.list_shards(spec, data_dir=data_dir, target_shard_bytes=target)


def _identity(spec: str, tokenizer: Tokenizer, options: PrepareOptions) -> dict:
    """What a prepared directory depends on: reused only while all of it is unchanged."""
    identity = {
        "format_version": FORMAT_VERSION if options.inputs_field else TEXT_FORMAT_VERSION,
        "source": spec,
        "fingerprint": source_fingerprint(spec, options.data_dir),
        "tokenizer": {"hash": tokenizer.file_hash(), "extra_ids": tokenizer.extra_ids,
                      "vocab_size": tokenizer.vocab_size},
        "text_field": options.text_field, "metadata_fields": list(options.metadata_fields),
        "score_field": options.score_field,
    }
    # Only a supervised split has the key, so that text directories prepared before it existed
    # keep matching and are reused.
    return identity | ({"inputs_field": options.inputs_field} if options.inputs_field else {})


def _no_usable_record(spec: str, options: PrepareOptions, stats: sources.ReadStats) -> Exception:
    """The one-line error for a source of which nothing is usable: what was read and skipped,
    and for a supervised task the fields the records do have, which often shows a misnamed one."""
    task = f"task {options.task}: " if options.task else ""
    skipped = dict(sorted(stats.skipped.items()))
    if not options.inputs_field:
        return ValueError(f"{task}{spec!r}: no usable document among {stats.read} records read "
                          f"(skipped: {skipped}); check the text field {options.text_field!r} "
                          "and the log for file:line details")
    seen = sorted(stats.fields_seen)[:20] or "not listed: no record lacked a field"
    return ConfigError(
        f"{task}{spec!r}: no usable (inputs, targets) example among {stats.read} records read "
        f"(skipped: {skipped}); inputs_field = {options.inputs_field!r}, targets_field = "
        f"{options.text_field!r}; the records' fields: {seen}. Name the fields the records "
        "have (TaskConfig.inputs_field / targets_field), or see the log for file:line details")


def prepare(spec: str, out_dir: str | os.PathLike, tokenizer: Tokenizer,
            options: PrepareOptions = PrepareOptions()) -> dict:
    """Tokenize the documents of ``spec`` into ``out_dir``; return the manifest.

    Reuses ``out_dir`` when its manifest matches the source fingerprint, the tokenizer and the
    options. Work goes to ``out_dir.partial`` first and is renamed at the end, so a killed run
    leaves nothing that looks complete. Raises when no record is usable (for a supervised task a
    ConfigError, since wrong field names are the usual cause).
    """
    out_dir = pathlib.Path(out_dir)
    identity = _identity(spec, tokenizer, options)
    existing = read_manifest(out_dir)
    if existing is not None and {k: existing.get(k) for k in identity} == identity:
        logger.info("Reusing prepared data in %s (%d documents)", out_dir, existing["documents"])
        return existing
    start = time.perf_counter()
    num_workers = options.num_workers or os.cpu_count() or 1
    shards = _plan_shards(spec, num_workers, options.data_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    token_dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "int32"
    names = [f"tokens-{i:05d}-of-{len(shards):05d}.array_record" for i in range(len(shards))]
    jobs = [_ShardJob(s, str(partial / n), str(tokenizer.model_path), tokenizer.extra_ids,
                      options.text_field, tuple(options.metadata_fields), options.score_field,
                      token_dtype, options.data_dir, options.inputs_field)
            for s, n in zip(shards, names)]
    results = _run_jobs(jobs, min(num_workers, len(jobs)), options.progress)
    stats = sources.ReadStats()
    for r in results:
        stats.merge(r["stats"])
    lengths_D = np.concatenate([r["lengths"] for r in results])
    if not len(lengths_D):
        shutil.rmtree(partial)
        raise _no_usable_record(spec, options, stats)
    np.save(partial / "lengths.npy", lengths_D)
    counts = {"documents": int(len(lengths_D)), "tokens": int(lengths_D.sum())}
    if options.inputs_field:
        inputs_D = np.concatenate([r["inputs_lengths"] for r in results])
        np.save(partial / "inputs_lengths.npy", inputs_D)
        counts |= {"inputs_tokens": int(inputs_D.sum()),
                   "targets_tokens": int(lengths_D.sum() - inputs_D.sum())}
    if options.score_field:
        np.save(partial / "scores.npy", np.concatenate([r["scores"] for r in results]))
    manifest = identity | {
        "tokenizer_path": str(tokenizer.model_path), "token_dtype": token_dtype, "chunk_tokens": CHUNK_TOKENS,
        "shards": [{"file": n, "source": s.label, "documents": len(r["lengths"])}
                   for n, s, r in zip(names, shards, results)],
        **counts, "records_read": stats.read, "skipped": dict(stats.skipped),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(partial, out_dir)
    logger.info("Prepared %s -> %s: %d documents, %d tokens, %d records read, skipped %s, %.1fs",
                spec, out_dir, manifest["documents"], manifest["tokens"], stats.read,
                dict(stats.skipped) or "none", manifest["seconds"])
    return manifest


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a complete prepared directory, or None."""
    file = pathlib.Path(path) / "manifest.json"
    return json.loads(file.read_text()) if file.is_file() else None


class PreparedDataset:
    """Random access to the documents of a prepared directory."""

    def __init__(self, path: str | os.PathLike):
        """Open ``path``; raise FileNotFoundError if it is not a complete prepared directory."""
        import grain

        self.path = pathlib.Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise FileNotFoundError(f"{self.path} is not a prepared dataset (no manifest.json); "
                                    "run `t5x-like prepare` on the source first")
        if manifest.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{self.path} was prepared with format {manifest.get('format_version')}"
                             f", this code reads {READABLE_VERSIONS}; run `t5x-like prepare` again")
        self.manifest = manifest
        self.token_dtype = manifest["token_dtype"]
        self.chunk_tokens = manifest["chunk_tokens"]
        self.lengths_D = np.load(self.path / "lengths.npy")
        # A supervised split's inputs tokens per example (its targets follow them); None: text.
        self.inputs_lengths_D = (np.load(self.path / "inputs_lengths.npy")
                                 if manifest.get("inputs_field") else None)
        chunks_D = np.maximum(1, -(-self.lengths_D // self.chunk_tokens))
        self.first_record_D = np.concatenate([[0], np.cumsum(chunks_D)[:-1]]).astype(np.int64)
        self._records = grain.sources.ArrayRecordDataSource(
            [str(self.path / s["file"]) for s in manifest["shards"]])

    @property
    def num_documents(self) -> int:
        """Number of documents."""
        return len(self.lengths_D)

    def scores(self) -> np.ndarray:
        """Per-document scores (float32); raise if the data was prepared without a score field."""
        file = self.path / "scores.npy"
        if not file.is_file():
            raise ValueError(f"{self.path} has no scores: prepare it with a score field")
        return np.load(file)

    def pieces(self, docs_P: np.ndarray, starts_P: np.ndarray, lens_P: np.ndarray) -> list[np.ndarray]:
        """Tokens ``[start, start + len)`` of each document, read with one batched lookup."""
        first_P = self.first_record_D[docs_P] + starts_P // self.chunk_tokens
        last_P = self.first_record_D[docs_P] + (starts_P + lens_P - 1) // self.chunk_tokens
        wanted = sorted({int(r) for a, b in zip(first_P, last_P) for r in range(a, b + 1)})
        if not wanted:  # no pieces (a process's empty share of the last eval batch)
            return []
        tokens = {r: decode_record(raw, self.token_dtype)[1]
                  for r, raw in zip(wanted, self._records.__getitems__(wanted))}
        out = []
        for first, last, start, n in zip(first_P, last_P, starts_P, lens_P):
            joined = np.concatenate([tokens[r] for r in range(first, last + 1)])
            lo = int(start % self.chunk_tokens)
            out.append(joined[lo : lo + n])
        return out

    def all_metadata(self, batch: int = 4096) -> list[dict]:
        """The stored metadata of every document, in order (batched reads of first records)."""
        out: list[dict] = []
        firsts = self.first_record_D.tolist()
        for lo in range(0, len(firsts), batch):
            out += [decode_record(raw, self.token_dtype)[0]["metadata"]
                    for raw in self._records.__getitems__(firsts[lo : lo + batch])]
        return out

    def metadata(self, doc: int) -> dict:
        """The metadata fields stored for document ``doc``."""
        return self.header(doc)["metadata"]

    def header(self, doc: int) -> dict:
        """Document ``doc``'s stored header: ``loc`` (file:line, file#row...), ``metadata`` and,
        for a supervised example, the raw ``inputs`` and ``targets`` strings."""
        return decode_record(self._records[int(self.first_record_D[doc])], self.token_dtype)[0]

    @property
    def supervised(self) -> bool:
        """Whether the documents are (inputs, targets) examples of a supervised task."""
        return self.inputs_lengths_D is not None
