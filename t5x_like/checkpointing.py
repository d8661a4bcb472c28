"""Orbax checkpoints holding the train state, the data iterator and the model's description.

Each checkpoint step directory has three items:
- `state`: the train state pytree (sharded arrays; restored onto whatever shardings the target
  carries, hence onto another mesh or device count);
- `data_iter`: the grain iterator's state, so a resumed run sees exactly the batches an
  uninterrupted run would have seen;
- `model`: the ModelConfig as JSON, checked on restore so that a checkpoint from another model
  fails with the differing fields named instead of a shape error deep inside orbax.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from t5x_like.config import ModelConfig

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a different model than the one being restored."""


class Checkpointer:
    """Thin policy layer over `ocp.CheckpointManager` (interval, retention, async)."""

    def __init__(self, directory: str, *, keep: int, every: int, async_save: bool):
        self.directory = os.path.abspath(os.path.join(directory, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=every,
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any, model_config: dict,
             force: bool = False) -> bool:
        """Save if the interval says so (or `force`); returns whether a save started."""
        items = {"state": ocp.args.StandardSave(state),
                 "model": ocp.args.JsonSave(model_config)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, abstract_state: Any, data_iter: Any,
                model_config: dict) -> Any:
        """Restore `step` into `abstract_state`'s shapes and shardings; `data_iter` in place."""
        saved = self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.JsonRestore()))["model"]
        check_same_model(saved, model_config, f"{self.directory}/{step}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            self._check_process_count(step)
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        log.info("restored checkpoint %s/%d", self.directory, step)
        return restored["state"]

    def _check_process_count(self, step: int) -> None:
        """The data iterator state is per process: refuse a resume with another process count.

        Rows are dealt to processes by index, so N processes' positions do not translate into M
        processes' positions; continuing anyway would repeat or skip data silently.
        """
        item_dir = pathlib.Path(self.directory, str(step), "data_iter")
        files = sorted(p.name for p in item_dir.glob("process_*"))
        want = f"-of-{jax.process_count()}.json"
        if files and not all(f.endswith(want) for f in files):
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} holds the data iterator state of "
                f"{files[0].rsplit('-of-', 1)[1][:-5]} process(es) ({', '.join(files)}); this run "
                f"has {jax.process_count()}. Resume with the same number of processes (the mesh "
                "may differ), or start a fresh MODEL_DIR from these weights.")

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


# Fields that change the parameter tree; numerics such as dtype or remat may differ on restore.
_SHAPE_FIELDS = ("architecture", "vocab_size", "d_model", "num_layers", "num_encoder_layers",
                 "num_heads", "num_kv_heads", "head_dim", "mlp_activation",
                 "mlp_dim", "tie_embeddings", "scan_layers")


def check_same_model(saved: dict, current: dict, where: str) -> None:
    """Raise CheckpointMismatchError naming every shape-relevant field that differs."""
    # A field the checkpoint predates had its default value when the checkpoint was written.
    defaults = ModelConfig().to_dict()
    saved = defaults | saved
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
             for k in _SHAPE_FIELDS if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {where} was written by a different model ({'; '.join(diffs)}). "
            "Use the gin model config it was trained with, or a fresh MODEL_DIR.")
