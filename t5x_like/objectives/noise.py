"""Noise masks and sentinel replacement for T5 span corruption and UL2's denoisers (pure numpy).

The algorithm is the reference T5 one (``t5/data/preprocessors.py``), spelled out in
``shared/specs/ul2.md``:

1. ``r == 0``: no noise. Else ``L' = max(L, 2)``.
2. ``n_noise = round(L' * r)``, clamped to ``[1, L' - 1]``.
3. ``n_spans = max(1, round(n_noise / mu))``, clamped to ``<= n_noise`` and ``<= L' - n_noise``
   (the reference crashes otherwise), then to ``<= max_spans`` (the sentinel budget; see below).
4. ``n_noise`` and ``L' - n_noise`` are each split into ``n_spans`` positive parts, uniformly over
   all compositions (``n_spans - 1`` cut points among the ``n - 1`` gaps, without replacement).
5. Interleave non-noise_1, noise_1, ..., non-noise_k, noise_k (starts with non-noise, ends with
   noise); truncate to ``L``.
6. Optionally roll by an offset uniform in ``[0, L)``.

Both rounds are the reference's ``tf.round`` (half to even) of float32 arithmetic, not float64.

Sentinels are numbered by *noise run* (maximal run of noise tokens) on both sides:
``inputs = nn_1 S_0 nn_2 S_1 ...`` and ``targets = S_0 sp_1 S_1 sp_2 ...``, so they pair up
even when a roll makes the mask start with noise (the reference numbers the targets by
non-noise run and gets this wrong after a roll). A roll that cuts a noise span in two (the
span wraps around the end) leaves two runs, hence two sentinels: a rolled mask has
``n_spans`` or ``n_spans + 1`` runs, never more.

All randomness comes from ``np.random.default_rng(seed)`` with the draws in a fixed order
(noise composition, non-noise composition, roll offset), so a seed determines the mask.
"""

from __future__ import annotations

import logging
from typing import Sequence, Union

import numpy as np

logger = logging.getLogger(__name__)

Seed = Union[int, Sequence[int], np.random.SeedSequence]


class SentinelBudgetError(ValueError):
    """More noise spans than reserved sentinel ids (sentinel_policy='error', or too few sentinels)."""


# The reference's tf.round (half to even, like np.round) of float32 arithmetic. The float32
# matters: 190 * 0.15 is 28.5 in float64 (28 after half-to-even), 28.500002 in float32 (29).
def _noise_tokens(length: int, noise_density: float) -> int:
    return int(np.round(np.float32(length) * np.float32(noise_density)))


def _noise_spans(noise_tokens: int, mean_noise_span_length: float) -> int:
    return int(np.round(np.float32(noise_tokens) / np.float32(mean_noise_span_length)))


def _drawn_counts(length: int, noise_density: float, mean_noise_span_length: float,
                  max_spans: int | None) -> tuple[int, int, int]:
    """(L', n_noise, n_spans) as drawn before truncation (steps 1-3); n_noise = 0 if r == 0."""
    length_2 = max(int(length), 2)
    if noise_density == 0:
        return length_2, 0, 0
    n_noise = min(max(_noise_tokens(length_2, noise_density), 1), length_2 - 1)
    n_spans = max(1, _noise_spans(n_noise, mean_noise_span_length))
    n_spans = min(n_spans, n_noise, length_2 - n_noise)
    if max_spans is not None:
        if max_spans < 1:
            raise SentinelBudgetError(f"max_spans = {max_spans}: a noise mask needs at least one "
                                      f"span (no sentinel available)")
        n_spans = min(n_spans, int(max_spans))
    return length_2, n_noise, n_spans


def num_noise_and_spans(length: int, noise_density: float, mean_noise_span_length: float,
                        max_spans: int | None = None) -> tuple[int, int]:
    """(noise tokens, noise spans) of every unrolled mask ``random_spans_noise_mask`` draws.

    These are the counts of the mask *after* truncation to ``length``: a piece of length 1 is
    drawn at length 2 ([non-noise, noise]) and truncated to one non-noise token, so it has
    (0, 0); so does length 0 and ``noise_density == 0``. For ``length >= 2`` they are the
    drawn counts of steps 2-3. ``max_spans`` caps the spans (sentinel policy 'cap').
    """
    if length < 0:
        raise ValueError(f"length = {length} must be >= 0")
    if length < 2:
        return 0, 0
    _, n_noise, n_spans = _drawn_counts(length, noise_density, mean_noise_span_length, max_spans)
    return n_noise, n_spans


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """int64[num_segments] positive lengths summing to ``num_items``, uniform over compositions.

    Chooses ``num_segments - 1`` cut points among the ``num_items - 1`` gaps without
    replacement, so each of the C(num_items - 1, num_segments - 1) compositions is equally likely.
    """
    if not 1 <= num_segments <= num_items:
        raise ValueError(f"cannot split {num_items} items into {num_segments} positive parts")
    cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False)) + 1
    return np.diff(np.concatenate(([0], cuts, [num_items])))


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            seed: Seed, random_roll: bool = False,
                            max_spans: int | None = None) -> np.ndarray:
    """bool[length] noise mask of random spans (T5's algorithm; see the module docstring).

    Args:
      length: tokens in the piece (>= 0).
      noise_density: fraction r of noise tokens, in [0, 1).
      mean_noise_span_length: mean noise-span length mu (>= 1).
      seed: anything ``np.random.default_rng`` accepts; the mask is a function of it.
      random_roll: roll the mask by an offset uniform in [0, length), so that noise can start
        the piece; one span may then wrap around and count as two runs.
      max_spans: cap on the number of drawn noise spans (the sentinel budget); None = no cap.
    Returns:
      is_noise_L: bool[length]. Without roll and with ``length >= 2`` it has exactly
      ``num_noise_and_spans(...)`` noise tokens and runs, starts with non-noise and ends with noise.
    """
    if not 0 <= noise_density < 1:
        raise ValueError(f"noise_density = {noise_density} must be in [0, 1)")
    if mean_noise_span_length < 1:
        raise ValueError(f"mean_noise_span_length = {mean_noise_span_length} must be >= 1")
    if length < 0:
        raise ValueError(f"length = {length} must be >= 0")
    length_2, n_noise, n_spans = _drawn_counts(length, noise_density, mean_noise_span_length,
                                               max_spans)
    if n_noise == 0:
        return np.zeros(length, bool)
    rng = np.random.default_rng(seed)
    noise_lengths_S = random_segmentation(n_noise, n_spans, rng)
    nonnoise_lengths_S = random_segmentation(length_2 - n_noise, n_spans, rng)
    interleaved_2S = np.stack([nonnoise_lengths_S, noise_lengths_S], axis=1).reshape(-1)
    is_noise_2S = np.tile(np.array([False, True]), n_spans)
    mask_L = np.repeat(is_noise_2S, interleaved_2S)[:length]
    if random_roll and length > 0:
        mask_L = np.roll(mask_L, int(rng.integers(0, length)))
    return mask_L


def count_noise_runs(mask: np.ndarray) -> int:
    """Number of maximal runs of True in a 1-D bool mask (= sentinels the mask needs)."""
    mask = np.asarray(mask, bool)
    if mask.size == 0:
        return 0
    return int(mask[0]) + int(np.count_nonzero(mask[1:] & ~mask[:-1]))


def _run_starts(mask_L: np.ndarray) -> np.ndarray:
    """bool[L]: True at the first token of every noise run."""
    prev_L = np.concatenate(([False], mask_L[:-1]))
    return mask_L & ~prev_L


def _sentinels_for(num_runs: int, sentinel_ids) -> np.ndarray:
    """The first ``num_runs`` sentinel ids; SentinelBudgetError if there are fewer."""
    sentinel_ids = np.asarray(sentinel_ids)
    if num_runs > len(sentinel_ids):
        raise SentinelBudgetError(
            f"the mask has {num_runs} noise spans but only {len(sentinel_ids)} sentinels are "
            f"reserved; cap the spans (sentinel_policy='cap', max_spans) or reserve more sentinels")
    return sentinel_ids[:num_runs]


def noise_span_to_unique_sentinel(tokens, mask, sentinel_ids) -> np.ndarray:
    """Inputs side: each noise run i replaced by ``sentinel_ids[i]`` (nn_1 S_0 nn_2 S_1 ...).

    Runs are numbered left to right, so the result pairs with ``nonnoise_span_to_unique_sentinel``
    for any mask, rolled or not. No EOS is appended (``build_example`` does that). Raises
    SentinelBudgetError rather than emit an id outside ``sentinel_ids``.
    """
    tokens_L, mask_L = np.asarray(tokens), np.asarray(mask, bool)
    if tokens_L.shape != mask_L.shape or tokens_L.ndim != 1:
        raise ValueError(f"tokens {tokens_L.shape} and mask {mask_L.shape} must be equal 1-D shapes")
    starts_L = _run_starts(mask_L)
    sentinels = _sentinels_for(int(starts_L.sum()), sentinel_ids)
    out_L = tokens_L.copy()
    out_L[starts_L] = sentinels.astype(tokens_L.dtype)
    return out_L[~mask_L | starts_L]


def nonnoise_span_to_unique_sentinel(tokens, mask, sentinel_ids) -> np.ndarray:
    """Targets side: each noise run i preceded by ``sentinel_ids[i]`` (S_0 sp_1 S_1 sp_2 ...).

    Equivalent to replacing each non-noise run by a sentinel when the mask starts with
    non-noise (the unrolled case); after a roll it still numbers sentinels by noise run, so the
    sentinel before the tokens of run i is the one that stands for run i in the inputs.
    No EOS is appended.
    """
    tokens_L, mask_L = np.asarray(tokens), np.asarray(mask, bool)
    if tokens_L.shape != mask_L.shape or tokens_L.ndim != 1:
        raise ValueError(f"tokens {tokens_L.shape} and mask {mask_L.shape} must be equal 1-D shapes")
    noise_pos_N = np.flatnonzero(mask_L)
    start_pos = np.flatnonzero(_run_starts(mask_L))
    sentinels = _sentinels_for(len(start_pos), sentinel_ids)
    insert_at = np.searchsorted(noise_pos_N, start_pos)
    return np.insert(tokens_L[noise_pos_N], insert_at, sentinels.astype(tokens_L.dtype))


def random_prefix_split(length: int, target_fraction: float, seed: Seed) -> int:
    """Number of *input* (prefix) tokens of an S-denoiser piece of ``length`` tokens.

    The reference's ``random_prefix_noise_mask`` generalized to a mean target fraction d: the
    prefix length is uniform on ``[min_in, length - 1]`` with
    ``min_in = min(length - 1, max(1, round((1 - 2d)(length - 1))))``, so the target fraction
    is ~U[0, 2d] and at least one token is a target (d = 0.5: a uniform split, T5's prefix_lm).
    A function of ``seed`` (the first draw of ``default_rng(seed)``), so a planner that knows
    the piece's seed knows the split before the example is built.
    """
    if not 0 < target_fraction <= 0.5:
        raise ValueError(f"target_fraction = {target_fraction}: the mean target fraction d of "
                         f"the S-denoiser must be in (0, 0.5] (the target fraction is ~U[0, 2d])")
    if length < 1:
        raise ValueError(f"length = {length}: an S-denoiser piece needs at least one token")
    max_in = length - 1
    min_in = min(max_in, max(1, round((1 - 2 * target_fraction) * max_in)))
    return int(np.random.default_rng(seed).integers(min_in, max_in + 1))


def random_spans_helper(inputs_length: int, noise_density: float, mean_noise_span_length: float,
                        extra_tokens_per_span_inputs: int = 1, extra_tokens_per_span_targets: int = 1,
                        verbose: bool = False) -> tuple[int, int]:
    """(tokens_length, targets_length): raw tokens that denoise to ``inputs_length`` inputs.

    The reference helper (no clamps, no sentinel cap, no mode token), with the mask's float32
    counts where the reference rounds in float64: its own masks then disagree with it at 39
    more of the inputs lengths 2-4,096 than with this one for r = 0.15, mu = 3 (inputs 172:
    T = 190, whose mask has 29 noise tokens in 10 spans, 40 targets, not the 38 the float64
    helper plans; benchmarks/t5_reference_noise.py counts every denoiser). Grow the raw
    length T from ``inputs_length - 1`` while T - n_noise + n_spans * extra_inputs + 1 fits;
    targets = n_noise + n_spans * extra_targets + 1; with r = 0.5 and targets > inputs both
    are decremented by one. ``output_lengths``/``raw_length_for`` are the exact versions that
    also count mode tokens and sentinel policies.
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        n_noise = _noise_tokens(tokens_length, noise_density)
        n_spans = _noise_spans(n_noise, mean_noise_span_length)
        return (tokens_length - n_noise + n_spans * extra_tokens_per_span_inputs + 1,
                n_noise + n_spans * extra_tokens_per_span_targets + 1)

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    got_inputs, targets_length = lengths(tokens_length)
    # The reference's "minor hack": keep targets at the (presumably round) inputs length.
    if noise_density == 0.5 and targets_length > got_inputs:
        tokens_length -= 1
        targets_length -= 1
    if verbose:
        logger.info("random_spans_helper: tokens_length=%d inputs_length=%d targets_length=%d "
                    "noise_density=%s mean_noise_span_length=%s", tokens_length, got_inputs,
                    targets_length, noise_density, mean_noise_span_length)
    return tokens_length, targets_length
