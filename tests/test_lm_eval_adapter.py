"""lm-evaluation-harness over a t5x_like decoder: local task files, no hub access; the scores
it reports are the model's own log-likelihoods, and generate_until stops at its stop string."""

import dataclasses
import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from conftest import MICRO_MODEL  # noqa: E402
from t5x_like.generate import Generator  # noqa: E402
from t5x_like.inference import Scorer  # noqa: E402
from t5x_like.models.decoder import Decoder  # noqa: E402

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

from t5x_like.lm_eval_adapter import T5xLikeLM  # noqa: E402

DOCS = [{"question": "def read_config(path):", "choices": [" return", " pass", " yield"],
         "answer": 0},
        {"question": "import os\nimport", "choices": [" sys", " json"], "answer": 1},
        {"question": "class Config:", "choices": [" pass", " def"], "answer": 0}]
MC = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""
GEN = """task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def adapter(stdlib_data):
    cfg = dataclasses.replace(MICRO_MODEL, vocab_size=2048)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    tok = stdlib_data.tokenizer
    lm = T5xLikeLM(Generator(params, graphdef, eos_id=tok.eos_id), Scorer(params, graphdef), tok,
                   max_length=48, batch_size=4)
    return lm, model, tok


def _direct_log_likelihood(model, tok, context, continuation):
    ctx, whole = tok.encode(context), tok.encode(context + continuation)
    ids = np.asarray([[tok.bos_id] + whole], np.int32)
    logits = model(ids, np.ones_like(ids), np.arange(ids.shape[1])[None])[0]
    log_probs = np.asarray(jax.nn.log_softmax(logits, -1))
    return sum(log_probs[j, whole[j]] for j in range(len(ctx), len(whole)))


def test_local_tasks_score_with_the_models_own_log_likelihoods(adapter, tmp_path):
    lm, model, tok = adapter
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "local_mc.yaml").write_text(MC.format(path=data))
    (tmp_path / "local_gen.yaml").write_text(GEN.format(path=data))
    out = lm_eval.simple_evaluate(model=lm, tasks=["local_mc", "local_gen"],
                                  task_manager=TaskManager(include_path=str(tmp_path)),
                                  bootstrap_iters=0, log_samples=True)
    picks = []
    for doc, sample in zip(DOCS, out["samples"]["local_mc"]):
        got = [float(r[0][0]) for r in sample["resps"]]
        want = [_direct_log_likelihood(model, tok, doc["question"], c) for c in doc["choices"]]
        np.testing.assert_allclose(got, want, atol=1e-4)
        picks.append(int(np.argmax(want)) == doc["answer"])
    assert out["results"]["local_mc"]["acc,none"] == pytest.approx(np.mean(picks))
    for doc, sample in zip(DOCS, out["samples"]["local_gen"]):
        text = sample["resps"][0][0]
        assert "e" not in text  # cut at the stop string
        prompt = [tok.bos_id] + tok.encode(doc["question"])
        full = tok.decode(lm.generator.generate([prompt], max_new_tokens=6)[0].tokens)
        assert full.startswith(text)
