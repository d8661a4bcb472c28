"""The kernel seam: every kernel agrees with the 'xla' reference on packed rows, values and
gradients; a kernel that cannot serve a call hands it to the reference and says why.

splash runs in Pallas interpret mode here (the TPU kernel's own code, on CPU); gpu_flash runs
only where a GPU is present.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import partitioner_for
from t5x_like.models.ops import Kernels

B, H, K, E = 2, 4, 2, 16


def _packed(length, prefix=False):
    """Two rows: three segments and a padded tail; one segment filling the row."""
    seg = np.zeros((B, length), np.int32)
    cut1, cut2, used = length // 3, length // 2 + 5, length - 7
    seg[0, :cut1], seg[0, cut1:cut2], seg[0, cut2:used] = 1, 2, 3
    seg[1] = 1
    flags = None
    if prefix:
        flags = np.zeros_like(seg)
        flags[0, :cut1 // 2], flags[0, cut1:cut1 + 4], flags[1, :length // 4] = 1, 1, 1
    return jnp.asarray(seg), None if flags is None else jnp.asarray(flags)


def _qkv(length, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(B, length, H, E)), dtype),
            *(jnp.asarray(rng.normal(size=(B, length, K, E)), dtype) for _ in range(2)),
            jnp.asarray(rng.normal(size=(B, length, H, E)), dtype))


def _value_and_grads(kernels, q, k, v, cotangent, seg, causal, prefix=None, bias=None):
    out, grads = _traced(kernels, q, k, v, cotangent, seg, causal, prefix, bias)
    return np.asarray(out)[np.asarray(seg) != 0], [np.asarray(g) for g in grads]


def _traced(kernels, q, k, v, cotangent, seg, causal, prefix=None, bias=None):
    def loss(q, k, v, bias):
        out = kernels.attention(q, k, v, q_segment_ids_BxL=seg, kv_segment_ids_BxM=seg,
                                causal=causal, prefix_BxL=prefix, bias_BxHxLxM=bias)
        live = (seg != 0)[:, :, None, None]  # padding's outputs are never used
        return jnp.sum(jnp.where(live, out * cotangent, 0.0)), out

    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    (_, out), grads = jax.value_and_grad(loss, argnums, has_aux=True)(q, k, v, bias)
    return out, grads


def _assert_agree(got, want, atol):
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=atol, err_msg="values")
    for name, g, w in zip("qkvb", got[1], want[1]):
        np.testing.assert_allclose(g, w, rtol=0, atol=atol, err_msg=f"d_{name}")


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_kernel_equals_the_reference_on_packed_rows(causal):
    seg, prefix = _packed(24, prefix=causal)
    q, k, v, cot = _qkv(24)
    bias = jnp.asarray(np.random.default_rng(5).normal(size=(B, H, 24, 24)), jnp.float32)
    for extra in ({}, {"bias": bias}) + (({"prefix": prefix},) if causal else ()):
        _assert_agree(_value_and_grads(Kernels("cpu"), q, k, v, cot, seg, causal, **extra),
                      _value_and_grads(Kernels("xla"), q, k, v, cot, seg, causal, **extra),
                      atol=2e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_splash_equals_the_reference_on_packed_rows(causal):
    seg, _ = _packed(256)
    q, k, v, cot = _qkv(256)
    splash = Kernels("splash", block_size=128)
    assert splash._attention_impl(q, k, None, None) == ("splash", "")
    _assert_agree(_value_and_grads(splash, q, k, v, cot, seg, causal),
                  _value_and_grads(Kernels("xla"), q, k, v, cot, seg, causal), atol=5e-5)


def test_splash_prefix_lm_equals_the_reference():
    """Per-row prefixes, one segment without any, padding: both calls' gradients add up."""
    seg, prefix = _packed(256, prefix=True)
    q, k, v, cot = _qkv(256, seed=3)
    splash = Kernels("splash", block_size=128)
    assert splash._attention_impl(q, k, prefix, None) == ("splash", "")
    _assert_agree(_value_and_grads(splash, q, k, v, cot, seg, True, prefix=prefix),
                  _value_and_grads(Kernels("xla"), q, k, v, cot, seg, True, prefix=prefix),
                  atol=5e-5)


def test_splash_under_shard_map_on_a_data_fsdp_tensor_mesh():
    """Rows split over data x fsdp, heads over tensor: the per-device kernels add up to the
    reference."""
    seg, _ = _packed(256)
    q, k, v, cot = _qkv(256)
    partitioner = partitioner_for((1, 2, 2))
    with partitioner.activation_context():
        got = jax.jit(lambda *a: _traced(Kernels("splash", block_size=128), *a, seg,
                                         True)[1])(q, k, v, cot)
    want = _value_and_grads(Kernels("xla"), q, k, v, cot, seg, True)[1]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=5e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_flash_equals_the_reference_on_packed_rows(causal):
    seg, _ = _packed(256)
    q, k, v, cot = _qkv(256, dtype=jnp.bfloat16)
    flash = Kernels("gpu_flash")
    assert flash._attention_impl(q, k, None, None) == ("gpu_flash", "")
    got = _value_and_grads(flash, q, k, v, cot, seg, causal)
    want = _value_and_grads(Kernels("xla"), q, k, v, cot, seg, causal)
    _assert_agree([got[0].astype(np.float32), [g.astype(np.float32) for g in got[1]]],
                  [want[0].astype(np.float32), [g.astype(np.float32) for g in want[1]]],
                  atol=3e-2)


def test_kernels_hand_what_they_cannot_do_to_the_reference_and_say_why(caplog):
    q, k, _, _ = _qkv(256)
    seg, prefix = _packed(256, prefix=True)
    bias = jnp.zeros((B, H, 256, 256))
    splash = Kernels("splash", block_size=128)
    assert splash._attention_impl(q, k, None, bias)[0] == "xla"
    assert "prefix-LM" in Kernels("gpu_flash")._attention_impl(q, k, prefix, None)[1]
    assert "multiple" in splash._attention_impl(q[:, :200], k[:, :200], None, None)[1]
    assert Kernels("gpu_flash")._attention_impl(q, k, None, None)[0] == "xla"  # float32, no GPU
    with caplog.at_level(logging.INFO, logger="t5x_like.models.ops"):
        splash.attention(q, k, k, q_segment_ids_BxL=seg, kv_segment_ids_BxM=seg, causal=True,
                         bias_BxHxLxM=bias, what="test attention")
    assert "test attention: xla instead of the configured kernel" in caplog.text


def test_auto_picks_by_the_platform_of_the_mesh():
    assert Kernels("auto")._requested() == "cpu"
    with partitioner_for((1, 2, 1)).activation_context():
        assert Kernels("auto")._requested() == "cpu" and Kernels("auto").cpu_tuned
    assert not Kernels("xla").cpu_tuned and not Kernels("splash").cpu_tuned


def test_projections_take_an_injected_dot_general():
    """Where int8 / fp8 matmuls plug in: the kernel's own dot_general computes every dense."""
    calls = []

    def counting(x, w, dims, **kw):
        calls.append(dims)
        return jax.lax.dot_general(x, w, dims, **kw)

    x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
    out = Kernels("xla", dot_general=counting).dense(x, w)
    assert out.shape == (2, 3, 5) and calls == [(((2,), (0,)), ((), ()))]
