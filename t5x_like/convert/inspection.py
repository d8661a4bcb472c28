"""`t5x-like inspect`: what a t5x_like checkpoint holds, read from its metadata alone.

Step, kind (train state or parameters only), the ModelConfig, every parameter with shape, dtype,
sharding and size, the optimizer state's size, and the data iterator's saved position. No array
is read, so inspecting an 8B checkpoint takes as long as listing its files.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterator

import numpy as np

from t5x_like.convert.model_dir import find_checkpoint


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) in name order, layer numbers in numeric order; optax's tuples included."""
    if isinstance(tree, (list, tuple)):
        tree = dict(enumerate(tree))
    if isinstance(tree, dict):
        for key in sorted(tree, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k))):
            yield from _leaves(tree[key], f"{prefix}{key}/")
    elif tree is not None:
        yield prefix[:-1], tree


def _sharding(meta: Any) -> str:
    sharding = getattr(meta, "sharding", None)
    if sharding is None:
        return "-"
    spec = getattr(sharding, "partition_spec", None)
    return str(tuple(spec)) if spec is not None else type(sharding).__name__


def _array_row(name: str, meta: Any) -> dict[str, Any]:
    shape = tuple(meta.shape)
    dtype = np.dtype(meta.dtype)
    return {"name": name, "shape": list(shape), "dtype": dtype.name,
            "sharding": _sharding(meta), "bytes": int(np.prod(shape)) * dtype.itemsize}


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Everything `inspect` prints, as a JSON-able dict."""
    import orbax.checkpoint as ocp
    model_dir, step = find_checkpoint(path)
    step_dir = pathlib.Path(model_dir, "checkpoints", str(step))
    full = (step_dir / "state").is_dir()
    # The handler, not a Checkpointer: the item directory has no step metadata to look for.
    tree = ocp.PyTreeCheckpointHandler().metadata(step_dir / ("state" if full else "params")).tree
    params = tree["params"] if full else tree
    rows = [_array_row(n, m) for n, m in _leaves(params)]
    report = {"checkpoint": str(step_dir), "step": step,
              "kind": "train state" if full else "parameters only",
              "model": json.loads((step_dir / "model" / "metadata").read_text())
              if (step_dir / "model" / "metadata").is_file() else None,
              "params": rows, "num_params": sum(int(np.prod(r["shape"])) for r in rows),
              "param_bytes": sum(r["bytes"] for r in rows)}
    if full:
        report["opt_state_bytes"] = sum(_array_row(n, m)["bytes"]
                                        for n, m in _leaves(tree.get("opt_state", {}))
                                        if hasattr(m, "shape"))
    iterator_dir = step_dir / "data_iter"
    report["data_iter"] = {p.name: json.loads(p.read_text())
                           for p in sorted(iterator_dir.glob("process_*"))} or None
    return report


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def format_report(report: dict[str, Any]) -> str:
    """The human-readable listing of `describe`'s dict."""
    lines = [f"checkpoint: {report['checkpoint']}",
             f"step: {report['step']} ({report['kind']})"]
    if report["model"]:
        model = report["model"]
        lines.append("model: " + ", ".join(f"{k}={v}" for k, v in model.items()))
    width = max(len(r["name"]) for r in report["params"])
    lines.append(f"parameters: {report['num_params']:,} ({_size(report['param_bytes'])})")
    for r in report["params"]:
        lines.append(f"  {r['name']:<{width}}  {str(tuple(r['shape'])):<18} {r['dtype']:<9} "
                     f"{r['sharding']:<32} {_size(r['bytes'])}")
    if "opt_state_bytes" in report:
        lines.append(f"optimizer state: {_size(report['opt_state_bytes'])}")
    if report["data_iter"]:
        for name, value in report["data_iter"].items():
            lines.append(f"data iterator {name}: {json.dumps(value)}")
    else:
        lines.append("data iterator: none saved (a fresh run starts from the first batch)")
    return "\n".join(lines)
