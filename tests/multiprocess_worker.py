"""One process of a multi-process training run, started by launch/local.py for
tests/test_distributed.py (and importable there for the single-process reference).

Every process trains on its share of the same global batches whatever the process count (global
batch b is rows [b*G, (b+1)*G) of a fixed random set; process p of P takes the p-th contiguous
part), so an N-process run must reproduce a 1-process run's losses. The training pipeline
proper deals rows by index and so changes with the process count (docs/data.md).

    python launch/local.py -n 2 -d 4 -- python tests/multiprocess_worker.py CONFIG_JSON
"""

from __future__ import annotations

import json
import functools
import sys
import threading
import time

import numpy as np

from t5x_like import config as cfg_lib


def config_from_dict(parts: dict) -> cfg_lib.RunConfig:
    """A RunConfig from {part: {field: value}} (the JSON the test writes)."""
    classes = {"model": cfg_lib.ModelConfig, "mesh": cfg_lib.MeshConfig,
               "optimizer": cfg_lib.OptimizerConfig, "data": cfg_lib.DataConfig,
               "train": cfg_lib.TrainConfig, "distributed": cfg_lib.DistributedConfig}
    return cfg_lib.RunConfig(**{k: classes[k](**v) for k, v in parts.items()})


def random_rows(num_rows: int, length: int, vocab: int, seed: int = 0) -> dict:
    """Single-segment decoder rows of random tokens, the last few positions padding."""
    rng = np.random.default_rng(seed)
    used = rng.integers(length - 4, length + 1, num_rows)
    mask_NxL = (np.arange(length)[None, :] < used[:, None]).astype(np.int32)
    tokens_NxL = rng.integers(4, vocab, (num_rows, length + 1)).astype(np.int32)
    return {"decoder_input_tokens": tokens_NxL[:, :-1] * mask_NxL,
            "decoder_target_tokens": tokens_NxL[:, 1:] * mask_NxL,
            "decoder_segment_ids": mask_NxL,
            "decoder_positions": np.arange(length, dtype=np.int32)[None, :] * mask_NxL,
            "decoder_loss_weights": mask_NxL}


class GlobalBatches:
    """This process's share of fixed global batches; resumable through grain's checkpoint
    handler (get_state/set_state as bytes, like grain's DataLoader iterators)."""

    def __init__(self, rows: dict, global_batch: int, process_index: int, process_count: int,
                 delay_s: float = 0.0):
        self.rows, self.global_batch, self.delay_s = rows, global_batch, delay_s
        self.local = global_batch // process_count
        self.offset = process_index * self.local
        self.num_batches = len(rows["decoder_input_tokens"]) // global_batch
        self.next_batch = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        time.sleep(self.delay_s)  # a slow input pipeline: gives a test time to send a signal
        lo = (self.next_batch % self.num_batches) * self.global_batch + self.offset
        self.next_batch += 1
        return {k: v[lo:lo + self.local] for k, v in self.rows.items()}

    def get_state(self) -> bytes:
        return json.dumps({"next_batch": self.next_batch}).encode()

    def set_state(self, state: bytes) -> None:
        self.next_batch = json.loads(state)["next_batch"]

    def start_prefetch(self) -> None:
        pass


class StuckAt(GlobalBatches):
    """Blocks for good when asked for batch `at`: a stuck input pipeline, heartbeats still
    flowing (what JAX's heartbeat cannot detect and StepWatchdog is for)."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def __next__(self) -> dict:
        if self.next_batch == self.at:
            threading.Event().wait()
        return super().__next__()


def make_inputs(cfg: cfg_lib.RunConfig, process_index: int, process_count: int,
                delay_s: float = 0.0, batches=GlobalBatches):
    """Train and eval inputs of this process from the fixed random rows."""
    from t5x_like.data import pipeline
    from t5x_like.inputs import Inputs
    rows = random_rows(96, cfg.data.seq_len, cfg.model.vocab_size)
    batch = cfg.train.batch_size
    return Inputs(batches(rows, batch, process_index, process_count, delay_s),
                  pipeline.eval_batches(rows, global_batch_size=batch, max_batches=2,
                                        process_index=process_index,
                                        process_count=process_count))


def evaluate_latest(cfg: cfg_lib.RunConfig) -> None:
    """Restore MODEL_DIR's latest checkpoint on this job's mesh; process 0 prints its eval."""
    import jax
    from t5x_like import trainer
    params, graphdef, step, partitioner = trainer.load_trained(cfg)
    batches = make_inputs(cfg, jax.process_index(), jax.process_count()).eval_batches
    eval_step = trainer.compile_eval_step(graphdef, params, partitioner, batches[0],
                                          cfg.train.batch_size)
    metrics = trainer.evaluate(eval_step, params, batches, partitioner)
    if jax.process_index() == 0:
        print("EVAL " + json.dumps({"step": step, **metrics}), flush=True)


def main(argv: list[str]) -> int:
    """Join the job as the CLI does, train (or evaluate), exit 0 (also when preempted)."""
    spec = json.loads(argv[0])
    cfg = config_from_dict(spec["config"])
    import jax
    from t5x_like import distributed, trainer
    distributed.initialize(cfg.distributed)
    distributed.configure_logging()
    try:
        if spec.get("evaluate"):
            evaluate_latest(cfg)
        else:
            batches = GlobalBatches
            if jax.process_index() == spec.get("stuck_process"):
                batches = functools.partial(StuckAt, at=spec["stuck_at_batch"])
            trainer.train(cfg, make_inputs(cfg, jax.process_index(), jax.process_count(),
                                           spec.get("delay_s", 0.0), batches))
    except Exception as e:
        distributed.report_fatal(e)
        distributed.exit_after_fatal(1)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
