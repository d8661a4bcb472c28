"""Training objectives on raw token pieces: T5 span corruption, UL2's mixture of denoisers, prefix LM.

Pure numpy and seedable (no JAX, no grain): a piece of raw tokens plus a seed gives one example.

* ``noise``: the reference random-spans noise mask, its counts and lengths helper, sentinel
  replacement, the S-denoiser's random split.
* ``denoisers``: the ``Denoiser`` rows, the presets of ``ObjectiveConfig.name``, per-piece mixing.
* ``examples``: exact output lengths for planning before any mask is drawn, the largest raw
  piece per denoiser, example builders and seqio's decoder-only prefix-LM conversion.

Policies (sentinel exhaustion, S split, mode token and EOS placement, the UL2R preset) are
documented in ``examples`` and ``denoisers``.
"""

from t5x_like.objectives.denoisers import (
    NLG, NLU, PARADIGMS, PREFIX_LM_DENOISERS, PRESETS, S2S, SPAN_CORRUPTION_DENOISERS,
    UL2_DENOISERS, UL2_DENOISERS_S20, UL2_S_TARGET_FRACTION, UL2R_DENOISERS, Denoiser,
    choose_denoisers, denoisers_from_config, mixing_probabilities, ul2_denoisers,
)
from t5x_like.objectives.examples import (
    SENTINEL_POLICIES, SpecialIds, auto_targets_length, build_example, max_output_lengths, output_lengths,
    plan_raw_lengths, raw_length_for, span_budget, to_decoder_only,
)
from t5x_like.objectives.noise import (
    SentinelBudgetError, count_noise_runs, noise_span_to_unique_sentinel,
    nonnoise_span_to_unique_sentinel, num_noise_and_spans, random_prefix_split,
    random_segmentation, random_spans_helper, random_spans_noise_mask,
)

__all__ = [
    "NLG", "NLU", "PARADIGMS", "PREFIX_LM_DENOISERS", "PRESETS", "S2S", "SENTINEL_POLICIES",
    "SPAN_CORRUPTION_DENOISERS", "UL2_DENOISERS", "UL2_DENOISERS_S20", "UL2_S_TARGET_FRACTION",
    "UL2R_DENOISERS", "Denoiser", "SentinelBudgetError", "SpecialIds", "auto_targets_length",
    "build_example",
    "choose_denoisers", "count_noise_runs", "denoisers_from_config", "max_output_lengths",
    "mixing_probabilities", "noise_span_to_unique_sentinel", "nonnoise_span_to_unique_sentinel",
    "num_noise_and_spans", "output_lengths", "plan_raw_lengths", "random_prefix_split",
    "random_segmentation", "random_spans_helper", "random_spans_noise_mask", "raw_length_for",
    "span_budget", "to_decoder_only", "ul2_denoisers",
]
