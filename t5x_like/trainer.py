"""The training loop: set up, restore or initialize, compile ahead of time, then step.

Reads top to bottom in banner-marked sections. Collaborators (the model factory, the inputs, the
partitioner) are passed in, so tests and gin can swap them; defaults come from the RunConfig.
The loop dispatches step N before reading step N-1's metrics, so the host never idles the device.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from t5x_like import checkpointing, distributed, optim, state as state_lib, step as step_lib
from t5x_like.config import ConfigError, RunConfig, flops_per_token
from t5x_like.inputs import Inputs
from t5x_like.metrics import MetricsWriter, drop_rows_to_redo, peak_flops_per_device
from t5x_like.models.decoder import Decoder
from t5x_like.partitioning import MeshShapeError, Partitioner, make_mesh

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or gradient; the last checkpoint is untouched."""


def default_model_factory(cfg: RunConfig) -> Callable[[nnx.Rngs], nnx.Module]:
    """The model of `cfg.model`: a decoder-only or an encoder-decoder Transformer."""
    if cfg.model.architecture == "encoder_decoder":
        from t5x_like.models.encoder_decoder import EncoderDecoder
        return lambda rngs: EncoderDecoder(cfg.model, rngs=rngs)
    return lambda rngs: Decoder(cfg.model, rngs=rngs)


def default_partitioner(cfg: RunConfig, devices=None) -> Partitioner:
    """A mesh over `devices` (default: all) shaped by `cfg.mesh`; a shape they do not fill is
    a ConfigError that names the MeshConfig keys."""
    try:
        mesh = make_mesh(cfg.mesh.ici_shape, cfg.mesh.dcn_shape, devices=devices)
    except MeshShapeError as e:
        where = "within a slice" if e.level == "ici" else "across slices"
        raise ConfigError(
            f"MeshConfig.{e.level}_data/{e.level}_fsdp/{e.level}_tensor = {e.shape} "
            f"(the mesh {where}): {e.reason}, e.g. "
            + ("--gin.MeshConfig.ici_data=1 --gin.MeshConfig.ici_fsdp=-1" if e.level == "ici"
               else "--gin.MeshConfig.dcn_data=-1 (one replica per slice)")) from None
    return Partitioner(mesh, cfg.mesh.logical_axis_rules)


def check_batch_size(cfg: RunConfig, partitioner: Partitioner) -> None:
    """The global batch must split evenly over the mesh's data-parallel devices."""
    if cfg.train.batch_size % partitioner.data_parallel_size:
        raise ConfigError(f"TrainConfig.batch_size = {cfg.train.batch_size} must divide by the "
                          f"mesh's data-parallel size {partitioner.data_parallel_size} "
                          f"({partitioner.describe()})")


def _global_shapes(example_batch: dict[str, np.ndarray], batch_size: int, sharding):
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding)
            for k, v in example_batch.items()}


def lower_train_step(cfg: RunConfig, layout: state_lib.StateLayout, partitioner: Partitioner,
                     tx, schedule, example_batch: dict[str, np.ndarray]) -> jax.stages.Lowered:
    """The train step (state donated) traced and lowered for the partitioner's mesh."""
    shardings = layout.shardings
    train_fn = functools.partial(step_lib.train_step, graphdef=layout.graphdef, tx=tx,
                                 schedule=schedule, z_loss=cfg.train.z_loss,
                                 grad_accum_steps=cfg.train.grad_accum_steps,
                                 loss_chunks=cfg.train.loss_chunks)
    batch_sharding = partitioner.batch_sharding
    batch = _global_shapes(example_batch, cfg.train.batch_size, batch_sharding)
    with partitioner.activation_context():  # models' sharding constraints apply while tracing
        return jax.jit(train_fn, in_shardings=(shardings, batch_sharding),
                       out_shardings=(shardings, partitioner.replicated()),
                       donate_argnums=0).lower(layout.restore_target, batch)


def compile_train_step(cfg: RunConfig, layout: state_lib.StateLayout, partitioner: Partitioner,
                       tx, schedule, example_batch: dict[str, np.ndarray]):
    """AOT-compile the train step (state donated) and log its memory before step 1."""
    compiled = lower_train_step(cfg, layout, partitioner, tx, schedule, example_batch).compile()
    _log_memory(compiled)
    return compiled


def compile_eval_step(graphdef: nnx.GraphDef, params: Any, partitioner: Partitioner,
                      example_batch: dict[str, np.ndarray], batch_size: int):
    """AOT-compile the eval step for global batches of `batch_size` rows."""
    shardings = jax.tree.map(lambda x: x.sharding, params)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            params, shardings)
    batch_sharding = partitioner.batch_sharding
    with partitioner.activation_context():
        return jax.jit(functools.partial(step_lib.eval_step, graphdef=graphdef),
                       in_shardings=(shardings, batch_sharding),
                       out_shardings=partitioner.replicated()
                       ).lower(abstract, _global_shapes(example_batch, batch_size,
                                                        batch_sharding)).compile()


def _log_memory(compiled) -> None:
    mem = compiled.memory_analysis()
    if mem is None:
        return
    gib = 1 / 2**30
    log.info("train step memory per device: arguments %.3f GiB, outputs %.3f GiB, temporaries "
             "%.3f GiB (donated state aliases outputs)", mem.argument_size_in_bytes * gib,
             mem.output_size_in_bytes * gib, mem.temp_size_in_bytes * gib)


def evaluate(eval_step, params, batches, partitioner: Partitioner) -> dict[str, float]:
    """Loss, perplexity and token accuracy over the fixed eval batches."""
    total = {"cross_entropy": 0.0, "correct": 0.0, "weight": 0.0}
    for batch in batches:
        sums = jax.device_get(eval_step(params, partitioner.global_batch(batch)))
        total = {k: total[k] + float(sums[k]) for k in total}
    return step_lib.eval_metrics(total)


def split_batch(batch: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(model features, bookkeeping): keys starting with '_' never reach the device."""
    model = {k: v for k, v in batch.items() if not k.startswith("_")}
    return model, {k: v for k, v in batch.items() if k.startswith("_")}


class SourceTokens:
    """Trained-on tokens per task of a mixture, summed over processes when logged."""

    def __init__(self, task_names: tuple[str, ...]):
        self.names = task_names
        self.counts_T = np.zeros(len(task_names), np.int64)

    def add(self, batch: dict[str, np.ndarray], extras: dict[str, np.ndarray]) -> None:
        """Count this process's loss-bearing tokens of `batch` by the task of each row."""
        if "_source" in extras:
            per_row = batch["decoder_loss_weights"].sum(axis=1)
            np.add.at(self.counts_T, extras["_source"], per_row)

    def metrics(self) -> dict[str, float]:
        """{'tokens/<task>': global count so far} (a collective: call on every process)."""
        counts = self.counts_T
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
        return {f"tokens/{n}": float(c) for n, c in zip(self.names, counts)}


class StepReporter:
    """Turns step metrics (device arrays) into log rows; raises on a non-finite loss."""

    def __init__(self, cfg: RunConfig, writer: MetricsWriter, tokens_per_step: int,
                 num_devices: int, progress=None):
        self.cfg, self.writer, self.progress = cfg, writer, progress
        self.tokens_per_step = tokens_per_step
        peak, self.peak_source = peak_flops_per_device(cfg.model.dtype)
        self.peak_total = peak * num_devices
        self.flops_per_token = flops_per_token(cfg.model, cfg.data.seq_len,
                                               cfg.data.task_feature_lengths.get("inputs"))
        self._last_time, self._steps_since = time.perf_counter(), 0
        self.rows: list[dict[str, Any]] = []

    def __call__(self, step: int, metrics: dict[str, jax.Array], extra=None) -> None:
        host = jax.device_get(metrics)  # blocks on this step only; the next one is queued
        if not bool(host.pop("finite")):
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {step} (loss={float(host['loss'])}, "
                f"grad_norm={float(host['grad_norm'])}); the update was skipped and no "
                f"checkpoint was written after it. Lower OptimizerConfig.learning_rate, raise "
                f"warmup_steps, or check the data near this step.")
        self._steps_since += 1
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{float(host['loss']):.3f}")
        if step % self.cfg.train.log_every and step != self.cfg.train.train_steps:
            return
        now = time.perf_counter()
        tokens_per_second = self._steps_since * self.tokens_per_step / (now - self._last_time)
        self._last_time, self._steps_since = now, 0
        host.update(tokens_per_second=tokens_per_second,
                    mfu=tokens_per_second * self.flops_per_token / self.peak_total)
        if extra is not None:
            host.update(extra())
        row = self.writer.write(step, host)
        self.rows.append(row)
        log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in row.items()
                                                 if k != "step"))

    def log_eval(self, step: int, metrics: dict[str, float]) -> None:
        """Write an eval row (also reset the throughput clock: eval time is not step time)."""
        row = self.writer.write(step, metrics)
        self.rows.append(row)
        log.info("eval at step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self._last_time, self._steps_since = time.perf_counter(), 0


def init_from_checkpoint(cfg: RunConfig, tx, layout: state_lib.StateLayout,
                         partitioner: Partitioner) -> dict[str, Any]:
    """A fine-tune's first state: TrainConfig.init_from's parameters (either kind of
    checkpoint, any mesh), fresh optimizer moments, step 0. The model must match."""
    model_dir, step = checkpointing.locate_init(cfg.train.init_from, cfg.train.init_step)
    source = checkpointing.Checkpointer(model_dir, keep=1, every=1, async_save=False)
    try:
        checkpointing.check_same_model(
            source.model_config(step), cfg.model.to_dict(), f"{source.directory}/{step}",
            fix=f"TrainConfig.init_from = {cfg.train.init_from!r} needs the model config it was "
                "trained with (its MODEL_DIR's config.gin), or another init_from.")
        params = source.restore_params(step, layout.restore_target["params"], None)
    finally:
        source.close()
    log.info("fine-tuning from %s/%d: its parameters, fresh optimizer state, step 0",
             source.directory, step)
    return state_lib.state_from_params(params, tx, layout, partitioner, 0)


def restore_or_init(cfg: RunConfig, factory, tx, layout: state_lib.StateLayout, partitioner,
                    checkpointer, data_iter) -> tuple[Any, int]:
    """(state, start_step): MODEL_DIR's latest checkpoint if any, else TrainConfig.init_from's
    parameters at step 0 (fine-tuning), else a fresh sharded init.

    A parameters-only checkpoint (`t5x-like convert`'s output) starts the run at its step with
    those parameters, fresh optimizer moments and a fresh data iterator. Once MODEL_DIR has a
    checkpoint of its own, init_from is not read again."""
    latest = checkpointer.latest_step()
    if latest is None and cfg.train.init_from:
        return init_from_checkpoint(cfg, tx, layout, partitioner), 0
    if latest is None:
        return state_lib.init_state(factory, tx, layout, partitioner, cfg.train.seed), 0
    if not checkpointer.holds_train_state(latest):
        params = checkpointer.restore_params(latest, layout.restore_target["params"],
                                             cfg.model.to_dict())
        log.info("starting from the parameters-only checkpoint %s/%d", checkpointer.directory,
                 latest)
        return (state_lib.state_from_params(params, tx, layout, partitioner, int(latest)),
                int(latest))
    state = checkpointer.restore(latest, layout.restore_target, data_iter, cfg.model.to_dict())
    return state, int(latest)


def load_trained(cfg: RunConfig, *, model_factory=None, partitioner: Partitioner | None = None,
                 step: int | None = None) -> tuple[Any, nnx.GraphDef, int, Partitioner]:
    """(params, graphdef, step, partitioner) of MODEL_DIR's latest (or given) checkpoint."""
    factory = model_factory or default_model_factory(cfg)
    partitioner = partitioner or default_partitioner(cfg)
    tx, _ = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    checkpointer = checkpointing.Checkpointer(cfg.train.model_dir, keep=cfg.train.keep_checkpoints,
                                              every=1, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {checkpointer.directory}; train first "
                                    f"(t5x-like train --gin.MODEL_DIR={cfg.train.model_dir})")
        layout = state_lib.state_layout(factory, tx, partitioner)
        params = checkpointer.restore_params(step, layout.restore_target["params"],
                                             cfg.model.to_dict())
    finally:
        checkpointer.close()
    return params, layout.graphdef, step, partitioner


def train(cfg: RunConfig, inputs: Inputs, *, model_factory=None,
          partitioner: Partitioner | None = None, task_evaluator=None) -> list[dict[str, Any]]:
    """Train to cfg.train.train_steps (resuming from MODEL_DIR's latest checkpoint); the rows
    written to metrics.jsonl are returned.

    ``task_evaluator(params, step) -> metrics`` adds to every eval pass; by default the decoded
    metrics of the run's supervised tasks when InferConfig.train_eval_examples asks for them."""
    # ---------------------------------------------------------------- setup
    tc = cfg.train
    factory = model_factory or default_model_factory(cfg)
    partitioner = partitioner or default_partitioner(cfg)
    check_batch_size(cfg, partitioner)
    primary = jax.process_index() == 0
    log.info("%s; model_dir %s", partitioner.describe(), tc.model_dir)
    tx, schedule = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    checkpointer = checkpointing.Checkpointer(tc.model_dir, keep=tc.keep_checkpoints,
                                              every=tc.checkpoint_every,
                                              async_save=tc.async_checkpointing)

    # ---------------------------------------------------------------- state: restore or init
    layout = state_lib.state_layout(factory, tx, partitioner)
    state, start = restore_or_init(cfg, factory, tx, layout, partitioner, checkpointer,
                                   inputs.train_iter)
    log.info("%s at step %d: %s parameters", "resumed" if start else "initialized", start,
             f"{state_lib.count_params(state['params']):,}")
    if start >= tc.train_steps:
        log.info("already trained to step %d >= train_steps %d", start, tc.train_steps)
        checkpointer.close()
        return []
    if primary:
        drop_rows_to_redo(tc.model_dir, start)

    # ---------------------------------------------------------------- compile ahead of time
    first_batch, first_extras = split_batch(next(inputs.train_iter))
    train_step = compile_train_step(cfg, layout, partitioner, tx, schedule, first_batch)
    eval_step = compile_eval_step(layout.graphdef, state["params"], partitioner,
                                  inputs.eval_batches[0], tc.batch_size)
    if task_evaluator is None and cfg.infer.train_eval_examples:
        from t5x_like.inference import TaskEvaluator
        task_evaluator = TaskEvaluator(cfg, layout.graphdef, partitioner,
                                       cfg.infer.train_eval_examples) or None

    def eval_metrics(params, step: int) -> dict[str, float]:
        metrics = evaluate(eval_step, params, inputs.eval_batches, partitioner)
        return metrics | (task_evaluator(params, step) if task_evaluator else {})

    # ---------------------------------------------------------------- loop
    writer = MetricsWriter(tc.model_dir, enabled=primary)
    progress = _progress_bar(tc, start) if primary else None
    reporter = StepReporter(cfg, writer, tc.batch_size * cfg.data.seq_len,
                            partitioner.mesh.size, progress)
    log.info("MFU denominator: %s", reporter.peak_source)
    if start == 0:
        reporter.log_eval(0, eval_metrics(state["params"], 0))
    sources = SourceTokens(inputs.task_names)
    pending, (batch, extras) = None, (first_batch, first_extras)
    preemption = distributed.PreemptionGuard()
    watchdog = distributed.StepWatchdog(cfg.distributed.step_timeout_s)
    try:
        for step in range(start + 1, tc.train_steps + 1):
            state, metrics = train_step(state, partitioner.global_batch(batch))
            sources.add(batch, extras)
            if pending is not None:
                reporter(*pending)  # step N-1's metrics, read while step N runs
            pending = (step, metrics, sources.metrics)
            last = step == tc.train_steps
            preempted = preemption.reached(step) and not last  # the same step on every process
            watchdog.beat()
            eval_due = last or (tc.eval_every and step % tc.eval_every == 0)
            if eval_due or last or preempted or step % tc.checkpoint_every == 0:
                reporter(*pending)  # the state is known finite before anything uses it
                pending = None
                if eval_due:
                    reporter.log_eval(step, eval_metrics(state["params"], step))
                checkpointer.save(step, state, inputs.train_iter, cfg.model.to_dict(),
                                  force=last or preempted)
            if preempted:
                log.warning("preempted: saved a checkpoint at step %d; relaunch the same "
                            "command to resume", step)
                break
            if not last:
                batch, extras = split_batch(next(inputs.train_iter))
    finally:
        watchdog.close()
        preemption.close()
        checkpointer.close()
        writer.close()
        if progress is not None:
            progress.close()
    return reporter.rows


def _progress_bar(tc, start: int):
    if not (tc.progress_bar and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=tc.train_steps, initial=start, unit="step", dynamic_ncols=True)

