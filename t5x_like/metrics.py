"""Metric sinks (MODEL_DIR/metrics.jsonl and TensorBoard) and the MFU denominator.

Only process 0 writes; every process may call the writer.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import fileio

# Dense bf16 matmul peaks per chip, from the vendors' data sheets. Unknown devices (CPUs) get a
# measured peak instead; see `measure_matmul_peak`.
_PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12, "NVIDIA B200": 2250e12,
}


def measure_matmul_peak(size: int = 2048, dtype=jnp.float32, repeats: int = 10) -> float:
    """Best FLOP/s of a square matmul on the default device (the MFU denominator on CPUs).

    Best of many: a transient stall (another thread, the hypervisor) only ever lowers a
    reading, and a low peak would inflate every MFU figure computed from it.
    """
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


@functools.lru_cache(maxsize=None)
def peak_flops_per_device(dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in _PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak, f"data sheet ({kind})"
    return measure_matmul_peak(dtype=jnp.dtype(dtype)), f"measured {dtype} matmul ({kind})"


def _scalar(value: Any) -> float | int:
    value = np.asarray(value)
    return int(value) if value.dtype.kind in "iub" else float(value)


class MetricsWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard."""

    def __init__(self, model_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(model_dir, exist_ok=True)
            from tensorboardX import SummaryWriter  # imported lazily: it is slow to import
            self._tb = SummaryWriter(os.path.join(model_dir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Record `metrics` at `step`; returns the row written (plain Python numbers)."""
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return row
        # One unbuffered write() of the row and its newline: a kill leaves a whole row or a
        # torn last line, which readers drop, never a row glued to the next.
        with open(self.path, "ab", buffering=0) as f:
            f.write((json.dumps(row) + "\n").encode())
        for key, value in row.items():
            if key != "step":
                self._tb.add_scalar(key, value, step)
        return row

    def close(self) -> None:
        """Flush TensorBoard events."""
        if self._tb is not None:
            self._tb.close()


def read_metrics(model_dir: str) -> list[dict[str, Any]]:
    """All rows of MODEL_DIR/metrics.jsonl (empty if none); a torn last line is left out."""
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [row for _, row in fileio.jsonl_rows(path) if row is not None]


def drop_rows_to_redo(model_dir: str, start: int) -> int:
    """Before a run resumes at checkpoint `start`, drop from metrics.jsonl the rows it will
    write again, so none is duplicated: every step after `start`, and at step 0 (no checkpoint
    yet) the step-0 eval too. Rows at a checkpointed step > 0 were all written before its
    checkpoint was saved, and stay. Returns how many rows went.

    Truncates in place: the kept rows are never rewritten, so a kill here cannot lose them.
    """
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    return fileio.truncate_jsonl(path, lambda row: row["step"] > start or start == 0)
