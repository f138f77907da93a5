"""The activation arena: liveness, in-place reuse and offsets, as a device allocator lays it out.

    plan = plan_memory(graph, types, qdq_fused=True)   # types: infer_shapes(graph)
    check_budget(plan, target)                         # ResourceLimitError (exit 6) if over

Liveness is homec.analysis.memory's: step i runs `graph.nodes[i]`; a tensor lives from its
producer's step (graph inputs: 0) through its last consumer's (a use inside an If/Loop body
counts at the owner's step; graph outputs: the last step). Tensors are the activations
(graph inputs and node outputs, not initializers nor Constant outputs), each taking
`device_bytes` (a float tensor fused away between Q/DQ takes 0 with `qdq_fused`).

In-place reuse (`in_place`): a node's output shares the buffer of one of its inputs, its
"root", when the input's buffer is dead after this node (no tensor sharing it is read
later) and both take the same number of bytes:
  - views (Reshape, Flatten, Squeeze, Unsqueeze, Identity) never write, so their input may
    be a graph input or output;
  - elementwise ops (unary; binary with that input of the output's exact shape) overwrite
    the buffer, so it must hold no graph input (the caller owns it) nor graph output.
An alias extends its root buffer's lifetime to its own end. The tensors sharing a buffer
follow one another (each dies at the step the next is born), so no other input of the node
can read the buffer under another name.

With `qdq_fused`, a fused DQ -> op -> Q kernel reads the integer input and writes the
integer output at the op's step, so those live across it (see `_fuse_lifetimes`).

Offsets are assigned greedily by size, as TFLite's arena planner does: buffers sorted by size
(largest first; ties by start step, then name), each at the lowest `alignment`-aligned offset
that overlaps no placed buffer whose lifetime overlaps its own; the arena is the largest
offset + size. Each buffer lands at 0 or at the aligned end of an earlier one, so the arena
is at most `no_reuse_bytes` (every tensor in its own aligned slot), and at least
`lower_bound_bytes` (the largest sum of buffers live at one step: perfect packing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from homec.analysis.cost import count_params, weight_tensors
from homec.analysis.memory import activation_lifetimes, format_bytes
from homec.errors import ResourceLimitError, UsageError
from homec.ir import Graph, Node, TensorType, Value

from .descriptor import Target
from .device_view import VIEW_OPS, device_bytes, fused_away, fused_into, node_label

__all__ = ["Buffer", "MemoryPlan", "check_budget", "format_bytes", "plan_memory"]

UNARY_OPS = ("Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Neg",
             "Abs", "Exp", "Log", "Sqrt", "Erf", "QuantizeLinear", "DequantizeLinear")
BINARY_OPS = ("Add", "Sub", "Mul", "Div", "Max", "Min")
TOP = 5


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One tensor in the arena. An alias (`alias_of` its root's name) shares the root's
    offset; `start`/`end` are the tensor's own lifetime. `bytes` None: size unknown (planned
    as 0)."""

    name: str
    bytes: int | None
    offset: int
    start: int
    end: int
    alias_of: str | None


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    arena_bytes: int
    lower_bound_bytes: int
    no_reuse_bytes: int
    weight_bytes: int
    alignment: int
    peak_step: int | None  # None for a graph without nodes
    peak_node: str | None
    largest_live: tuple[tuple[str, int], ...]  # at the peak, largest first
    in_place: int  # tensors sharing an input's buffer
    buffers: tuple[Buffer, ...]
    unknown: tuple[str, ...]  # activations of unknown size (planned as 0)
    largest_weights: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "no_reuse_bytes": self.no_reuse_bytes,
            "weight_bytes": self.weight_bytes,
            "alignment": self.alignment,
            "peak_step": self.peak_step,
            "peak_node": self.peak_node,
            "largest_live": [{"name": n, "bytes": b} for n, b in self.largest_live],
            "in_place": self.in_place,
            "buffers": [dataclasses.asdict(b) for b in self.buffers],
            "unknown": list(self.unknown),
        }


@dataclasses.dataclass
class _Tensor:
    value: Value
    bytes: int | None
    start: int
    end: int
    root: _Tensor | None = None  # set on aliases
    offset: int = 0
    group_end: int = -1  # on roots: the last step any tensor of the buffer is live
    owned_by_caller: bool = False  # on roots: the buffer holds a graph input or output

    @property
    def size(self) -> int:
        return self.bytes or 0

    def buffer(self) -> _Tensor:
        return self.root or self


def plan_memory(graph: Graph, types: Mapping[str, TensorType], *, qdq_fused: bool = False,
                alignment: int = 16, in_place: bool = True) -> MemoryPlan:
    """The arena plan of `graph` in its `graph.nodes` order (see module doc)."""
    if alignment < 1:
        raise ValueError("alignment must be >= 1")
    nodes = graph.nodes
    tensors: list[_Tensor] = []
    by_value: dict[int, _Tensor] = {}
    memo: dict = {}  # device_view's cache for this graph
    for v, start, end in activation_lifetimes(graph):
        t = _Tensor(v, device_bytes(v, types, qdq_fused=qdq_fused, memo=memo), start, end)
        t.group_end = end
        t.owned_by_caller = v.is_graph_input or v.is_graph_output
        tensors.append(t)
        by_value[id(v)] = t
    if qdq_fused:
        _fuse_lifetimes(tensors, by_value, memo)
    if in_place:
        for i, node in enumerate(nodes):
            _alias(node, i, by_value, types)

    roots = [t for t in tensors if t.root is None]
    _assign_offsets(roots, alignment)
    arena = max((t.offset + t.size for t in roots), default=0)
    lower, peak_step, live = _peak(roots, tensors, len(nodes))
    weights = _weights(graph)
    return MemoryPlan(
        arena_bytes=arena,
        lower_bound_bytes=lower,
        no_reuse_bytes=sum(_align(t.size, alignment) for t in tensors),
        weight_bytes=count_params(graph).bytes,
        alignment=alignment,
        peak_step=peak_step,
        peak_node=None if peak_step is None else node_label(nodes[peak_step]),
        largest_live=live,
        in_place=sum(t.root is not None for t in tensors),
        buffers=tuple(Buffer(t.value.name, t.bytes, t.buffer().offset, t.start, t.end,
                             None if t.root is None else t.root.value.name) for t in tensors),
        unknown=tuple(t.value.name for t in tensors if t.bytes is None),
        largest_weights=weights,
    )


def _fuse_lifetimes(tensors: list[_Tensor], by_value: Mapping[int, _Tensor], memo: dict) -> None:
    """A fused DQ -> op -> Q kernel reads the integer tensor and writes the integer result
    at the op's step: the integer input lives on while the fused-away float view of it is
    read, and the integer output is live from the step its float source is produced. With a
    fused activation (DQ -> Conv -> Relu -> Q) the kernel spans both steps."""
    for t in tensors:
        if t.bytes != 0 or not fused_away(t.value, qdq_fused=True, memo=memo):
            continue
        p = t.value.producer
        dequantized = [p] if p is not None and p.op_type == "DequantizeLinear" and p.domain == "" else []
        users = t.value.users
        if p is not None and len(users) == 1 and fused_into(users[0], memo) is p:
            # the layer's own dequantized inputs stay live through its fused activation
            dequantized = [i.producer for i in p.inputs if i is not None and i.producer is not None
                           and i.producer.op_type == "DequantizeLinear" and i.producer.domain == ""]
            users = [u for o in users[0].outputs if o is not None for u in o.users]
        for dq in dequantized:
            src = by_value.get(id(dq.inputs[0]))
            if src is not None:
                src.end = max(src.end, t.end)
                src.group_end = src.end
        for user in users:
            if user.op_type == "QuantizeLinear" and user.domain == "":
                dst = by_value.get(id(user.outputs[0]))
                if dst is not None:
                    dst.start = min(dst.start, t.start)


def _alias(node: Node, step: int, by_value: Mapping[int, _Tensor],
           types: Mapping[str, TensorType]) -> None:
    """Let `node`'s output share an input's buffer where that is legal (module doc)."""
    view = node.op_type in VIEW_OPS
    if node.domain != "" or not (view or node.op_type in UNARY_OPS or node.op_type in BINARY_OPS):
        return
    outs = [o for o in node.outputs if o is not None]
    out = by_value.get(id(outs[0])) if len(outs) == 1 else None
    if out is None or not out.bytes or out.start != step:
        return
    candidates = node.inputs[:1] if view or node.op_type in UNARY_OPS else node.inputs[:2]
    for v in candidates:
        src = None if v is None else by_value.get(id(v))
        if src is None or src.bytes != out.bytes:
            continue
        buf = src.buffer()
        if buf.group_end != step:
            continue  # some tensor in this buffer is still read later
        if not view:
            if buf.owned_by_caller:
                continue
            if node.op_type in BINARY_OPS and not _same_shape(v, outs[0], types):
                continue  # a broadcast input is read at other positions than written
        out.root = buf
        buf.group_end = max(buf.group_end, out.end)
        buf.owned_by_caller = buf.owned_by_caller or out.owned_by_caller
        return


def _same_shape(a: Value, b: Value, types: Mapping[str, TensorType]) -> bool:
    ta = types.get(a.name) or a.tensor_type()
    tb = types.get(b.name) or b.tensor_type()
    return (ta is not None and tb is not None and ta.static_shape() is not None
            and ta.static_shape() == tb.static_shape())


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _assign_offsets(roots: list[_Tensor], alignment: int) -> None:
    """Greedy by size (module doc)."""
    placed: list[_Tensor] = []
    for t in sorted(roots, key=lambda t: (-t.size, t.start, t.value.name)):
        if t.size == 0:
            t.offset = 0
            continue
        busy = sorted((p.offset, p.offset + p.size) for p in placed
                      if p.start <= t.group_end and t.start <= p.group_end)
        offset = 0
        for lo, hi in busy:
            if offset + t.size <= lo:
                break
            offset = max(offset, _align(hi, alignment))
        t.offset = offset
        placed.append(t)


def _peak(roots: list[_Tensor], tensors: list[_Tensor], steps: int
          ) -> tuple[int, int | None, tuple[tuple[str, int], ...]]:
    """The largest sum of live buffers over the steps, its first step, and the largest
    buffers then, each named by the tensor it holds at that step."""
    if steps == 0:
        total = sum(t.size for t in roots)
        return total, None, _top((t.value.name, t.size) for t in roots)
    delta = [0] * (steps + 1)
    for t in roots:
        delta[t.start] += t.size
        delta[min(t.group_end, steps - 1) + 1] -= t.size
    peak, peak_step, running = -1, 0, 0
    for i in range(steps):
        running += delta[i]
        if running > peak:
            peak, peak_step = running, i
    holder: dict[int, _Tensor] = {}
    for t in tensors:  # in definition order: the latest tensor live at the peak wins
        if t.start <= peak_step <= t.end:
            holder[id(t.buffer())] = t
    live = [(holder.get(id(r), r).value.name, r.size) for r in roots
            if r.size and r.start <= peak_step <= r.group_end]
    return peak, peak_step, _top(live)


def _top(items) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(items, key=lambda x: (-x[1], x[0]))[:TOP])


def _weights(graph: Graph) -> tuple[tuple[str, int], ...]:
    """The largest weights (as count_params counts them), by stored bytes."""
    return _top((name, nbytes) for name, _, nbytes in weight_tensors(graph))


def _named(items: tuple[tuple[str, int], ...], limit: int = 3) -> str:
    return ", ".join(f"{name} ({format_bytes(size)})" for name, size in items[:limit])


def check_budget(plan: MemoryPlan, target: Target) -> None:
    """Raise ResourceLimitError (exit 6) when the arena exceeds the target's SRAM or the
    weights its flash (both named in one line).

    Activations of unknown size are planned as 0, so such an arena is a lower bound: over
    the budget it still fails ("at least ..."); within it, a target that needs static shapes
    raises UsageError (exit 2: give --input-shape) rather than pass unchecked, while a
    target that allocates at run time (static_shapes = false, the cpu) passes."""
    sram, flash = target.memory.sram, target.memory.flash
    problems = []
    if sram is not None and plan.arena_bytes > sram:
        needed = ("at least " if plan.unknown else "") + format_bytes(plan.arena_bytes)
        problems.append(f"SRAM: {needed} needed, {format_bytes(sram)} available; "
                        f"largest live tensors: {_named(plan.largest_live)}")
    if flash is not None and plan.weight_bytes > flash:
        problems.append(f"flash: {format_bytes(plan.weight_bytes)} of weights needed, "
                        f"{format_bytes(flash)} available; largest weights: "
                        f"{_named(plan.largest_weights)}")
    if problems:
        raise ResourceLimitError("; also ".join(problems))
    if sram is not None and plan.unknown and target.static_shapes:
        names = ", ".join(plan.unknown[:TOP]) + (", …" if len(plan.unknown) > TOP else "")
        raise UsageError(f"cannot check the SRAM budget: tensors of unknown size ({names}); "
                         "give --input-shape")
