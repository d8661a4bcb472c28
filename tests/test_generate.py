"""Decoding: sampling rules, the cached loop against a cache-free one, beam search against brute
force, and the same tokens under a mesh."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import MICRO_MODEL, partitioner_for
from t5x_like.generate import Generator, Sampling, sample_logits
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder
from t5x_like.state import model_spec

LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
EOS = 1
ENCODER_DECODER = dataclasses.replace(MICRO_MODEL, architecture="encoder_decoder",
                                      num_encoder_layers=2)


def _draws(n=400, **kw):
    keys = jax.random.split(jax.random.key(0), n)
    return set(np.asarray(jax.vmap(lambda k: sample_logits(LOGITS, k, Sampling(**kw)))(keys))
               .ravel().tolist())


def test_greedy_is_argmax_and_filters_restrict_the_support():
    assert int(sample_logits(LOGITS, jax.random.key(0), Sampling())[0]) == 0
    assert _draws(temperature=1.0, top_k=2) == {0, 1}
    assert _draws(temperature=1.0, top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert _draws(temperature=1.0, top_p=0.4) == {0}
    assert _draws(temperature=1.0) == {0, 1, 2, 3}


def test_bad_settings_and_prompts_are_refused():
    with pytest.raises(ValueError, match="top_p=1.5"):
        Sampling(temperature=1.0, top_p=1.5)
    gen = _generator(MICRO_MODEL, Decoder)[0]
    with pytest.raises(ValueError, match="prompt 1 has 0 tokens"):
        gen.generate([[3], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="alpha"):
        gen.beam_search([[3]], max_new_tokens=2, num_beams=2, alpha=-1.0)


def _generator(cfg, cls, seed=0, **kw):
    model = cls(cfg, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    return Generator(nnx.to_pure_dict(params), graphdef, eos_id=EOS, **kw), model


def _scorer(model, prefix_lm=False):
    """Cache-free log-probs [B, N, V] of continuations [B, N] of one prompt: the full forward
    pass over a fixed-length buffer (causality keeps later tokens out), jitted once."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, prompt_BxP, continuation_BxN):
        model = nnx.merge(graphdef, state)
        if isinstance(model, EncoderDecoder):
            shifted = jnp.pad(continuation_BxN[:, :-1], ((0, 0), (1, 0)))  # BOS = 0 first
            logits = model(prompt_BxP, shifted)
        else:
            ids = jnp.concatenate([prompt_BxP, continuation_BxN], 1)
            length, prompt_len = ids.shape[1], prompt_BxP.shape[1]
            prefix = jnp.broadcast_to(jnp.arange(length) < prompt_len, ids.shape)
            logits = model(ids, jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(length),
                                                                     ids.shape),
                           prefix.astype(jnp.int32) if prefix_lm else None)
            logits = logits[:, prompt_len - 1:-1]
        return jax.nn.log_softmax(logits, -1)

    def log_probs(prompt, continuations):
        conts = np.asarray(continuations, np.int32)
        return np.asarray(run(state, np.tile(np.asarray(prompt, np.int32), (len(conts), 1)),
                              conts))
    return log_probs


def _greedy_without_cache(score, prompt, n, eos=EOS) -> list[int]:
    out = np.zeros(n, np.int32)
    for i in range(n):
        out[i] = np.argmax(score(prompt, [out])[0, i])
        if out[i] == eos:
            return out[:i].tolist()
    return out.tolist()


PROMPTS = [[3, 17, 42], [9], [5, 6, 7, 8, 9, 10, 11]]
ARCHS = [(MICRO_MODEL, Decoder, False), (MICRO_MODEL, Decoder, True),
         (ENCODER_DECODER, EncoderDecoder, False)]
ARCH_IDS = ["causal", "prefix_lm", "encoder_decoder"]


@pytest.mark.parametrize("cfg,cls,prefix_lm", ARCHS, ids=ARCH_IDS)
def test_batched_greedy_equals_the_cache_free_decoder_row_by_row(cfg, cls, prefix_lm):
    gen, model = _generator(cfg, cls, prefix_lm=prefix_lm)
    score = _scorer(model, prefix_lm)
    # EOS: a token greedy decoding reaches mid-way on the first prompt, so that rows stop at
    # different steps (a random model would rarely pick any one id).
    eos = _greedy_without_cache(score, PROMPTS[0], 12, eos=-1)[5]
    gen.eos_id = eos
    results = gen.generate(PROMPTS, max_new_tokens=12)
    for prompt, result in zip(PROMPTS, results):
        want = _greedy_without_cache(score, prompt, 12, eos)
        assert result.tokens == want
        tokens = want + ([eos] if len(want) < 12 else [])
        log_probs = score(prompt, [tokens + [0] * (12 - len(tokens))])[0]
        expected = sum(log_probs[i, t] for i, t in enumerate(tokens))
        assert result.score == pytest.approx(expected, abs=1e-4)
    assert len(results[0].tokens) <= 5


def test_sampling_is_reproducible_and_follows_the_seed():
    gen, _ = _generator(MICRO_MODEL, Decoder)
    hot = Sampling(temperature=1.0, top_k=20, top_p=0.9)
    a = gen.generate(PROMPTS, max_new_tokens=8, sampling=hot, seed=1)
    assert a == gen.generate(PROMPTS, max_new_tokens=8, sampling=hot, seed=1)
    assert a != gen.generate(PROMPTS, max_new_tokens=8, sampling=hot, seed=2)


def _brute_force(score, prompt, vocab, n, alpha):
    """The best sequence ending in EOS within n tokens, scored as the beam search scores."""
    seqs = [list(head) + [EOS] for length in range(1, n + 1)
            for head in itertools.product([t for t in range(vocab) if t != EOS],
                                          repeat=length - 1)]
    log_probs = score(prompt, [seq + [0] * (n - len(seq)) for seq in seqs])
    scores = [sum(log_probs[row, i, t] for i, t in enumerate(seq)) / ((5 + len(seq)) / 6) ** alpha
              for row, seq in enumerate(seqs)]
    best = int(np.argmax(scores))
    return scores[best], seqs[best][:-1]


@pytest.mark.parametrize("cfg,cls,prefix_lm", ARCHS, ids=ARCH_IDS)
def test_beam_search_wide_enough_finds_the_brute_force_optimum(cfg, cls, prefix_lm):
    """4 tokens, 3 steps: 9 beams hold every unfinished prefix, so the search is exact."""
    small = dataclasses.replace(cfg, vocab_size=4)
    for seed, alpha in ((1, 0.0), (1, 0.6), (2, 3.0)):
        gen, model = _generator(small, cls, seed, prefix_lm=prefix_lm)
        prompt = [3, 2, 0] if cls is Decoder else [2, 3, 3, 0]
        score, tokens = _brute_force(_scorer(model, prefix_lm), prompt, 4, 3, alpha)
        result, = gen.beam_search([prompt], max_new_tokens=3, num_beams=9, alpha=alpha)
        assert result.tokens == tokens
        assert result.score == pytest.approx(score, abs=1e-4)


def test_decoding_under_a_mesh_gives_the_unsharded_tokens():
    spec = model_spec(lambda rngs: Decoder(MICRO_MODEL, rngs=rngs))
    params = nnx.to_pure_dict(nnx.split(Decoder(MICRO_MODEL, rngs=nnx.Rngs(0)), nnx.Param)[1])
    partitioner = partitioner_for((2, 2, 2))
    sharded = jax.device_put(params, partitioner.shardings(spec.abstract_params,
                                                           spec.logical_names))
    plain = Generator(params, spec.graphdef, eos_id=EOS)
    meshed = Generator(sharded, spec.graphdef, eos_id=EOS, partitioner=partitioner)
    assert meshed.layout(PROMPTS)[0].shape[0] == 4  # rows added up to the data axes (2 x 2)
    for decode in (lambda g: g.generate(PROMPTS, max_new_tokens=6),
                   lambda g: g.beam_search(PROMPTS, max_new_tokens=4, num_beams=3)):
        got, want = decode(meshed), decode(plain)
        assert [r.tokens for r in got] == [r.tokens for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], rtol=1e-5)
