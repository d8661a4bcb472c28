"""RoPE's rotation frequencies, plain and scaled (linear, Llama 3, YaRN), as Hugging Face rounds them.

A converted checkpoint must see the angles it was trained with, and at position p an error of one
ulp in a frequency near 1 is p ulps in the angle (2.4e-4 in cos/sin below 8,192 tokens). So every
step below is the float32 operation transformers (`modeling_rope_utils`) runs in torch, in its
order, computed on the host in numpy:

- plain: ``1 / theta ** (arange(0, E, 2) / E)`` with the exponent a float32 quotient, the power
  rounded once to float32 (from float64) and the reciprocal in float32. Torch's vectorized powf
  (SLEEF, within 1 ulp) rounds correctly for theta 1e4 and 5e5 at head_dim 64 and 128 (every
  Llama we convert), so there the frequencies are Hugging Face's bit for bit; for some other
  (theta, head_dim) a few of them differ by one ulp.
- ``a / tensor`` in torch is ``tensor.reciprocal() * a``, and ``1 - tensor`` a float32
  subtraction; both are written out that way below.

The frequencies depend only on the config, so they are numpy constants, not traced values.
"""

from __future__ import annotations

import math

import numpy as np

from t5x_like.config import ModelConfig

_F32 = np.float32


def _powers(head_dim: int, theta: float) -> np.ndarray:
    """theta ** (2i/E) for i < E/2: a float32 exponent, the power rounded once from float64."""
    exponent = np.arange(0, head_dim, 2).astype(_F32) / _F32(head_dim)
    return (np.float64(_F32(theta)) ** exponent.astype(np.float64)).astype(_F32)


def plain_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """The E/2 frequencies 1 / theta**(2i/E), float32, rounded as described above."""
    return _F32(1.0) / _powers(head_dim, theta)


def _llama3(inv_freq: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept, a smooth
    blend between `original / low_freq_factor` and `original / high_freq_factor`."""
    factor, low, high = _F32(cfg.rope_factor), cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old = cfg.rope_original_max_positions
    low_wavelen, high_wavelen = _F32(old / low), _F32(old / high)
    wavelen = (_F32(1.0) / inv_freq) * _F32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = ((_F32(1.0) / wavelen) * _F32(old) - _F32(low)) / _F32(high - low)
    smoothed = (_F32(1.0) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(_F32)


def yarn_attention_factor(factor: float, mscale: float = 1.0) -> float:
    """YaRN's cos/sin scale for a context `factor`: 0.1 * mscale * ln(factor) + 1 (1 at <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_ramp_bounds(cfg: ModelConfig) -> tuple[float, float]:
    """The frequency indices where YaRN's ramp from extrapolation to interpolation starts and
    ends: where a frequency turns beta_fast and beta_slow times in the original context."""
    dim, base = cfg.head_dim, cfg.rope_theta

    def index(rotations: float) -> float:
        return (dim * math.log(cfg.rope_original_max_positions / (rotations * 2 * math.pi))
                / (2 * math.log(base)))

    low, high = index(cfg.rope_beta_fast), index(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _yarn(cfg: ModelConfig) -> np.ndarray:
    """YaRN (Peng et al. 2023): interpolated (divided by `factor`) low frequencies, extrapolated
    (kept) high ones, linearly ramped between the two bounds."""
    power = _powers(cfg.head_dim, cfg.rope_theta)
    extrapolated = _F32(1.0) / power
    interpolated = _F32(1.0) / (_F32(cfg.rope_factor) * power)
    low, high = _yarn_ramp_bounds(cfg)
    if low == high:
        high += 0.001  # Hugging Face's guard against a zero-width ramp
    ramp = np.clip((np.arange(cfg.head_dim // 2, dtype=_F32) - _F32(low)) / _F32(high - low),
                   0, 1).astype(_F32)
    keep = _F32(1.0) - ramp
    return (interpolated * (_F32(1.0) - keep) + extrapolated * keep).astype(_F32)


def rope_frequencies(cfg: ModelConfig) -> tuple[np.ndarray, float]:
    """(frequencies [E/2] float32, the factor cos and sin are multiplied by) of cfg's RoPE."""
    if cfg.rope_scaling == "yarn":
        attention = cfg.rope_attention_factor or yarn_attention_factor(cfg.rope_factor)
        return _yarn(cfg), attention
    inv_freq = plain_frequencies(cfg.head_dim, cfg.rope_theta)
    if cfg.rope_scaling == "linear":
        return inv_freq / _F32(cfg.rope_factor), 1.0
    if cfg.rope_scaling == "llama3":
        return _llama3(inv_freq, cfg), 1.0
    return inv_freq, 1.0
