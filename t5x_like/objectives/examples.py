"""Denoised examples: length planning, example builders and the decoder-only (prefix-LM) layout.

Layout of an example built from a raw piece of n tokens (encoder-decoder features):

* R/X: ``inputs = [mode] nn_1 S_0 nn_2 S_1 ... [EOS]``, ``targets = S_0 sp_1 S_1 sp_2 ... [EOS]``
* S:   ``inputs = [mode] prefix [EOS]``,             ``targets = continuation [EOS]``

The mode token comes first, and only when ``use_mode_token`` is set and the denoiser has one;
EOS is appended here (the sentinel functions of ``noise`` do not append it).

Metadata (MeCo's stage 1): ``build_example(..., metadata=ids)`` puts a document's metadata
prefix (e.g. the ids of ``"URL: en.wikipedia.org\n\n"``, tokenized on its own) right after the
mode token: ``inputs = [mode] metadata <noised piece or S prefix> [EOS]``. It is never noised
(the mask and the S split are drawn on the raw piece alone, with the same seed, so the piece is
denoised exactly as without metadata), and it is never a target (encoder-decoder: it is encoder
input; decoder-only: inputs carry loss weight 0). The mode token stays first because it is the
task switch, at position 0 in stage 1 and in the cooldown alike; the metadata then conditions
what follows, as ``[BOS] metadata doc`` does for causal LM. ``output_lengths`` and
``raw_length_for`` take ``metadata_len`` and count it in the inputs budget (decoder-only: in the
combined budget), so a prefixed example never exceeds a budget.

Planning. The packer must know both lengths before it draws anything, so they are functions
of the piece length n and of the piece's seed, which the planner assigns:

* R/X without roll: a function of n alone (the counts of ``num_noise_and_spans``).
* R/X with ``random_roll``: a roll can cut one noise span in two (two sentinels), so the exact
  lengths need the seed; the worst case is one more sentinel on each side.
* S: the split point is ``random_prefix_split(n, d, seed)``; ``output_lengths`` takes the seed
  and ``build_example`` draws the same split from it.

Sentinel policy (``sentinel_policy``) — the drawn span count is never allowed past the reserved
sentinels (one fewer with ``random_roll``, which keeps a sentinel for a span cut by the roll):

* 'cap': ``n_spans = min(n_spans, budget)``. The noise tokens stay ``round(n * r)`` (the density
  is kept) and fewer, longer spans carry them: spans are merged, the mean span grows.
* 'error': ``SentinelBudgetError`` naming the denoiser, the piece length and the sentinel count,
  raised at plan time by ``raw_length_for``/``plan_raw_lengths`` (and by ``output_lengths`` and
  ``build_example`` for any piece that would need more).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from t5x_like.objectives.denoisers import Denoiser
from t5x_like.objectives.noise import (
    Seed, SentinelBudgetError, count_noise_runs, noise_span_to_unique_sentinel,
    nonnoise_span_to_unique_sentinel, num_noise_and_spans, random_prefix_split,
    random_spans_noise_mask,
)

SENTINEL_POLICIES = ("cap", "error")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids an example builder emits besides text: EOS, sentinels (index i -> id), mode tokens."""

    eos_id: int
    sentinel_ids: tuple[int, ...]
    mode_token_ids: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        sentinels = tuple(int(i) for i in self.sentinel_ids)
        modes = {str(k): int(v) for k, v in dict(self.mode_token_ids).items()}
        object.__setattr__(self, "sentinel_ids", sentinels)
        object.__setattr__(self, "mode_token_ids", modes)
        if len(set(sentinels)) != len(sentinels):
            raise ValueError(f"SpecialIds.sentinel_ids has repeated ids: {sentinels}")
        clash = ({self.eos_id, 0} | set(modes.values())) & set(sentinels)
        if clash:
            raise ValueError(f"SpecialIds: ids {sorted(clash)} are both sentinels and pad/EOS/mode tokens")
        if self.eos_id in modes.values() or len(set(modes.values())) != len(modes):
            raise ValueError(f"SpecialIds: mode token ids {modes} repeat or collide with EOS {self.eos_id}")

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialIds":
        """From a ``t5x_like.data.tokenizer.Tokenizer`` (anything with ``eos_id``,
        ``sentinel_ids`` and ``mode_tokens``)."""
        return cls(int(tokenizer.eos_id), tuple(int(i) for i in np.asarray(tokenizer.sentinel_ids)),
                   dict(tokenizer.mode_tokens))

    @property
    def num_sentinels(self) -> int:
        """How many sentinels are reserved."""
        return len(self.sentinel_ids)

    def mode_id(self, denoiser: Denoiser) -> int:
        """Id of ``denoiser``'s mode token; ValueError naming it and the available ones if absent."""
        if denoiser.mode_token not in self.mode_token_ids:
            raise ValueError(f"{denoiser.name} uses mode token {denoiser.mode_token!r} but the "
                             f"tokenizer has {sorted(self.mode_token_ids) or 'none'}; declare it "
                             f"or set ObjectiveConfig.use_mode_tokens=False")
        return self.mode_token_ids[denoiser.mode_token]


def _num_mode_tokens(denoiser: Denoiser, use_mode_token: bool) -> int:
    """1 if the example starts with a mode token, else 0."""
    return int(bool(use_mode_token and denoiser.mode_token))


def span_budget(num_sentinels: int, random_roll: bool) -> int:
    """Most noise spans a mask may be drawn with: the sentinels, less one kept for a rolled wrap."""
    return num_sentinels - int(bool(random_roll))


def _max_spans(n: int, denoiser: Denoiser, sentinel_policy: str, num_sentinels: int,
               random_roll: bool) -> int | None:
    """The mask's span cap under the policy (None = uncapped); raises under 'error' if needed."""
    if sentinel_policy not in SENTINEL_POLICIES:
        raise ValueError(f"sentinel_policy = {sentinel_policy!r}: must be one of {SENTINEL_POLICIES}")
    budget = span_budget(num_sentinels, random_roll)
    roll_note = " (one is kept for a span cut by random_roll)" if random_roll else ""
    if budget < 1:
        raise SentinelBudgetError(f"{denoiser.name} needs sentinels but the tokenizer has "
                                  f"{num_sentinels}{roll_note}; use a tokenizer with sentinels")
    if sentinel_policy == "cap":
        return budget
    spans = num_noise_and_spans(n, denoiser.rate, denoiser.mean_span)[1]  # uncapped
    if spans > budget:
        raise SentinelBudgetError(
            f"sentinel_policy='error': {denoiser.name} on a piece of {n} raw tokens draws {spans} "
            f"noise spans but the tokenizer has {num_sentinels} sentinels{roll_note}; use "
            f"sentinel_policy='cap', shorter inputs, or a tokenizer with more sentinels")
    return None


def output_lengths(n: int, denoiser: Denoiser, *, use_mode_token: bool, sentinel_policy: str,
                   num_sentinels: int, seed: Seed | None = None, random_roll: bool = False,
                   metadata_len: int = 0) -> tuple[int, int]:
    """(inputs_len, targets_len) of ``build_example`` on a piece of ``n`` raw tokens, exactly.

    Mode token, ``metadata_len`` metadata ids, sentinels and both EOS are counted. ``seed``
    (the one given to ``build_example``) is required for the S-denoiser and for R/X with
    ``random_roll``; R/X without roll depend on ``n`` only. Raises SentinelBudgetError under 'error' if the piece
    needs more sentinels than there are.
    """
    if n < 1:
        raise ValueError(f"n = {n}: a piece needs at least one token")
    if metadata_len < 0:
        raise ValueError(f"metadata_len = {metadata_len}: must be >= 0")
    mode = _num_mode_tokens(denoiser, use_mode_token) + metadata_len
    if denoiser.is_prefix_lm:
        if seed is None:
            raise ValueError(f"{denoiser.name}: the split point is drawn from the piece's seed; "
                             f"pass seed= (or use max_output_lengths for a bound)")
        n_in = random_prefix_split(n, denoiser.rate, seed)
        return mode + n_in + 1, n - n_in + 1
    max_spans = _max_spans(n, denoiser, sentinel_policy, num_sentinels, random_roll)
    n_noise, runs = num_noise_and_spans(n, denoiser.rate, denoiser.mean_span, max_spans)
    if random_roll and n_noise > runs:  # only then can a roll cut a span in two
        if seed is None:
            raise ValueError(f"{denoiser.name} with random_roll: the lengths depend on the roll; "
                             f"pass seed= (or use max_output_lengths for a bound)")
        runs = count_noise_runs(random_spans_noise_mask(
            n, denoiser.rate, denoiser.mean_span, seed, True, max_spans))
    return mode + n - n_noise + runs + 1, n_noise + runs + 1


def max_output_lengths(n: int, denoiser: Denoiser, *, use_mode_token: bool, sentinel_policy: str,
                       num_sentinels: int, random_roll: bool = False) -> tuple[int, int]:
    """(inputs_len, targets_len) upper bounds over all seeds for a piece of ``n`` raw tokens.

    Exact for R/X without roll. Both are non-decreasing in ``n``, which ``raw_length_for``
    relies on. Raises like ``output_lengths``.
    """
    if n < 1:
        raise ValueError(f"n = {n}: a piece needs at least one token")
    mode = _num_mode_tokens(denoiser, use_mode_token)
    if denoiser.is_prefix_lm:
        max_in = n - 1
        min_in = min(max_in, max(1, round((1 - 2 * denoiser.rate) * max_in)))
        return mode + max_in + 1, n - min_in + 1
    max_spans = _max_spans(n, denoiser, sentinel_policy, num_sentinels, random_roll)
    n_noise, runs = num_noise_and_spans(n, denoiser.rate, denoiser.mean_span, max_spans)
    if random_roll:
        runs = min(runs + 1, n_noise)
    return mode + n - n_noise + runs + 1, n_noise + runs + 1


def raw_length_for(inputs_length: int, targets_length: int, denoiser: Denoiser, *,
                   use_mode_token: bool, sentinel_policy: str, num_sentinels: int,
                   random_roll: bool = False, combined: bool = False,
                   metadata_len: int = 0) -> int:
    """Largest raw piece length T whose example fits ``inputs_length``/``targets_length``.

    ``combined``: only the sum must fit ``inputs_length + targets_length`` — a decoder-only
    prefix LM puts inputs and targets in one row, so splitting the budget would waste it.
    ``metadata_len``: metadata ids in front of the inputs (``build_example(metadata=...)``),
    counted in the inputs budget.

    Every piece of 1..T tokens fits, for every seed (the bounds of ``max_output_lengths`` grow
    with the length). For R/X without mode token or cap this is the reference
    ``random_spans_helper`` (its r = 0.5 decrement included, when the targets budget is its
    targets length); for S it is at most ``inputs_length - 1 - mode`` (the split may leave a
    single target token) and small enough that a ~2d target fraction fits the targets budget.
    Under 'error', raises SentinelBudgetError when pieces of length T need more sentinels than
    there are (config/plan time); ValueError if not even one token fits.
    """

    def fits(n: int) -> bool:
        got = max_output_lengths(n, denoiser, use_mode_token=use_mode_token,
                                 sentinel_policy="cap" if sentinel_policy == "error" else sentinel_policy,
                                 num_sentinels=num_sentinels if sentinel_policy == "cap" else 1 << 62,
                                 random_roll=random_roll)
        if combined:
            return got[0] + metadata_len + got[1] <= inputs_length + targets_length
        return got[0] + metadata_len <= inputs_length and got[1] <= targets_length

    if metadata_len < 0:
        raise ValueError(f"metadata_len = {metadata_len}: must be >= 0")
    if not fits(1):
        meta = f", a {metadata_len}-token metadata prefix" if metadata_len else ""
        raise ValueError(f"{denoiser.name}: budgets inputs={inputs_length}, targets="
                         f"{targets_length} do not fit even a one-token piece "
                         f"(mode token {'on' if use_mode_token else 'off'}{meta}, EOS on both "
                         f"sides); shorten the metadata template/value or raise the lengths")
    lo, hi = 1, 2
    while fits(hi):  # exponential search for a failing length, then bisect
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if sentinel_policy == "error" and not denoiser.is_prefix_lm:
        _max_spans(lo, denoiser, "error", num_sentinels, random_roll)
    return lo


def auto_targets_length(denoisers, inputs_length: int, *, pieces_per_row: int = 1,
                        use_mode_token: bool, sentinel_policy: str, num_sentinels: int,
                        random_roll: bool = False, multiple: int = 8) -> int:
    """The targets budget that fits a mixture: ``inputs_length`` x its targets per input.

    Each denoiser's piece is cut as the planner cuts it (for budgets ``// pieces_per_row``),
    its expected output lengths (the S split and a rolled mask averaged over 64 seeds) are
    weighted by the mixing rates, and the ratio, rounded up to ``multiple``, gives the budget.
    The cut depends on the targets budget, so this iterates to a fixed point (or the first
    repeated value). Rows of a budget that fits waste neither the inputs nor the targets.
    """
    kw = dict(use_mode_token=use_mode_token, sentinel_policy=sentinel_policy,
              num_sentinels=num_sentinels, random_roll=random_roll)
    weights = np.array([d.weight for d in denoisers], np.float64)
    targets_length, seen = inputs_length, set()
    while targets_length not in seen:
        seen.add(targets_length)
        mean_in_K, mean_tgt_K = [], []
        for d in denoisers:
            n = raw_length_for(inputs_length // pieces_per_row, targets_length // pieces_per_row,
                               d, **kw)
            seeds = range(64) if (d.is_prefix_lm or random_roll) else (None,)
            outs = np.array([output_lengths(n, d, seed=s, **kw) for s in seeds], np.float64)
            mean_in_K.append(outs[:, 0].mean())
            mean_tgt_K.append(outs[:, 1].mean())
        ratio = float(weights @ mean_tgt_K) / float(weights @ mean_in_K)
        targets_length = multiple * math.ceil(inputs_length * ratio / multiple)
    return targets_length


def plan_raw_lengths(denoisers, inputs_length: int, targets_length: int, *, use_mode_tokens: bool,
                     sentinel_policy: str, num_sentinels: int, random_roll: bool = False,
                     special_ids: SpecialIds | None = None) -> tuple[int, ...]:
    """``raw_length_for`` of every denoiser: the config-time check of an objective.

    Raises (naming the denoiser) if a budget is too small, if sentinels run out under 'error',
    or, given ``special_ids``, if a mode token the examples would start with is missing.
    """
    out = []
    for d in denoisers:
        if special_ids is not None and _num_mode_tokens(d, use_mode_tokens):
            special_ids.mode_id(d)
        out.append(raw_length_for(inputs_length, targets_length, d, use_mode_token=use_mode_tokens,
                                  sentinel_policy=sentinel_policy, num_sentinels=num_sentinels,
                                  random_roll=random_roll))
    return tuple(out)


def build_example(tokens, denoiser: Denoiser, *, seed: Seed, tokenizer_ids: SpecialIds,
                  use_mode_token: bool, sentinel_policy: str, random_roll: bool = False,
                  metadata=None) -> tuple[np.ndarray, np.ndarray]:
    """(inputs int32[I], targets int32[T]) of one raw piece, for an encoder-decoder.

    See the module docstring for the layout; I and T equal ``output_lengths`` for the same
    arguments, seed and ``metadata_len = len(metadata)``. ``metadata``: ids put after the mode
    token, never noised (None or empty: none); the rest of the example does not depend on it.
    A function of ``seed``. Sentinels come only from ``tokenizer_ids.sentinel_ids``
    (SentinelBudgetError rather than anything else).
    """
    tokens_N = np.asarray(tokens, np.int32)
    if tokens_N.ndim != 1 or tokens_N.size < 1:
        raise ValueError(f"tokens of shape {tokens_N.shape}: need a 1-D piece of at least one token")
    n = tokens_N.size
    head = [tokenizer_ids.mode_id(denoiser)] if _num_mode_tokens(denoiser, use_mode_token) else []
    head = np.concatenate([np.asarray(head, np.int32),
                           np.asarray([] if metadata is None else metadata, np.int32).reshape(-1)])
    eos = [tokenizer_ids.eos_id]
    if denoiser.is_prefix_lm:
        n_in = random_prefix_split(n, denoiser.rate, seed)
        inputs, targets = tokens_N[:n_in], tokens_N[n_in:]
    else:
        max_spans = _max_spans(n, denoiser, sentinel_policy, tokenizer_ids.num_sentinels,
                               random_roll)
        mask_N = random_spans_noise_mask(n, denoiser.rate, denoiser.mean_span, seed,
                                         random_roll, max_spans)
        sentinels = np.asarray(tokenizer_ids.sentinel_ids, np.int32)
        inputs = noise_span_to_unique_sentinel(tokens_N, mask_N, sentinels)
        targets = nonnoise_span_to_unique_sentinel(tokens_N, mask_N, sentinels)
    return (np.concatenate([head, inputs, np.asarray(eos, np.int32)]),
            np.concatenate([targets, np.asarray(eos, np.int32)]))


def to_decoder_only(inputs, targets, length: int) -> dict[str, np.ndarray]:
    """seqio's PrefixLM conversion of one example to int32[length] decoder features.

    The sequence is inputs + targets (both already end in EOS), zero-padded to ``length``:
    ``decoder_target_tokens`` is it, ``decoder_input_tokens`` it shifted right with BOS = 0,
    ``decoder_loss_weights`` 1 on the targets only, ``decoder_causal_attention`` 1 on the inputs
    plus one position (bidirectional attention there; the last input predicts the first target).
    """
    inputs_I, targets_T = np.asarray(inputs, np.int32), np.asarray(targets, np.int32)
    n_in, n_tg = inputs_I.size, targets_T.size
    if n_in + n_tg > length:
        raise ValueError(f"inputs ({n_in}) + targets ({n_tg}) = {n_in + n_tg} tokens exceed "
                         f"length {length}")
    tokens_L = np.zeros(length, np.int32)
    tokens_L[:n_in + n_tg] = np.concatenate([inputs_I, targets_T])
    positions_L = np.arange(length)
    return {
        "decoder_target_tokens": tokens_L,
        "decoder_input_tokens": np.concatenate([[0], tokens_L[:-1]]).astype(np.int32),
        "decoder_loss_weights": ((positions_L >= n_in) & (positions_L < n_in + n_tg)).astype(np.int32),
        "decoder_causal_attention": (positions_L <= n_in).astype(np.int32),
    }
