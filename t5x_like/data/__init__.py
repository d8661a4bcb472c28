"""Data path: corpus, tokenizer, JSONL reading, packing and grain pipelines.

Modules (import them directly; this package imports nothing eagerly so that
``t5x_like.data.jsonl`` does not pull in grain):

* ``stdlib_corpus``: the embedded default corpus (the interpreter's stdlib).
* ``tokenizer``: SentencePiece training and the ``Tokenizer`` wrapper.
* ``jsonl``: robust JSON-lines reading with per-reason skip counts.
* ``packing``: best-fit-decreasing sequence packing.
* ``pipeline``: packed-row caching, grain training iterator, eval batches.
"""
