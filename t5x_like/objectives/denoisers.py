"""Denoisers (UL2's R, X and S paradigms), the objective presets, and per-piece mixing.

A denoiser is one row of ``ObjectiveConfig.denoisers``: (paradigm R|X|S, mean span mu, rate,
mixing weight, mode token or ''). For R and X the rate is the noise density r of T5 span
corruption; for S it is the mean target fraction d (the split point is random so that the
target fraction is ~U[0, 2d]; ``noise.random_prefix_split``) and the mean span is unused.

Presets:

* ``UL2_DENOISERS``: the paper's seven, sampled uniformly (its appendix). ``ul2_denoisers(s_rate)``
  gives the common alternative with S at ``s_rate`` (e.g. 0.2, ``UL2_DENOISERS_S20``) and the six
  R/X denoisers sharing the rest equally.
* ``UL2R_DENOISERS``: U-PaLM's continued-training mixture, 50% S, 25% R(3, 0.15), 25% X. The spec
  allows X(mu=32, r=0.15) or X(mu=3, r=0.5); we use X(32, 0.15): X(3, 0.5) needs 256 spans on
  a 1024-token budget, 2.5x T5's 100 sentinels, so under 'cap' it would silently become a
  mean-span-~8 denoiser and under 'error' the preset would not run at all. X(3, 0.5) stays one
  ``ObjectiveConfig.denoisers`` row away.
* ``SPAN_CORRUPTION_DENOISERS``: T5, R(3, 0.15) without a mode token.
* ``PREFIX_LM_DENOISERS``: the S-denoiser alone, no mode token, d = 0.5 (a uniform split point,
  T5's prefix_lm).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from t5x_like.objectives.noise import Seed

PARADIGMS = ("R", "X", "S")
NLU, NLG, S2S = "[NLU]", "[NLG]", "[S2S]"
# UL2's S-denoiser: about a quarter of the piece is target.
UL2_S_TARGET_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """One denoising task: paradigm R|X|S, mean span mu, rate r (S: mean target fraction d),
    mixing weight (relative; normalized over the mixture), mode token ('' = none)."""

    paradigm: str
    mean_span: float
    rate: float
    weight: float = 1.0
    mode_token: str = ""

    def __post_init__(self):
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"Denoiser paradigm = {self.paradigm!r}: must be one of {PARADIGMS}")
        if not self.weight > 0:
            raise ValueError(f"{self.name}: mixing weight = {self.weight} must be positive")
        if self.paradigm == "S":
            if not 0 < self.rate <= 0.5:
                raise ValueError(f"{self.name}: mean target fraction d = {self.rate} must be in "
                                 f"(0, 0.5] (the target fraction is ~U[0, 2d])")
        else:
            if not 0 < self.rate < 1:
                raise ValueError(f"{self.name}: noise rate = {self.rate} must be in (0, 1)")
            if not self.mean_span >= 1:
                raise ValueError(f"{self.name}: mean span = {self.mean_span} must be >= 1")

    @property
    def name(self) -> str:
        """Short readable name for errors and metrics, e.g. ``X(mu=3, r=0.5)`` or ``S(d=0.25)``."""
        if self.paradigm == "S":
            return f"S(d={self.rate:g})"
        return f"{self.paradigm}(mu={self.mean_span:g}, r={self.rate:g})"

    @property
    def is_prefix_lm(self) -> bool:
        """True for the S-denoiser (a prefix/continuation split, no sentinels)."""
        return self.paradigm == "S"


def ul2_denoisers(s_rate: float | None = None) -> tuple[Denoiser, ...]:
    """UL2's seven denoisers. ``s_rate=None``: all weights 1/7 (the paper's appendix);
    else S gets ``s_rate`` and the six R/X denoisers share ``1 - s_rate`` equally."""
    if s_rate is not None and not 0 < s_rate < 1:
        raise ValueError(f"s_rate = {s_rate} must be in (0, 1)")
    rx_weight = 1 / 7 if s_rate is None else (1 - s_rate) / 6
    s_weight = 1 / 7 if s_rate is None else s_rate
    rx = [("R", 3, 0.15, NLU), ("R", 8, 0.15, NLU), ("X", 3, 0.5, NLG), ("X", 8, 0.5, NLG),
          ("X", 64, 0.15, NLG), ("X", 64, 0.5, NLG)]
    return (*(Denoiser(p, mu, r, rx_weight, tok) for p, mu, r, tok in rx),
            Denoiser("S", 0.0, UL2_S_TARGET_FRACTION, s_weight, S2S))


UL2_DENOISERS = ul2_denoisers()
UL2_DENOISERS_S20 = ul2_denoisers(s_rate=0.2)
UL2R_DENOISERS = (
    Denoiser("S", 0.0, UL2_S_TARGET_FRACTION, 0.5, S2S),
    Denoiser("R", 3, 0.15, 0.25, NLU),
    Denoiser("X", 32, 0.15, 0.25, NLG),
)
SPAN_CORRUPTION_DENOISERS = (Denoiser("R", 3, 0.15, 1.0, ""),)
PREFIX_LM_DENOISERS = (Denoiser("S", 0.0, 0.5, 1.0, ""),)

PRESETS = {
    "causal_lm": (),
    "prefix_lm": PREFIX_LM_DENOISERS,
    "span_corruption": SPAN_CORRUPTION_DENOISERS,
    "ul2": UL2_DENOISERS,
    "ul2r": UL2R_DENOISERS,
}


def denoisers_from_config(objective_cfg) -> tuple[Denoiser, ...]:
    """The denoisers of an ``ObjectiveConfig``: its ``denoisers`` rows if any, else its preset.

    ``causal_lm`` has no denoisers (an empty tuple) and must not be given rows. Each row is
    (paradigm, mean span, rate, mixing weight, mode token or ''); ValueError names a bad row.
    """
    name = objective_cfg.name
    if name not in PRESETS:
        raise ValueError(f"ObjectiveConfig.name = {name!r}: choose one of {tuple(PRESETS)}")
    rows = tuple(objective_cfg.denoisers)
    if not rows:
        return PRESETS[name]
    if name == "causal_lm":
        raise ValueError(f"ObjectiveConfig.denoisers has {len(rows)} rows but name = 'causal_lm' "
                         f"uses none; pick prefix_lm, span_corruption, ul2 or ul2r")
    out = []
    for i, row in enumerate(rows):
        try:
            paradigm, mu, rate, weight, mode = row
            out.append(Denoiser(str(paradigm), float(mu), float(rate), float(weight), str(mode)))
        except (TypeError, ValueError) as e:
            raise ValueError(f"ObjectiveConfig.denoisers row {i} = {row!r}: {e}") from e
    return tuple(out)


def mixing_probabilities(denoisers) -> np.ndarray:
    """float64[D]: the denoisers' weights normalized to sum to one."""
    if len(denoisers) == 0:
        raise ValueError("no denoisers to mix (objective causal_lm has none)")
    weights_D = np.array([d.weight for d in denoisers], np.float64)
    return weights_D / weights_D.sum()


def choose_denoisers(num_pieces: int, denoisers, seed: Seed) -> np.ndarray:
    """int32[num_pieces]: a denoiser index per piece, i.i.d. with the mixing probabilities.

    A function of ``seed``, so the piece cutter (which needs the denoiser to know the piece
    length) and a replaying pipeline draw the same sequence.
    """
    if num_pieces < 0:
        raise ValueError(f"num_pieces = {num_pieces} must be >= 0")
    probs_D = mixing_probabilities(denoisers)
    rng = np.random.default_rng(seed)
    return rng.choice(len(probs_D), size=num_pieces, p=probs_D).astype(np.int32)
