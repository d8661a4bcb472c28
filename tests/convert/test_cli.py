"""`t5x-like convert` / `inspect` end to end: a converted Llama evaluates, generates, continues
training with the CLI (its loss falls), is inspected, and exports back to transformers."""

import json

import numpy as np
import pytest

from t5x_like import cli
from t5x_like.convert import model_dir
from t5x_like.metrics import read_metrics
from t5x_like.models.decoder import Decoder
from t5x_like.state import model_spec

from conftest import segments

from .tiny_hf import as_torch, hf_llama, tokens, torch, transformers

VOCAB = 2048  # the embedded corpus's tokenizer


@pytest.fixture(scope="module")
def converted(stdlib_data, tmp_path_factory):
    """(HF model, converted MODEL_DIR): a Llama of the stdlib tokenizer's vocabulary."""
    root = tmp_path_factory.mktemp("convert")
    model = hf_llama(VOCAB)
    model.save_pretrained(root / "hf")
    assert cli.main(["convert", "--from", "hf", "--to", "t5x_like", str(root / "hf"),
                     str(root / "run"), "--gin.ModelConfig.scan_layers=False",
                     f"--gin.DataConfig.data_dir={stdlib_data.data_dir}",
                     "--gin.TASK_FEATURE_LENGTHS={'targets': 64}"]) == 0
    return model, root / "run"


def _our_logits(run_dir, ids, seg, pos) -> np.ndarray:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    cfg, params, _ = model_dir.read_params(run_dir)
    spec = model_spec(lambda rngs: Decoder(cfg, rngs=rngs))
    model = nnx.merge(spec.graphdef, jax.tree.map(jnp.asarray, params))
    return np.asarray(model(ids, seg, pos))


def test_converted_dir_is_a_model_dir_that_eval_and_generate_read(converted, capsys):
    model, run = converted
    assert {p.name for p in run.iterdir()} >= {"config.gin", "model.gin", "checkpoints"}
    seg, pos = segments([[12]], 12)
    ids = tokens(seg, VOCAB, seed=5)
    with torch.no_grad():
        ref = model(input_ids=as_torch(ids)).logits.numpy()
    np.testing.assert_allclose(_our_logits(run, ids, seg, pos), ref, rtol=0, atol=1e-5)
    capsys.readouterr()
    assert cli.main(["eval", f"--gin_file={run / 'config.gin'}",
                     "--gin.TrainConfig.eval_batches=1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 0
    assert cli.main(["generate", f"--model_dir={run}", "def f(", "--max_new_tokens=3"]) == 0


def test_inspect_lists_a_parameters_only_checkpoint(converted, capsys):
    _, run = converted
    capsys.readouterr()
    assert cli.main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step: 0 (parameters only)" in out and "data iterator: none saved" in out
    assert "layers/1/attention/key" in out and "(32, 2, 8)" in out


def test_converted_model_continues_training_and_exports_back(converted, tmp_path, capsys):
    _, run = converted
    # On a 2x2x2 data x fsdp x tensor mesh: the replicated conversion restores sharded.
    assert cli.main(["train", f"--gin_file={run / 'config.gin'}", "--gin.TRAIN_STEPS=40",
                     "--gin.OptimizerConfig.warmup_steps=5", "--gin.TrainConfig.eval_every=40",
                     "--gin.TrainConfig.eval_batches=2", "--gin.MeshConfig.ici_data=2",
                     "--gin.MeshConfig.ici_fsdp=2", "--gin.MeshConfig.ici_tensor=2"]) == 0
    rows = read_metrics(str(run))
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0] - 0.5 and losses[-1] < losses[0]
    capsys.readouterr()
    assert cli.main(["inspect", "--json", str(run)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 40 and report["kind"] == "train state" and report["data_iter"]
    assert report["num_params"] == sum(np.prod(r["shape"]) for r in report["params"])
    shardings = {r["name"]: r["sharding"] for r in report["params"]}
    assert shardings["token_embed"] == "('tensor', 'fsdp')", shardings
    assert cli.main(["convert", "--from", "t5x_like", "--to", "hf", str(run),
                     str(tmp_path / "hf")]) == 0
    reloaded = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "hf", attn_implementation="eager").eval()
    seg, pos = segments([[12]], 12)
    ids = tokens(seg, VOCAB, seed=6)
    with torch.no_grad():
        ref = reloaded(input_ids=as_torch(ids)).logits.numpy()
    np.testing.assert_allclose(_our_logits(run, ids, seg, pos), ref, rtol=0, atol=1e-5)


def test_conversion_errors_exit_2_naming_the_problem(converted, tmp_path, capsys):
    _, run = converted
    assert cli.main(["convert", "--from", "hf", "--to", "hf", str(run), str(tmp_path / "x")]) == 2
    assert "hf->t5x_like" in capsys.readouterr().err
    assert cli.main(["convert", "--from", "hf", "--to", "t5x_like", str(run),
                     str(tmp_path / "x")]) == 2
    assert "config.json not found" in capsys.readouterr().err
