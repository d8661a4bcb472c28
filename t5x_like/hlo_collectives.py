"""Collective traffic of one step of a compiled XLA program, read from its HLO text.

XLA reports FLOPs and buffer sizes but no per-collective byte counts, so this reads the
optimized, SPMD-partitioned module (`compiled.as_text()`: one chip's program) and adds up every
all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute, synchronous or
`-start` (async). It is an estimate, and these are its approximations:

- A collective's size is its result's logical bytes (the shape times the dtype size; TPU tile
  padding in layouts such as `{1,0:T(8,128)(2,1)}` is ignored). Traffic per chip follows the
  ring algorithms over the op's group of n chips: all-gather and all-to-all move (n-1)/n of
  their result, reduce-scatter (n-1) times its result (its input is n results), all-reduce
  2(n-1)/n of it (a reduce-scatter plus an all-gather), collective-permute its whole result.
- An op inside a while loop (the scan over layers, gradient accumulation) counts once per
  iteration. The trip count is the loop's `known_trip_count` when the compiler prints one,
  else the constant N of its condition `i < N` (jax's loops count from 0 by 1); a loop whose
  count cannot be read counts once and is named in `CollectiveCounts.unknown_loops`.
- Both branches of a conditional count (the step skips a non-finite update with a `cond`),
  so a collective in a branch is counted as if that branch always ran.
- TPU's async collective fusions copy one collective into several fused computations (its
  start, the compute it overlaps, its done); copies share a `channel_id` and count once.
- Across TPU slices the program holds no collective: a DCN all-reduce is a pair of megascale
  host transfers (`send`/`recv` with `_xla_megascale_reduce_operation`). Each send counts as
  a `dcn-all-reduce` of its payload, its traffic 2(S-1)/S of it over S slices.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterator

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute",
         "dcn-all-reduce")
_OPCODES = {k: k for k in KINDS} | {f"{k}-start": k for k in KINDS} | {
    "ragged-all-to-all": "all-to-all"}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                "c128": 16, "s4": 0.5, "u4": 0.5, "s2": 0.25, "u2": 0.25}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALL = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)"
                   r"=%?([\w.\-]+)")
_CALL_LIST = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    shape: str  # the result shape text, a tuple "(...)" or one array
    opcode: str
    text: str  # the whole line


@dataclasses.dataclass
class Computation:
    name: str
    instructions: list[Instruction] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of the program and what it costs per step."""

    kind: str
    shape: str  # result shape, layouts stripped
    group: int  # chips per replica group
    runs: int  # executions per step
    traffic_bytes: float  # per chip per step, all runs
    op_name: str  # the jax operation it came from ('' when the compiler dropped it)


@dataclasses.dataclass
class CollectiveCounts:
    """Per kind: executions per step, result bytes and ring-model traffic bytes per chip."""

    ops: dict[str, int]
    result_bytes: dict[str, float]
    traffic_bytes: dict[str, float]
    unknown_loops: list[str]  # while loops counted once because no trip count was found
    loop_trips: dict[str, int]  # while loop -> iterations per run (1 when unknown)
    largest: list[Collective]  # the costliest collectives, by traffic


def _split_top(text: str) -> list[str]:
    """Split a tuple's inside at its top-level commas."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _result_shape(rest: str) -> tuple[str, str]:
    """(shape, remainder) of the text after '=': a parenthesized tuple or one array."""
    if not rest.startswith("("):
        shape, _, remainder = rest.partition(" ")
        return shape, remainder
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rest[:i + 1], rest[i + 1:].lstrip()
    raise ValueError(f"unbalanced tuple shape in HLO: {rest[:200]!r}")


def array_bytes(shape: str) -> float:
    """Logical bytes of every array in a shape text, e.g. 'bf16[8,128]{1,0:T(8,128)(2,1)}'."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(re.sub(r"/\*.*?\*/", "", shape)):
        if dtype.startswith(("f8", "f4")):
            size = 1 if dtype.startswith("f8") else 0.5
        elif dtype in _DTYPE_BYTES:
            size = _DTYPE_BYTES[dtype]
        else:  # token, opaque: no data
            continue
        extents = [int(d.lstrip("<=")) for d in dims.split(",") if d.strip()]
        total += size * math.prod(extents)
    return total


def tuple_elements(shape: str) -> list[str]:
    """The top-level elements of a tuple shape (a one-array shape is its own element)."""
    shape = re.sub(r"/\*.*?\*/", "", shape).strip()
    if not shape.startswith("("):
        return [shape]
    return _split_top(shape[1:-1])


def parse_module(text: str) -> tuple[dict[str, Computation], str]:
    """({name: computation}, name of the entry computation) of an HLO module's text."""
    computations: dict[str, Computation] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = Computation(header.group(2))
            computations[current.name] = current
            entry = current.name if header.group(1) else entry
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTR.match(line) if current is not None else None
        if match:
            shape, remainder = _result_shape(match.group(2))
            opcode = re.match(r"([\w\-]+)", remainder)
            current.instructions.append(Instruction(match.group(1), shape,
                                                    opcode.group(1) if opcode else "", line))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text; pass compiled.as_text()")
    return computations, entry


def _callees(instr: Instruction) -> Iterator[tuple[str, str]]:
    """(attribute, computation) pairs an instruction calls."""
    for attr, name in _CALL.findall(instr.text):
        yield attr, name
    for names in _CALL_LIST.findall(instr.text):
        for name in names.split(","):
            if name.strip():
                yield "branch", name.strip().lstrip("%")


def trip_count(instr: Instruction, computations: dict[str, Computation]) -> int | None:
    """Iterations of a while loop: its known_trip_count, else N of its condition `i < N`."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.text)
    if known:
        return int(known.group(1))
    cond = re.search(r"\bcondition=%?([\w.\-]+)", instr.text)
    comp = computations.get(cond.group(1)) if cond else None
    if comp is None:
        return None
    constants = {}
    for i in comp.instructions:
        value = re.search(r"\bconstant\((-?\d+)\)", i.text)
        if i.opcode == "constant" and value:
            constants[i.name] = int(value.group(1))
    for i in comp.instructions:
        if i.opcode != "compare" or not i.text.lstrip().startswith("ROOT"):
            continue
        operands = re.findall(r"%([\w.\-]+)", i.text.split("compare(", 1)[1].split(")")[0])
        direction = re.search(r"direction=(\w+)", i.text)
        if len(operands) == 2 and direction:
            if direction.group(1) == "LT" and operands[1] in constants:
                return constants[operands[1]]
            if direction.group(1) == "GT" and operands[0] in constants:
                return constants[operands[0]]
    return None


def multiplicities(computations: dict[str, Computation], entry: str
                   ) -> tuple[dict[str, int], dict[str, int | None]]:
    """How many times each computation runs per execution of the entry, and each while loop's
    trip count (None where it could not be read: such a loop counts once)."""
    order, seen, trips_of = [], set(), {}

    def visit(name: str) -> None:  # depth-first post-order; HLO call graphs are acyclic
        seen.add(name)
        for instr in computations[name].instructions:
            for _, callee in _callees(instr):
                if callee in computations and callee not in seen:
                    visit(callee)
        order.append(name)

    visit(entry)
    counts = {name: 0 for name in order}
    counts[entry] = 1
    for name in reversed(order):  # callers before callees
        for instr in computations[name].instructions:
            if instr.opcode.endswith("-done") or instr.opcode == "async-update":
                continue  # the start already called the wrapped computation
            factor = 1
            if instr.opcode == "while":
                trips_of[instr.name] = trip_count(instr, computations)
                factor = trips_of[instr.name] or 1
            for _, callee in _callees(instr):
                if callee in counts:
                    counts[callee] += counts[name] * factor
    return counts, trips_of


def group_size(instr: Instruction, num_devices: int) -> int:
    """Chips in each of the op's replica groups (every chip when the groups are empty)."""
    text = instr.text
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", text)
    if mesh:
        axes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        size = 1
        for name, sub in re.findall(r"'([^']+)'(?::\((?:\d+)\)(\d+))?", mesh.group(2)):
            size *= int(sub) if sub else axes.get(name, 1)
        return size
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", text)
    if iota:
        return int(iota.group(2))
    groups = re.search(r"replica_groups=\{\{([^}]*)\}", text)
    if groups:
        return len([g for g in groups.group(1).split(",") if g.strip()])
    return num_devices


def _kind(instr: Instruction) -> str | None:
    if instr.opcode == "send" and "_xla_megascale_reduce_operation" in instr.text:
        return "dcn-all-reduce"
    return _OPCODES.get(instr.opcode)


def _collective_bytes(instr: Instruction, kind: str) -> float:
    """Result bytes; a -start op's tuple holds its operands first, its results second, and a
    send's its payload first (then a context and a token)."""
    if kind == "dcn-all-reduce":
        return array_bytes(tuple_elements(instr.shape)[0])
    if instr.opcode.endswith("-start") and kind in ("all-gather", "collective-permute"):
        elements = tuple_elements(instr.shape)
        if len(elements) >= 2:
            return array_bytes(elements[1])
    return array_bytes(instr.shape)


def _traffic(kind: str, result: float, n: int) -> float:
    if n <= 1:
        return 0.0
    return {"all-gather": result * (n - 1) / n, "all-to-all": result * (n - 1) / n,
            "reduce-scatter": result * (n - 1), "all-reduce": 2 * result * (n - 1) / n,
            "collective-permute": result, "dcn-all-reduce": 2 * result * (n - 1) / n}[kind]


def _describe(instr: Instruction, kind: str, group: int, runs: int,
              traffic: float) -> Collective:
    op_name = re.search(r'op_name="([^"]*)"', instr.text)
    shape = re.sub(r"/\*.*?\*/|\{[^{}]*\}", "", instr.shape).replace(" ", "")
    return Collective(kind, shape, group, runs, runs * traffic,
                      op_name.group(1) if op_name else "")


def count_collectives(hlo_text: str, num_devices: int, num_slices: int = 1,
                      top: int = 10) -> CollectiveCounts:
    """Collectives per step of one chip's compiled program, by kind (see the module doc), and
    the `top` costliest ones; `num_devices` chips in all, in `num_slices` slices."""
    computations, entry = parse_module(hlo_text)
    runs, trips = multiplicities(computations, entry)
    found: dict[object, tuple[float, Collective]] = {}
    for name, comp in computations.items():
        for instr in comp.instructions:
            kind = _kind(instr)
            if kind is None or not runs.get(name):
                continue
            result = _collective_bytes(instr, kind)
            group = num_slices if kind == "dcn-all-reduce" else group_size(instr, num_devices)
            op = _describe(instr, kind, group, runs[name], _traffic(kind, result, group))
            channel = re.search(r"\bchannel_id=(\d+)", instr.text)
            key = ("channel", channel.group(1)) if channel else (name, instr.name)
            if key not in found or op.traffic_bytes > found[key][1].traffic_bytes:
                found[key] = (runs[name] * result, op)
    ops = {k: 0 for k in KINDS}
    result_bytes = {k: 0.0 for k in KINDS}
    traffic_bytes = {k: 0.0 for k in KINDS}
    for result, op in found.values():
        ops[op.kind] += op.runs
        result_bytes[op.kind] += result
        traffic_bytes[op.kind] += op.traffic_bytes
    largest = sorted((op for _, op in found.values()), key=lambda o: -o.traffic_bytes)
    return CollectiveCounts(ops, result_bytes, traffic_bytes,
                            [w for w, n in trips.items() if n is None],
                            {w: n or 1 for w, n in trips.items()}, largest[:top])
