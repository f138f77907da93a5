"""Peak activation memory of the graph's own schedule.

The schedule is `graph.nodes` (deterministic topological order); step i runs node i. A tensor
is live from the step of its producer (graph inputs: from step 0) through the step of its last
consumer (graph outputs: through the last step); a consumer inside an If/Loop body counts as
the top-level node owning that body. During a step both the node's inputs and outputs are
live, as a runtime without in-place reuse needs them. Weights are excluded: initializers and
Constant-node outputs are stored with the model, not allocated per inference.

This is what a simple arena allocator would need with perfect packing; it ignores op
workspace and fragmentation. When some live tensor has no static shape its size is counted
as 0 and the peak is reported as a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from homec.dtypes import itemsize_bits
from homec.ir import Graph, Node, TensorType, Value

__all__ = ["LiveTensor", "MemoryReport", "activation_lifetimes", "format_bytes", "human_bytes",
           "owner_steps", "peak_activation_memory", "tensor_bytes"]


@dataclasses.dataclass(frozen=True)
class LiveTensor:
    name: str
    bytes: int | None  # None: shape or dtype size unknown
    type: TensorType | None
    start: int  # first step it is live
    end: int  # last step it is live


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Peak of the summed sizes of the live activations over the schedule."""

    peak_bytes: int
    peak_step: int | None  # None for a graph without nodes
    peak_node: str | None  # name (or first output name) of the node at the peak
    live_at_peak: tuple[LiveTensor, ...]  # the largest live tensors at the peak, largest first
    unknown: tuple[str, ...]  # activations whose size is unknown (counted as 0)
    steps: int

    @property
    def is_lower_bound(self) -> bool:
        return bool(self.unknown)


def tensor_bytes(t: TensorType | None) -> int | None:
    """Bytes of a dense tensor of type `t`, or None when its shape or element size is unknown
    (sub-byte types are packed: ceil(elements * bits / 8))."""
    if t is None or t.sparse:
        return None
    shape = t.static_shape()
    bits = itemsize_bits(t.elem_type)
    if shape is None or bits == 0:
        return None
    return (math.prod(shape) * bits + 7) // 8


def activation_lifetimes(graph: Graph) -> list[tuple[Value, int, int]]:
    """(value, first step, last step) of every activation of `graph` in its `graph.nodes`
    order (see module doc): graph inputs from step 0, node outputs from their node's step,
    through the last consumer's step (graph outputs: the last step). Initializers and
    Constant outputs are weights, not activations."""
    nodes = graph.nodes
    last = max(len(nodes) - 1, 0)
    step_of = owner_steps(nodes)
    out: list[tuple[Value, int, int]] = []
    seen: set[int] = set()

    def add(v: Value, start: int) -> None:
        if id(v) in seen or v.is_initializer or not v.name:
            return
        seen.add(id(v))
        end = start
        for user in v.users:
            end = max(end, step_of.get(id(user), start))
        if v.is_graph_output:
            end = max(end, last)
        out.append((v, start, end))

    for v in graph.inputs:
        add(v, 0)
    for i, node in enumerate(nodes):
        if node.op_type == "Constant" and node.domain == "":
            continue
        for o in node.outputs:
            if o is not None:
                add(o, i)
    return out


def human_bytes(n: float | None, digits: int = 1) -> str:
    """`512 B`, `46.9 KiB`, `1.2 MiB` (binary units, `digits` decimals; None: "?")."""
    if n is None:
        return "?"
    sign, n = ("-" if n < 0 else ""), abs(n)
    for factor, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= factor:
            return f"{sign}{n / factor:.{digits}f} {unit}"
    return f"{sign}{n:.0f} B"


def format_bytes(n: int) -> str:
    """A size against a budget: `512 B`, `412 KiB`, `412.5 KiB`, `5.2 MiB`; one decimal,
    rounded up (so a size just over a budget never prints equal to it), dropped when whole."""
    if n < 1024:
        return f"{n} B"
    unit, scale = ("KiB", 1024) if n < 1024 * 1024 else ("MiB", 1024 * 1024)
    tenths = math.ceil(n * 10 / scale)
    return f"{tenths // 10} {unit}" if tenths % 10 == 0 else f"{tenths / 10:.1f} {unit}"


def peak_activation_memory(graph: Graph, types: Mapping[str, TensorType], *, top: int = 5) -> MemoryReport:
    """Peak live activation bytes of `graph` in its `graph.nodes` order (see module doc)."""
    nodes = graph.nodes
    tensors: list[LiveTensor] = []
    for v, start, end in activation_lifetimes(graph):
        t = types.get(v.name) or v.tensor_type()
        tensors.append(LiveTensor(v.name, tensor_bytes(t), t, start, end))

    unknown = tuple(t.name for t in tensors if t.bytes is None)
    if not nodes:
        total = sum(t.bytes or 0 for t in tensors)
        return MemoryReport(total, None, None, _largest(tensors, top), unknown, 0)

    # Sweep: +size at start, -size after end.
    delta = [0] * (len(nodes) + 1)
    for t in tensors:
        delta[t.start] += t.bytes or 0
        delta[t.end + 1] -= t.bytes or 0
    peak, peak_step, running = -1, 0, 0
    for i in range(len(nodes)):
        running += delta[i]
        if running > peak:
            peak, peak_step = running, i
    live = [t for t in tensors if t.start <= peak_step <= t.end]
    node = nodes[peak_step]
    label = node.name or next((o.name for o in node.outputs if o is not None), node.op_type)
    return MemoryReport(peak, peak_step, label, _largest(live, top), unknown, len(nodes))


def _largest(tensors: list[LiveTensor], top: int) -> tuple[LiveTensor, ...]:
    return tuple(sorted(tensors, key=lambda t: (-(t.bytes or 0), t.name))[:top])


def owner_steps(nodes: list[Node]) -> dict[int, int]:
    """id(node) -> schedule step, for top-level nodes and every node nested in their bodies."""
    out: dict[int, int] = {}
    for i, node in enumerate(nodes):
        out[id(node)] = i
        for sg in node.subgraphs():
            for inner in sg.all_nodes():
                out[id(inner)] = i
    return out
