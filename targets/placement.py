"""Placement: which top-level nodes run on the target's accelerator, which on its fallback.

    placement = place(graph, target, types)    # types: homec.analysis.shapes.infer_shapes
    require_placeable(placement, target)       # UnsupportedError when there is no fallback

Compute nodes are decided first, in `graph.nodes` order (Constant nodes hold weights and are
not placed). A node runs on the accelerator when the target has a rule for its operator and
the node passes the rule's checks, in this order (the first failure is the node's reason):

    subgraphs (If/Loop)         "control flow"
    no rule                     "op not supported"
    dtype                       compute_dtype (device_view) in rule.dtypes; without a dtype
                                list, a target with quantization.required runs int8/uint8 only
                                ("float32 compute (the npu runs int8/uint8)"). A float op
                                between DQ and Q also passes when its stored (float) dtype is
                                allowed: it runs unfused, as a float kernel.
    attributes                  OpRule.attribute_violation ("kernel_shape=[9, 9] (max 7)"; a
                                Conv without kernel_shape is checked on its weight's dims)
    groups (Conv/ConvTranspose) regular: group == 1; depthwise: group == C_in > 1; grouped:
                                otherwise ("grouped conv (group=4)")
    rank                        every input and output rank <= rule.rank_max ("rank 5 tensor
                                (max 4)")
    unknown dtype or shape where a check needs it: "unknown dtype" / "unknown shape"

A target with `all_ops` (the cpu target) runs everything on its device. Quantization glue
(QuantizeLinear / DequantizeLinear) is decided afterwards so that it sits with the node it
serves, not between devices: a DequantizeLinear (of a weight or of an activation) goes with
its consumers, a QuantizeLinear with the producer of its input (its consumers when that is a
graph input); when the neighbours disagree the accelerator wins. Glue joins the accelerator
only when the glue itself passes the checks above; otherwise, or when its neighbours are on
the fallback, it runs on the fallback. Without a fallback every node the accelerator cannot
run has no device (null) and the build fails (`require_placeable`).

Partitions are maximal runs of consecutive placed nodes on one device; transitions count
activation edges between two nodes placed on different devices, each (tensor, consuming
device) once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from homec.analysis.cost import is_constant
from homec.analysis.memory import owner_steps
from homec.errors import UnsupportedError
from homec.ir import Graph, Node, TensorType

from .descriptor import OpRule, Target
from .device_view import QDQ_OPS, compute_dtype, node_label, value_dtype

__all__ = ["NodePlacement", "Partition", "Placement", "describe_unsupported",
           "place", "require_placeable"]

_INTEGER_COMPUTE = ("int8", "uint8")
_CONVS = ("Conv", "ConvTranspose")


@dataclasses.dataclass(frozen=True)
class NodePlacement:
    """One node's device (None: nowhere, the target has no fallback) and why it is not on the
    accelerator (None when it is)."""

    node: str
    op: str
    device: str | None
    dtype: str | None
    reason: str | None


@dataclasses.dataclass(frozen=True)
class Partition:
    index: int
    device: str | None
    nodes: int
    first: str
    last: str


@dataclasses.dataclass(frozen=True)
class Placement:
    device: str
    fallback: str | None
    nodes: tuple[NodePlacement, ...]
    partitions: tuple[Partition, ...]
    transitions: int

    @property
    def unsupported(self) -> tuple[NodePlacement, ...]:
        """Nodes not on the accelerator (on the fallback, or nowhere without one)."""
        return tuple(n for n in self.nodes if n.reason is not None)

    @property
    def counts(self) -> dict[str, int]:
        """Placed nodes per device; the accelerator and the fallback always appear."""
        out = {self.device: 0}
        if self.fallback is not None:
            out[self.fallback] = 0
        for n in self.nodes:
            if n.device is not None:
                out[n.device] = out.get(n.device, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "fallback": self.fallback,
            "counts": self.counts,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "partitions": [dataclasses.asdict(p) for p in self.partitions],
            "transitions": self.transitions,
            "unsupported": [{"node": n.node, "op": n.op, "reason": n.reason} for n in self.unsupported],
        }


def place(graph: Graph, target: Target, types: Mapping[str, TensorType]) -> Placement:
    """Decide the device of every top-level node of `graph` (see module doc)."""
    nodes = [n for n in graph.nodes if not _is_constant_node(n)]
    owner_step = owner_steps(graph.nodes)
    top = graph.nodes
    accel, fallback = target.device, target.fallback
    facts = _Facts(types)
    device: dict[int, str | None] = {}
    reason: dict[int, str | None] = {}

    glue = []
    for node in nodes:
        if target.all_ops:
            device[id(node)], reason[id(node)] = accel, None
        elif _is_glue(node):
            glue.append(node)
        else:
            why = _why_not(node, target, facts)
            device[id(node)], reason[id(node)] = (accel, None) if why is None else (fallback, why)

    def users_of(node: Node) -> list[Node]:
        """Top-level consumers of the node's outputs (a use inside a body is its owner's)."""
        seen: dict[int, Node] = {}
        for out in node.outputs:
            if out is None:
                continue
            for u in out.users:
                step = owner_step.get(id(u))
                if step is not None and not _is_constant_node(top[step]):
                    seen.setdefault(id(top[step]), top[step])
        return list(seen.values())

    def producer_side(node: Node) -> list[Node]:
        value = node.inputs[0] if node.inputs else None
        producer = None if value is None else value.producer
        step = None if producer is None else owner_step.get(id(producer))
        return [] if step is None or _is_constant_node(top[step]) else [top[step]]

    def glue_side(node: Node, visiting: set[int]) -> tuple[bool, str | None] | None:
        """Whether the glue's neighbours put it on the accelerator, and a neighbour's label;
        None when it has no neighbour to follow. A DequantizeLinear looks at its consumers
        first, a QuantizeLinear at its producer; the other side counts only when that one
        is empty (a Q of a graph input, a DQ feeding only a graph output)."""
        sides = (producer_side(node), users_of(node))
        if node.op_type == "DequantizeLinear":
            sides = sides[::-1]
        for side in sides:
            found: tuple[bool, str | None] | None = None
            for n in side:
                if id(n) in visiting:
                    continue
                if _is_glue(n) and id(n) not in device:
                    inner = glue_side(n, visiting | {id(n)})
                    on_accel = bool(inner and inner[0]) and _why_not(n, target, facts) is None
                else:
                    on_accel = device.get(id(n)) == accel
                if on_accel:
                    return True, node_label(n)
                found = found or (False, node_label(n))
            if found is not None:
                return found
        return None

    for node in glue:
        near_accel, neighbour = glue_side(node, {id(node)}) or (False, None)
        why = _why_not(node, target, facts)
        if why is not None and node.op_type == "DequantizeLinear" and node.inputs[0] is not None and is_constant(node.inputs[0], facts.memo):
            why = None  # a constant's DQ (int32 bias, int8/int4 weight) is part of its consumer's kernel
        if why is None and (near_accel or fallback is None):
            device[id(node)], reason[id(node)] = accel, None
        elif why is None:
            device[id(node)] = fallback
            reason[id(node)] = (f"quantization glue of `{neighbour}`, on {fallback}" if neighbour
                                else "quantization glue on the graph's boundary")
        else:
            device[id(node)], reason[id(node)] = fallback, why

    placed = tuple(NodePlacement(node_label(n), n.qualified_op, device[id(n)],
                                 facts.dtype(n), reason[id(n)]) for n in nodes)
    return Placement(accel, fallback, placed, _partitions(placed),
                     _transitions(nodes, device, owner_step, top, facts.memo))


def _is_constant_node(node: Node) -> bool:
    return node.op_type == "Constant" and node.domain == ""


def _is_glue(node: Node) -> bool:
    return node.op_type in QDQ_OPS and node.domain == ""


class _Facts:
    """What the checks read about nodes, computed once per placement: is_constant answers
    are shared (each walks the producers above a value)."""

    def __init__(self, types: Mapping[str, TensorType]):
        self.types = types
        self.memo: dict[int, bool] = {}
        self._dtypes: dict[int, str | None] = {}

    def dtype(self, node: Node) -> str | None:
        if id(node) not in self._dtypes:
            self._dtypes[id(node)] = compute_dtype(node, self.types, self.memo)
        return self._dtypes[id(node)]

    def stored_dtype(self, node: Node) -> str | None:
        """The dtype of the node's first activation as the graph stores it: a float operator
        between DequantizeLinear and QuantizeLinear may also run unfused, as a float kernel
        with the glue as kernels of their own, where the accelerator has float kernels."""
        acts = [v for v in node.inputs if v is not None and v.name and not is_constant(v, self.memo)]
        first = acts[0] if acts else next((o for o in node.outputs if o is not None), None)
        return value_dtype(first, self.types)


def _why_not(node: Node, target: Target, facts: _Facts) -> str | None:
    """Why the accelerator cannot run `node` (None: it can)."""
    types = facts.types
    if node.subgraphs():
        return "control flow"
    rule = target.rule(node)
    if rule is None:
        return "op not supported"
    dtype = facts.dtype(node)
    allowed = rule.dtypes if rule.dtypes is not None else (
        _INTEGER_COMPUTE if target.quantization.required else None)
    if allowed is not None:
        if dtype is None:
            return "unknown dtype"
        if dtype not in allowed and facts.stored_dtype(node) not in allowed:
            return f"{dtype} compute (the {target.device} runs {'/'.join(allowed)})"
    violation = rule.attribute_violation(node) or _implicit_kernel_violation(node, rule, types)
    if violation is not None:
        return violation
    if rule.groups is not None and node.op_type in _CONVS:
        kind = _conv_grouping(node, types)
        if kind is None:
            return "unknown shape"
        if kind not in rule.groups:
            return f"{kind} conv (group={node.attr('group', 1)})"
    if rule.rank_max is not None:
        return _rank_violation(node, rule, types)
    return None


def _type_of(value, types: Mapping[str, TensorType]) -> TensorType | None:
    return types.get(value.name) or value.tensor_type()


def _implicit_kernel_violation(node: Node, rule: OpRule, types: Mapping[str, TensorType]) -> str | None:
    """A Conv without `kernel_shape` takes it from its weight (dims 2...), which
    attribute_violation (reading attributes only) cannot see."""
    if node.op_type not in _CONVS or node.attr("kernel_shape") is not None or len(node.inputs) < 2:
        return None
    limit = rule.max.get("kernel_shape")
    if limit is None:
        return None
    t = None if node.inputs[1] is None else _type_of(node.inputs[1], types)
    kernel = None if t is None else t.static_shape()
    if kernel is None:
        return "unknown shape"
    kernel = list(kernel[2:])
    if any(k > limit for k in kernel):
        return f"kernel_shape={kernel if len(kernel) > 1 else kernel[0]} (max {limit})"
    return None


def _conv_grouping(node: Node, types: Mapping[str, TensorType]) -> str | None:
    """"regular", "depthwise" or "grouped" (None when the input channels are unknown)."""
    group = int(node.attr("group", 1))
    if group == 1:
        return "regular"
    c_in = _dim(node.inputs[0], 1, types)
    if c_in is None and len(node.inputs) > 1:
        # Conv weight [C_out, C_in/group, ...]; ConvTranspose weight [C_in, C_out/group, ...]
        w = _dim(node.inputs[1], 1 if node.op_type == "Conv" else 0, types)
        c_in = None if w is None else (w * group if node.op_type == "Conv" else w)
    if c_in is None:
        return None
    return "depthwise" if c_in == group else "grouped"


def _dim(value, axis: int, types: Mapping[str, TensorType]) -> int | None:
    t = None if value is None else _type_of(value, types)
    if t is None or t.shape is None or len(t.shape) <= axis:
        return None
    return t.shape[axis].value


def _rank_violation(node: Node, rule: OpRule, types: Mapping[str, TensorType]) -> str | None:
    for value in (*node.inputs, *node.outputs):
        if value is None or not value.name:
            continue
        t = _type_of(value, types)
        if t is None or t.rank is None:
            return "unknown shape"
        if t.rank > rule.rank_max:
            return f"rank {t.rank} tensor (max {rule.rank_max})"
    return None


def _partitions(placed: tuple[NodePlacement, ...]) -> tuple[Partition, ...]:
    runs: list[list[NodePlacement]] = []
    for n in placed:
        if runs and runs[-1][0].device == n.device:
            runs[-1].append(n)
        else:
            runs.append([n])
    return tuple(Partition(i, run[0].device, len(run), run[0].node, run[-1].node)
                 for i, run in enumerate(runs))


def _transitions(nodes: list[Node], device: Mapping[int, str | None],
                 owner_step: Mapping[int, int], top: list[Node], memo: dict[int, bool]) -> int:
    """Activation edges between nodes placed on different devices, each (tensor, consuming
    device) once."""
    crossings: set[tuple[str, str]] = set()
    for node in nodes:
        src = device[id(node)]
        if src is None:
            continue
        for out in node.outputs:
            if out is None or not out.name or is_constant(out, memo):
                continue
            for user in out.users:
                step = owner_step.get(id(user))
                dst = None if step is None else device.get(id(top[step]))
                if dst is not None and dst != src:
                    crossings.add((out.name, dst))
    return len(crossings)


def describe_unsupported(placement: Placement, target: Target, limit: int = 5) -> str:
    """One line naming the nodes the accelerator cannot run, and why."""
    bad = placement.unsupported
    count = f"{len(bad)} node{'s' if len(bad) != 1 else ''}"
    head = (f"{target.name} cannot run {count} and has no fallback" if target.fallback is None
            else f"{target.name} cannot run {count} (they run on {target.fallback})")
    items = [f"{n.op} `{n.node}` ({n.reason})" for n in bad[:limit]]
    if len(bad) > limit:
        items.append(f"… (+{len(bad) - limit} more)")
    return f"{head}: {', '.join(items)}"


def require_placeable(placement: Placement, target: Target) -> None:
    """Raise UnsupportedError (exit 4) when the target has no fallback and some node cannot
    run on it."""
    if target.fallback is None and placement.unsupported:
        raise UnsupportedError(describe_unsupported(placement, target))
