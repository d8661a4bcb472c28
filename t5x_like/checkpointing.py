"""Orbax checkpoints holding the train state, the data iterator and the model's description.

Each checkpoint step directory has three items:
- `state`: the train state pytree (sharded arrays; restored onto whatever shardings the target
  carries, hence onto another mesh or device count);
- `data_iter`: the grain iterator's state, so a resumed run sees exactly the batches an
  uninterrupted run would have seen;
- `model`: the ModelConfig as JSON, checked on restore so that a checkpoint from another model
  fails with the differing fields named instead of a shape error deep inside orbax.

A *parameters-only* checkpoint (what `t5x-like convert` writes, at step 0) has `params` and
`model` instead: training starts from it with fresh optimizer moments and a fresh data iterator,
eval and generate read its parameters like any other.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from t5x_like.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


class CheckpointMismatchError(ConfigError):
    """The checkpoint cannot resume this run: another model, another process count, or a part
    missing. A ConfigError, so the CLI prints it as one line; it names the checkpoint and what
    to do."""


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

    def holds_train_state(self, step: int) -> bool:
        """Whether `step` is a full train state (else a parameters-only checkpoint)."""
        return pathlib.Path(self.directory, str(step), "state").is_dir()

    def restore_params(self, step: int, abstract_params: Any, model_config: dict | None,
                       as_numpy: bool = False) -> Any:
        """The parameters of `step` (either kind of checkpoint), without optimizer moments.

        They land on `abstract_params`' shapes and shardings, or as host numpy arrays with
        `as_numpy` (conversion and inspection on any machine). `model_config` None skips the
        check that the checkpoint was written by that model.
        """
        if model_config is not None:
            check_same_model(self.model_config(step), model_config, f"{self.directory}/{step}")
        if as_numpy:
            restore_args = jax.tree.map(
                lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), abstract_params)
        else:
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
        # Read the item directly: the manager binds one handler per item name, and a train
        # state's params are a partial restore (no copy of the optimizer moments).
        step_dir = pathlib.Path(self.directory, str(step))
        # Host reads (conversion) bounded in flight: an 8B model then needs about one copy.
        reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
            restore_concurrent_gb=CONCURRENT_GB if as_numpy else None))
        with reader:
            if self.holds_train_state(step):
                item, restore_args = {"params": abstract_params}, {"params": restore_args}
                return reader.restore(step_dir / "state", args=ocp.args.PyTreeRestore(
                    item, restore_args=restore_args, partial_restore=True))["params"]
            return reader.restore(step_dir / "params", args=ocp.args.PyTreeRestore(
                abstract_params, restore_args=restore_args))

    def model_config(self, step: int) -> dict:
        """The ModelConfig fields the checkpoint at `step` was written with."""
        return self._manager.restore(step, args=ocp.args.Composite(
            model=ocp.args.JsonRestore()))["model"]

    def restore(self, step: int, abstract_state: Any, data_iter: Any,
                model_config: dict) -> Any:
        """Restore `step` into `abstract_state`'s shapes and shardings; `data_iter` in place."""
        check_same_model(self.model_config(step), model_config, f"{self.directory}/{step}")
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            self._check_process_count(step)
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        log.info("restored checkpoint %s/%d", self.directory, step)
        return restored["state"]

    def _check_process_count(self, step: int) -> None:
        """The data iterator state is per process: refuse a resume with another process count.

        Every process's position is the same global batch index, but grain saves it as one
        file per process, and M processes reading N processes' files is not built yet.
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
        own = item_dir / f"process_{jax.process_index()}{want}"
        if item_dir.is_dir() and not own.is_file():
            raise CheckpointMismatchError(
                f"checkpoint {self.directory}/{step} is incomplete: {own} (this process's data "
                f"iterator state) is missing. Delete {self.directory}/{step} to resume from the "
                "checkpoint before it, or start a fresh MODEL_DIR.")

    def wait(self) -> None:
        """Block until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


# GB of arrays orbax reads or writes at once in the parameters-only paths (conversion).
CONCURRENT_GB = 1


def _numpy_to_cpu_arrays(tree: dict, device) -> None:
    """Replace the numpy leaves of a dict tree by jax arrays on `device`, one at a time, so that
    each numpy array is freed as soon as its copy exists (one copy of the tree at any time)."""
    for key, value in tree.items():
        if isinstance(value, dict):
            _numpy_to_cpu_arrays(value, device)
        elif isinstance(value, np.ndarray):
            tree[key] = jax.device_put(value, device)
            tree[key].block_until_ready()


def save_params(directory: str, step: int, params: dict, model_config: dict) -> None:
    """Write a parameters-only checkpoint DIRECTORY/checkpoints/<step>/{params,model}.

    `params`' numpy leaves are replaced in place by CPU jax arrays, whose writes orbax bounds to
    CONCURRENT_GB in flight (its numpy path writes everything at once): saving a converted 8B
    model needs about one copy of it plus that buffer.
    """
    _numpy_to_cpu_arrays(params, jax.devices("cpu")[0])
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(directory, "checkpoints")),
        options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False),
        item_handlers={"params": ocp.StandardCheckpointHandler(save_concurrent_gb=CONCURRENT_GB),
                       "model": ocp.JsonCheckpointHandler()})
    try:
        manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                   model=ocp.args.JsonSave(model_config)),
                     force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


# Fields that change the parameter tree; numerics such as dtype or remat may differ on restore.
_SHAPE_FIELDS = ("architecture", "vocab_size", "d_model", "num_layers", "num_encoder_layers",
                 "num_heads", "num_kv_heads", "head_dim", "mlp_activation",
                 "mlp_dim", "tie_embeddings", "scan_layers")


def check_same_model(saved: dict, current: dict, where: str,
                     fix: str = "Use the gin model config it was trained with, or a fresh "
                                "MODEL_DIR.") -> None:
    """Raise CheckpointMismatchError naming every shape-relevant field that differs, then
    ``fix``."""
    # A field the checkpoint predates had its default value when the checkpoint was written.
    defaults = ModelConfig().to_dict()
    saved = defaults | saved
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
             for k in _SHAPE_FIELDS if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"checkpoint {where} was written by a different model ({'; '.join(diffs)}). {fix}")


def locate_init(init_from: str, init_step: int = -1) -> tuple[str, int]:
    """``(MODEL_DIR, step)`` of the checkpoint that ``TrainConfig.init_from`` names: a MODEL_DIR
    (its step ``init_step``, -1 = the latest) or a checkpoint directory ``.../checkpoints/N``.

    Raises CheckpointMismatchError (one line: the value, what is there, what to do) when it
    names no checkpoint, or a step that is not there.
    """
    path = pathlib.Path(init_from)
    if path.name.isdigit() and path.parent.name == "checkpoints":
        model_dir, step = str(path.parent.parent), int(path.name)
        if init_step not in (-1, step):
            raise CheckpointMismatchError(
                f"TrainConfig.init_from = {init_from!r} is the checkpoint of step {step} but "
                f"TrainConfig.init_step = {init_step}: set -1, or name the MODEL_DIR")
    else:
        model_dir, step = init_from, init_step
    directory = pathlib.Path(model_dir, "checkpoints")
    steps = sorted(int(p.name) for p in directory.glob("*")
                   if p.name.isdigit() and ((p / "state").is_dir() or (p / "params").is_dir()))
    if not steps:
        raise CheckpointMismatchError(
            f"TrainConfig.init_from = {init_from!r}: no checkpoint under {directory}; name the "
            "MODEL_DIR of a training run or a converted model (t5x-like convert), or one of its "
            "checkpoints/N directories")
    step = steps[-1] if step == -1 else step
    if step not in steps:
        raise CheckpointMismatchError(
            f"TrainConfig.init_from = {init_from!r} has no checkpoint of step {step} (it has "
            f"{steps}): set TrainConfig.init_step to one of them, or -1 for the latest")
    return model_dir, step
