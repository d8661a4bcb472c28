"""The model's configuration: sizes, kernels, remat, and the parameter and FLOP counts."""

from __future__ import annotations

import dataclasses

from t5x_like.config.base import _Validated

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
