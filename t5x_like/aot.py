"""Compile the configured train step for a named TPU topology, on any host (`t5x-like compile`).

libtpu describes a TPU slice without owning one (`jax.experimental.topologies`), so the real
TPU compiler can lay out, partition and schedule a run on this machine: does it fit in HBM,
how long does it compile, how many FLOPs and how many collective bytes does a step cost per
chip. Nothing is materialized: the state, the optimizer moments and the batch are
ShapeDtypeStructs carrying their shardings, and no data file is read.

Topology names are MaxText's: v5e-N and v6e-N count chips, v4-N and v5p-N count TensorCores
(two per chip: v5p-128 is 64 chips, 4x4x4).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import time
from typing import Any

import jax
import numpy as np

from t5x_like import hlo_collectives, optim, state as state_lib, trainer
from t5x_like.config import ConfigError, RunConfig, flops_per_token

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice as libtpu's topology API names it."""

    name: str  # MaxText's spelling, e.g. 'v5e-256'
    topology_name: str  # get_topology_desc's, e.g. 'v5e:16x16'
    chip_config_name: str  # v4 and v5p: 'megacore' (one device per chip, not per core)
    chips_per_host_bounds: tuple[int, int, int]
    wrap: tuple[bool, bool, bool]  # torus wraparound per dimension
    hbm_bytes: int  # per chip, the data sheet's
    usable_hbm_bytes: int  # per chip, what the compiler may use ("available HBM" when it OOMs)

    @property
    def chips(self) -> int:
        return math.prod(int(d) for d in self.topology_name.split(":")[1].split("x"))


# (HBM, usable HBM) per chip. The usable figures are what this libtpu's compiler reports as
# "available HBM" in an out-of-memory error (probed on a 4-chip slice of each generation).
_HBM = {"v5e": (16 * GIB, int(15.75 * GIB)), "v6e": (32 * GIB, int(31.25 * GIB)),
        "v5p": (96 * GIB, int(95.74 * GIB)), "v4": (32 * GIB, int(30.75 * GIB))}
_LITE_GRIDS = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
               256: "16x16"}
_CUBE_GRIDS = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
               256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}


def _topologies() -> dict[str, Topology]:
    table = {}
    for gen in ("v5e", "v6e"):  # one TensorCore per chip: the name counts chips
        for chips, grid in _LITE_GRIDS.items():
            # Only full 16-wide dimensions have wraparound links (MaxText's table).
            wrap = (grid == "16x16", grid.endswith("x16"), False)
            bounds = (1, 1, 1) if chips == 1 else (2, 2, 1)
            table[f"{gen}-{chips}"] = Topology(f"{gen}-{chips}", f"{gen}:{grid}", "default",
                                               bounds, wrap, *_HBM[gen])
    for gen in ("v4", "v5p"):  # two TensorCores per chip, fused into one device: megacore
        for chips, grid in _CUBE_GRIDS.items():
            wrap = (chips >= 64,) * 3  # a full 4x4x4 cube and up is a torus
            table[f"{gen}-{2 * chips}"] = Topology(f"{gen}-{2 * chips}", f"{gen}:{grid}",
                                                   "megacore", (2, 2, 1), wrap, *_HBM[gen])
    return table


TOPOLOGIES: dict[str, Topology] = _topologies()


class CompileOOMError(RuntimeError):
    """The train step does not fit in the topology's HBM; the message says what to change."""


def topology(name: str) -> Topology:
    """The named topology, or a ConfigError naming the known ones."""
    if name in TOPOLOGIES:
        return TOPOLOGIES[name]
    close = difflib.get_close_matches(name, TOPOLOGIES, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown TPU topology {name!r}.{hint} Known: {', '.join(TOPOLOGIES)}")


def topology_devices(name: str, num_slices: int = 1) -> list[jax.Device]:
    """The devices of `num_slices` slices of a named topology (no TPU needed, only libtpu)."""
    topo = topology(name)
    if num_slices < 1:
        raise ConfigError(f"--num_slices={num_slices}: must be >= 1")
    if importlib.util.find_spec("libtpu") is None:
        raise ConfigError("compiling for a TPU topology needs libtpu, the TPU compiler: "
                          'pip install -e ".[tpu]"')
    from jax.experimental import topologies
    # libtpu lets one process per machine load it (a lockfile guards the chips). A topology
    # compile never touches a chip, so it may run beside a training job or another compile.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    desc = topologies.get_topology_desc(
        topology_name=topo.topology_name, platform="tpu",
        chip_config_name=topo.chip_config_name, chips_per_host_bounds=topo.chips_per_host_bounds,
        num_slices=num_slices, wrap=topo.wrap)
    return list(desc.devices)


def example_batch(cfg: RunConfig) -> dict[str, np.ndarray]:
    """One all-zero row of every feature the configured objective and architecture feed the
    step (the trainer expands it to TrainConfig.batch_size rows, as shapes only)."""
    lengths = cfg.data.task_feature_lengths
    names = ["decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
             "decoder_positions", "decoder_loss_weights"]
    if cfg.model.architecture == "encoder_decoder":
        batch = {k: np.zeros((1, lengths["targets"]), np.int32) for k in names}
        for k in ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"):
            batch[k] = np.zeros((1, lengths["inputs"]), np.int32)
        return batch
    if cfg.objective.name != "causal_lm":  # a decoder-only denoiser: a prefix LM
        names.append("decoder_causal_attention")
    return {k: np.zeros((1, cfg.data.seq_len), np.int32) for k in names}


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-chip bytes from the compiler's buffer assignment."""

    argument: int
    output: int
    alias: int  # outputs that reuse (donated) argument buffers
    temp: int
    generated_code: int

    @property
    def total(self) -> int:
        return self.argument + self.output - self.alias + self.temp


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What one AOT compile of the train step says about a run on a topology."""

    topology: str
    num_slices: int
    chips: int
    device_kind: str
    mesh: dict[str, int]
    batch_size: int
    seq_len: int
    compile_seconds: float
    memory: Memory
    hbm_bytes: int
    usable_hbm_bytes: int
    flops_per_chip: float  # the compiler's cost model, per step
    model_flops_per_chip: float  # 6N + attention (config.flops_per_token), per step, no remat
    collective_ops: dict[str, int]
    collective_result_bytes: dict[str, float]
    collective_traffic_bytes: dict[str, float]  # per chip per step, ring model
    ideal_all_gather_bytes: float
    ideal_reduce_scatter_bytes: float
    largest_collectives: tuple[hlo_collectives.Collective, ...] = ()
    loop_trips: dict[str, int] = dataclasses.field(default_factory=dict)  # while -> iterations
    notes: tuple[str, ...] = ()

    @property
    def hbm_fraction(self) -> float:
        return self.memory.total / self.usable_hbm_bytes

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-able values (memory with its total and HBM fraction)."""
        out = dataclasses.asdict(self)
        out["memory"]["total"] = self.memory.total
        out["hbm_fraction"] = self.hbm_fraction
        out["notes"] = list(self.notes)
        out["largest_collectives"] = [dataclasses.asdict(c) for c in self.largest_collectives]
        return out


def fsdp_ideal_bytes(cfg: RunConfig, layout: state_lib.StateLayout, mesh) -> tuple[float, float]:
    """(all-gather, reduce-scatter) traffic per chip per step of ideal ZeRO-3 FSDP.

    Convention: every parameter sharded over the fsdp axis (of size n) is all-gathered twice
    per micro-batch, once for the forward pass and once for the backward (recomputed under
    remat, needed again for the input gradients without), in the compute dtype, and its
    gradient is reduce-scattered once per micro-batch in the parameter dtype; each moves
    (n-1)/n of the full array per chip. Unsharded parameters (norm scales) move nothing.
    """
    n = mesh.shape["fsdp"]
    if n == 1:
        return 0.0, 0.0
    compute = np.dtype(cfg.model.dtype).itemsize
    gathered, scattered = 0.0, 0.0
    for param, sharding in zip(jax.tree.leaves(layout.abstract_state["params"]),
                               jax.tree.leaves(layout.shardings["params"])):
        axes = [a for entry in sharding.spec if entry is not None
                for a in ((entry,) if isinstance(entry, str) else entry)]
        if "fsdp" in axes:
            gathered += param.size * compute
            scattered += param.size * param.dtype.itemsize
    share = (n - 1) / n * cfg.train.grad_accum_steps
    return 2 * share * gathered, share * scattered


def _oom_error(error: Exception, cfg: RunConfig, topo: Topology, mesh) -> CompileOOMError:
    """The compiler's own account of the shortfall, then what to change."""
    lines = [ln.rstrip() for ln in str(error).splitlines() if ln.strip()][:30]
    available = re.search(r"available HBM \(([^)]+)\)|of ([\d.]+[KMGT]?) hbm", str(error))
    hbm = (available.group(1) or available.group(2)) if available else \
        f"{topo.usable_hbm_bytes / GIB:.2f}G"
    m, t = cfg.model, cfg.train
    hints = [f"ModelConfig.remat_policy = 'full' (now {m.remat_policy!r})"
             if m.remat_policy != "full" else None,
             f"a smaller TrainConfig.batch_size (now {t.batch_size}) or more "
             f"TrainConfig.grad_accum_steps (now {t.grad_accum_steps})",
             f"more fsdp: MeshConfig.ici_fsdp / dcn_fsdp (now {dict(mesh.shape)})"
             if mesh.shape["fsdp"] < mesh.size else None,
             f"a shorter TASK_FEATURE_LENGTHS (now {cfg.data.task_feature_lengths})",
             "a bigger topology"]
    return CompileOOMError(
        f"the train step does not fit in {topo.name}'s HBM ({hbm} usable per chip) at batch "
        f"{t.batch_size} x {cfg.data.seq_len} tokens. The compiler says:\n  "
        + "\n  ".join(lines) + "\nTo fit, try one of:\n  - "
        + "\n  - ".join(h for h in hints if h))


def compile_for_topology(cfg: RunConfig, topology_name: str, num_slices: int = 1,
                         hlo_path: str | None = None) -> CompileReport:
    """AOT-compile cfg's train step for `num_slices` slices of a named TPU topology.

    `hlo_path`: also write the compiled (optimized, per-chip) HLO text there, the text the
    collective counts are read from. Raises CompileOOMError when the step does not fit in HBM,
    ConfigError for an unknown topology, a missing libtpu or a batch the mesh does not divide.
    """
    topo = topology(topology_name)
    devices = topology_devices(topology_name, num_slices)
    partitioner = trainer.default_partitioner(cfg, devices)
    mesh = partitioner.mesh
    trainer.check_batch_size(cfg, partitioner)
    tx, schedule = optim.make_optimizer(cfg.optimizer, cfg.schedule_steps)
    layout = state_lib.state_layout(trainer.default_model_factory(cfg), tx, partitioner)
    start = time.perf_counter()
    lowered = trainer.lower_train_step(cfg, layout, partitioner, tx, schedule, example_batch(cfg))
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" in str(e) or "exceeds available HBM" in str(e):
            raise _oom_error(e, cfg, topo, mesh) from None
        raise
    seconds = time.perf_counter() - start
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(compiled.as_text())
    return _report(cfg, topo, num_slices, mesh, layout, compiled, seconds)


def _report(cfg: RunConfig, topo: Topology, num_slices: int, mesh, layout, compiled,
            seconds: float) -> CompileReport:
    mem = compiled.memory_analysis()
    memory = Memory(mem.argument_size_in_bytes, mem.output_size_in_bytes,
                    mem.alias_size_in_bytes, mem.temp_size_in_bytes,
                    mem.generated_code_size_in_bytes)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    counts = hlo_collectives.count_collectives(compiled.as_text(), mesh.size, num_slices)
    ideal_gather, ideal_scatter = fsdp_ideal_bytes(cfg, layout, mesh)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    model_flops = flops_per_token(cfg.model, cfg.data.seq_len,
                                  cfg.data.task_feature_lengths.get("inputs")) * tokens
    notes = []
    if counts.unknown_loops:
        notes.append(f"while loops counted once (no trip count found): {counts.unknown_loops}")
    if any(n > 1 for n in counts.loop_trips.values()):
        # Checked: the same model with 2 and 4 scanned layers gets the same cost-model FLOPs.
        notes.append("the cost model counts each while-loop body once (the scan over layers "
                     "as one layer): the model FLOPs are the step's")
    weights = counts.traffic_bytes["all-reduce"]
    if ideal_scatter and weights > 0.5 * ideal_scatter:
        notes.append("all-reduce traffic is comparable to the gradients' reduce-scatter: "
                     "some gradients are all-reduced whole rather than reduce-scattered")
    return CompileReport(
        topology=topo.name, num_slices=num_slices, chips=mesh.size,
        device_kind=mesh.devices.flat[0].device_kind, mesh=dict(mesh.shape),
        batch_size=cfg.train.batch_size, seq_len=cfg.data.seq_len, compile_seconds=seconds,
        memory=memory, hbm_bytes=topo.hbm_bytes, usable_hbm_bytes=topo.usable_hbm_bytes,
        flops_per_chip=float(cost.get("flops", 0.0)), model_flops_per_chip=model_flops / mesh.size,
        collective_ops=counts.ops, collective_result_bytes=counts.result_bytes,
        collective_traffic_bytes=counts.traffic_bytes, ideal_all_gather_bytes=ideal_gather,
        ideal_reduce_scatter_bytes=ideal_scatter,
        largest_collectives=tuple(counts.largest), loop_trips=counts.loop_trips,
        notes=tuple(notes))


def _bytes(x: float) -> str:
    """Right-aligned binary units, e.g. '   1.50 GiB'."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale:
            return f"{x / scale:7.2f} {unit}"
    return f"{x:7.0f} B  "


def _flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:7.2f} {unit}"
    return f"{x:7.0f} FLOP"


def _ratio(measured: float, ideal: float) -> str:
    return f"{measured / ideal:6.2f}x ideal" if ideal else ""


def format_report(report: CompileReport) -> str:
    """A readable table of a CompileReport."""
    r, m = report, report.memory
    mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
    lines = [f"train step on {r.topology} x {r.num_slices} slice(s): {r.chips} chips "
             f"({r.device_kind}), mesh {mesh}, batch {r.batch_size} x {r.seq_len} tokens",
             f"trace + compile time               {r.compile_seconds:7.1f} s",
             "memory per chip",
             f"  arguments                        {_bytes(m.argument)}",
             f"  outputs                          {_bytes(m.output)}",
             f"  aliased (donated state)          {_bytes(m.alias)}",
             f"  temporaries                      {_bytes(m.temp)}",
             f"  total = arg + out - alias + temp {_bytes(m.total)}  "
             f"{100 * r.hbm_fraction:5.1f}% of {r.usable_hbm_bytes / GIB:.2f} GiB usable HBM "
             f"({r.hbm_bytes / GIB:.0f} GiB HBM)",
             "FLOPs per chip per step",
             f"  compiler cost model              {_flops(r.flops_per_chip)}",
             f"  model (6N + attention, no remat) {_flops(r.model_flops_per_chip)}",
             "collectives per chip per step      ops   result bytes   traffic (ring model)"]
    for kind in hlo_collectives.KINDS:
        ratio = {"all-gather": _ratio(r.collective_traffic_bytes[kind], r.ideal_all_gather_bytes),
                 "reduce-scatter": _ratio(r.collective_traffic_bytes[kind],
                                          r.ideal_reduce_scatter_bytes)}.get(kind, "")
        lines.append(f"  {kind:<28} {r.collective_ops[kind]:8d} "
                     f"{_bytes(r.collective_result_bytes[kind])} "
                     f"{_bytes(r.collective_traffic_bytes[kind])}  {ratio}".rstrip())
    lines += [f"ideal ZeRO-3 FSDP (fsdp={r.mesh.get('fsdp', 1)}): all-gather "
              f"{_bytes(r.ideal_all_gather_bytes).strip()} (fwd + bwd, compute dtype), "
              f"reduce-scatter {_bytes(r.ideal_reduce_scatter_bytes).strip()} (param dtype)"]
    lines.append("largest collectives (traffic per chip per step, runs x group, result, op)")
    for c in r.largest_collectives[:8]:
        op = re.sub(r"^jit\([^)]*\)/", "", c.op_name) or "?"
        shape = c.shape if len(c.shape) <= 40 else c.shape[:37] + "..."
        lines.append(f"  {c.kind:<18} {_bytes(c.traffic_bytes)} {c.runs:4d} x {c.group:<4d} "
                     f"{shape:<40} {op if len(op) <= 60 else op[:22] + '...' + op[-35:]}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)
