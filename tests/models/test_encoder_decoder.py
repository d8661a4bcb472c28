"""Encoder-decoder (T5 v1.0 / v1.1 / UL2): Hugging Face parity, packed masks, parameter counts."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from conftest import MICRO_MODEL, segments

from t5x_like import gin_loader
from t5x_like.config import (DEFAULT_LOGICAL_AXIS_RULES, ModelConfig, flops_per_token,
                             num_params)
from t5x_like.convert.hf import params_from_hf
from t5x_like.convert.tensors import DictSource
from t5x_like.models.decoder import Decoder
from t5x_like.models.encoder_decoder import EncoderDecoder
from t5x_like.models.layers import _bucket_table, relative_position_bucket
from t5x_like.partitioning import Partitioner, make_mesh
from t5x_like.state import model_spec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Few buckets and a short max_distance, so that rows of ~20 tokens reach the logarithmic and the
# saturated buckets; 2 encoder and 3 decoder layers to catch a mix-up of the two stacks.
MICRO_T5 = ModelConfig(architecture="encoder_decoder", vocab_size=64, d_model=16, num_layers=3,
                       num_encoder_layers=2, num_heads=4, num_kv_heads=4, head_dim=4, mlp_dim=32,
                       relative_attention_num_buckets=8, relative_attention_max_distance=12)
VARIANTS = {  # name: (HF feed_forward_proj, our mlp_activation, tied T5 v1.0 logits)
    "t5_v1_0": ("relu", "relu", True),
    "t5_v1_1": ("gated-gelu", "gelu_tanh", False),
    "ul2": ("gated-silu", "silu", False),
}
L, M = 20, 12  # encoder and decoder row lengths


def _config(variant: str, scan_layers: bool = True) -> ModelConfig:
    _, activation, tied = VARIANTS[variant]
    return dataclasses.replace(MICRO_T5, mlp_activation=activation, tie_embeddings=tied,
                               scan_layers=scan_layers)


@functools.lru_cache(maxsize=None)
def _hf(variant: str):
    """A random float32 HF T5 of the variant, with an untied lm_head where the variant has one."""
    proj, _, tied = VARIANTS[variant]
    cfg = transformers.T5Config(
        vocab_size=MICRO_T5.vocab_size, d_model=MICRO_T5.d_model, d_kv=MICRO_T5.head_dim,
        d_ff=MICRO_T5.mlp_dim, num_layers=MICRO_T5.num_encoder_layers,
        num_decoder_layers=MICRO_T5.num_layers, num_heads=MICRO_T5.num_heads,
        relative_attention_num_buckets=MICRO_T5.relative_attention_num_buckets,
        relative_attention_max_distance=MICRO_T5.relative_attention_max_distance,
        feed_forward_proj=proj, tie_word_embeddings=tied, dropout_rate=0.0,
        attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied:  # recent transformers tie T5's lm_head whatever the config says: untie it
        model.lm_head.weight = torch.nn.Parameter(
            torch.randn(MICRO_T5.vocab_size, MICRO_T5.d_model) * MICRO_T5.d_model ** -0.5)
    with torch.no_grad():  # norm scales away from 1, so that a missing one is noticed
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _model(variant: str, scan_layers: bool = False, **overrides) -> EncoderDecoder:
    """Our model holding the HF model's weights. Built from the abstract model and the mapped
    weights, without a random init: every test uses these (init ops compile slowly on CPU)."""
    cfg = dataclasses.replace(_config(variant, scan_layers), **overrides)
    spec = model_spec(lambda rngs: EncoderDecoder(cfg, rngs=rngs))
    params = params_from_hf(DictSource(_hf(variant).state_dict()), cfg)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, spec.abstract_params)
    return nnx.merge(spec.graphdef, jax.tree.map(jnp.asarray, params))


def _hf_logits(hf, enc_tokens, dec_tokens, enc_mask=None, dec_mask=None) -> np.ndarray:
    as_torch = lambda x: None if x is None else torch.as_tensor(np.asarray(x), dtype=torch.long)
    with torch.no_grad():
        out = hf(input_ids=as_torch(enc_tokens), attention_mask=as_torch(enc_mask),
                 decoder_input_ids=as_torch(dec_tokens),
                 decoder_attention_mask=as_torch(dec_mask))
    return out.logits.numpy()


def _tokens(seg, seed):
    """Random tokens on the segments, 0 on padding; decoder rows start each segment with BOS 0."""
    tokens = np.random.default_rng(seed).integers(2, MICRO_T5.vocab_size, seg.shape)
    return np.where(seg > 0, tokens, 0).astype(np.int32)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hugging_face_unpacked_and_packed(variant, scan_layers):
    """Rows 0-1: one segment each, row 1 padded, against HF with attention masks. Rows 2-3: two
    packed segments each, against HF run on every segment alone."""
    hf, model = _hf(variant), _model(variant, scan_layers)
    enc_seg, enc_pos = segments([[L], [L - 6], [9, 11], [7, 10]], L)
    dec_seg, dec_pos = segments([[M], [M - 4], [5, 7], [6, 4]], M)
    enc, dec = _tokens(enc_seg, 1), _tokens(dec_seg, 2)
    dec[dec_pos == 0] = 0  # BOS at every segment start (targets shifted right per segment)
    # Unrolled layers run eagerly in no time; a scan is only fast compiled.
    forward = nnx.jit(EncoderDecoder.__call__) if scan_layers else EncoderDecoder.__call__
    ours = np.asarray(forward(model, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
    ref = _hf_logits(hf, enc[:2], dec[:2], enc_seg[:2] > 0, dec_seg[:2] > 0)
    real = dec_seg[:2] > 0  # HF's logits at padded decoder positions mean nothing
    np.testing.assert_allclose(ours[:2][real], ref[real], rtol=0, atol=1e-5)
    for r in (2, 3):
        for s in (1, 2):
            alone = _hf_logits(hf, enc[r:r + 1, enc_seg[r] == s], dec[r:r + 1, dec_seg[r] == s])
            np.testing.assert_allclose(ours[r, dec_seg[r] == s], alone[0], rtol=0, atol=1e-5)


def _hf_buckets(rel, bidirectional, num_buckets, max_distance):
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    return bucket(torch.as_tensor(rel), bidirectional, num_buckets, max_distance).numpy()


def _float64_buckets(rel, bidirectional, num_buckets, max_distance):
    """T5's formula in float64 with quotients within 1e-9 of an integer taken as that integer:
    an oracle independent of our integer evaluation. Also says where the quotient lies within
    1e-6 (relative) of an integer, where float32 logs round to either side."""
    half = num_buckets // 2 if bidirectional else num_buckets
    exact = half // 2
    d = np.abs(rel) if bidirectional else np.maximum(-rel, 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0), in the exact range
        q = np.log(d / exact) / math.log(max_distance / exact) * (half - exact)
        near_integer = ((d > exact) & (np.round(q) < half - exact)  # not log(1), not capped
                        & (np.abs(q - np.round(q)) <= 1e-6 * q))
    side = np.where(d < exact, d, np.minimum(exact + np.floor(q + 1e-9), half - 1))
    return (side + (bidirectional & (rel > 0)) * half).astype(np.int32), near_integer


def test_relative_position_buckets_are_exact_and_equal_hugging_face_off_float32_ties():
    """Every configuration with 4-48 buckets and 48 max distances past the exact range: equal to
    the float64 formula everywhere, and to Hugging Face's float32 evaluation wherever the log
    quotient is not (within 1e-6) an integer; at those ties HF is one bucket off at most."""
    for num_buckets in range(4, 49):
        for bidirectional in (True, False):
            for max_distance in range(num_buckets // 2 + 1, num_buckets // 2 + 49):
                rel = np.arange(-max_distance, max_distance + 1)  # beyond: clipped
                ours = _bucket_table(bidirectional, num_buckets, max_distance)
                want, near_integer = _float64_buckets(rel, bidirectional, num_buckets,
                                                      max_distance)
                hf = _hf_buckets(rel, bidirectional, num_buckets, max_distance)
                where = f"{num_buckets} buckets, bidirectional={bidirectional}, {max_distance}"
                np.testing.assert_array_equal(ours, want, err_msg=where)
                np.testing.assert_array_equal(ours[~near_integer], hf[~near_integer], where)
                assert np.abs(ours - hf).max() <= 1, where


def test_relative_position_bucket_looks_up_and_clips_the_table():
    """The lookup the model does, past max_distance too. 17 causal buckets, max distance 27:
    distance 18 has log(18 / 8) / log(27 / 8) * 9 = 6 exactly (2.25 ** 9 = 3.375 ** 6), so it
    opens bucket 8 + 6; HF's float32 evaluation gives 13 in eager PyTorch on CPU."""
    got = relative_position_bucket(jnp.asarray([-17, -18, -12]), bidirectional=False,
                                   num_buckets=17, max_distance=27)
    np.testing.assert_array_equal(np.asarray(got), [13, 14, 11])
    rel = np.arange(-300, 301)
    for bidirectional in (True, False):
        got = relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                       num_buckets=32, max_distance=128)
        np.testing.assert_array_equal(np.asarray(got), _hf_buckets(rel, bidirectional, 32, 128))


@pytest.fixture(scope="module")
def micro_model():
    return _model("t5_v1_1")


def _packed_batch():
    enc_seg, enc_pos = segments([[9, 11], [7, 10]], L)
    dec_seg, dec_pos = segments([[5, 7], [6, 4]], M)
    return _tokens(enc_seg, 5), _tokens(dec_seg, 6), enc_seg, dec_seg, enc_pos, dec_pos


def test_no_information_crosses_packedsegments(micro_model):
    enc, dec, enc_seg, dec_seg, enc_pos, dec_pos = _packed_batch()
    base = np.asarray(micro_model(enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
    enc2 = np.where(enc_seg == 2, (enc + 7) % MICRO_T5.vocab_size, enc)
    dec2 = np.where(dec_seg == 2, (dec + 7) % MICRO_T5.vocab_size, dec)
    for e, d in ((enc2, dec), (enc, dec2)):  # segment 2's inputs, then its decoder tokens
        out = np.asarray(micro_model(e, d, enc_seg, dec_seg, enc_pos, dec_pos))
        np.testing.assert_array_equal(out[dec_seg == 1], base[dec_seg == 1])
        assert not np.allclose(out[dec_seg == 2], base[dec_seg == 2])


def test_decoder_is_causal_and_encode_decode_equals_call(micro_model):
    enc, dec, enc_seg, dec_seg, enc_pos, dec_pos = _packed_batch()
    base = np.asarray(micro_model(enc, dec, enc_seg, dec_seg, enc_pos, dec_pos))
    changed = dec.copy()
    changed[:, 3] = (changed[:, 3] + 1) % MICRO_T5.vocab_size  # inside segment 1 of both rows
    encoded = micro_model.encode(enc, enc_seg, enc_pos)
    out = np.asarray(micro_model.decode(encoded, changed, enc_seg, dec_seg, dec_pos))
    np.testing.assert_array_equal(out[:, :3], base[:, :3])
    assert not np.allclose(out[:, 3], base[:, 3])
    again = micro_model.decode(encoded, dec, enc_seg, dec_seg, dec_pos)
    np.testing.assert_allclose(again, base, rtol=1e-6, atol=1e-6)


def _grads(model: EncoderDecoder):
    graphdef, params = nnx.split(model)
    loss = lambda p: nnx.merge(graphdef, p)(*_packed_batch()).mean()
    return jax.tree.leaves(jax.jit(jax.grad(loss))(params))


@pytest.fixture(scope="module")
def scanned_grads():
    return _grads(_model("ul2", scan_layers=True))


def test_remat_does_not_change_gradients(scanned_grads):
    # 'dots' takes the same path with another policy; each gradient compile costs ~4 s on CPU.
    got = _grads(_model("ul2", scan_layers=True, remat_policy="full"))
    for a, b in zip(scanned_grads, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits(micro_model):
    model = _model("t5_v1_1", dtype="bfloat16")
    logits = model(*_packed_batch())
    assert logits.dtype == jnp.float32 and model.token_embed[...].dtype == jnp.float32
    np.testing.assert_allclose(logits, micro_model(*_packed_batch()), atol=0.1)


@pytest.mark.parametrize("cfg", [
    _config("t5_v1_0"), _config("t5_v1_1", scan_layers=False), _config("ul2"),
    dataclasses.replace(MICRO_T5, num_kv_heads=2, num_encoder_layers=0),  # GQA, symmetric
], ids=["relu_tied", "gelu_unscanned", "silu", "gqa"])
def test_param_count_matches_config(cfg):
    params = model_spec(lambda rngs: EncoderDecoder(cfg, rngs=rngs)).abstract_params
    assert sum(x.size for x in jax.tree.leaves(params)) == num_params(cfg)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "relu"])
def test_decoder_only_model_honours_mlp_activation(activation):
    cfg = dataclasses.replace(MICRO_MODEL, mlp_activation=activation)
    params = model_spec(lambda rngs: Decoder(cfg, rngs=rngs)).abstract_params
    assert ("gate" in params["layers"]["mlp"]) == (activation != "relu")
    assert sum(x.size for x in jax.tree.leaves(params)) == num_params(cfg)


def test_encoder_decoder_flops_count_each_side_once():
    cfg, n = _config("t5_v1_1"), 10  # untied; n input and n target tokens per row
    d, heads = cfg.d_model, cfg.num_heads * cfg.head_dim
    # Every matmul parameter (not the input embedding) is used once per token of its side.
    matmul = (num_params(cfg) - cfg.vocab_size * d - 2 * cfg.relative_attention_num_buckets
              * cfg.num_heads - d * (2 * cfg.num_encoder_layers + 3 * cfg.num_layers + 2))
    attention = 12 * heads * (cfg.num_encoder_layers * n * n + cfg.num_layers * n * 2 * n)
    row = flops_per_token(cfg, 2 * n, inputs_len=n) * 2 * n
    assert row == pytest.approx(6 * n * matmul + attention, rel=1e-12)


# Hugging Face's counts of google/t5-v1_1-* (untied lm_head); UL2's 19.46B is its count without
# the lm_head, which its released checkpoints do hold separately.
SHIPPED_SIZES = {
    "t5_1_1_small": 76_961_152, "t5_1_1_base": 247_577_856, "t5_1_1_large": 783_150_080,
    "t5_1_1_xl": 2_849_757_184, "t5_1_1_xxl": 11_135_332_352, "ul2_20b": 19_591_209_984,
}


@pytest.mark.parametrize("name", list(SHIPPED_SIZES))
def test_shipped_sizes_have_the_published_parameter_counts(name):
    cfg = gin_loader.load_run_config([f"models/{name}.gin"]).model
    params = model_spec(lambda rngs: EncoderDecoder(cfg, rngs=rngs)).abstract_params  # shapes
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == num_params(cfg) == SHIPPED_SIZES[name]
    if name == "ul2_20b":
        assert num_params(dataclasses.replace(cfg, tie_embeddings=True)) == 19_459_613_696


def _stacked(unrolled_params):
    """Unrolled ({0: layer, 1: layer, ...}) parameters in the scanned layout."""
    out = dict(unrolled_params)
    for stack in ("encoder", "decoder"):
        layers = out[stack]["layers"]
        out[stack] = {**out[stack], "layers": jax.tree.map(
            lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])}
    return out


def test_scanned_model_sharded_on_a_2x2x2_mesh_equals_the_unrolled_one(micro_model):
    partitioner = Partitioner(make_mesh((2, 2, 2)), DEFAULT_LOGICAL_AXIS_RULES)
    spec = model_spec(lambda rngs: EncoderDecoder(_config("t5_v1_1"), rngs=rngs))
    shardings = partitioner.shardings(spec.abstract_params, spec.logical_names)
    params = _stacked(nnx.to_pure_dict(nnx.state(micro_model, nnx.Param)))
    params = jax.device_put(params, shardings)
    up = params["encoder"]["layers"]["mlp"]["up"]
    assert up.sharding.spec == PartitionSpec(None, "fsdp", "tensor")  # ('layers', embed, mlp)
    batch = [np.concatenate([x, x]) for x in _packed_batch()]  # 4 rows over data x fsdp
    sharded_batch = [jax.device_put(x, partitioner.batch_sharding) for x in batch]

    @jax.jit
    def forward(params, batch):
        return nnx.merge(spec.graphdef, params)(*batch)

    with partitioner.activation_context():  # `constrain` is live under this context
        logits = forward(params, sharded_batch)
    assert logits.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(logits, micro_model(*batch), rtol=1e-5, atol=1e-5)
