"""Tiny random Hugging Face models (PyTorch, CPU) and packed inputs for the conversion tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import segments
from t5x_like.models.encoder_decoder import EncoderDecoder
from t5x_like.state import model_spec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

T5_VARIANTS = {  # name: (feed_forward_proj, our mlp_activation, tied and scaled (T5 v1.0))
    "t5_v1_0": ("relu", "relu", True),
    "t5_v1_1": ("gated-gelu", "gelu_tanh", False),
    "ul2": ("gated-silu", "silu", False),
}


def _perturb_norms(model) -> None:
    """Norm scales away from 1, so that a missing or misplaced one changes the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def hf_t5(variant: str, seed: int = 0, buckets: int = 8, max_distance: int = 12,
          decoder_layers: int = 3):
    """A random float32 T5 of the variant: 2 encoder, 3 decoder layers, few buckets. v1.1 and UL2
    get a separate lm_head (transformers 5 ties T5's head whatever the config says)."""
    proj, _, tied = T5_VARIANTS[variant]
    cfg = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2,
        num_decoder_layers=decoder_layers,
        num_heads=4, relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
        feed_forward_proj=proj, tie_word_embeddings=tied, dropout_rate=0.0,
        attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(64, 16) * 16 ** -0.5)
    _perturb_norms(model)
    return model


def hf_llama(vocab_size: int = 64, tied: bool = False, seed: int = 0):
    """A random float32 Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, rope_theta=500.0,
        rms_norm_eps=1e-5, tie_word_embeddings=tied, attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF's init (std 0.02) gives near-uniform logits: make them matter
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    _perturb_norms(model)
    return model


def tokens(seg, vocab_size: int, seed: int):
    """Random tokens on the segments, 0 on padding."""
    ids = np.random.default_rng(seed).integers(2, vocab_size, seg.shape)
    return np.where(seg > 0, ids, 0).astype(np.int32)


def as_torch(x):
    """A numpy int array as a torch long tensor (None stays None)."""
    return None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.long)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays."""
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def t5_model(cfg, params) -> EncoderDecoder:
    """Our model holding `params`, without a random init."""
    spec = model_spec(lambda rngs: EncoderDecoder(cfg, rngs=rngs))
    return nnx.merge(spec.graphdef, jax.tree.map(jnp.asarray, params))


def hf_t5_logits(model, enc, dec, enc_mask=None, dec_mask=None) -> np.ndarray:
    """The HF T5's logits for teacher-forced decoder inputs (masks: 1 = real token)."""
    with torch.no_grad():
        return model(input_ids=as_torch(enc), attention_mask=as_torch(enc_mask),
                     decoder_input_ids=as_torch(dec),
                     decoder_attention_mask=as_torch(dec_mask)).logits.numpy()


def t5_max_diff_to_hf(hf_model, model: EncoderDecoder) -> float:
    """Largest logit difference: rows 0-1 one segment (row 1 padded) against HF with masks, rows
    2-3 two packed segments against HF on each segment alone."""
    L, M, V = 20, 12, hf_model.config.vocab_size
    enc_seg, enc_pos = segments([[L], [L - 6], [9, 11], [7, 10]], L)
    dec_seg, dec_pos = segments([[M], [M - 4], [5, 7], [6, 4]], M)
    enc, dec = tokens(enc_seg, V, 1), tokens(dec_seg, V, 2)
    dec[dec_pos == 0] = 0  # BOS at every segment start
    forward = nnx.jit(EncoderDecoder.__call__) if model.cfg.scan_layers else EncoderDecoder.__call__
    got = np.asarray(forward(model, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
    ref = hf_t5_logits(hf_model, enc[:2], dec[:2], enc_seg[:2] > 0, dec_seg[:2] > 0)
    real = dec_seg[:2] > 0
    diffs = [np.abs(got[:2][real] - ref[real]).max()]
    for r in (2, 3):
        for s in (1, 2):
            alone = hf_t5_logits(hf_model, enc[r:r + 1, enc_seg[r] == s],
                                 dec[r:r + 1, dec_seg[r] == s])[0]
            diffs.append(np.abs(got[r, dec_seg[r] == s] - alone).max())
    return float(max(diffs))
