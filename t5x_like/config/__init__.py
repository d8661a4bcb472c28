"""Typed, frozen, validated run configuration.

Every knob of a run is a field of one of the dataclasses below, with its type, its default and a
line of documentation. Gin binds them (see `gin_loader`), but nothing here knows about gin: tests
and library users build them directly. Each dataclass validates itself on construction, so a wrong
value fails before anything compiles, naming the field and the reason.

The defaults are the tiny CPU run on the embedded standard-library corpus.
"""

from t5x_like.config.base import ConfigError
from t5x_like.config.data import (METRIC_NAMES, MODE_TOKENS, OBJECTIVE_FEATURES, SUPERVISED, Continuation,
                                  DataConfig, MetadataKind, MissingMetadata, ObjectiveConfig,
                                  Packer, Paradigm, SentinelPolicy, TaskConfig, builtin_tasks,
                                  register_objective)
from t5x_like.config.infer import InferConfig
from t5x_like.config.model import (ATTENTION_IMPLS, CHECKPOINT_NAMES, JAX_REMAT_POLICIES,
                                   PROJECTION_NAMES, ROPE_SCALINGS, ModelConfig, flops_per_token,
                                   num_params)
from t5x_like.config.run import (DEFAULT_LOGICAL_AXIS_RULES, DistributedConfig, MeshConfig,
                                 OptimizerConfig, RunConfig, TrainConfig)

__all__ = [
    "ATTENTION_IMPLS", "CHECKPOINT_NAMES", "ConfigError", "Continuation", "DataConfig",
    "DEFAULT_LOGICAL_AXIS_RULES", "DistributedConfig", "InferConfig", "JAX_REMAT_POLICIES", "MeshConfig",
    "METRIC_NAMES", "MetadataKind", "MissingMetadata", "MODE_TOKENS", "ModelConfig", "OBJECTIVE_FEATURES",
    "ObjectiveConfig", "OptimizerConfig", "Packer", "Paradigm", "PROJECTION_NAMES",
    "ROPE_SCALINGS", "RunConfig", "SentinelPolicy", "SUPERVISED", "TaskConfig", "TrainConfig",
    "builtin_tasks", "flops_per_token", "num_params", "register_objective",
]
