"""Shared test fixtures.

The whole suite runs with 8 fake CPU devices, so the multi-device paths (meshes, sharded state,
restore onto another mesh) are exercised on every machine. XLA reads the flag when JAX first
initializes its backend, hence before any test module imports JAX.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import dataclasses  # noqa: E402
import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from t5x_like.config import ModelConfig  # noqa: E402
from t5x_like.data import stdlib_corpus, tokenizer  # noqa: E402

# A model small enough that a compile plus a few steps takes seconds on 2 cores.
MICRO_MODEL = ModelConfig(vocab_size=128, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          head_dim=8, mlp_dim=64)


@dataclasses.dataclass(frozen=True)
class StdlibData:
    """The real stdlib corpus and its tokenizer, built once per test session."""

    data_dir: pathlib.Path
    paths: dict  # split name / "manifest" -> pathlib.Path
    tokenizer: tokenizer.Tokenizer


@pytest.fixture(scope="session")
def stdlib_data(tmp_path_factory) -> StdlibData:
    """Build the stdlib corpus and default tokenizer in a temp dir (never the repo)."""
    data_dir = tmp_path_factory.mktemp("t5x_like_data")
    paths = stdlib_corpus.build_stdlib_corpus(stdlib_corpus.stdlib_corpus_dir(data_dir))
    return StdlibData(data_dir=data_dir, paths=paths, tokenizer=tokenizer.default_tokenizer(data_dir))


def random_packed_rows(num_rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Packed decoder rows of random tokens: 1-3 segments per row, a little padding at the end."""
    rng = np.random.default_rng(seed)
    rows = {k: np.zeros((num_rows, length), np.int32) for k in (
        "decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
        "decoder_positions", "decoder_loss_weights")}
    for r in range(num_rows):
        used = length - int(rng.integers(0, 4))
        cuts = sorted(rng.choice(np.arange(1, used), size=int(rng.integers(0, 3)), replace=False))
        for seg, (a, b) in enumerate(zip([0, *cuts], [*cuts, used]), start=1):
            rows["decoder_segment_ids"][r, a:b] = seg
            rows["decoder_positions"][r, a:b] = np.arange(b - a)
        rows["decoder_input_tokens"][r, :used] = rng.integers(4, vocab, used)
        rows["decoder_target_tokens"][r, :used] = rng.integers(4, vocab, used)
        rows["decoder_loss_weights"][r, :used] = 1
    return rows


def random_seq2seq_rows(num_rows: int, inputs_len: int, targets_len: int, vocab: int,
                        seed: int = 0) -> dict:
    """Packed encoder-decoder rows of random tokens: 1-2 examples per row, paired segments."""
    rng = np.random.default_rng(seed)
    enc = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
    dec = ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
           "decoder_positions", "decoder_loss_weights")
    rows = {k: np.zeros((num_rows, inputs_len if k in enc else targets_len), np.int32)
            for k in enc + dec}
    for r in range(num_rows):
        segments = int(rng.integers(1, 3))
        for name, length in (("encoder", inputs_len), ("decoder", targets_len)):
            used = length - int(rng.integers(0, 3))
            cuts = sorted(rng.choice(np.arange(1, used), size=segments - 1, replace=False))
            for seg, (a, b) in enumerate(zip([0, *cuts], [*cuts, used]), start=1):
                rows[f"{name}_segment_ids"][r, a:b] = seg
                rows[f"{name}_positions"][r, a:b] = np.arange(b - a)
                if name == "encoder":
                    rows["encoder_input_tokens"][r, a:b] = rng.integers(4, vocab, b - a)
                else:
                    targets = rng.integers(4, vocab, b - a)
                    rows["decoder_target_tokens"][r, a:b] = targets
                    rows["decoder_input_tokens"][r, a:b] = np.concatenate([[0], targets[:-1]])
                    rows["decoder_loss_weights"][r, a:b] = 1
    return rows


def segments(lengths_per_row, row_length):
    """Segment ids and per-segment positions for rows of the given segment lengths."""
    seg = np.zeros((len(lengths_per_row), row_length), np.int32)
    pos = np.zeros_like(seg)
    for r, lengths in enumerate(lengths_per_row):
        start = 0
        for s, n in enumerate(lengths, start=1):
            seg[r, start:start + n], pos[r, start:start + n] = s, np.arange(n)
            start += n
    return seg, pos


def partitioner_for(shape):
    """A Partitioner over the first prod(shape) fake devices, with the default axis rules."""
    import jax
    from t5x_like.config import RunConfig
    from t5x_like.partitioning import Partitioner, make_mesh
    devices = jax.devices()[:int(np.prod(shape))]
    return Partitioner(make_mesh(shape, devices=devices), RunConfig().mesh.logical_axis_rules)


def losses_of(rows):
    """{step: loss} of the train rows a run returned."""
    return {r["step"]: r["loss"] for r in rows if "loss" in r}
