"""The key/value cache: prefill plus one-token steps give the logits of the full forward pass."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from conftest import MICRO_MODEL
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder

TOL = dict(rtol=1e-5, atol=1e-5)
KERNELS = [(False, "cpu"), (True, "xla")]  # the unrolled CPU path, the scanned reference


def _cfg(scan, impl, **kw):
    return dataclasses.replace(MICRO_MODEL, scan_layers=scan, attention_impl=impl, **kw)


@pytest.mark.parametrize("scan,impl", KERNELS, ids=["unrolled-cpu", "scanned-xla"])
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix_lm"])
def test_decoder_prefill_and_steps_match_the_full_forward_with_left_padding(scan, impl,
                                                                            prefix_lm):
    model = Decoder(_cfg(scan, impl), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    lengths, prompt_len, steps = (3, 6), 6, 5
    docs = [rng.integers(3, MICRO_MODEL.vocab_size, n + steps).astype(np.int32)
            for n in lengths]
    prompt = np.zeros((2, prompt_len), np.int32)
    segment_ids = np.zeros_like(prompt)
    for row, (doc, n) in enumerate(zip(docs, lengths)):
        prompt[row, prompt_len - n:], segment_ids[row, prompt_len - n:] = doc[:n], 1
    cache = model.init_cache(2, prompt_len + steps)
    logits, cache = model.extend(prompt, segment_ids, cache, prefill=True,
                                 prefix_BxL=segment_ids if prefix_lm else None)
    got = [np.asarray(logits)]
    for t in range(steps - 1):
        nxt = np.array([[doc[n + t]] for doc, n in zip(docs, lengths)], np.int32)
        logits, cache = model.extend(nxt, np.ones_like(nxt), cache, prefill=False)
        got.append(np.asarray(logits))
    for row, (doc, n) in enumerate(zip(docs, lengths)):
        ids = doc[None, :n + steps - 1]
        prefix = (np.arange(ids.shape[1]) < n)[None].astype(np.int32) if prefix_lm else None
        full = np.asarray(model(ids, np.ones_like(ids), np.arange(ids.shape[1])[None], prefix))
        np.testing.assert_allclose(np.stack(got)[:, row], full[0, n - 1:], **TOL)


@pytest.mark.parametrize("scan,impl", KERNELS, ids=["unrolled-cpu", "scanned-xla"])
def test_encoder_decoder_steps_match_the_teacher_forced_forward(scan, impl):
    model = EncoderDecoder(_cfg(scan, impl, architecture="encoder_decoder",
                                num_encoder_layers=2), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    inputs = rng.integers(3, MICRO_MODEL.vocab_size, (2, 7)).astype(np.int32)
    input_segments = np.ones_like(inputs)
    inputs[1, 4:], input_segments[1, 4:] = 0, 0  # row 1: four real tokens, right-padded
    targets = rng.integers(3, MICRO_MODEL.vocab_size, (2, 6)).astype(np.int32)
    decoder_inputs = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], 1)
    cache = model.init_cache(inputs, input_segments, 6)
    got = []
    for t in range(6):
        logits, cache = model.extend(decoder_inputs[:, t:t + 1], cache)
        got.append(np.asarray(logits))
    got = np.stack(got, 1)
    np.testing.assert_allclose(got[0], np.asarray(model(inputs[:1], decoder_inputs[:1]))[0],
                               **TOL)
    np.testing.assert_allclose(
        got[1], np.asarray(model(inputs[1:, :4], decoder_inputs[1:]))[0], **TOL)


def test_gathered_rows_carry_their_history():
    model = Decoder(_cfg(False, "xla"), rngs=nnx.Rngs(0))
    prompt = np.array([[5, 6, 7], [8, 9, 10]], np.int32)
    _, cache = model.extend(prompt, np.ones_like(prompt), model.init_cache(2, 5), prefill=True)
    swapped = cache.gather_rows(np.array([1, 1]))
    token = np.array([[11], [11]], np.int32)
    logits, _ = model.extend(token, np.ones_like(token), swapped, prefill=False)
    ids = np.array([[8, 9, 10, 11]], np.int32)
    full = np.asarray(model(ids, np.ones_like(ids), np.arange(4)[None]))[0, -1]
    np.testing.assert_allclose(np.asarray(logits), np.stack([full, full]), **TOL)
