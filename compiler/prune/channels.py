"""Which channels of an ONNX graph can be removed together: the channel dependency analysis.

Every output channel of a prunable layer (Conv, ConvTranspose, Gemm, MatMul with a constant
weight: a *producer*) is an **atom**. Atoms flow forward through the graph: each tensor that
carries them gets a `ChannelMap` (its channel axis and, per index along that axis, the atom it
holds). Ops then say how channels relate:

    channel-preserving ops (activations, BN, pooling, Resize, Pad, QDQ, depthwise Conv, ...)
                           out.atoms = in.atoms
    residual Add/Sub/Mul/... (broadcast-aware)
                           in1.atoms[i] ~ in2.atoms[i]   (the two channels must go together)
    Concat on the channel axis
                           out.atoms = in1.atoms ++ in2.atoms   (offset ranges)
    Split / Slice on the channel axis
                           out.atoms = in.atoms[a:b]
    Flatten / Reshape [N,C,H,W] -> [N,C*H*W]
                           out.atoms = repeat(in.atoms, H*W)   (feature blocks per channel)
    grouped Conv (1 < groups < C)
                           local index j of every group ~ j of the others (groups stay equal)

`~` is a union-find merge: a **class** of atoms is one removable unit (removing it removes that
index from every tensor and weight holding one of its atoms). A class is *pinned* (never
removed) when any of its atoms meets something the analysis cannot see through: a graph
output, an op it does not model (custom ops, LRN, Softmax over channels, a Reshape that splits
the channel axis as a channel shuffle or attention heads do, ...). Every pin records why, so
the report can say which group was left whole and for what reason.

A **group** is the set of classes sharing the same producers (a residual stream's classes are
one group with every Conv writing to the stream; a plain Conv's output channels another).
Ratios apply per group.

The analysis also records the **edits** a removal implies (slices of constant inputs along an
axis, group counts, Split sizes, Slice bounds, Reshape targets), each as the atoms along the
edited axis, so `rewrite.apply` only has to keep the indices whose atoms survive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from homec.ir import Graph, Node, Value
from homec.passes._util import is_const

__all__ = ["ChannelMap", "Producer", "Consumer", "Edit", "Analysis", "analyze"]

# Ops that map every input element to the output element at the same index.
_ELEMENTWISE_UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "ThresholdedRelu", "Mish", "Gelu", "Exp", "Log", "Abs", "Neg", "Sqrt",
    "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Not", "Sin", "Cos", "Tan", "Asin",
    "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "IsNaN", "IsInf", "Identity",
    "Cast", "CastLike", "Dropout", "Clip", "Shrink", "Swish",
})
# n-ary elementwise ops with numpy broadcasting
_ELEMENTWISE_NARY = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "And", "Or",
    "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Mod", "BitShift",
})
_SPATIAL_POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
                            "GlobalMaxPool", "GlobalLpPool"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                     "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                     "ReduceSumSquare"})


@dataclasses.dataclass
class ChannelMap:
    """The channels a tensor carries: along `axis`, index i holds atom `atoms[i]`."""

    axis: int
    atoms: np.ndarray  # int64, one atom per index along `axis`


@dataclasses.dataclass
class Producer:
    """A layer whose output channels are atoms: removing one drops a weight row (and bias)."""

    node_index: int
    op_type: str
    atoms: np.ndarray  # per output channel
    weight_axis: int  # axis of the weight holding the output channels


@dataclasses.dataclass
class Consumer:
    """A layer contracting over the channels of its input `value` (Conv group 1, ConvTranspose,
    Gemm, MatMul): removing a channel drops the matching weight columns."""

    node_index: int
    op_type: str
    value: str  # the input read
    axis: int  # channel axis of that input
    atoms: np.ndarray  # per input channel (feature)
    weight_axis: int  # axis of the weight holding the input channels


@dataclasses.dataclass
class Edit:
    """One change a removal implies at node `node_index`.

    kind "slice":   keep the indices of input `slot` (a constant) along `axis` whose atoms
                    survive; `atoms` has that dim's length.
    kind "group":   set attribute `group` to the number of surviving `atoms` (depthwise Conv).
    kind "split":   the Split's sizes become the surviving counts of each piece in `pieces`.
    kind "slice_range": a Slice on the channel axis: new [start, end) = surviving atoms before
                    `start` / before `end` of the input `atoms`.
    kind "reshape": entry `index` of the constant shape input becomes
                    surviving(atoms) * `factor` (only written when it was a literal size).
    kind "sizes":   entry `index` of Resize's constant `sizes` input becomes surviving(atoms).
    """

    kind: str
    node_index: int
    atoms: np.ndarray
    slot: int = -1
    axis: int = 0
    index: int = 0
    factor: int = 1
    start: int = 0
    end: int = 0
    pieces: tuple[np.ndarray, ...] = ()


@dataclasses.dataclass
class Analysis:
    """The result of `analyze`: maps, classes, pins, producers, consumers, edits."""

    maps: dict[str, ChannelMap]
    parent: np.ndarray  # union-find parent per atom (fully compressed: parent[a] is the root)
    atom_producer: np.ndarray  # per atom: index into `producers`, -1 for untracked channels
    pins: dict[int, list[str]]  # root atom -> reasons its class is kept whole
    producers: list[Producer]
    consumers: list[Consumer]
    edits: list[Edit]
    node_names: list[str]

    @property
    def atom_count(self) -> int:
        return int(self.parent.size)

    def root(self, atoms: np.ndarray) -> np.ndarray:
        return self.parent[atoms]

    def classes(self) -> dict[int, np.ndarray]:
        """root -> atoms of that class (every class, pinned or not)."""
        order = np.argsort(self.parent, kind="stable")
        roots, starts = np.unique(self.parent[order], return_index=True)
        parts = np.split(order, starts[1:])
        return {int(r): p for r, p in zip(roots, parts)}

    def keep_mask(self, atoms: np.ndarray, removed_roots: np.ndarray) -> np.ndarray:
        """True where an index's atom survives the removal of the classes `removed_roots`."""
        dead = np.zeros(self.atom_count, bool)
        dead[removed_roots] = True
        return ~dead[self.parent[atoms]]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def fresh(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the smaller id stays root: deterministic classes
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def compressed(self) -> np.ndarray:
        return np.array([self.find(a) for a in range(len(self.parent))], dtype=np.int64)


class _Analyzer:
    def __init__(self, graph: Graph, types, selected: Callable[[Node], bool]):
        self.graph = graph
        self.types = types
        self.selected = selected
        self.uf = _UnionFind()
        self.maps: dict[str, ChannelMap] = {}
        self.atom_producer: list[int] = []
        self.pinned: list[tuple[int, str]] = []
        self.producers: list[Producer] = []
        self.consumers: list[Consumer] = []
        self.edits: list[Edit] = []
        self.nodes = graph.nodes
        self.index = {id(n): i for i, n in enumerate(self.nodes)}

    # -- atoms ---------------------------------------------------------------------------

    def fresh(self, n: int, producer: int = -1) -> np.ndarray:
        atoms = self.uf.fresh(n)
        self.atom_producer.extend([producer] * n)
        return atoms

    def pin(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is not None and len(atoms):
            # one representative per distinct atom is enough: pins are resolved per class
            for a in np.unique(atoms).tolist():
                self.pinned.append((a, reason))

    def untracked(self, n: int, reason: str) -> np.ndarray:
        """Channels no prunable layer produced (graph inputs, untracked ops): pinned atoms."""
        atoms = self.fresh(n)
        self.pin(atoms, reason)
        return atoms

    def pin_inputs(self, node: Node, reason: str) -> None:
        for v in node.inputs:
            m = self.map_of(v)
            if m is not None:
                self.pin(m.atoms, reason)

    # -- helpers -------------------------------------------------------------------------

    def map_of(self, v: Value | None) -> ChannelMap | None:
        return None if v is None else self.maps.get(v.name)

    def set_map(self, v: Value | None, axis: int, atoms: np.ndarray) -> None:
        if v is None:
            return
        self.maps[v.name] = ChannelMap(axis, np.asarray(atoms, dtype=np.int64))

    def rank(self, v: Value | None) -> int | None:
        return self.types.rank(v)

    def dims(self, v: Value | None):
        return self.types.dims(v)

    def const(self, v: Value | None) -> np.ndarray | None:
        # an initializer that is also a graph input (IR >= 4) is only a default a caller
        # may override: not a constant the analysis may slice
        if v is None or v.const is None or not is_const(v):
            return None
        try:
            return v.const.numpy()
        except Exception:  # sparse or undecodable data: not a constant we can slice
            return None

    def name(self, node: Node) -> str:
        return label(node)

    def edit(self, kind: str, node: Node, atoms: np.ndarray, **kw) -> None:
        self.edits.append(Edit(kind, self.index[id(node)], np.asarray(atoms, np.int64), **kw))

    # -- driver --------------------------------------------------------------------------

    def run(self) -> Analysis:
        for node in self.nodes:
            inputs_mapped = any(self.map_of(v) is not None for v in node.inputs)
            if node.domain not in ("", "ai.onnx"):
                if inputs_mapped:
                    self.pin_inputs(node, f"custom op {node.domain}::{node.op_type} "
                                          f"`{self.name(node)}` reads the channels")
                continue
            if node.subgraphs():
                if inputs_mapped:
                    self.pin_inputs(node, f"{node.op_type} `{self.name(node)}` has subgraphs")
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            if handler is None:
                if node.op_type in _ELEMENTWISE_UNARY:
                    handler = self.unary
                elif node.op_type in _ELEMENTWISE_NARY:
                    handler = self.nary
                elif node.op_type in _SPATIAL_POOLS:
                    handler = self.pool
                elif node.op_type in _REDUCE:
                    handler = self.reduce
            if handler is None:
                if inputs_mapped:
                    self.pin_inputs(node, f"{node.op_type} `{self.name(node)}` is not modelled "
                                          "by the channel analysis")
                continue
            handler(node)
        self._pin_escaping_values()
        parent = self.uf.compressed()
        pins: dict[int, list[str]] = {}
        for atom, reason in self.pinned:
            lst = pins.setdefault(int(parent[atom]), [])
            if reason not in lst:
                lst.append(reason)
        return Analysis(self.maps, parent, np.array(self.atom_producer, np.int64), pins,
                        self.producers, self.consumers, self.edits,
                        [self.name(n) for n in self.nodes])

    def _pin_escaping_values(self) -> None:
        top = set(id(n) for n in self.nodes)
        for name, m in self.maps.items():
            v = self.graph.value(name)
            if v is None:
                continue
            if v.is_graph_output:
                self.pin(m.atoms, f"reaches graph output `{name}`")
            if any(id(u) not in top for u in v.users):
                self.pin(m.atoms, f"`{name}` is read inside a subgraph")

    # -- producers and consumers -----------------------------------------------------------

    def _weight(self, node: Node, slot: int) -> np.ndarray | None:
        if len(node.inputs) <= slot:
            return None
        return self.const(node.inputs[slot])

    def _bias_edit(self, node: Node, slot: int, atoms: np.ndarray) -> None:
        if len(node.inputs) > slot and node.inputs[slot] is not None:
            b = self.const(node.inputs[slot])
            if b is not None and b.ndim == 1 and b.shape[0] == len(atoms):
                self.edit("slice", node, atoms, slot=slot, axis=0)

    def _producer(self, node: Node, out_channels: int, weight_axis: int) -> np.ndarray:
        idx = len(self.producers)
        atoms = self.fresh(out_channels, producer=idx)
        self.producers.append(Producer(self.index[id(node)], node.op_type, atoms, weight_axis))
        if not self.selected(node):
            self.pin(atoms, f"`{self.name(node)}` is not selected")
        return atoms

    def op_Conv(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        m = self.map_of(x)
        w = self._weight(node, 1)
        b_ok = len(node.inputs) < 3 or node.inputs[2] is None or self.const(node.inputs[2]) is not None
        if w is None or w.ndim < 3 or not b_ok:
            if m is not None:
                self.pin(m.atoms, f"Conv `{self.name(node)}` has a weight or bias that is not "
                                  "a constant")
            return
        if m is not None and m.axis != 1:
            self.pin(m.atoms, f"Conv `{self.name(node)}` reads the tracked channels on axis "
                              f"{m.axis}, not 1")
            m = None
        out_c, in_per_group = int(w.shape[0]), int(w.shape[1])
        group = int(node.attr("group", 1) or 1)
        in_c = in_per_group * group
        if m is not None and len(m.atoms) != in_c:
            self.pin(m.atoms, f"Conv `{self.name(node)}`: {len(m.atoms)} tracked channels but "
                              f"the weight expects {in_c}")
            m = None
        if group == 1:
            if m is not None:
                self.consumers.append(Consumer(self.index[id(node)], "Conv", x.name, 1,
                                               m.atoms, 1))
                self.edit("slice", node, m.atoms, slot=1, axis=1)
            out = self._producer(node, out_c, 0)
            self.edit("slice", node, out, slot=1, axis=0)
            self._bias_edit(node, 2, out)
            self.set_map(y, 1, out)
            return
        if in_per_group == 1 and out_c == group:  # depthwise, multiplier 1: channel c -> c
            atoms = m.atoms if m is not None else self.untracked(
                in_c, f"depthwise Conv `{self.name(node)}` reads channels no prunable layer made")
            self.edit("slice", node, atoms, slot=1, axis=0)
            self._bias_edit(node, 2, atoms)
            self.edit("group", node, atoms)
            self.set_map(y, 1, atoms)
            return
        # grouped: every group must keep the same local indices, on both sides
        if m is not None:
            if in_per_group == 1:
                self.pin(m.atoms, f"Conv `{self.name(node)}` is depthwise with channel "
                                  "multiplier > 1 (a group cannot lose its only input)")
            else:
                local = m.atoms.reshape(group, in_per_group)
                for k in range(1, group):
                    self.uf.union_arrays(local[0], local[k])
                self.edit("slice", node, local[0], slot=1, axis=1)
        out = self._producer(node, out_c, 0)
        grouped = out.reshape(group, out_c // group)
        for k in range(1, group):
            self.uf.union_arrays(grouped[0], grouped[k])
        self.edit("slice", node, out, slot=1, axis=0)
        self._bias_edit(node, 2, out)
        self.set_map(y, 1, out)

    def op_ConvTranspose(self, node: Node) -> None:
        x, y = node.inputs[0], node.outputs[0]
        m = self.map_of(x)
        w = self._weight(node, 1)
        group = int(node.attr("group", 1) or 1)
        b_ok = len(node.inputs) < 3 or node.inputs[2] is None or self.const(node.inputs[2]) is not None
        if w is None or w.ndim < 3 or group != 1 or not b_ok:
            if m is not None:
                why = "is grouped" if group != 1 else "has a non-constant weight or bias"
                self.pin(m.atoms, f"ConvTranspose `{self.name(node)}` {why}")
            return
        if m is not None and (m.axis != 1 or len(m.atoms) != w.shape[0]):
            self.pin(m.atoms, f"ConvTranspose `{self.name(node)}` reads the channels on an "
                              "unexpected axis")
            m = None
        if m is not None:
            self.consumers.append(Consumer(self.index[id(node)], "ConvTranspose", x.name, 1,
                                           m.atoms, 0))
            self.edit("slice", node, m.atoms, slot=1, axis=0)
        out = self._producer(node, int(w.shape[1]), 1)
        self.edit("slice", node, out, slot=1, axis=1)
        self._bias_edit(node, 2, out)
        self.set_map(y, 1, out)

    def op_Gemm(self, node: Node) -> None:
        a, y = node.inputs[0], node.outputs[0]
        m = self.map_of(a)
        w = self._weight(node, 1)
        c = node.inputs[2] if len(node.inputs) > 2 else None
        c_data = self.const(c) if c is not None else None
        if w is None or w.ndim != 2 or node.attr("transA", 0) or (c is not None and c_data is None):
            if m is not None:
                self.pin(m.atoms, f"Gemm `{self.name(node)}` has transA or a non-constant "
                                  "B or C")
            self.pin_inputs(node, f"Gemm `{self.name(node)}` has transA or a non-constant B or C")
            return
        trans_b = bool(node.attr("transB", 0))
        k_axis, n_axis = (1, 0) if trans_b else (0, 1)
        if m is not None and (m.axis != 1 or len(m.atoms) != w.shape[k_axis]):
            self.pin(m.atoms, f"Gemm `{self.name(node)}` reads the channels on axis {m.axis}")
            m = None
        if m is not None:
            self.consumers.append(Consumer(self.index[id(node)], "Gemm", a.name, 1, m.atoms, k_axis))
            self.edit("slice", node, m.atoms, slot=1, axis=k_axis)
        n_out = int(w.shape[n_axis])
        out = self._producer(node, n_out, n_axis)
        self.edit("slice", node, out, slot=1, axis=n_axis)
        if c_data is not None and c_data.ndim >= 1 and c_data.shape[-1] == n_out and n_out > 1:
            self.edit("slice", node, out, slot=2, axis=c_data.ndim - 1)
        elif c_data is not None and c_data.ndim >= 1 and c_data.shape[-1] not in (1, n_out):
            self.pin(out, f"Gemm `{self.name(node)}` has a bias of unexpected shape")
        self.set_map(y, 1, out)

    def op_MatMul(self, node: Node) -> None:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        ma, mb = self.map_of(a), self.map_of(b)
        w = self.const(b)
        ra = self.rank(a)
        if mb is not None or w is None or w.ndim != 2 or ra is None or ra < 2:
            why = (f"MatMul `{self.name(node)}` multiplies two activations (attention-like)"
                   if w is None else f"MatMul `{self.name(node)}` has an operand of unsupported rank")
            self.pin_inputs(node, why)
            return
        if ma is not None and ma.axis < ra - 2:  # a batch axis: the product maps it through
            self.set_map(y, ma.axis, ma.atoms)
            return
        if ma is not None and ma.axis == ra - 2:
            self.pin(ma.atoms, f"MatMul `{self.name(node)}` reads the channels as rows")
            ma = None
        if ma is not None:
            if len(ma.atoms) != w.shape[0]:
                self.pin(ma.atoms, f"MatMul `{self.name(node)}`: channel count mismatch")
            else:
                self.consumers.append(Consumer(self.index[id(node)], "MatMul", a.name, ra - 1,
                                               ma.atoms, 0))
                self.edit("slice", node, ma.atoms, slot=1, axis=0)
        out = self._producer(node, int(w.shape[1]), 1)
        self.edit("slice", node, out, slot=1, axis=1)
        self.set_map(y, ra - 1, out)

    # -- channel-preserving ops --------------------------------------------------------------

    def unary(self, node: Node) -> None:
        m = self.map_of(node.inputs[0]) if node.inputs else None
        if m is None:
            self.pin_inputs(node, f"{node.op_type} `{self.name(node)}` reads the channels "
                                  "through a non-data input")
            return
        for extra in node.inputs[1:]:  # Clip min/max, Dropout ratio: scalars
            if self.map_of(extra) is not None:
                self.pin_inputs(node, f"{node.op_type} `{self.name(node)}` has a channel "
                                      "tensor as a parameter")
                return
        for out in node.outputs:
            if out is not None:
                self.set_map(out, m.axis, m.atoms)

    def nary(self, node: Node) -> None:
        y = node.outputs[0]
        r_out = self.rank(y)
        ins = [(slot, v) for slot, v in enumerate(node.inputs) if v is not None]
        mapped = [(slot, v, self.map_of(v)) for slot, v in ins if self.map_of(v) is not None]
        label = f"{node.op_type} `{self.name(node)}`"
        if r_out is None or any(self.rank(v) is None for _, v in ins):
            self.pin_inputs(node, f"{label}: operand ranks unknown")
            return
        axes = {m.axis + r_out - self.rank(v) for _, v, m in mapped}
        if len(axes) != 1:
            self.pin_inputs(node, f"{label} combines channels from different axes")
            return
        axis = axes.pop()
        full = [m for _, _, m in mapped if len(m.atoms) > 1]
        width = max(len(m.atoms) for _, _, m in mapped)
        if any(len(m.atoms) not in (1, width) for _, _, m in mapped):
            self.pin_inputs(node, f"{label}: channel counts differ")
            return
        rep = full[0].atoms if full else mapped[0][2].atoms
        for _, _, m in mapped:
            if len(m.atoms) == width:
                self.uf.union_arrays(rep, m.atoms)
            else:  # a single channel broadcast over all of them cannot lose it
                self.pin(m.atoms, f"{label} broadcasts one channel over {width}")
        for slot, v in ins:
            if self.map_of(v) is not None:
                continue
            r_in = self.rank(v)
            local = axis - (r_out - r_in)
            d = self.dims(v)
            size = 1 if local < 0 else (d[local] if d is not None else None)
            if size == 1:
                continue
            if size == width and self.const(v) is not None:
                self.edit("slice", node, rep, slot=slot, axis=local)
                continue
            what = "a constant of unexpected shape" if self.const(v) is not None else \
                f"`{v.name}`, whose channels are not tracked"
            self.pin(rep, f"{label} combines the channels with {what}")
        if width > 1 or full:
            for out in node.outputs:
                if out is not None:
                    self.set_map(out, axis, rep)
        else:
            self.pin(rep, f"{label} broadcasts a single channel")

    def pool(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        if m.axis != 1:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` pools over the channel axis")
            return
        if len(node.outputs) > 1 and node.outputs[1] is not None and node.outputs[1].users:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` returns flat indices")
            return
        self.set_map(node.outputs[0], 1, m.atoms)

    def reduce(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            data = self.const(node.inputs[1])
            axes = None if data is None else data.reshape(-1).tolist()
            if data is None:
                self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` has dynamic axes")
                return
        if r is None:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}`: rank unknown")
            return
        if not axes:  # all axes (unless noop_with_empty_axes)
            if node.attr("noop_with_empty_axes", 0):
                self.set_map(node.outputs[0], m.axis, m.atoms)
                return
            axes = list(range(r))
        axes = sorted(a % r for a in axes)
        if m.axis in axes:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` reduces over the channels")
            return
        keep = node.attr("keepdims", 1)
        axis = m.axis if keep else m.axis - sum(1 for a in axes if a < m.axis)
        self.set_map(node.outputs[0], axis, m.atoms)

    def op_BatchNormalization(self, node: Node) -> None:
        self._per_channel_params(node, slots=(1, 2, 3, 4))

    def op_InstanceNormalization(self, node: Node) -> None:
        self._per_channel_params(node, slots=(1, 2))

    def _per_channel_params(self, node: Node, slots: Sequence[int]) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        label = f"{node.op_type} `{self.name(node)}`"
        if m.axis != 1 or any(o is not None and o.users for o in node.outputs[1:]):
            self.pin(m.atoms, f"{label} is in training mode or reads channels on axis {m.axis}")
            return
        for s in slots:
            data = self.const(node.inputs[s]) if len(node.inputs) > s else None
            if data is None or data.shape != (len(m.atoms),):
                self.pin(m.atoms, f"{label} has non-constant or odd-shaped parameters")
                return
        for s in slots:
            self.edit("slice", node, m.atoms, slot=s, axis=0)
        self.set_map(node.outputs[0], 1, m.atoms)

    def _qdq(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        scale = self.const(node.inputs[1])
        if scale is None or r is None:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` has a non-constant scale")
            return
        if scale.ndim == 1 and scale.size > 1:
            axis = int(node.attr("axis", 1)) % r
            if axis == m.axis:
                if scale.size != len(m.atoms) or node.attr("block_size", 0):
                    self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` is blocked")
                    return
                self.edit("slice", node, m.atoms, slot=1, axis=0)
                if len(node.inputs) > 2 and node.inputs[2] is not None and self.const(node.inputs[2]) is None:
                    self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` has a computed zero point")
                    return
                if len(node.inputs) > 2 and node.inputs[2] is not None:
                    self.edit("slice", node, m.atoms, slot=2, axis=0)
        self.set_map(node.outputs[0], m.axis, m.atoms)

    op_QuantizeLinear = _qdq
    op_DequantizeLinear = _qdq

    def _softmax_like(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        opset = self.graph.opset() or 13
        axis = node.attr("axis", -1 if opset >= 13 else 1) % (r or 1)
        touches = m.axis == axis if opset >= 13 else m.axis >= axis
        if r is None or touches:
            self.pin(m.atoms, f"{node.op_type} `{self.name(node)}` normalizes across channels")
            return
        self.set_map(node.outputs[0], m.axis, m.atoms)

    op_Softmax = _softmax_like
    op_LogSoftmax = _softmax_like
    op_Hardmax = _softmax_like

    def op_LayerNormalization(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        if r is None or m.axis >= node.attr("axis", -1) % r:
            self.pin(m.atoms, f"LayerNormalization `{self.name(node)}` normalizes across channels")
            return
        self.set_map(node.outputs[0], m.axis, m.atoms)

    def op_LRN(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is not None:
            self.pin(m.atoms, f"LRN `{self.name(node)}` normalizes across neighbouring channels")

    # -- structure ops ---------------------------------------------------------------------------

    def op_Concat(self, node: Node) -> None:
        y = node.outputs[0]
        r = self.rank(y)
        ins = [v for v in node.inputs if v is not None]
        maps = [self.map_of(v) for v in ins]
        label = f"Concat `{self.name(node)}`"
        if r is None:
            self.pin_inputs(node, f"{label}: rank unknown")
            return
        axis = int(node.attr("axis", 0)) % r
        axes = {m.axis for m in maps if m is not None}
        if len(axes) != 1:
            self.pin_inputs(node, f"{label} joins channels from different axes")
            return
        ch = axes.pop()
        if ch == axis:  # channels side by side: offset ranges
            parts = []
            for v, m in zip(ins, maps):
                if m is not None:
                    parts.append(m.atoms)
                    continue
                d = self.dims(v)
                n = d[axis] if d is not None and len(d) == r else None
                if n is None:
                    self.pin_inputs(node, f"{label}: an input's channel count is unknown")
                    return
                parts.append(self.untracked(n, f"{label} input `{v.name}` has channels no "
                                               "prunable layer made"))
            self.set_map(y, axis, np.concatenate(parts))
            return
        # concatenated along another axis: all inputs share each channel
        if any(m is None for m in maps):
            self.pin_inputs(node, f"{label} joins tracked and untracked channels")
            return
        if len({len(m.atoms) for m in maps}) != 1:
            self.pin_inputs(node, f"{label}: channel counts differ")
            return
        for m in maps[1:]:
            self.uf.union_arrays(maps[0].atoms, m.atoms)
        self.set_map(y, ch, maps[0].atoms)

    def op_Split(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        label = f"Split `{self.name(node)}`"
        if r is None:
            self.pin(m.atoms, f"{label}: rank unknown")
            return
        axis = int(node.attr("axis", 0)) % r
        outs = [o for o in node.outputs]
        if axis != m.axis:
            for o in outs:
                self.set_map(o, m.axis, m.atoms)
            return
        sizes = []
        for o in outs:
            d = self.dims(o)
            sizes.append(d[axis] if d is not None and len(d) == r else None)
        if any(s is None for s in sizes) or sum(sizes) != len(m.atoms):
            self.pin(m.atoms, f"{label}: piece sizes unknown")
            return
        bounds = np.cumsum([0] + sizes)
        pieces = tuple(m.atoms[bounds[i]:bounds[i + 1]] for i in range(len(outs)))
        self.edit("split", node, m.atoms, pieces=pieces)
        for o, p in zip(outs, pieces):
            self.set_map(o, axis, p)

    def op_Slice(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        x = node.inputs[0]
        r = self.rank(x)
        label = f"Slice `{self.name(node)}`"
        if node.attr("starts") is not None:  # opset < 10
            starts, ends = node.attr("starts"), node.attr("ends")
            axes = node.attr("axes") or list(range(len(starts)))
            steps = [1] * len(starts)
            if m.axis in [a % r for a in axes] if r else True:
                self.pin(m.atoms, f"{label} (attribute form) cuts the channel axis")
                return
        else:
            vals = [self.const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None
                    else None for i in range(1, 5)]
            starts, ends, axes, steps = vals
            if starts is None or ends is None or r is None or (len(node.inputs) > 4 and node.inputs[4] is not None and steps is None) or (len(node.inputs) > 3 and
                                                                node.inputs[3] is not None and axes is None):
                self.pin(m.atoms, f"{label} has dynamic bounds")
                return
            starts, ends = starts.tolist(), ends.tolist()
            axes = list(range(len(starts))) if axes is None else [a % r for a in axes.tolist()]
            steps = [1] * len(starts) if steps is None else steps.tolist()
        if m.axis not in axes:
            self.set_map(node.outputs[0], m.axis, m.atoms)
            return
        i = axes.index(m.axis)
        if steps[i] != 1:
            self.pin(m.atoms, f"{label} steps through the channels")
            return
        n = len(m.atoms)
        lo, hi, _ = slice(int(starts[i]), int(ends[i]), 1).indices(n)
        hi = max(hi, lo)
        self.edit("slice_range", node, m.atoms, index=i, start=lo, end=hi)
        self.set_map(node.outputs[0], m.axis, m.atoms[lo:hi])

    def op_Transpose(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        perm = node.attr("perm")
        if perm is None:
            if r is None:
                self.pin(m.atoms, f"Transpose `{self.name(node)}`: rank unknown")
                return
            perm = list(reversed(range(r)))
        self.set_map(node.outputs[0], list(perm).index(m.axis), m.atoms)

    def _axes_input(self, node: Node) -> list[int] | None:
        axes = node.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            data = self.const(node.inputs[1])
            return None if data is None else data.reshape(-1).tolist()
        return list(axes) if axes is not None else []

    def op_Unsqueeze(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        axes = self._axes_input(node)
        r_out = self.rank(node.outputs[0])
        if axes is None or r_out is None:
            self.pin(m.atoms, f"Unsqueeze `{self.name(node)}` has dynamic axes")
            return
        axes = sorted(a % r_out for a in axes)
        axis = m.axis
        for a in axes:  # inserted in increasing order of output position
            if a <= axis:
                axis += 1
        self.set_map(node.outputs[0], axis, m.atoms)

    def op_Squeeze(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        axes = self._axes_input(node)
        d = self.dims(node.inputs[0])
        if axes is None or r is None:
            self.pin(m.atoms, f"Squeeze `{self.name(node)}` has dynamic axes")
            return
        if not axes:
            if d is None or any(s is None for s in d):
                self.pin(m.atoms, f"Squeeze `{self.name(node)}` squeezes unknown axes")
                return
            axes = [i for i, s in enumerate(d) if s == 1]
        axes = [a % r for a in axes]
        if m.axis in axes:
            self.pin(m.atoms, f"Squeeze `{self.name(node)}` removes the channel axis")
            return
        self.set_map(node.outputs[0], m.axis - sum(1 for a in axes if a < m.axis), m.atoms)

    def op_Flatten(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        d = self.dims(node.inputs[0])
        r = self.rank(node.inputs[0])
        label = f"Flatten `{self.name(node)}`"
        if r is None or d is None:
            self.pin(m.atoms, f"{label}: shape unknown")
            return
        k = int(node.attr("axis", 1)); k = k + r if k < 0 else k
        if k > m.axis:  # the channels end up in the outer dim with the batch
            inner = d[m.axis + 1:k]
            if any(s is None for s in inner) or int(np.prod(inner, dtype=np.int64)) != 1 or \
                    any(s != 1 for s in d[:m.axis] if s is not None) or any(s is None for s in d[:m.axis]):
                self.pin(m.atoms, f"{label} folds the channels into the batch dim")
                return
            self.set_map(node.outputs[0], 0, m.atoms)
            return
        inner = d[m.axis + 1:]
        outer = d[k:m.axis]
        if any(s is None for s in inner) or any(s is None for s in outer):
            self.pin(m.atoms, f"{label}: dims beside the channels are not static")
            return
        self.set_map(node.outputs[0], 1, _flat_atoms(m.atoms, int(np.prod(outer, dtype=np.int64)),
                                                     int(np.prod(inner, dtype=np.int64))))

    def op_Reshape(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        label = f"Reshape `{self.name(node)}`"
        shape_v = node.inputs[1] if len(node.inputs) > 1 else None
        target = self.const(shape_v)
        din, dout = self.dims(node.inputs[0]), self.dims(node.outputs[0])
        if target is None or din is None or dout is None or any(s is None for s in dout) or \
                any(s is None for s in din[m.axis:]):
            self.pin(m.atoms, f"{label} has a dynamic or unknown shape")
            return
        c = len(m.atoms)
        outer = din[:m.axis]
        inner = int(np.prod(din[m.axis + 1:], dtype=np.int64))
        allow_zero = not node.attr("allowzero", 0)
        tgt = target.reshape(-1).tolist()
        for b in _prefix_candidates(outer, dout):
            literal = b < len(tgt) and tgt[b] != -1 and not (allow_zero and tgt[b] == 0)
            copied = b < len(tgt) and allow_zero and tgt[b] == 0
            if dout[b] == c and int(np.prod(dout[b + 1:], dtype=np.int64)) == inner:
                if copied and b != m.axis:
                    break
                self.set_map(node.outputs[0], b, m.atoms)
                if literal:
                    self.edit("reshape", node, m.atoms, index=b, factor=1)
                return
            if dout[b] == c * inner and all(s == 1 for s in dout[b + 1:]):
                if copied:
                    break
                self.set_map(node.outputs[0], b, _flat_atoms(m.atoms, 1, inner))
                if literal:
                    self.edit("reshape", node, m.atoms, index=b, factor=inner)
                return
        self.pin(m.atoms, f"{label} splits or regroups the channel axis (a channel shuffle or "
                          "attention heads)")

    def op_Resize(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        label = f"Resize `{self.name(node)}`"
        scales = self.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        sizes = self.const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        if node.attr("axes") is not None:
            self.pin(m.atoms, f"{label} uses the axes attribute")
            return
        if scales is not None and scales.size:
            if scales.reshape(-1)[m.axis] != 1:
                self.pin(m.atoms, f"{label} resizes the channel axis")
                return
        elif sizes is not None and sizes.size:
            d = self.dims(node.inputs[0])
            if d is None or sizes.reshape(-1)[m.axis] != len(m.atoms):
                self.pin(m.atoms, f"{label} resizes the channel axis")
                return
            self.edit("sizes", node, m.atoms, index=m.axis)
        else:
            self.pin(m.atoms, f"{label} has dynamic scales or sizes")
            return
        self.set_map(node.outputs[0], m.axis, m.atoms)

    op_Upsample = op_Resize

    def op_Pad(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        pads = node.attr("pads")
        axes = None
        if pads is None and len(node.inputs) > 1:
            p = self.const(node.inputs[1])
            pads = None if p is None else p.reshape(-1).tolist()
            if len(node.inputs) > 3 and node.inputs[3] is not None:
                a = self.const(node.inputs[3])
                axes = None if a is None else [x % r for x in a.reshape(-1).tolist()] if r else None
                if a is None:
                    pads = None
        if pads is None or r is None:
            self.pin(m.atoms, f"Pad `{self.name(node)}` has dynamic pads")
            return
        axes = axes if axes is not None else list(range(r))
        if m.axis in axes:
            i, n = axes.index(m.axis), len(axes)
            if pads[i] != 0 or pads[i + n] != 0:
                self.pin(m.atoms, f"Pad `{self.name(node)}` pads the channel axis")
                return
        self.set_map(node.outputs[0], m.axis, m.atoms)

    def op_Expand(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r_in, r_out = self.rank(node.inputs[0]), self.rank(node.outputs[0])
        d = self.dims(node.outputs[0])
        if r_in is None or r_out is None or d is None:
            self.pin(m.atoms, f"Expand `{self.name(node)}`: shape unknown")
            return
        axis = m.axis + r_out - r_in
        if d[axis] != len(m.atoms):
            self.pin(m.atoms, f"Expand `{self.name(node)}` broadcasts the channels")
            return
        self.pin(m.atoms, f"Expand `{self.name(node)}` has a shape input holding the channel count")

    def op_Shape(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if m is None:
            return
        r = self.rank(node.inputs[0])
        if r is None:
            self.pin(m.atoms, f"Shape `{self.name(node)}` reads the channel count")
            return
        start = int(node.attr("start", 0) or 0); start = min(r, max(0, start + r if start < 0 else start))
        end = node.attr("end")
        end = r if end is None else min(r, max(0, int(end) + r if int(end) < 0 else int(end)))
        if not start <= m.axis < end:
            return
        pos = m.axis - start
        out = node.outputs[0]
        if out.is_graph_output:
            self.pin(m.atoms, f"Shape `{self.name(node)}` reads the channel count")
            return
        for user in out.users:  # reading other dims is fine: Gather of a constant index
            idx = self.const(user.inputs[1]) if user.op_type == "Gather" and len(user.inputs) > 1 else None
            if idx is None or pos in (idx.reshape(-1) % (end - start)).tolist():
                self.pin(m.atoms, f"Shape `{self.name(node)}` reads the channel count")
                return

    def op_Gather(self, node: Node) -> None:
        m = self.map_of(node.inputs[0])
        if self.map_of(node.inputs[1]) is not None:
            self.pin_inputs(node, f"Gather `{self.name(node)}` indexes with channel data")
            return
        if m is None:
            return
        r = self.rank(node.inputs[0])
        ri = self.rank(node.inputs[1])
        if r is None or ri is None:
            self.pin(m.atoms, f"Gather `{self.name(node)}`: rank unknown")
            return
        axis = int(node.attr("axis", 0)) % r
        if axis == m.axis:
            self.pin(m.atoms, f"Gather `{self.name(node)}` picks channels")
            return
        self.set_map(node.outputs[0], m.axis if m.axis < axis else m.axis + ri - 1, m.atoms)


def label(node: Node) -> str:
    """How reports name a node: its name, else its first output's name, else its op type."""
    return node.name or (node.outputs[0].name if node.outputs and node.outputs[0] is not None
                         else node.op_type)


def _flat_atoms(atoms: np.ndarray, outer: int, inner: int) -> np.ndarray:
    """Atoms of a flattened [outer, C, inner] block: feature f holds channel (f // inner) % C."""
    return np.tile(np.repeat(atoms, inner), outer)


def _prefix_candidates(outer: Sequence[int | None], dout: Sequence[int]) -> list[int]:
    """Output axes b whose leading dims dout[:b] hold exactly the input dims before the
    channels (several when size-1 dims make it ambiguous: [1,C,1,1] -> [1,C])."""
    if any(s is None for s in outer):  # an unknown batch must be copied one to one
        return [len(outer)] if len(dout) > len(outer) else []
    want = int(np.prod(outer, dtype=np.int64)) if outer else 1
    out, prod = [], 1
    for b in range(len(dout)):
        if prod == want:
            out.append(b)
        elif prod > want:
            break
        prod *= dout[b]
    return out


def analyze(graph: Graph, types, selected: Callable[[Node], bool] = lambda n: True) -> Analysis:
    """Channel dependency analysis of the top-level `graph` (see the module docstring).

    `types` is a `passes._util.Types` (or anything with rank/dims per value). Producers that
    are not `selected` keep all their channels.
    """
    return _Analyzer(graph, types, selected).run()


def group_of(analysis: Analysis, roots: Iterable[int]) -> dict[tuple[int, ...], list[int]]:
    """Classes grouped by the set of producers that own their atoms."""
    members = analysis.classes()
    out: dict[tuple[int, ...], list[int]] = {}
    for r in roots:
        prods = analysis.atom_producer[members[r]]
        key = tuple(sorted(set(int(p) for p in prods if p >= 0)))
        out.setdefault(key, []).append(int(r))
    return out


class InferredTypes:
    """Value ranks and dims from onnx shape inference, with graph inputs pinned to `input_shapes`
    (the calibration samples' shapes) so spatial dims are static where the model allows."""

    def __init__(self, graph: Graph, input_shapes: dict[str, tuple[int, ...]] | None = None):
        from homec.analysis.shapes import infer_shapes

        try:
            self.types = infer_shapes(graph, input_shapes or None, symbolic_fallback=False)
        except Exception:  # inference is best effort; unknown shapes pin what needs them
            self.types = {}

    def of(self, v: Value | None):
        if v is None:
            return None
        if v.const is not None:
            try:
                shape = v.const.shape
            except Exception:
                return None
            from homec.ir import Dim, TensorType
            return TensorType(0, tuple(Dim.of(int(s)) for s in shape))
        return self.types.get(v.name) or v.tensor_type()

    def rank(self, v: Value | None) -> int | None:
        t = self.of(v)
        return None if t is None or t.shape is None else len(t.shape)

    def dims(self, v: Value | None):
        t = self.of(v)
        if t is None or t.shape is None:
            return None
        # some exporters declare unknown dims as -1: unknown, not a size
        return tuple(d.value if d.value is None or d.value >= 0 else None for d in t.shape)
