"""Denoiser presets, mixing, length planning, example builders and the prefix-LM layout (ul2.md)."""

import dataclasses

import numpy as np
import pytest

from t5x_like import objectives
from t5x_like.config import ObjectiveConfig
from t5x_like.objectives import (
    PREFIX_LM_DENOISERS, SPAN_CORRUPTION_DENOISERS, UL2_DENOISERS, UL2_DENOISERS_S20,
    UL2R_DENOISERS, Denoiser, SentinelBudgetError, SpecialIds, build_example, choose_denoisers,
    denoisers_from_config, max_output_lengths, mixing_probabilities, output_lengths,
    plan_raw_lengths, raw_length_for, to_decoder_only,
)
from tests.objectives.test_noise import LENGTHS_TABLE, reconstruct

EOS = 1
MODES = {"[NLU]": 6, "[NLG]": 7, "[S2S]": 8}
IDS = SpecialIds(EOS, tuple(range(108, 8, -1)), MODES)  # sentinel i = 108 - i, 100 of them
SENTINEL_SET = set(IDS.sentinel_ids)
ALL_DENOISERS = sorted(set(UL2_DENOISERS + UL2R_DENOISERS + SPAN_CORRUPTION_DENOISERS
                           + PREFIX_LM_DENOISERS), key=lambda d: d.name + d.mode_token)


def kwargs(policy="cap", roll=False, mode=True):
    return dict(use_mode_token=mode, sentinel_policy=policy, random_roll=roll)


def build(tokens, d, seed, **kw):
    return build_example(tokens, d, seed=seed, tokenizer_ids=IDS, **kwargs(**kw))


def text(rng, n):
    """Ordinary token ids: above the sentinels and mode tokens."""
    return rng.integers(200, 5000, n).astype(np.int32)


def test_presets_match_the_spec():
    rows = [(d.paradigm, d.mean_span, d.rate, d.mode_token) for d in UL2_DENOISERS]
    assert rows == [("R", 3, 0.15, "[NLU]"), ("R", 8, 0.15, "[NLU]"), ("X", 3, 0.5, "[NLG]"),
                    ("X", 8, 0.5, "[NLG]"), ("X", 64, 0.15, "[NLG]"), ("X", 64, 0.5, "[NLG]"),
                    ("S", 0, 0.25, "[S2S]")]
    np.testing.assert_allclose(mixing_probabilities(UL2_DENOISERS), 1 / 7)
    np.testing.assert_allclose(mixing_probabilities(UL2_DENOISERS_S20), [0.8 / 6] * 6 + [0.2])
    assert [(d.paradigm, d.mean_span, d.rate, d.mode_token) for d in UL2R_DENOISERS] == [
        ("S", 0, 0.25, "[S2S]"), ("R", 3, 0.15, "[NLU]"), ("X", 32, 0.15, "[NLG]")]
    np.testing.assert_allclose(mixing_probabilities(UL2R_DENOISERS), [0.5, 0.25, 0.25])
    assert SPAN_CORRUPTION_DENOISERS == (Denoiser("R", 3, 0.15, 1.0, ""),)
    assert [(d.paradigm, d.mode_token) for d in PREFIX_LM_DENOISERS] == [("S", "")]


def test_denoisers_from_config():
    assert denoisers_from_config(ObjectiveConfig(name="ul2")) == UL2_DENOISERS
    assert denoisers_from_config(ObjectiveConfig(name="ul2r")) == UL2R_DENOISERS
    assert denoisers_from_config(ObjectiveConfig(name="causal_lm")) == ()
    cfg = ObjectiveConfig(name="ul2", denoisers=(("X", 3, 0.5, 1.0, "[NLG]"), ("S", 0, 0.25, 4.0, "")))
    got = denoisers_from_config(cfg)
    assert got == (Denoiser("X", 3, 0.5, 1.0, "[NLG]"), Denoiser("S", 0, 0.25, 4.0, ""))
    np.testing.assert_allclose(mixing_probabilities(got), [0.2, 0.8])
    with pytest.raises(ValueError, match=r"row 0 .*d = 0.8"):
        denoisers_from_config(ObjectiveConfig(name="ul2", denoisers=(("S", 0, 0.8, 1.0, ""),)))


def test_denoiser_validation_names_the_value():
    with pytest.raises(ValueError, match="'Q'"):
        Denoiser("Q", 3, 0.15)
    with pytest.raises(ValueError, match="noise rate = 1.2"):
        Denoiser("R", 3, 1.2)
    with pytest.raises(ValueError, match="mean span = 0.5"):
        Denoiser("X", 0.5, 0.5)
    with pytest.raises(ValueError, match="weight = 0"):
        Denoiser("R", 3, 0.15, 0)


@pytest.mark.parametrize("denoisers", [UL2_DENOISERS, UL2_DENOISERS_S20, UL2R_DENOISERS])
def test_denoiser_frequencies_match_the_rates(denoisers):
    n = 20000
    choice = choose_denoisers(n, denoisers, seed=3)
    np.testing.assert_array_equal(choice, choose_denoisers(n, denoisers, seed=3))
    counts = np.bincount(choice, minlength=len(denoisers))
    p = mixing_probabilities(denoisers)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 3 * sigma), (counts, n * p)


def test_special_ids():
    class FakeTokenizer:
        eos_id = 1
        sentinel_ids = np.array([108, 107, 106], np.int32)
        mode_tokens = {"[NLU]": 6}
    ids = SpecialIds.from_tokenizer(FakeTokenizer())
    assert ids == SpecialIds(1, (108, 107, 106), {"[NLU]": 6}) and ids.num_sentinels == 3
    with pytest.raises(ValueError, match=r"\[6\]"):
        SpecialIds(1, (6, 5), {"[NLU]": 6})
    with pytest.raises(ValueError, match=r"\[NLG\].*\['\[NLU\]'\]"):
        ids.mode_id(Denoiser("X", 3, 0.5, 1.0, "[NLG]"))


@pytest.mark.parametrize("d", ALL_DENOISERS, ids=lambda d: d.name + d.mode_token)
def test_examples_begin_with_the_mode_token_and_end_with_eos(d):
    rng = np.random.default_rng(0)
    for seed in range(20):
        tokens = text(rng, int(rng.integers(1, 300)))
        for mode in (True, False):
            inputs, targets = build(tokens, d, seed, mode=mode, roll=bool(seed % 2))
            assert inputs.dtype == targets.dtype == np.int32
            assert inputs[-1] == EOS and targets[-1] == EOS
            if mode and d.mode_token:
                assert inputs[0] == MODES[d.mode_token]
            else:
                assert inputs[0] not in MODES.values()
            body_in, body_tg = inputs[int(mode and bool(d.mode_token)):-1], targets[:-1]
            if d.is_prefix_lm:
                np.testing.assert_array_equal(np.concatenate([body_in, body_tg]), tokens)
                assert len(body_tg) >= 1
            else:
                np.testing.assert_array_equal(reconstruct(body_in, body_tg, IDS.sentinel_ids),
                                              tokens)


@pytest.mark.parametrize("policy", ["cap", "error"])
@pytest.mark.parametrize("roll", [False, True])
def test_output_lengths_equal_built_lengths(policy, roll):
    rng = np.random.default_rng(1)
    for d in ALL_DENOISERS:
        for _ in range(25):
            n, seed = int(rng.integers(1, 500)), int(rng.integers(1 << 30))
            mode = bool(rng.integers(2))
            if policy == "error" and not d.is_prefix_lm and max_output_lengths(
                    n, d, use_mode_token=mode, sentinel_policy="cap", num_sentinels=1 << 30)[1] > 150:
                continue  # may exceed the sentinels: covered by the exhaustion test
            inputs, targets = build(text(rng, n), d, seed, policy=policy, roll=roll, mode=mode)
            got = output_lengths(n, d, seed=seed, num_sentinels=IDS.num_sentinels,
                                 **kwargs(policy, roll, mode))
            assert got == (len(inputs), len(targets)), (d.name, n, seed)
            bound = max_output_lengths(n, d, num_sentinels=IDS.num_sentinels, **kwargs(policy, roll, mode))
            assert got[0] <= bound[0] and got[1] <= bound[1]


def test_output_lengths_need_the_seed_only_when_random():
    r = Denoiser("R", 3, 0.15)
    assert output_lengths(100, r, num_sentinels=100, **kwargs()) == (100 - 15 + 5 + 1 + 0, 15 + 5 + 1)
    with pytest.raises(ValueError, match="seed"):
        output_lengths(100, UL2_DENOISERS[-1], num_sentinels=100, **kwargs())
    with pytest.raises(ValueError, match="seed"):
        output_lengths(100, r, num_sentinels=100, **kwargs(roll=True))


@pytest.mark.parametrize("roll", [False, True])
def test_sentinels_stay_reserved_cap_merges_spans_and_error_raises(roll):
    x = Denoiser("X", 3, 0.5, 1.0, "[NLG]")
    kw = dict(use_mode_token=False, num_sentinels=100, random_roll=roll)
    with pytest.raises(SentinelBudgetError, match=r"X\(mu=3, r=0.5\).* 766 raw tokens.* 100 sentinels"
                       if not roll else r"X\(mu=3, r=0.5\).* raw tokens.* 100 sentinels"):
        raw_length_for(512, 512, x, sentinel_policy="error", **kw)
    with pytest.raises(SentinelBudgetError, match="X\\(mu=3"):
        plan_raw_lengths(UL2_DENOISERS, 512, 512, use_mode_tokens=True, sentinel_policy="error",
                         num_sentinels=100, random_roll=roll)
    raw = raw_length_for(512, 512, x, sentinel_policy="cap", **kw)
    assert raw > 766  # capped spans free room in the inputs
    rng = np.random.default_rng(2)
    for seed in range(30):
        tokens = text(rng, raw)
        inputs, targets = build(tokens, x, seed, policy="cap", roll=roll, mode=False)
        extra = [t for t in np.concatenate([inputs, targets]) if t < 200 and t != EOS]
        assert set(extra) <= SENTINEL_SET and len(set(extra)) <= 100
        assert len(inputs) <= 512 and len(targets) <= 512
        assert (targets[:-1] >= 200).sum() == round(raw * 0.5)  # the noise density is kept
        with pytest.raises(SentinelBudgetError, match=f"{raw} raw tokens"):
            build(tokens, x, seed, policy="error", roll=roll, mode=False)


def test_few_sentinels_with_roll_never_run_out():
    ids = SpecialIds(EOS, (108, 107, 106), MODES)
    d = Denoiser("R", 3, 0.3, 1.0, "[NLU]")
    for seed in range(200):
        tokens = text(np.random.default_rng(seed), 100)
        inputs, targets = build_example(tokens, d, seed=seed, tokenizer_ids=ids, use_mode_token=True,
                                        sentinel_policy="cap", random_roll=True)
        assert set(t for t in targets.tolist() if t < 200 and t != EOS) <= {108, 107, 106}
        np.testing.assert_array_equal(reconstruct(inputs[1:-1], targets[:-1], ids.sentinel_ids), tokens)


@pytest.mark.parametrize("mu,rate,inputs_length", [(mu, r, i) for (mu, r), row in LENGTHS_TABLE.items()
                                                   for i in row])
def test_raw_length_for_reproduces_the_lengths_table(mu, rate, inputs_length):
    raw, targets, _ = LENGTHS_TABLE[(mu, rate)][inputs_length]
    d = Denoiser("X", mu, rate)
    assert raw_length_for(inputs_length, targets, d, use_mode_token=False, sentinel_policy="cap",
                          num_sentinels=10 ** 6) == raw
    got = output_lengths(raw, d, use_mode_token=False, sentinel_policy="cap", num_sentinels=10 ** 6)
    assert got[0] <= inputs_length and got[1] == targets
    # A mode token costs exactly one raw token here.
    with_mode = dataclasses.replace(d, mode_token="[NLG]")
    assert raw_length_for(inputs_length + 1, targets, with_mode, use_mode_token=True,
                          sentinel_policy="cap", num_sentinels=10 ** 6) == raw


@pytest.mark.parametrize("budgets", [(512, 512), (1024, 1024), (512, 128), (40, 24)])
@pytest.mark.parametrize("roll", [False, True])
def test_no_output_exceeds_its_budget(budgets, roll):
    rng = np.random.default_rng(sum(budgets) + roll)
    presets = UL2_DENOISERS + UL2R_DENOISERS + SPAN_CORRUPTION_DENOISERS + PREFIX_LM_DENOISERS
    raws = plan_raw_lengths(presets, *budgets, use_mode_tokens=True, sentinel_policy="cap",
                            num_sentinels=100, random_roll=roll, special_ids=IDS)
    for d, raw in zip(presets, raws):
        kw = dict(num_sentinels=100, **kwargs("cap", roll, True))
        over = max_output_lengths(raw + 1, d, **kw)
        assert over[0] > budgets[0] or over[1] > budgets[1], d.name  # raw is the largest
        for i in range(12):
            n = raw if i < 4 else int(rng.integers(1, raw + 1))
            inputs, targets = build(text(rng, n), d, int(rng.integers(1 << 30)), roll=roll)
            assert len(inputs) <= budgets[0] and len(targets) <= budgets[1], (d.name, n)


def test_every_shorter_piece_fits_too():
    for d in ALL_DENOISERS:
        for roll in (False, True):
            kw = dict(num_sentinels=5, **kwargs("cap", roll, True))
            raw = raw_length_for(30, 20, d, **kw)
            fits = [max_output_lengths(n, d, **kw) for n in range(1, 3 * raw)]
            ok = [i <= 30 and t <= 20 for i, t in fits]
            assert ok == [True] * raw + [False] * (len(ok) - raw), (d.name, roll)


def test_budget_too_small_and_missing_mode_token():
    d = UL2_DENOISERS[0]
    with pytest.raises(ValueError, match="do not fit even a one-token piece"):
        raw_length_for(2, 10, d, num_sentinels=100, **kwargs())
    with pytest.raises(ValueError, match=r"\[S2S\]"):
        plan_raw_lengths(UL2_DENOISERS, 512, 512, use_mode_tokens=True, sentinel_policy="cap",
                         num_sentinels=100, special_ids=SpecialIds(EOS, (108,), {"[NLU]": 6, "[NLG]": 7}))


def test_s_denoiser_planning_uses_the_seed():
    s = UL2_DENOISERS[-1]
    raw = raw_length_for(512, 512, s, num_sentinels=100, **kwargs())
    assert raw == 511  # a split can leave one target token: [S2S] + 510 + EOS
    splits = {output_lengths(1000, s, seed=k, num_sentinels=0, **kwargs())[1] for k in range(50)}
    assert len(splits) > 10 and max(splits) <= 1000 // 2 + 2


def test_to_decoder_only_matches_seqio_prefix_lm():
    got = to_decoder_only([7, 8, 5, 1], [3, 9, 1], 14)
    pad = [0] * 7
    np.testing.assert_array_equal(got["decoder_target_tokens"], [7, 8, 5, 1, 3, 9, 1] + pad)
    np.testing.assert_array_equal(got["decoder_input_tokens"], [0, 7, 8, 5, 1, 3, 9, 1] + pad[1:])
    np.testing.assert_array_equal(got["decoder_loss_weights"], [0, 0, 0, 0, 1, 1, 1] + pad)
    np.testing.assert_array_equal(got["decoder_causal_attention"], [1, 1, 1, 1, 1, 0, 0] + pad)
    assert all(v.dtype == np.int32 and v.shape == (14,) for v in got.values())
    with pytest.raises(ValueError, match="exceed length 6"):
        to_decoder_only([7, 8, 5, 1], [3, 9, 1], 6)


@pytest.mark.parametrize("budgets", [(128, 128), (1024, 1024)])
def test_combined_budget_fills_a_decoder_only_row(budgets):
    rng = np.random.default_rng(budgets[0])
    total = sum(budgets)
    for d in UL2_DENOISERS + UL2R_DENOISERS:
        kw = dict(num_sentinels=100, **kwargs("cap", False, True))
        raw = raw_length_for(*budgets, d, combined=True, **kw)
        assert raw >= raw_length_for(*budgets, d, **kw)  # never smaller than the split budget
        over = max_output_lengths(raw + 1, d, **kw)
        assert over[0] + over[1] > total, d.name  # raw is the largest that fits the sum
        for _ in range(6):
            inputs, targets = build(text(rng, raw), d, int(rng.integers(1 << 30)), roll=False)
            assert len(inputs) + len(targets) <= total, d.name


# ---------------------------------------------------------------- MeCo metadata in the inputs

METADATA = np.array([250, 251, 252, 200, 201], np.int32)  # ordinary ids, even the text's own


@pytest.mark.parametrize("d", ALL_DENOISERS, ids=lambda d: d.name + d.mode_token)
def test_metadata_goes_after_the_mode_token_and_changes_nothing_else(d):
    rng = np.random.default_rng(2)
    for seed in range(12):
        tokens = text(rng, int(rng.integers(1, 300)))
        for mode in (True, False):
            kw = dict(mode=mode, roll=bool(seed % 2))
            plain_in, plain_tg = build(tokens, d, seed, **kw)
            inputs, targets = build_example(tokens, d, seed=seed, tokenizer_ids=IDS,
                                            metadata=METADATA, **kwargs(**kw))
            head = int(mode and bool(d.mode_token))
            # [mode] metadata <the same noised piece> [EOS]: the mask is drawn on the piece alone.
            np.testing.assert_array_equal(inputs, np.concatenate(
                [plain_in[:head], METADATA, plain_in[head:]]))
            np.testing.assert_array_equal(targets, plain_tg)  # metadata is never a target
            assert not set(inputs[head:head + len(METADATA)].tolist()) & SENTINEL_SET
            got = output_lengths(len(tokens), d, seed=seed, num_sentinels=IDS.num_sentinels,
                                 metadata_len=len(METADATA), **kwargs(**kw))
            assert got == (len(inputs), len(targets))


@pytest.mark.parametrize("combined", [False, True])
def test_metadata_is_counted_in_the_budget(combined):
    rng = np.random.default_rng(3)
    m, budgets = len(METADATA), (40, 24)
    for d in ALL_DENOISERS:
        kw = dict(num_sentinels=100, **kwargs("cap", False, True))
        raw = raw_length_for(*budgets, d, combined=combined, metadata_len=m, **kw)
        # The prefix costs inputs room (not always raw tokens: a targets budget may bind first).
        assert raw <= raw_length_for(*budgets, d, combined=combined, **kw)
        over = max_output_lengths(raw + 1, d, **kw)
        assert (over[0] + m + over[1] > sum(budgets) if combined
                else over[0] + m > budgets[0] or over[1] > budgets[1]), d.name
        for n in [raw, *rng.integers(1, raw + 1, 8)]:
            inputs, targets = build_example(text(rng, int(n)), d, seed=int(rng.integers(1 << 30)),
                                            tokenizer_ids=IDS, metadata=METADATA, **kwargs())
            assert (len(inputs) + len(targets) <= sum(budgets) if combined
                    else len(inputs) <= budgets[0] and len(targets) <= budgets[1]), (d.name, n)
    with pytest.raises(ValueError, match="5-token metadata prefix.*shorten the metadata"):
        raw_length_for(7, 10, UL2_DENOISERS[0], metadata_len=m, num_sentinels=100, **kwargs())


def test_auto_targets_length_is_t5s_span_corruption_budget():
    """T5's span corruption at 512 inputs has 114 targets (random_spans_helper); UL2's mixture
    asks for about half its inputs."""
    kw = dict(use_mode_token=False, sentinel_policy="cap", num_sentinels=100)
    assert objectives.auto_targets_length(objectives.SPAN_CORRUPTION_DENOISERS, 512, multiple=1,
                                          **kw) == 114
    assert objectives.auto_targets_length(objectives.SPAN_CORRUPTION_DENOISERS, 512, **kw) == 120
    ul2 = objectives.auto_targets_length(objectives.UL2_DENOISERS, 128, pieces_per_row=3,
                                         **(kw | {"use_mode_token": True}))
    assert 48 <= ul2 <= 72 and ul2 % 8 == 0
