"""Typed, frozen, validated run configuration.

Every knob of a run is a field of one of the dataclasses below, with its type, its default and a
line of documentation. Gin binds them (see `gin_loader`), but nothing here knows about gin: tests
and library users build them directly. Each dataclass validates itself on construction, so a wrong
value fails before anything compiles, naming the field and the reason.

The defaults are the tiny CPU run on the embedded standard-library corpus.
"""

from __future__ import annotations

import dataclasses
import types
import typing
import hashlib
from typing import Any, Literal

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


# Kernels behind `models.ops` (ModelConfig.attention_impl).
ATTENTION_IMPLS = ("auto", "xla", "cpu", "splash", "gpu_flash")
# RoPE scalings `models.rope` computes (ModelConfig.rope_scaling), named as Hugging Face's rope_type.
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn")
# Named activations a remat policy can save (`save_names:...`): every projection's output and
# the attention kernel's. 'dots' saves the projections.
PROJECTION_NAMES = ("query_proj", "key_proj", "value_proj", "out_proj", "mlp_gate", "mlp_up",
                    "mlp_out")
CHECKPOINT_NAMES = PROJECTION_NAMES + ("context",)
# jax.checkpoint_policies that take no arguments, by name.
JAX_REMAT_POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable",
                      "checkpoint_dots", "dots_with_no_batch_dims_saveable",
                      "checkpoint_dots_with_no_batch_dims")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the reason."""


def _matches(value: Any, annotation: Any) -> bool:
    """Whether `value` fits the (simple) type annotation; int is accepted where float is asked."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is dict:
        key_t, val_t = typing.get_args(annotation)
        return isinstance(value, dict) and all(
            _matches(k, key_t) and _matches(v, val_t) for k, v in value.items())
    return isinstance(value, origin or annotation)


def _expected(annotation: Any, value: Any) -> str:
    """Why ``value`` does not fit ``annotation``: the choices of a Literal, else the type."""
    if typing.get_origin(annotation) is Literal:
        return f"choose one of {typing.get_args(annotation)}"
    return f"expected {annotation}, got {type(value).__name__}"


def _freeze(value: Any) -> Any:
    """Gin and JSON hand over lists; fields are tuples so the configs stay hashable and frozen."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class _Validated:
    """Base: checks every field against its annotation, then runs the class's `_validate`."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = _freeze(getattr(self, field.name))
            object.__setattr__(self, field.name, value)
            if not _matches(value, hints[field.name]):
                self._fail(field.name, value, _expected(hints[field.name], value))
        self._validate()

    def _validate(self) -> None:
        pass

    def _fail(self, name: str, value: Any, reason: str) -> typing.NoReturn:
        raise ConfigError(f"{type(self).__name__}.{name} = {value!r}: {reason}")

    def _require(self, ok: bool, name: str, reason: str) -> None:
        if not ok:
            self._fail(name, getattr(self, name), reason)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (JSON-able), for checkpoints and logs."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Validated):
    """Shapes and numerics of a Transformer: Llama-style decoder-only, or T5-style encoder-decoder.

    The defaults are a Llama-style decoder (RoPE, SwiGLU, grouped-query attention). An
    encoder-decoder is T5 v1.1 / UL2: relative position buckets instead of RoPE, a gated MLP,
    no 1/sqrt(head_dim) attention scaling (folded into the initialization), untied logits — or,
    with tie_embeddings, T5 v1.0's tied logits scaled by d_model**-0.5.
    """

    architecture: str = "decoder"  # decoder | encoder_decoder
    vocab_size: int = 2048  # embedding rows; >= the tokenizer's vocabulary
    d_model: int = 256  # residual stream width
    num_layers: int = 4  # decoder layers (encoder_decoder: the decoder stack)
    num_encoder_layers: int = 0  # encoder_decoder only; 0 = num_layers
    num_heads: int = 4  # query heads
    num_kv_heads: int = 2  # key/value heads (grouped-query attention); divides num_heads
    head_dim: int = 64
    mlp_dim: int = 768  # gated-MLP hidden width
    # silu: gated SiLU (SwiGLU; Llama, UL2) | gelu_tanh: gated GELU (T5 v1.1) | relu: ungated
    # ReLU MLP (T5 v1.0)
    mlp_activation: str = "silu"
    rope_theta: float = 10_000.0  # RoPE base (Llama 3: 500000); decoder architecture only
    # RoPE scaling, as Hugging Face's rope_type computes it (models/rope.py): none | linear
    # (frequencies / factor) | llama3 (Llama 3.1+) | yarn
    rope_scaling: str = "none"
    rope_factor: float = 1.0  # linear, llama3, yarn: the context extension factor
    rope_low_freq_factor: float = 1.0  # llama3
    rope_high_freq_factor: float = 4.0  # llama3
    rope_original_max_positions: int = 8192  # llama3, yarn: the pretraining context length
    rope_beta_fast: float = 32.0  # yarn: rotations where the ramp to interpolation starts
    rope_beta_slow: float = 1.0  # yarn: rotations where it ends
    rope_attention_factor: float = 0.0  # yarn: cos/sin scale; 0 = 0.1 ln(factor) + 1
    rope_truncate: bool = True  # yarn: round the ramp's bounds to whole frequency indices
    relative_attention_num_buckets: int = 32  # encoder_decoder position buckets
    relative_attention_max_distance: int = 128  # distances beyond this share the last bucket
    norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = False  # share the input embedding with the output projection
    scan_layers: bool = True  # stack layers and lax.scan over them (fast compiles at depth)
    # What the backward pass keeps per layer: none (everything: fastest, most memory) | full
    # (only each layer's input; recompute the layer) | dots (the projections' outputs:
    # q, k, v, attention out, MLP gate/up/out) | save_names:<a,b,...> (those of
    # CHECKPOINT_NAMES) | a jax.checkpoint_policies name (e.g. dots_with_no_batch_dims_saveable)
    remat_policy: str = "none"
    # Attention kernel (models/ops.py): auto (splash on TPU, gpu_flash on GPU, cpu on CPU) |
    # xla (the einsum reference) | cpu | splash | gpu_flash
    attention_impl: str = "auto"
    attention_block_size: int = 512  # splash: q and kv block length (capped at the sequence)
    attention_max_segments: int = 64  # gpu_flash: packed segments per row that cuDNN sees
    dtype: str = "float32"  # activation/compute dtype, e.g. bfloat16 on TPU/GPU
    param_dtype: str = "float32"  # storage dtype of the parameters and optimizer moments

    def _validate(self):
        self._require(self.architecture in ("decoder", "encoder_decoder"), "architecture",
                      "must be decoder or encoder_decoder")
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "mlp_dim", "relative_attention_num_buckets",
                     "relative_attention_max_distance"):
            self._require(getattr(self, name) > 0, name, "must be positive")
        self._require(self.num_encoder_layers >= 0, "num_encoder_layers", "must be >= 0")
        if self.architecture == "encoder_decoder":
            # T5's log buckets start at an exact range of buckets // 4 (bidirectional encoder)
            # and buckets // 2 (causal decoder) and stretch it to max_distance: both must hold.
            self._require(self.relative_attention_num_buckets >= 4,
                          "relative_attention_num_buckets",
                          "must be >= 4 (the encoder's buckets // 4 exact distances)")
            self._require(self.relative_attention_max_distance
                          > self.relative_attention_num_buckets // 2,
                          "relative_attention_max_distance",
                          f"must exceed relative_attention_num_buckets // 2 = "
                          f"{self.relative_attention_num_buckets // 2}")
        self._require(self.mlp_activation in ("silu", "gelu_tanh", "relu"), "mlp_activation",
                      "must be silu, gelu_tanh or relu")
        self._require(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                      f"must divide num_heads={self.num_heads}")
        self._require(self.head_dim % 2 == 0, "head_dim", "must be even for RoPE")
        self._require(self.rope_theta > 0, "rope_theta", "must be positive")
        self._validate_rope_scaling()
        self._validate_remat()
        self._require(self.attention_impl in ATTENTION_IMPLS, "attention_impl",
                      f"choose one of {ATTENTION_IMPLS}")
        self._require(self.attention_block_size >= 128 and self.attention_block_size % 128 == 0,
                      "attention_block_size", "must be a positive multiple of 128")
        self._require(self.attention_max_segments > 0, "attention_max_segments",
                      "must be positive")
        for name in ("dtype", "param_dtype"):
            self._require(getattr(self, name) in ("float32", "bfloat16", "float16"), name,
                          "must be float32, bfloat16 or float16")

    def _validate_rope_scaling(self):
        self._require(self.rope_scaling in ROPE_SCALINGS, "rope_scaling",
                      f"choose one of {ROPE_SCALINGS}")
        if self.rope_scaling == "none":
            return
        self._require(self.rope_factor > 0, "rope_factor", "must be positive")
        self._require(self.rope_original_max_positions > 0, "rope_original_max_positions",
                      "must be positive")
        if self.rope_scaling == "llama3":
            self._require(self.rope_high_freq_factor > self.rope_low_freq_factor > 0,
                          "rope_high_freq_factor",
                          f"must exceed rope_low_freq_factor={self.rope_low_freq_factor} > 0")
        if self.rope_scaling == "yarn":
            self._require(self.rope_beta_fast > self.rope_beta_slow > 0, "rope_beta_fast",
                          f"must exceed rope_beta_slow={self.rope_beta_slow} > 0")
            self._require(self.rope_attention_factor >= 0, "rope_attention_factor",
                          "must be >= 0 (0: derived from rope_factor)")

    def _validate_remat(self):
        policy = self.remat_policy
        if policy.startswith("save_names:"):
            names = [n for n in policy[len("save_names:"):].split(",") if n]
            unknown = sorted(set(names) - set(CHECKPOINT_NAMES))
            self._require(bool(names) and not unknown, "remat_policy",
                          f"unknown names {unknown or '(none given)'}; choose from "
                          f"{CHECKPOINT_NAMES}")
            return
        known = ("none", "full", "dots") + JAX_REMAT_POLICIES
        self._require(policy in known, "remat_policy",
                      f"choose one of {known}, or save_names:<a,b,...>")


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

    name: str = "adamw"  # adamw | adafactor
    learning_rate: float = 3e-3  # peak learning rate
    schedule: str = "cosine"  # cosine | linear | rsqrt | wsd (warmup-stable-decay) | constant
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
        self._require(self.name in ("adamw", "adafactor"), "name", "must be adamw or adafactor")
        self._require(self.schedule in ("cosine", "linear", "rsqrt", "wsd", "constant"),
                      "schedule", "must be cosine, linear, rsqrt, wsd or constant")
        self._require(self.learning_rate > 0, "learning_rate", "must be positive")
        self._require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        self._require(self.schedule_steps >= 0, "schedule_steps", "must be >= 0 (0 = train_steps)")
        self._require(0 <= self.end_lr_fraction <= 1, "end_lr_fraction", "must be in [0, 1]")
        self._require(0 < self.decay_fraction <= 1, "decay_fraction", "must be in (0, 1]")
        self._require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1", "betas must be in [0, 1)")
        self._require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._require(self.grad_clip_norm >= 0, "grad_clip_norm", "must be >= 0 (0 disables)")


# The objectives `t5x_like.data` builds rows for, and the TASK_FEATURE_LENGTHS keys each needs.
# An objective module adds itself with `t5x_like.data.rows.register` (docs/data.md).
OBJECTIVE_FEATURES: dict[str, frozenset[str]] = {
    "causal_lm": frozenset({"targets"}),
    **{name: frozenset({"inputs", "targets"})
       for name in ("prefix_lm", "span_corruption", "ul2", "ul2r")},
}
Paradigm = Literal["R", "X", "S"]
SentinelPolicy = Literal["cap", "error"]  # cap: merge spans beyond the sentinels | error: refuse
MetadataKind = Literal["domain", "url", "value"]
MissingMetadata = Literal["placeholder", "skip"]
Continuation = Literal["repeat", "first_only"]
Packer = Literal["best_fit", "first_fit", "concat"]


def register_objective(name: str, feature_keys: frozenset[str]) -> None:
    """Let ObjectiveConfig.name take ``name``, whose rows need ``feature_keys`` lengths."""
    OBJECTIVE_FEATURES[name] = frozenset(feature_keys)


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(_Validated):
    """What the model learns to predict from each packed piece of text (t5x_like.objectives)."""

    # causal_lm: next-token prediction. prefix_lm: the S-denoiser alone. span_corruption: T5
    # (15% noise, mean span 3). ul2: the paper's seven denoisers, sampled uniformly. ul2r: U-PaLM's
    # continued-training mixture. Every one but causal_lm needs TASK_FEATURE_LENGTHS inputs+targets.
    name: str = "causal_lm"
    # Overrides the preset's table: (paradigm R|X|S, mean span length, noise rate, mixing rate,
    # mode token or ''). For S, the "noise rate" is the mean target fraction d: the split is
    # uniform so that the target fraction is ~U[0, 2d].
    denoisers: tuple[tuple[Paradigm, float, float, float, str], ...] = ()
    use_mode_tokens: bool = True  # prepend each denoiser's mode token to its inputs
    sentinel_policy: SentinelPolicy = "cap"
    random_roll: bool = False  # roll each noise mask by a random offset (sentinels still pair up)
    # Cut denoising pieces for 1/k of each budget, so that k or more share a row and rows mix
    # piece shapes: less padding, shorter examples (docs/data.md, "Denoising rows").
    pieces_per_row: int = 1
    # MeCo (metadata conditioning, then cooldown): '' = off; else the record field whose value
    # prefixes each document ("URL: en.wikipedia.org\n\n") until the cooldown step. Composes with
    # every objective: causal_lm rows are [BOS] prefix doc [EOS]; denoising inputs are
    # [mode] prefix <noised text> [EOS] (never noised, no loss, counted in the inputs budget).
    metadata_field: str = ""
    metadata_kind: MetadataKind = "domain"  # the host of a URL | the URL as given | any scalar
    # The prefix text; '{value}' is replaced, literal braces are doubled.
    metadata_template: str = "URL: {value}\n\n"
    missing_metadata: MissingMetadata = "placeholder"  # the placeholder below | no prefix
    metadata_placeholder: str = "unknown"
    # A long document's continuation pieces: 'repeat' the prefix on each, or 'first_only'.
    metadata_continuation: Continuation = "repeat"
    # From step floor(cooldown_fraction * schedule steps) on, no example carries metadata.
    cooldown_fraction: float = 0.9

    def _validate(self):
        self._require(self.name in OBJECTIVE_FEATURES, "name",
                      f"choose one of {tuple(OBJECTIVE_FEATURES)}")
        try:
            ok = "{value}" in self.metadata_template and bool(
                self.metadata_template.format(value="x"))
        except (KeyError, IndexError, ValueError):
            ok = False
        self._require(ok, "metadata_template", "must contain {value} and no other field "
                                               "(double literal braces: '{{', '}}')")
        self._require(self.missing_metadata == "skip" or bool(self.metadata_placeholder.strip()),
                      "metadata_placeholder", "missing_metadata='placeholder' needs a non-blank "
                                              "placeholder (the paper's 'unknown'), or use 'skip'")
        self._require(0.0 <= self.cooldown_fraction <= 1.0, "cooldown_fraction",
                      "must be in [0, 1]")
        self._require(self.pieces_per_row >= 1, "pieces_per_row", "must be >= 1")
        for i, (kind, mu, rate, weight, _) in enumerate(self.denoisers):
            self._require(weight > 0 and 0 < rate < 1, "denoisers",
                          f"row {i}: need 0 < noise rate < 1 and a positive mixing rate")
            self._require(kind == "S" or mu >= 1, "denoisers", f"row {i}: mean span must be >= 1")


@dataclasses.dataclass(frozen=True)
class TaskConfig(_Validated):
    """One named source of documents (seqio's Task): where its splits live and what to read."""

    name: str = "stdlib"
    # 'stdlib' (the embedded corpus), a path/glob of .jsonl[.gz|.zst], .txt, .parquet or
    # .array_record files (comma-separated for several), or 'tfds:NAME[/CONFIG][:VERSION]:SPLIT'.
    train_source: str = "stdlib"
    eval_source: str = ""  # same syntax; '' = none ('stdlib' has its own validation split)
    text_field: str = "text"
    metadata_fields: tuple[str, ...] = ()  # record fields kept next to the tokens
    # QuRating-style selection: documents are drawn with softmax(score / temperature).
    score_field: str = ""  # '' = every document once per epoch
    score_temperature: float = 1.0

    def _validate(self):
        self._require(bool(self.name) and "/" not in self.name, "name",
                      "a non-empty name without '/'")
        self._require(bool(self.train_source), "train_source", "name a source")
        self._require(self.score_temperature > 0, "score_temperature", "must be positive")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Validated):
    """Where the tokens come from and how they become packed rows."""

    # A task or mixture named below, 'stdlib' (the embedded corpus), or a source path/glob
    # (JSONL, text, Parquet, ArrayRecord or 'tfds:...') read as an unnamed task.
    mixture_or_task_name: str = "stdlib"
    tasks: tuple[TaskConfig, ...] = ()  # named tasks, e.g. [@code/TaskConfig(), ...] in gin
    mixtures: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # name -> {task: rate}
    eval_files: str = ""  # eval source of an unnamed task given as a path
    text_field: str = "text"  # text field of an unnamed task given as a path
    # Row budgets: {'targets': L} for causal_lm, {'inputs': Li, 'targets': Lt} for the denoisers;
    # 'targets': 'auto' fits Lt to the mixture's targets per input (resolved by gin_loader).
    task_feature_lengths: dict[str, int | Literal["auto"]] = dataclasses.field(
        default_factory=lambda: {"targets": 256})
    tokenizer_path: str = ""  # sentencepiece .model; '' = trained on the stdlib corpus
    tokenizer_extra_ids: int = 0  # ids appended after the sentencepiece model (T5: 100 sentinels)
    data_dir: str = ""  # '' = the repository's data/ (or ~/.cache/t5x_like/data)
    seed: int = 0  # row order, per-epoch reshuffles and score sampling
    packer: Packer = "best_fit"  # best_fit (OBFD) | first_fit | concat (concatenate-then-split)
    pack_window: int = 0  # pieces packed together; 0 = the whole dataset (offline plan)
    # Read and pack the train split on the fly (windows of pack_window pieces), no prepare step.
    streaming: bool = False
    prepare_workers: int = 0  # tokenizer processes for `prepare`; 0 = one per core
    # MeCo's cooldown source (a task, mixture or source path, like mixture_or_task_name): the
    # reference cools down on a disjoint subset of its corpus. '' = the same source as stage 1.
    cooldown_mixture_or_task_name: str = ""

    def _validate(self):
        lengths = self.task_feature_lengths
        self._require(set(lengths) in ({"targets"}, {"inputs", "targets"}), "task_feature_lengths",
                      "give {'targets': L}, or {'inputs': Li, 'targets': Lt} for denoising")
        self._require(all(v == "auto" or v > 0 for v in lengths.values()),
                      "task_feature_lengths", "lengths must be positive")
        self._require(lengths.get("targets") != "auto" or isinstance(lengths.get("inputs"), int),
                      "task_feature_lengths", "'targets': 'auto' needs an inputs length")
        self._require(bool(self.mixture_or_task_name), "mixture_or_task_name",
                      "name a task or mixture, 'stdlib', or give a source path/glob")
        self._require(self.pack_window >= 0, "pack_window", "must be >= 0")
        self._require(not self.streaming or self.pack_window > 0, "pack_window",
                      "streaming packs windows: set a window of pieces, e.g. 10000")
        self._require(self.tokenizer_extra_ids >= 0, "tokenizer_extra_ids", "must be >= 0")
        names = [t.name for t in self.tasks]
        self._require(len(set(names)) == len(names), "tasks", f"task names repeat: {names}")
        for mixture, rates in self.mixtures.items():
            unknown = sorted(set(rates) - set(names) - {"stdlib"})
            self._require(not unknown, "mixtures",
                          f"mixture {mixture!r} names unknown tasks {unknown}; defined: {names}")
            self._require(bool(rates) and all(r > 0 for r in rates.values()), "mixtures",
                          f"mixture {mixture!r} needs positive rates")
            self._require(mixture not in names, "mixtures",
                          f"{mixture!r} is both a task and a mixture")

    @property
    def seq_len(self) -> int:
        """Packed row length of the decoder (decoder-only denoising: inputs + targets)."""
        return sum(self.task_feature_lengths.values())

    def tasks_of(self, name: str = "") -> tuple[tuple[TaskConfig, ...], tuple[float, ...]]:
        """The tasks of ``name`` (default: mixture_or_task_name) and their mixing rates.

        A source path, glob or 'tfds:...' is an unnamed task named after a hash of its spec,
        so that its prepared data has a directory of its own.
        """
        name = name or self.mixture_or_task_name
        by_name = {"stdlib": TaskConfig()} | {t.name: t for t in self.tasks}
        if name in self.mixtures:
            rates = self.mixtures[name]
            return tuple(by_name[t] for t in rates), tuple(rates.values())
        if name in by_name:
            return (by_name[name],), (1.0,)
        if any(c in name for c in "/.*") or name.startswith("tfds:"):
            digest = hashlib.sha256(f"{name}|{self.eval_files}|{self.text_field}".encode())
            return (TaskConfig(name=f"source-{digest.hexdigest()[:12]}", train_source=name,
                               eval_source=self.eval_files, text_field=self.text_field),), (1.0,)
        key = ("mixture_or_task_name" if name == self.mixture_or_task_name
               else "cooldown_mixture_or_task_name")
        raise ConfigError(f"DataConfig.{key} = {name!r} is neither a task ({sorted(by_name)}), "
                          f"a mixture ({sorted(self.mixtures)}) nor a source path/glob or "
                          "'tfds:NAME:SPLIT'")


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
    eval_batches: int = 4  # batches per eval pass (the eval split is deterministic)
    checkpoint_every: int = 100  # steps between checkpoints; the last step always saves
    keep_checkpoints: int = 3
    async_checkpointing: bool = True
    progress_bar: bool = True  # a tqdm bar when stderr is a terminal

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
        self._require(self.eval_batches > 0, "eval_batches", "must be positive")


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

    @property
    def schedule_steps(self) -> int:
        """Steps the learning-rate schedule spans."""
        return self.optimizer.schedule_steps or self.train.train_steps


def _layer_matmul_params(cfg: ModelConfig, cross_attention: bool = False) -> int:
    """Matmul parameters of one layer: attention (twice with cross-attention) and the MLP."""
    attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = (2 if cfg.mlp_activation == "relu" else 3) * cfg.d_model * cfg.mlp_dim  # relu: ungated
    return attn * (2 if cross_attention else 1) + mlp


def num_params(cfg: ModelConfig) -> int:
    """Parameter count implied by a ModelConfig (checked against the real model in tests)."""
    embed = cfg.vocab_size * cfg.d_model
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.d_model
    if cfg.architecture == "decoder":
        per_layer = _layer_matmul_params(cfg) + 2 * cfg.d_model  # two RMSNorm scales
        return embed + cfg.num_layers * per_layer + cfg.d_model + head
    encoder_layers = cfg.num_encoder_layers or cfg.num_layers
    encoder = encoder_layers * (_layer_matmul_params(cfg) + 2 * cfg.d_model)
    decoder = cfg.num_layers * (_layer_matmul_params(cfg, cross_attention=True)
                                + 3 * cfg.d_model)  # self-attention, cross-attention, MLP norms
    relative_bias = 2 * cfg.relative_attention_num_buckets * cfg.num_heads  # a table per stack
    return embed + encoder + decoder + relative_bias + 2 * cfg.d_model + head


def flops_per_token(cfg: ModelConfig, seq_len: int, inputs_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B convention.

    6 x the matmul parameters (every layer's projections and the output projection, tied or not;
    the input embedding is a gather) plus the attention score and value matmuls,
    12 x layers x heads x head_dim x seq_len (not halved for causality, as in PaLM).

    encoder_decoder: `seq_len` is a row's encoder + decoder length (DataConfig.seq_len) and
    `inputs_len` the encoder's part (None: half). The FLOPs of a row are spread over all its
    tokens: each encoder token pays the encoder layers and the decoder's cross-attention key and
    value projections, each decoder token its layers and the output projection; attention
    scores cost 12 x heads x head_dim x (keys attended) per query token and layer.
    """
    if cfg.architecture == "decoder":
        matmul_params = cfg.num_layers * _layer_matmul_params(cfg) + cfg.vocab_size * cfg.d_model
        attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
        return 6.0 * matmul_params + attention
    inputs_len = seq_len // 2 if inputs_len is None else inputs_len
    targets_len = seq_len - inputs_len
    encoder_layers = cfg.num_encoder_layers or cfg.num_layers
    cross_kv = 2 * cfg.d_model * cfg.num_kv_heads * cfg.head_dim
    cross_qo = 2 * cfg.d_model * cfg.num_heads * cfg.head_dim
    per_input = encoder_layers * _layer_matmul_params(cfg) + cfg.num_layers * cross_kv
    per_target = (cfg.num_layers * (_layer_matmul_params(cfg) + cross_qo)
                  + cfg.vocab_size * cfg.d_model)
    score = 12 * cfg.num_heads * cfg.head_dim
    attention = score * (encoder_layers * inputs_len * inputs_len
                         + cfg.num_layers * targets_len * (targets_len + inputs_len))
    row = 6.0 * (per_input * inputs_len + per_target * targets_len) + attention
    return row / seq_len
