"""Decode and score supervised splits: T5X's infer and score modes.

`predict` decodes a split (greedy, sampled or beam search, over the KV cache) into
``predictions.jsonl``, one line per example in split order: ``index``, ``inputs``, ``targets``,
``prediction``, ``score`` (the prediction's log-likelihood) and ``location`` (the record's file
and line). It writes shard files of ``InferConfig.shard_size`` examples as it goes (atomically),
so a killed run skips the finished shards when rerun; ``predictions.jsonl`` and
``metrics.json`` (the task's ``TaskConfig.metrics`` over the split) are assembled at the end.

`score` gives each example's log-likelihood of its given targets (teacher-forced, the rows laid
out exactly as training lays them out) into ``scores.jsonl``.

Every process runs the same batches (the mesh may span processes; decoding is SPMD); process 0
writes, and every process reads the shards back, so all report the same metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_like import fileio, step as step_lib, task_metrics
from t5x_like.config import InferConfig, RunConfig, TaskConfig
from t5x_like.generate import Generator, Sampling, pad_prompts
from t5x_like.objectives.examples import to_decoder_only

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Layout: an example as a prompt, and as a teacher-forced row.
# --------------------------------------------------------------------------------------------
def is_prefix_lm(cfg: RunConfig) -> bool:
    """Whether the run's model reads its prompt both ways: a decoder-only model trained with
    any objective but causal_lm (denoisers and supervised rows are seqio's prefix LM)."""
    return cfg.model.architecture != "encoder_decoder" and cfg.objective.name != "causal_lm"


def prompt_of(inputs_ids: np.ndarray, encoder_decoder: bool) -> list[int]:
    """What the decoder is prompted with: the encoder's inputs, or seqio's prefix-LM prefix
    ``[0] inputs`` (BOS = 0, then the inputs, attended both ways)."""
    ids = [int(t) for t in inputs_ids]
    return ids if encoder_decoder else [0] + ids


def decoder_only_row(inputs, targets, length: int) -> dict[str, np.ndarray]:
    """seqio's prefix-LM features of one example (``to_decoder_only``) as a row of its own: one
    segment over inputs + targets, positions from 0."""
    row = to_decoder_only(inputs, targets, length)
    row["decoder_segment_ids"] = (np.arange(length) < len(inputs) + len(targets)).astype(np.int32)
    row["decoder_positions"] = np.arange(length, dtype=np.int32)
    return row


def stack_rows(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch of rows' features."""
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def scoring_rows(pairs: Sequence[tuple[np.ndarray, np.ndarray]], inputs_length: int,
                 targets_length: int, encoder_decoder: bool) -> dict[str, np.ndarray]:
    """One unpacked training row per example (its own segment), loss weights on its targets."""
    if not encoder_decoder:
        return stack_rows([decoder_only_row(i, t, inputs_length + targets_length)
                           for i, t in pairs])

    enc, enc_seg = pad_prompts([i for i, _ in pairs], inputs_length, left=False)
    dec, dec_seg = pad_prompts([t for _, t in pairs], targets_length, left=False)
    positions = lambda seg: (np.cumsum(seg, 1) - 1).clip(0).astype(np.int32)
    return {"encoder_input_tokens": enc, "encoder_segment_ids": enc_seg,
            "encoder_positions": positions(enc_seg), "decoder_target_tokens": dec,
            "decoder_input_tokens": np.pad(dec[:, :-1], ((0, 0), (1, 0))),
            "decoder_segment_ids": dec_seg, "decoder_positions": positions(dec_seg),
            "decoder_loss_weights": dec_seg}


def row_log_likelihoods(params: Any, batch: dict[str, jax.Array], *, graphdef: nnx.GraphDef
                        ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log-likelihood of each row's weighted targets [B], their count [B], whether each is
    the argmax wherever it is weighted [B])."""
    model = nnx.merge(graphdef, params)
    logits_BxLxV = model.logits(step_lib.model_hidden(model, batch))
    log_probs_BxLxV = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
    picked_BxL = jnp.take_along_axis(log_probs_BxLxV, batch["decoder_target_tokens"][..., None],
                                     axis=-1)[..., 0]
    weights_BxL = batch["decoder_loss_weights"].astype(jnp.float32)
    argmax_BxL = picked_BxL >= jnp.max(log_probs_BxLxV, axis=-1)
    greedy_B = jnp.all(argmax_BxL | (weights_BxL == 0), axis=-1)
    return jnp.sum(picked_BxL * weights_BxL, -1), jnp.sum(weights_BxL, -1), greedy_B


# --------------------------------------------------------------------------------------------
# Shards on disk: finished ones are skipped on a rerun.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ShardedOutput:
    """A directory of ``<name>-SSSSS-of-NNNNN.jsonl`` shards of a split's examples."""

    directory: pathlib.Path
    name: str
    num_examples: int
    shard_size: int

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.num_examples / self.shard_size))

    def shard_path(self, s: int) -> pathlib.Path:
        return self.directory / f"{self.name}-{s:05d}-of-{self.num_shards:05d}.jsonl"

    def span(self, s: int) -> range:
        return range(s * self.shard_size, min((s + 1) * self.shard_size, self.num_examples))

    def pending(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.shard_path(s).exists()]

    def check_spec(self, spec: dict) -> None:
        """Refuse to mix shards of different settings in one directory."""
        path = self.directory / f"{self.name}_spec.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != spec:
                changed = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
                raise ValueError(f"{self.directory} holds {self.name} of other settings "
                                 f"(differing: {changed}); set InferConfig.output_dir to a new "
                                 "directory or delete that one")
        elif jax.process_index() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_text(path, json.dumps(spec, indent=1, sort_keys=True) + "\n")

    def write(self, s: int, rows: list[dict]) -> None:
        if jax.process_index() == 0:
            fileio.atomic_write_text(self.shard_path(s), "".join(
                json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

    def merged(self) -> list[dict]:
        """Every shard's rows, in order (after all are written)."""
        return [json.loads(line) for s in range(self.num_shards)
                for line in self.shard_path(s).read_text().splitlines()]


def _fill(out: ShardedOutput, batch_size: int, rows_of, what: str, progress: bool
          ) -> list[dict]:
    """Write every pending shard, ``rows_of(indices)`` per batch of example indices (with a
    progress bar on a terminal); every shard's rows, in order, on every process."""
    pending = out.pending()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=out.num_examples, unit="ex", desc=what, dynamic_ncols=True,
                   initial=out.num_examples - sum(len(out.span(s)) for s in pending),
                   disable=jax.process_index() != 0 or not sys.stderr.isatty())
    for s in pending:
        rows, span = [], out.span(s)
        for start in range(span.start, span.stop, batch_size):
            indices = list(range(start, min(start + batch_size, span.stop)))
            rows += rows_of(indices)
            if bar is not None:
                bar.update(len(indices))
        out.write(s, rows)
    if bar is not None:
        bar.close()
    if jax.process_count() > 1:  # process 0 wrote the shards: every process reads them back,
        from jax.experimental import multihost_utils  # so all report the same metrics
        multihost_utils.sync_global_devices(f"{out.directory}/{out.name} written")
    return out.merged()


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    if jax.process_index() == 0:
        fileio.atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                               for r in rows))


# --------------------------------------------------------------------------------------------
# predict and score
# --------------------------------------------------------------------------------------------
def _decode_batch(generator: Generator, prompts, ic: InferConfig, max_new_tokens: int,
                  prompt_length: int):
    if ic.num_beams > 1:
        return generator.beam_search(prompts, max_new_tokens=max_new_tokens,
                                     num_beams=ic.num_beams, alpha=ic.alpha,
                                     prompt_length=prompt_length)
    return generator.generate(prompts, max_new_tokens=max_new_tokens,
                              sampling=Sampling(ic.temperature, ic.top_k, ic.top_p),
                              seed=ic.seed, prompt_length=prompt_length)


def predict(cfg: RunConfig, examples, generator: Generator, tokenizer, out_dir: pathlib.Path,
            *, task: TaskConfig, step: int, progress: bool = True, max_examples: int = -1
            ) -> dict[str, Any]:
    """Decode ``examples`` (``SupervisedExamples``) into ``out_dir``; returns the summary that
    ``metrics.json`` holds: examples, step, settings and the task's metrics. ``max_examples``:
    the first that many (0 = all; default InferConfig.max_examples)."""
    ic = cfg.infer
    lengths = cfg.data.task_feature_lengths
    max_examples = ic.max_examples if max_examples < 0 else max_examples
    num = min(len(examples), max_examples or len(examples))
    max_new = ic.max_new_tokens or lengths["targets"]
    # Every prompt padded to the longest an example can have, so that one program serves all.
    prompt_length = lengths["inputs"] + (0 if generator.encoder_decoder else 1)
    out = ShardedOutput(out_dir, "predictions", num, ic.shard_size)
    settings = {k: v for k, v in dataclasses.asdict(ic).items()
                if k not in ("output_dir", "train_eval_examples", "max_examples")}
    out.check_spec({"task": task.name, "step": step, "examples": num, **settings})

    def rows_of(indices):
        pairs = examples.batch(indices)
        prompts = [prompt_of(inputs, generator.encoder_decoder) for inputs, _ in pairs]
        results = _decode_batch(generator, prompts, ic, max_new, prompt_length)
        return [{"index": i, **dict(zip(("inputs", "targets"), examples.text(i))),
                 "prediction": tokenizer.decode(r.tokens), "score": r.score,
                 "location": examples.location(i)} for i, r in zip(indices, results)]

    rows = _fill(out, ic.batch_size, rows_of, f"{task.name} predictions", progress)
    summary = {"task": task.name, "split": ic.split, "step": step, "examples": num,
               **task_metrics.compute(task.metrics, [r["targets"] for r in rows],
                                      [r["prediction"] for r in rows])}
    _write_jsonl(out_dir / "predictions.jsonl", rows)
    if jax.process_index() == 0:
        fileio.atomic_write_text(out_dir / "metrics.json", json.dumps(summary, indent=1) + "\n")
    return summary


class TaskEvaluator:
    """The metrics of every supervised task of the run that declares some (TaskConfig.metrics),
    over its decoded eval split: what training's eval passes and `t5x-like eval` add to the
    loss metrics. Predictions go to MODEL_DIR/eval_predictions/<task>_step<N>/ (apart from
    `t5x-like infer`'s, whose settings may differ)."""

    def __init__(self, cfg: RunConfig, graphdef: nnx.GraphDef, partitioner, num_examples: int):
        from t5x_like import inputs  # the data layer: prepares the split on first use
        # Always the eval split, whatever InferConfig.split says of `infer`.
        self.cfg = dataclasses.replace(cfg, infer=dataclasses.replace(cfg.infer, split="eval"))
        self.num_examples = num_examples
        self.tasks = [t for t in cfg.data.tasks_of()[0] if t.supervised and t.metrics]
        if not self.tasks:  # a pretraining run's eval: nothing to decode, nothing to load
            return
        self.examples = {t.name: inputs.supervised_examples(cfg, t, "eval") for t in self.tasks}
        self.tokenizer = inputs.load_tokenizer(cfg)
        self.generator = Generator(None, graphdef, eos_id=self.tokenizer.eos_id,
                                   prefix_lm=is_prefix_lm(cfg),
                                   partitioner=partitioner)

    def __bool__(self) -> bool:
        return bool(self.tasks)

    def __call__(self, params: Any, step: int) -> dict[str, float]:
        self.generator.params = params  # the compiled decode takes them as an argument
        cfg = self.cfg
        out: dict[str, float] = {}
        for task in self.tasks:
            directory = (pathlib.Path(cfg.train.model_dir) / "eval_predictions"
                         / f"{task.name}_step{step}")
            summary = predict(cfg, self.examples[task.name], self.generator, self.tokenizer,
                              directory, task=task, step=step, progress=False,
                              max_examples=max(self.num_examples, 0))
            # 'eval_exact_match/<task>', as 'tokens/<task>': apart from the loss metrics'
            # eval_accuracy (of tokens), one key per task.
            out |= {f"eval_{k}/{task.name}": summary[k] for k in summary
                    if k not in ("task", "split", "step", "examples")}
        return out


class Scorer:
    """Log-likelihoods of given targets, one compiled program per batch shape."""

    def __init__(self, params, graphdef, partitioner=None):
        self.params, self.partitioner = params, partitioner
        fn = jax.tree_util.Partial(row_log_likelihoods, graphdef=graphdef)
        self._jitted = jax.jit(lambda p, b: fn(p, b))

    def __call__(self, batch: dict[str, np.ndarray], with_greedy: bool = False) -> tuple:
        """(log-likelihoods, target token counts[, whether each is greedy]) of the rows."""
        rows = len(next(iter(batch.values())))
        multiple = self.partitioner.data_parallel_size if self.partitioner else 1
        pad = -rows % multiple
        batch = {k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()}
        if self.partitioner is None:
            out = self._jitted(self.params, batch)
        else:
            sharding = self.partitioner.batch_sharding
            with self.partitioner.activation_context():
                out = self._jitted(self.params, jax.device_put(batch, sharding))
        out = tuple(np.asarray(jax.device_get(x))[:rows] for x in out)
        return out if with_greedy else out[:2]


def score(cfg: RunConfig, examples, scorer: Scorer, out_dir: pathlib.Path, *,
          task: TaskConfig, step: int, encoder_decoder: bool, progress: bool = True
          ) -> dict[str, Any]:
    """Each example's log-likelihood of its targets into ``out_dir/scores.jsonl``."""
    ic, lengths = cfg.infer, cfg.data.task_feature_lengths
    num = min(len(examples), ic.max_examples or len(examples))
    out = ShardedOutput(out_dir, "scores", num, ic.shard_size)
    out.check_spec({"task": task.name, "step": step, "examples": num,
                    "shard_size": ic.shard_size})

    def rows_of(indices):
        scores, tokens = scorer(scoring_rows(examples.batch(indices), lengths["inputs"],
                                             lengths["targets"], encoder_decoder))
        return [{"index": i, **dict(zip(("inputs", "targets"), examples.text(i))),
                 "score": float(value), "target_tokens": int(n),
                 "location": examples.location(i)} for i, value, n in zip(indices, scores, tokens)]

    rows = _fill(out, ic.batch_size, rows_of, f"{task.name} scores", progress)
    total = sum(r["score"] for r in rows)
    tokens = sum(r["target_tokens"] for r in rows)
    _write_jsonl(out_dir / "scores.jsonl", rows)
    return {"task": task.name, "split": ic.split, "step": step, "examples": num,
            "log_likelihood": total, "target_tokens": tokens,
            "perplexity": math.exp(-total / tokens) if tokens else float("nan")}
