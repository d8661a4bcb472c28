"""Greedy decoding of converted checkpoints equals Hugging Face `generate` token for token."""

import numpy as np
import pytest

from t5x_like.convert import hf
from t5x_like.generate import Generator
from t5x_like.state import model_spec
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder

from .tiny_hf import as_torch, hf_llama, hf_t5, torch

PROMPTS = [[5, 9, 17, 33, 2], [40], [7, 7, 8, 9, 10, 11, 12, 13, 14]]
NEW = 16


def _hf_greedy(model, prompt, eos, seq2seq) -> list[int]:
    with torch.no_grad():
        out = model.generate(as_torch([prompt]), attention_mask=as_torch([[1] * len(prompt)]),
                             max_new_tokens=NEW, do_sample=False, num_beams=1,
                             eos_token_id=eos, pad_token_id=0,
                             **({"decoder_start_token_id": 0} if seq2seq else {}))[0].tolist()
    new = out[1:] if seq2seq else out[len(prompt):]  # T5 starts from decoder_start_token_id 0
    return new[:new.index(eos)] if eos in new else new


def _ours(directory, cls, scan_layers):
    cfg, params = hf.import_hf_dir(directory, scan_layers=scan_layers)
    spec = model_spec(lambda rngs: cls(cfg, rngs=rngs))
    return Generator(params, spec.graphdef, eos_id=-1)


@pytest.mark.parametrize("arch,scan_layers", [("llama", False), ("llama", True),
                                               ("t5_v1_1", False), ("ul2", True)])
def test_greedy_tokens_equal_hugging_face_generate_with_its_cache(arch, scan_layers, tmp_path):
    seq2seq = arch != "llama"
    # As many decoder as encoder layers: transformers 5 sizes T5's decoding cache by the
    # encoder's count (an IndexError in generate otherwise).
    model = hf_t5(arch, decoder_layers=2) if seq2seq else hf_llama(64)
    model.save_pretrained(tmp_path)
    ours = _ours(tmp_path, EncoderDecoder if seq2seq else Decoder, scan_layers)
    # EOS: a token HF's greedy output reaches mid-way on the first prompt, so rows stop apart.
    eos = _hf_greedy(model, PROMPTS[0], -1, seq2seq)[6]
    ours.eos_id = eos
    want = [_hf_greedy(model, p, eos, seq2seq) for p in PROMPTS]
    got = [r.tokens for r in ours.generate(PROMPTS, max_new_tokens=NEW)]
    assert got == want
    assert len(want[0]) <= 6 and max(map(len, want)) > 6
    assert np.isfinite([r.score for r in ours.generate(PROMPTS[:1], max_new_tokens=2)]).all()
