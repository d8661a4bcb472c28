"""Data path: sources, tokenizer, prepared shards, packing and grain pipelines.

Modules (import them directly; this package imports nothing eagerly so that
``t5x_like.data.jsonl`` does not pull in grain):

* ``stdlib_corpus``, ``stdlib_tfds``: the embedded default corpus (the interpreter's stdlib),
  as JSONL and as a TFDS dataset built without TensorFlow.
* ``jsonl``, ``sources``, ``source_formats``: documents from JSONL (plain/.gz/.zst), text,
  Parquet, ArrayRecord and TFDS, with every skipped record counted by reason.
* ``tokenizer``, ``tokenizer_training``, ``tokenizer_cli``: SentencePiece with reserved
  sentinel and mode-token ids; ``t5x-like tokenizer``.
* ``prepared``: a corpus tokenized once into ArrayRecord shards, read by index.
* ``packing``, ``packing_kernels``: optimized best-fit-decreasing (numba segment tree),
  baselines, 2-D packing, packing plans.
* ``rows``: the objective contract (``RowObjective``, ``register``, ``open_rows``); the
  objectives ``causal`` and ``denoising``; ``meco``: metadata prefixes for any of them.
* ``pipeline``: task mixtures over row sources, resumable grain iterators, eval batches.
* ``streaming``: windowed packing of sources read on the fly, with O(1) resume state.
"""
