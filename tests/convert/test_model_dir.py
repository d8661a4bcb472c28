"""A converted MODEL_DIR: parameters-only checkpoint, model.gin and config.gin; bf16 export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import gin_loader
from t5x_like.convert import hf
from t5x_like.convert.model_dir import read_params, write_model_dir
from t5x_like.convert.tensors import ConversionError, DictSource

from .tiny_hf import hf_t5, state_dict_numpy


def test_bfloat16_parameters_only_model_dir_reads_back_and_is_not_overwritten(tmp_path):
    model = hf_t5("ul2")
    cfg = hf.model_config(model.config.to_dict(), scan_layers=False)
    params = hf.params_from_hf(DictSource(state_dict_numpy(model)), cfg)
    out = write_model_dir(tmp_path / "run", cfg, params, param_dtype="bfloat16")
    got_cfg, got, step = read_params(out)
    assert step == 0 and got_cfg.param_dtype == "bfloat16"
    assert gin_loader.load_model_dir_config(str(out)).model == got_cfg
    assert (out / "model.gin").read_text().count("ModelConfig.") == len(cfg.to_dict())
    flat, flat_got = jax.tree.leaves(params), jax.tree.leaves(got)
    assert len(flat) == len(flat_got)
    for want, have in zip(flat, flat_got):
        assert have.dtype == jnp.bfloat16
        np.testing.assert_array_equal(have, want.astype(jnp.bfloat16))
    with pytest.raises(ConversionError, match="checkpoints exists: convert into a new directory"):
        write_model_dir(out, cfg, params)
