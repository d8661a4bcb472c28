"""Noise masks, sentinel replacement, the S split and the reference lengths helper (ul2.md)."""

import math

import numpy as np
import pytest

from t5x_like.objectives import (
    SentinelBudgetError, count_noise_runs, noise_span_to_unique_sentinel,
    nonnoise_span_to_unique_sentinel, num_noise_and_spans, random_prefix_split,
    random_segmentation, random_spans_helper, random_spans_noise_mask,
)

# chi2.ppf(0.999, df), computed once with scipy so the test needs none.
CHI2_CRIT_P001 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322,
                  8: 26.124, 9: 27.877, 10: 29.588, 11: 31.264, 12: 32.909, 13: 34.528,
                  14: 36.123, 15: 37.697, 16: 39.252, 17: 40.790, 18: 42.312, 19: 43.820,
                  20: 45.315, 21: 46.797, 22: 48.268, 23: 49.728, 24: 51.179, 25: 52.620}
SENTINELS = np.arange(1000, 900, -1, dtype=np.int32)  # sentinel i = 1000 - i, 100 of them
RATES = [(0.15, 3), (0.15, 8), (0.5, 3), (0.5, 8), (0.15, 64), (0.5, 64), (0.2, 1), (0.9, 2)]


def reconstruct(inputs, targets, sentinels=SENTINELS):
    """Replace each sentinel in ``inputs`` by the target tokens that follow it in ``targets``."""
    is_sent_t = np.isin(targets, sentinels)
    pieces, current = {}, None
    for tok, is_sent in zip(targets.tolist(), is_sent_t.tolist()):
        if is_sent:
            current = tok
            assert current not in pieces, f"sentinel {tok} twice in targets"
            pieces[current] = []
        else:
            assert current is not None, "targets must start with a sentinel"
            pieces[current].append(tok)
    out = []
    for tok in inputs.tolist():
        out.extend(pieces.pop(tok) if tok in pieces else [tok])
    assert not pieces, f"unpaired sentinels {sorted(pieces)}"
    return np.asarray(out)


# Every (length 2-599, denoiser) where the reference's float32 counts differ from float64
# rounding: (noise tokens, noise runs) of the masks that t5 0.9.4's random_spans_noise_mask drew
# under TensorFlow 2.21 (CPU), for r, mu in {0.15, 0.5} x {3, 8, 64}, (0.3, 3), (0.35, 3), (0.25, 3).
REFERENCE_T5_COUNTS = {
    (0.15, 3): {190: (29, 10), 350: (53, 18), 390: (59, 20)},
    (0.15, 8): {190: (29, 4), 350: (53, 7), 390: (59, 7)},
    (0.15, 64): {190: (29, 1), 350: (53, 1), 390: (59, 1)},
    (0.3, 3): {95: (29, 10), 175: (53, 18), 195: (59, 20), 335: (101, 34), 355: (107, 36),
               375: (113, 38), 395: (119, 40), 415: (125, 42)},
    (0.35, 3): {90: (32, 11), 170: (60, 20), 330: (116, 39)},
}
REFERENCE_CASES = [(r, mu, n, c) for (r, mu), row in REFERENCE_T5_COUNTS.items()
                   for n, c in row.items()]


@pytest.mark.parametrize("rate,mu,length,counts", REFERENCE_CASES)
def test_counts_round_float32_as_the_reference(rate, mu, length, counts):
    """190 * 0.15 is 28.5 in float64 (28 after half to even), 28.500002 in float32 (29)."""
    assert num_noise_and_spans(length, rate, mu) == counts
    mask = random_spans_noise_mask(length, rate, mu, seed=length)
    assert (mask.sum(), count_noise_runs(mask)) == counts


@pytest.mark.parametrize("rate,mu", [(0.15, 3), (0.15, 8), (0.3, 3), (0.35, 3), (0.25, 3)])
def test_helper_lengths_are_what_its_masks_give(rate, mu):
    """The raw length the helper picks denoises to at most its inputs and exactly its targets
    (from 32 inputs on, where the masks' clamps, which the helper does not apply, never bind).
    The reference helper rounds in float64 and misses its own masks (inputs 172, r = 0.15,
    mu = 3: it plans 38 targets for T = 190, whose masks give 40)."""
    for inputs_length in range(32, 600):
        raw, targets = random_spans_helper(inputs_length, rate, mu)
        n_noise, n_spans = num_noise_and_spans(raw, rate, mu)
        assert raw - n_noise + n_spans + 1 <= inputs_length, inputs_length
        assert n_noise + n_spans + 1 == targets, inputs_length
    assert random_spans_helper(172, 0.15, 3) == (190, 40)


@pytest.mark.parametrize("rate,mu", RATES)
def test_exact_counts_and_ends_for_every_seed(rate, mu):
    for length in [1, 2, 3, 4, 7, 10, 31, 100, 257, 1000]:
        n_noise, n_spans = num_noise_and_spans(length, rate, mu)
        for seed in range(40):
            mask = random_spans_noise_mask(length, rate, mu, seed)
            assert mask.shape == (length,) and mask.dtype == bool
            assert mask.sum() == n_noise and count_noise_runs(mask) == n_spans, (length, seed)
            if length >= 2:
                assert not mask[0] and mask[-1], (length, seed)


def test_counts_follow_the_rounding_and_clamp_rules():
    assert num_noise_and_spans(10, 0.25, 3) == (2, 1)  # round(2.5) = 2, half to even
    assert num_noise_and_spans(14, 0.25, 3) == (4, 1)  # round(3.5) = 4
    assert num_noise_and_spans(9, 0.5, 2) == (4, 2)  # round(4.5) = 4, round(2.0) = 2
    assert num_noise_and_spans(2, 0.01, 3) == (1, 1)  # clamped up to one noise token
    assert num_noise_and_spans(5, 0.99, 1) == (4, 1)  # clamped to L-1; spans <= L - n_noise
    assert num_noise_and_spans(100, 0.5, 1, max_spans=7) == (50, 7)  # sentinel cap keeps density
    assert num_noise_and_spans(1, 0.5, 3) == (0, 0)  # drawn at length 2, truncated to [0]
    assert num_noise_and_spans(50, 0.0, 3) == (0, 0)
    assert not random_spans_noise_mask(50, 0.0, 3, seed=1).any()
    assert random_spans_noise_mask(0, 0.5, 3, seed=1).shape == (0,)


def test_seeded_and_varied():
    a = random_spans_noise_mask(200, 0.15, 3, seed=(7, 3))
    np.testing.assert_array_equal(a, random_spans_noise_mask(200, 0.15, 3, seed=(7, 3)))
    others = {random_spans_noise_mask(200, 0.15, 3, seed=s).tobytes() for s in range(20)}
    assert len(others) == 20


@pytest.mark.parametrize("rate,mu", RATES)
def test_roll_keeps_counts_and_lets_noise_start_the_piece(rate, mu):
    starts_with_noise = 0
    for length in [2, 5, 64, 300]:
        n_noise, n_spans = num_noise_and_spans(length, rate, mu)
        for seed in range(40):
            mask = random_spans_noise_mask(length, rate, mu, seed, random_roll=True)
            assert mask.sum() == n_noise
            # A roll cuts at most one span in two, and only a span of two or more tokens.
            assert count_noise_runs(mask) in ({n_spans, n_spans + 1} if n_noise > n_spans
                                              else {n_spans})
            starts_with_noise += bool(mask[0])
    assert starts_with_noise > 0


@pytest.mark.parametrize("roll", [False, True])
@pytest.mark.parametrize("rate,mu", RATES)
def test_reconstruction(rate, mu, roll):
    rng = np.random.default_rng(0)
    for seed in range(30):
        length = int(rng.integers(1, 400))
        tokens = rng.integers(10, 900, length).astype(np.int32)
        mask = random_spans_noise_mask(length, rate, mu, seed, random_roll=roll, max_spans=99)
        inputs = noise_span_to_unique_sentinel(tokens, mask, SENTINELS)
        targets = nonnoise_span_to_unique_sentinel(tokens, mask, SENTINELS)
        runs = count_noise_runs(mask)
        # Sentinels numbered by noise run on both sides: S_0, S_1, ... in order.
        np.testing.assert_array_equal(inputs[np.isin(inputs, SENTINELS)], SENTINELS[:runs])
        np.testing.assert_array_equal(targets[np.isin(targets, SENTINELS)], SENTINELS[:runs])
        assert len(inputs) == length - mask.sum() + runs and len(targets) == mask.sum() + runs
        np.testing.assert_array_equal(reconstruct(inputs, targets), tokens)


def test_sentinel_layout_matches_t5():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    mask = np.array([0, 1, 1, 0, 0, 1, 0, 1], bool)
    np.testing.assert_array_equal(noise_span_to_unique_sentinel(tokens, mask, SENTINELS),
                                  [10, 1000, 13, 14, 999, 16, 998])
    np.testing.assert_array_equal(nonnoise_span_to_unique_sentinel(tokens, mask, SENTINELS),
                                  [1000, 11, 12, 999, 15, 998, 17])
    rolled = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)  # starts with noise: S_0 is still first
    np.testing.assert_array_equal(noise_span_to_unique_sentinel(tokens, rolled, SENTINELS),
                                  [1000, 11, 12, 999, 15, 998, 17])
    np.testing.assert_array_equal(nonnoise_span_to_unique_sentinel(tokens, rolled, SENTINELS),
                                  [1000, 10, 999, 13, 14, 998, 16])


def test_too_few_sentinels_raises_instead_of_leaving_the_range():
    # X(mu=3, r=0.5) on the 766 raw tokens of a 512-token input: 128 spans, 100 sentinels.
    mask = random_spans_noise_mask(766, 0.5, 3, seed=0)
    assert count_noise_runs(mask) == 128
    with pytest.raises(SentinelBudgetError, match="128 noise spans but only 100"):
        noise_span_to_unique_sentinel(np.arange(766), mask, SENTINELS)
    with pytest.raises(SentinelBudgetError):
        nonnoise_span_to_unique_sentinel(np.arange(766), mask, SENTINELS)
    capped = random_spans_noise_mask(766, 0.5, 3, seed=0, max_spans=100)
    assert capped.sum() == 383 and count_noise_runs(capped) == 100


def test_realized_noise_fraction_matches_rate_on_average():
    rng = np.random.default_rng(1)
    for rate, mu in [(0.15, 3), (0.5, 3), (0.15, 64), (0.5, 8)]:
        fractions = []
        for seed in range(300):
            length = int(rng.integers(50, 600))
            fractions.append(random_spans_noise_mask(length, rate, mu, seed, random_roll=True).mean())
        assert abs(np.mean(fractions) - rate) < 0.01, (rate, mu, np.mean(fractions))


def composition_law(n: int, s: int) -> np.ndarray:
    """P(part = k), k = 1..n-s+1, of one part of a uniform composition of n into s parts."""
    return np.array([math.comb(n - k - 1, s - 2) / math.comb(n - 1, s - 1)
                     for k in range(1, n - s + 2)])


def chi_square(samples: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """(statistic, degrees of freedom) of samples in 1..len(probs), tail bins pooled to >= 5."""
    counts = np.bincount(samples, minlength=len(probs) + 1)[1:]
    expected = probs * len(samples)
    keep = int(np.argmax(np.cumsum(expected[::-1])[::-1] < 5)) or len(expected)
    obs = np.append(counts[:keep - 1], counts[keep - 1:].sum())
    exp = np.append(expected[:keep - 1], expected[keep - 1:].sum())
    return float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1


def span_lengths(mask: np.ndarray, value: bool) -> np.ndarray:
    """Lengths of the runs of ``value`` in ``mask``, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate(([not value], mask, [not value])) == value))
    return edges[1::2] - edges[::2]


def test_span_lengths_follow_the_uniform_composition_law():
    length, rate, mu = 60, 0.5, 3
    n_noise, n_spans = num_noise_and_spans(length, rate, mu)
    assert (n_noise, n_spans) == (30, 10)
    law = composition_law(n_noise, n_spans)
    assert abs(law.sum() - 1) < 1e-12
    noise, nonnoise = [], []
    for seed in range(3000):  # one span per mask (index seed % 10): independent samples
        mask = random_spans_noise_mask(length, rate, mu, seed)
        noise.append(span_lengths(mask, True)[seed % n_spans])
        nonnoise.append(span_lengths(mask, False)[(seed + 3) % n_spans])
    for samples in (noise, nonnoise):
        stat, dof = chi_square(np.asarray(samples), law)
        assert stat < CHI2_CRIT_P001[dof], (stat, dof)
    # The test has power: spans drawn geometrically around the same mean are rejected.
    geometric = np.minimum(np.random.default_rng(0).geometric(1 / 3, 3000), len(law))
    stat, dof = chi_square(geometric, law)
    assert stat > CHI2_CRIT_P001[dof]


def test_random_segmentation_is_uniform_over_compositions():
    rng = np.random.default_rng(2)
    parts = np.array([random_segmentation(12, 4, rng)[rng.integers(4)] for _ in range(4000)])
    stat, dof = chi_square(parts, composition_law(12, 4))
    assert stat < CHI2_CRIT_P001[dof]
    with pytest.raises(ValueError, match="cannot split 3 items into 4"):
        random_segmentation(3, 4, rng)


def test_prefix_split_range_and_mean():
    for length in [1, 2, 3, 10, 512]:
        for d in [0.25, 0.5]:
            max_in = length - 1
            min_in = min(max_in, max(1, round((1 - 2 * d) * max_in)))
            splits = {random_prefix_split(length, d, s) for s in range(200)}
            assert min(splits) >= min_in and max(splits) <= max_in
            if length == 10:
                assert splits == set(range(min_in, max_in + 1))  # the whole range is reachable
    fractions = [1 - random_prefix_split(1001, 0.25, s) / 1001 for s in range(2000)]
    assert abs(np.mean(fractions) - 0.25) < 0.01 and max(fractions) <= 0.5 + 1e-3
    assert random_prefix_split(100, 0.25, 5) == random_prefix_split(100, 0.25, 5)
    with pytest.raises(ValueError, match="0.7"):
        random_prefix_split(100, 0.7, 0)


def test_helper_oracles():
    assert random_spans_helper(64, 0.2, 2) == (70, 22)
    assert random_spans_helper(64, 0.2, 1) == (63, 27)


# (mu, r) -> {inputs_length: (raw T, targets, spans)} from shared/specs/ul2.md.
LENGTHS_TABLE = {
    (3, 0.15): {512: (568, 114, 28), 1024: (1137, 229, 57)},
    (8, 0.15): {512: (588, 100, 11), 1024: (1178, 200, 22)},
    (3, 0.5): {512: (766, 512, 128), 1024: (1534, 1024, 256)},
    (8, 0.5): {512: (908, 512, 57), 1024: (1818, 1024, 114)},
    (64, 0.15): {512: (600, 92, 1), 1024: (1200, 184, 3)},
    (64, 0.5): {512: (1006, 512, 8), 1024: (2014, 1024, 16)},
}
CELLS = [(mu, r, i, *v) for (mu, r), row in LENGTHS_TABLE.items() for i, v in row.items()]


@pytest.mark.parametrize("mu,rate,inputs_length,raw,targets,spans", CELLS)
def test_lengths_table(mu, rate, inputs_length, raw, targets, spans):
    assert random_spans_helper(inputs_length, rate, mu) == (raw, targets)
    assert num_noise_and_spans(raw, rate, mu)[1] == spans
