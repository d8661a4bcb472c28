"""The run around the model and data: mesh, processes, optimizer, loop, and the whole checked together."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from t5x_like.config.base import ConfigError, _Validated
from t5x_like.config.data import OBJECTIVE_FEATURES, SUPERVISED, DataConfig, ObjectiveConfig
from t5x_like.config.infer import InferConfig
from t5x_like.config.model import ModelConfig

# Logical axis name -> mesh axes, first match wins per array dimension (T5X/MaxText style).
# Mesh axes already used by an earlier dimension of the same array are skipped, so e.g. a
# ('embed', 'mlp') kernel is sharded fsdp x tensor and a ('vocab', 'embed') table tensor x fsdp.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("length", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig(_Validated):
    """Device mesh: ICI (within a slice) x DCN (across slices) sizes per axis; -1 fills."""

    # Defaults: FSDP within a slice (parameters and optimizer state sharded over the fast ICI
    # links), data parallel across slices (only the gradient reduction crosses DCN). A DCN size
    # of -1 is the number of slices (TPU), or of processes where devices have no slice (GPU
    # nodes; CPU processes stand in for slices).
    ici_data: int = 1
    ici_fsdp: int = -1
    ici_tensor: int = 1
    dcn_data: int = -1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    logical_axis_rules: tuple[tuple[str, Any], ...] = DEFAULT_LOGICAL_AXIS_RULES

    def _validate(self):
        for prefix in ("ici", "dcn"):
            sizes = [getattr(self, f"{prefix}_{a}") for a in ("data", "fsdp", "tensor")]
            for axis, size in zip(("data", "fsdp", "tensor"), sizes):
                self._require(size == -1 or size > 0, f"{prefix}_{axis}", "must be -1 or > 0")
            self._require(sizes.count(-1) <= 1, f"{prefix}_data",
                          f"at most one {prefix}_* axis may be -1 (fill), got {sizes}")
        for rule in self.logical_axis_rules:
            if not (len(rule) == 2 and isinstance(rule[0], str)):
                self._fail("logical_axis_rules", rule, "each rule is (logical_name, mesh_axes)")

    @property
    def ici_shape(self) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes within a slice."""
        return (self.ici_data, self.ici_fsdp, self.ici_tensor)

    @property
    def dcn_shape(self) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes across slices."""
        return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)


@dataclasses.dataclass(frozen=True)
class DistributedConfig(_Validated):
    """How this process joins a multi-process (multi-host) run; see t5x_like.distributed.

    Empty values are filled from T5X_LIKE_COORDINATOR_ADDRESS / T5X_LIKE_NUM_PROCESSES /
    T5X_LIKE_PROCESS_ID (what launch/local.py sets), else detected on TPU pods, Slurm and MPI
    jobs; with neither, the run is a single process. Process-specific values (process_id) belong
    in the environment, since every host runs the same command and gin files.
    """

    coordinator_address: str = ""  # host:port of process 0's coordination service
    num_processes: int = 0  # 0 = from the environment or detected
    process_id: int = -1  # -1 = from the environment or detected
    auto_detect: bool = True  # call jax.distributed.initialize() on a detected TPU/Slurm/MPI job
    initialization_timeout_s: int = 300  # wait this long for every process to connect
    # A process that sends no heartbeat for this long is declared dead; every survivor then
    # exits with an error instead of waiting forever in a collective.
    heartbeat_timeout_s: int = 100
    shutdown_timeout_s: int = 300  # at exit, wait this long for the other processes
    # A process whose loop finishes no step for this long exits with an error: covers a peer
    # that is alive (heartbeats flowing) but stuck, which heartbeats cannot see. 0 = off; set
    # it well above the slowest step plus an eval pass and a checkpoint save.
    step_timeout_s: int = 0

    def _validate(self):
        if self.coordinator_address:
            host, sep, port = self.coordinator_address.rpartition(":")
            self._require(bool(sep and host and port.isdigit()), "coordinator_address",
                          "expected host:port, e.g. 10.0.0.2:1234")
        self._require(self.num_processes >= 0, "num_processes", "must be >= 0 (0 = detect)")
        self._require(self.process_id >= -1, "process_id", "must be >= -1 (-1 = detect)")
        if self.num_processes and self.process_id >= 0:
            self._require(self.process_id < self.num_processes, "process_id",
                          f"must be below num_processes={self.num_processes}")
        for name in ("initialization_timeout_s", "heartbeat_timeout_s", "shutdown_timeout_s"):
            self._require(getattr(self, name) > 0, name, "must be positive (seconds)")
        self._require(self.step_timeout_s >= 0, "step_timeout_s", "must be >= 0 (0 = off)")

    @property
    def explicit(self) -> bool:
        """Whether the coordinator is given (rather than detected)."""
        return bool(self.coordinator_address)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Validated):
    """Optimizer, learning-rate schedule and gradient clipping."""

    name: Literal["adamw", "adafactor"] = "adamw"
    learning_rate: float = 3e-3  # peak learning rate
    # wsd: warmup-stable-decay
    schedule: Literal["cosine", "linear", "rsqrt", "wsd", "constant"] = "cosine"
    warmup_steps: int = 50
    # Steps the schedule spans; 0 = TrainConfig.train_steps. Fix it to extend a run in pieces
    # (TRAIN_STEPS=10, then 20, ends exactly like one 20-step run when both use 20 here).
    schedule_steps: int = 0
    end_lr_fraction: float = 0.1  # cosine/linear/wsd end at this fraction of the peak
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    b1: float = 0.9  # AdamW only (Adafactor follows T5: factored, no momentum, decay t^-0.8)
    b2: float = 0.95  # AdamW only
    eps: float = 1e-8  # AdamW only
    weight_decay: float = 0.1  # decoupled; not applied to norms' scales
    grad_clip_norm: float = 1.0  # global-norm clipping; 0 disables

    def _validate(self):
        self._require(self.learning_rate > 0, "learning_rate", "must be positive")
        self._require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self._require(self.schedule_steps >= 0, "schedule_steps", "must be >= 0 (0 = train_steps)")
        self._require(0 <= self.end_lr_fraction <= 1, "end_lr_fraction", "must be in [0, 1]")
        self._require(0 < self.decay_fraction <= 1, "decay_fraction", "must be in (0, 1]")
        self._require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1", "betas must be in [0, 1)")
        self._require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._require(self.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 disables)")


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Validated):
    """The loop: steps, batch, loss extras, evaluation, logging and checkpoints."""

    model_dir: str = ""  # '' = a default directory that `t5x-like train` prints
    train_steps: int = 300  # total optimizer steps of the run (resuming continues to this)
    batch_size: int = 16  # global batch, in packed rows
    grad_accum_steps: int = 1  # micro-batches per step; divides batch_size
    z_loss: float = 1e-4  # weight of log(Z)^2, keeps the softmax normalizer near 1
    # The loss takes the logits this many pieces of the vocabulary at a time, recomputing each
    # in the backward pass: the [B, L, V] float32 logits never exist whole (large vocabularies
    # at long lengths). Divides ModelConfig.vocab_size.
    loss_chunks: int = 1
    seed: int = 0  # parameter initialization
    log_every: int = 10  # steps between metric lines
    eval_every: int = 100  # steps between eval passes; 0 = only at the end
    # Batches per eval pass, from the start of the (deterministic) eval split; 0 = all of it.
    eval_batches: int = 0
    checkpoint_every: int = 100  # steps between checkpoints; the last step always saves
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    progress_bar: bool = True  # a tqdm bar when stderr is a terminal
    # Fine-tuning: a fresh run (no checkpoint in model_dir yet) starts from the parameters of
    # this MODEL_DIR (our run, or a converted HF / T5X model) or checkpoint directory
    # (.../checkpoints/N), with fresh optimizer state, data iterator and step 0; the model must
    # match. Once model_dir has a checkpoint, resuming reads that and ignores init_from.
    init_from: str = ""
    init_step: int = -1  # the step of init_from to start from; -1 = its latest

    def _validate(self):
        self._require(self.train_steps > 0, "train_steps", "must be positive")
        self._require(self.batch_size > 0, "batch_size", "must be positive")
        self._require(self.grad_accum_steps > 0 and self.batch_size % self.grad_accum_steps == 0,
                      "grad_accum_steps", f"must be positive and divide batch_size="
                                          f"{self.batch_size}")
        self._require(self.z_loss >= 0, "z_loss", "must be >= 0")
        self._require(self.loss_chunks > 0, "loss_chunks", "must be positive")
        for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
            self._require(getattr(self, name) > 0, name, "must be positive")
        self._require(self.eval_every >= 0, "eval_every", "must be >= 0")
        self._require(self.eval_batches >= 0, "eval_batches", "must be >= 0 (0 = the whole split)")
        self._require(self.init_step >= -1, "init_step", "must be a step >= 0, or -1 (latest)")
        self._require(self.init_step == -1 or bool(self.init_from), "init_step",
                      "picks a step of TrainConfig.init_from, which is empty: set it, or -1")


@dataclasses.dataclass(frozen=True)
class RunConfig(_Validated):
    """One training run: every part above, checked together."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    infer: InferConfig = dataclasses.field(default_factory=InferConfig)

    def _validate(self):
        lengths, name = self.data.task_feature_lengths, self.objective.name
        want = OBJECTIVE_FEATURES[name]
        if set(lengths) != want:
            raise ConfigError(f"DataConfig.task_feature_lengths = {lengths!r}: objective {name!r} "
                              f"needs the keys {sorted(want)}")
        if "auto" in lengths.values():
            raise ConfigError(f"DataConfig.task_feature_lengths = {lengths!r}: 'auto' is resolved "
                              "when gin files load (t5x_like.gin_loader); in Python, give the "
                              "length (objectives.auto_targets_length computes it)")
        if self.objective.pieces_per_row > 1 and name == "causal_lm":
            raise ConfigError(f"ObjectiveConfig.pieces_per_row = {self.objective.pieces_per_row}: "
                              "causal_lm pieces are cut only where the row forces it; set 1")
        self._validate_packing()
        self._validate_supervised()
        if self.data.cooldown_mixture_or_task_name and not self.objective.metadata_field:
            raise ConfigError(
                f"DataConfig.cooldown_mixture_or_task_name = "
                f"{self.data.cooldown_mixture_or_task_name!r} is MeCo's cooldown source, but "
                f"ObjectiveConfig.metadata_field is empty (no metadata stage, so no cooldown): "
                f"set the field or clear the cooldown source")
        if self.model.vocab_size % self.train.loss_chunks:
            raise ConfigError(f"TrainConfig.loss_chunks = {self.train.loss_chunks} must divide "
                              f"ModelConfig.vocab_size = {self.model.vocab_size}")
        warmup, steps = self.optimizer.warmup_steps, self.schedule_steps
        if self.optimizer.schedule != "rsqrt" and warmup >= steps:
            raise ConfigError(f"OptimizerConfig.warmup_steps = {warmup}: must be below the "
                              f"schedule's {steps} steps (OptimizerConfig.schedule_steps, or "
                              f"TrainConfig.train_steps when that is 0)")

    def _validate_packing(self) -> None:
        """Refuse the data options an objective cannot honour, before anything is read."""
        data, objective = self.data, self.objective
        plain_causal = objective.name == "causal_lm" and not objective.metadata_field
        if data.packer == "concat" and not plain_causal:
            raise ConfigError(
                f"DataConfig.packer = 'concat' cuts rows at fixed positions, which only plain "
                f"causal_lm rows allow (objective {objective.name!r}"
                f"{', with metadata' if objective.metadata_field else ''}): use 'best_fit'")
        if data.packer == "first_fit" and self.model.architecture == "encoder_decoder" and (
                objective.name != "causal_lm"):
            raise ConfigError("DataConfig.packer = 'first_fit': an encoder-decoder's rows have "
                              "two budgets (inputs, targets), packed by 2-D best fit only: use "
                              "'best_fit'")
        if not data.streaming:
            return
        if objective.name != "causal_lm":
            raise ConfigError(f"DataConfig.streaming = True packs causal_lm rows on the fly; "
                              f"objective {objective.name!r} plans its pieces over the prepared "
                              "split: set streaming=False (and run `t5x-like prepare`)")
        tasks, _ = data.tasks_of()
        if len(tasks) != 1:
            raise ConfigError(f"DataConfig.streaming = True reads one task; "
                              f"{data.mixture_or_task_name!r} mixes {[t.name for t in tasks]}: "
                              "set streaming=False to prepare them")
        if tasks[0].score_field:
            raise ConfigError(f"DataConfig.streaming = True: task {tasks[0].name!r} samples by "
                              f"{tasks[0].score_field!r}, which needs every score up front: set "
                              "streaming=False")

    def _validate_supervised(self) -> None:
        """The supervised objective reads supervised tasks only, and no other objective does:
        a text task has no inputs to condition on, and a supervised split's tokens are pairs."""
        data, name = self.data, self.objective.name
        if name != SUPERVISED and not (data.targets_field or any(t.supervised for t in data.tasks)
                                       or data.mixture_or_task_name == "stdlib_signatures"):
            return  # no supervised task is defined, so none can be read
        for key in ("mixture_or_task_name", "cooldown_mixture_or_task_name"):
            if not getattr(data, key):
                continue
            tasks, _ = data.tasks_of(getattr(data, key))
            wrong = [t.name for t in tasks if t.supervised != (name == SUPERVISED)]
            if wrong and name == SUPERVISED:
                raise ConfigError(
                    f"ObjectiveConfig.name = 'supervised' reads (inputs, targets) records, but "
                    f"DataConfig.{key} = {getattr(data, key)!r} has text tasks {wrong}: set their "
                    "TaskConfig.inputs_field and targets_field, or choose a text objective")
            if wrong:
                raise ConfigError(
                    f"DataConfig.{key} = {getattr(data, key)!r} has supervised tasks {wrong} "
                    f"(TaskConfig.inputs_field/targets_field), which only ObjectiveConfig.name "
                    f"= 'supervised' reads (objective {name!r}): set it, or clear the fields")
        lengths = data.task_feature_lengths
        if name == SUPERVISED and min(lengths.values()) < 2:
            raise ConfigError(f"DataConfig.task_feature_lengths = {lengths!r}: a supervised "
                              "example needs at least one token and EOS in each budget")
        if name == SUPERVISED and (self.objective.pieces_per_row > 1 or self.objective.denoisers):
            raise ConfigError("ObjectiveConfig.pieces_per_row and denoisers shape denoising "
                              "pieces; a supervised example is one piece, its record: leave "
                              "them at 1 and ()")

    @property
    def schedule_steps(self) -> int:
        """Steps the learning-rate schedule spans."""
        return self.optimizer.schedule_steps or self.train.train_steps
