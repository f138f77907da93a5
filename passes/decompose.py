"""Decompose operators a target lacks into primitives it has (target legalization)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import (Names, Types, add_constant, all_graphs, can_add_constant, constant_array, opset,
                    remove_constant, replace_value)

Op = Literal["HardSwish", "HardSigmoid", "Gelu", "LayerNormalization", "Relu6", "Sum"]
DECOMPOSABLE: tuple[str, ...] = ("HardSwish", "HardSigmoid", "Gelu", "LayerNormalization", "Relu6",
                                 "Sum")

# Statistic name of each decomposition: a count of rewritten anchors.
DONE = {"HardSwish": "hardswish_decomposed", "HardSigmoid": "hardsigmoid_decomposed",
        "Gelu": "gelu_decomposed", "LayerNormalization": "layernorm_decomposed",
        "Relu6": "relu6_to_clip", "Sum": "sum_to_add"}
# Informational suffix of each op: kept_<x> (the target lacks a replacement op),
# refused_<x>_<reason> (the node cannot be decomposed faithfully).
SHORT = {"HardSwish": "hardswish", "HardSigmoid": "hardsigmoid", "Gelu": "gelu",
         "LayerNormalization": "layernorm", "Relu6": "relu6", "Sum": "sum"}

CLIP_INPUT_BOUNDS_OPSET = 11  # Clip-11 moved min/max from attributes to inputs
REDUCE_AXES_INPUT_OPSET = 18  # ReduceMean-18 moved axes from an attribute to an input
FLOAT_TYPES = {D.FLOAT: np.float32, D.FLOAT16: np.float16, D.DOUBLE: np.float64}

# Exact up to float rounding: the primitives round each step where the fused kernels may
# keep more precision in between (LayerNormalization's variance, Gelu's polynomial).
TOLERANCE = Tolerance(atol=1e-5, rtol=1e-5)


@register_pass("decompose", tolerance=TOLERANCE)
def decompose(graph: Graph, ctx: PassContext, *,
              ops: list[Op] = ()) -> Stats:
    """Rewrite HardSwish, HardSigmoid, Gelu, LayerNormalization, ReLU6 and Sum into primitives.

    Algebra (every constant in the input's dtype):
      HardSwish(x) = x * HardSigmoid(x; alpha=1/6, beta=1/2)
      HardSigmoid(x; a, b) = Clip(x * a + b, 0, 1)   (Clip bounds are inputs from opset 11,
        attributes before)
      Gelu(x; approximate="none") = 0.5 * x * (1 + Erf(x * 1/sqrt(2)))
      Gelu(x; approximate="tanh") = 0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
      LayerNormalization(x, scale, bias; axis, epsilon) over axes A = axis .. rank-1:
        mean = ReduceMean(x, A), d = x - mean, var = ReduceMean(d * d, A),
        y = d / Sqrt(var + epsilon) * scale (+ bias)
        (ReduceMean takes A as an attribute before opset 18, as an input from 18; a
        negative axis gives A = axis .. -1 without knowing the rank). With stash_type=1
        (float) and a float16 x the statistics are computed in float32 between Casts, as the
        fused kernel does. Refused (refused_layernorm_outputs / _rank) when the Mean or
        InvStdDev outputs are read, or when a non-negative axis meets an unknown rank.
      ReLU6 written as two nodes (tf2onnx, paddle2onnx, Keras): Min(Max(x, 0), 6),
        Max(Min(x, 6), 0), Min(Relu(x), 6) and Clip(Relu(x), lo <= 0 or none, 6) equal
        Clip(x, 0, 6) (Relu and the lower bound agree on x >= 0 and both give 0 below).
        Constants must be scalars or [1]-shaped (then x must have a known rank >= 1, else
        broadcasting would change the shape) and the inner value read by the outer node
        only.
      Sum(x1, ..., xn) = Add(...Add(Add(x1, x2), x3)..., xn)   (n >= 2; both broadcast the
        same way, and the left fold adds in Sum's order; ResNet exports write residual adds
        as Sum)
    These are exact in real arithmetic; in float they round once per primitive, hence a
    tolerance of atol = rtol = 1e-5 (of the output's scale). Only float16/float32/float64
    inputs are rewritten (refused_<op>_dtype otherwise or when the type is unknown).

    Which ops: `ops` lists them explicitly. Empty (the default) with a target
    (ctx.target): each op the target lacks (no rule and not `ops = "all"`) or lists in its
    `decompose` key, but only when the target has every op of the replacement (so work
    moves onto the accelerator); otherwise the node is left and counted in kept_<op>
    (details `kept` name the missing ops). HardSwish's HardSigmoid is itself decomposed
    when HardSigmoid is among the ops to decompose. ReLU6 counts as lacking when the target
    lacks one of the pattern's ops (Max, Min or Relu). Empty without a target: nothing.
    Only selected anchor nodes (the op itself; for ReLU6 the outer node) are rewritten.

    Options:
      ops: the operators to decompose (HardSwish, HardSigmoid, Gelu, LayerNormalization,
        Relu6, Sum); empty: what the target needs.

    Statistics: hardswish_decomposed, hardsigmoid_decomposed, gelu_decomposed,
    layernorm_decomposed, relu6_to_clip, sum_to_add; informational kept_<op>,
    refused_<op>_<reason>.
    """
    st: Stats = {v: 0 for v in DONE.values()}
    for op in DECOMPOSABLE:
        st[f"kept_{SHORT[op]}"] = 0
        st[f"refused_{SHORT[op]}_dtype"] = 0
    st["refused_layernorm_outputs"] = 0
    st["refused_layernorm_rank"] = 0
    st["refused_relu6_shape"] = 0
    plan = _plan(ctx.target, tuple(ops))
    if not plan.wanted:
        return st
    run = _Run(graph, ctx, plan, st)
    for g in list(all_graphs(graph)):
        if can_add_constant(g):
            run.graph(g)
    if run.kept:
        ctx.report("kept", run.kept)
    if run.refused:
        ctx.report("refused", run.refused)
    return st


# ---------------------------------------------------------------------------------------
# What to decompose
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Plan:
    wanted: frozenset[Op]  # ops to decompose
    target: object | None  # the Target whose op set must hold the replacement (None: any)

    def has(self, op_type: str) -> bool:
        """Whether the target runs `op_type` (always, without a target to satisfy)."""
        t = self.target
        return t is None or t.all_ops or t.rule(Node(op_type)) is not None  # type: ignore[attr-defined]

    def missing(self, needed: set[str]) -> list[str]:
        return sorted(op for op in needed if not self.has(op))


def _plan(target, explicit: Sequence[Op]) -> _Plan:
    if explicit:
        return _Plan(frozenset(explicit), None)
    if target is None:
        return _Plan(frozenset(), None)
    listed = set(target.decompose)
    wanted = {op for op in DECOMPOSABLE if op != "Relu6"
              and (op in listed or (not target.all_ops and target.rule(Node(op)) is None))}
    relu6_ops = ("Max", "Min", "Relu")
    if "Relu6" in listed or (not target.all_ops and any(target.rule(Node(o)) is None
                                                           for o in relu6_ops)):
        wanted.add("Relu6")
    return _Plan(frozenset(wanted), target)


# ---------------------------------------------------------------------------------------
# The rewrite
# ---------------------------------------------------------------------------------------


class _Run:
    def __init__(self, graph: Graph, ctx: PassContext, plan: _Plan, st: Stats):
        self.ctx = ctx
        self.plan = plan
        self.st = st
        self.types = Types(graph)
        self.names = Names(graph)
        self.kept: list[dict] = []
        self.refused: list[dict] = []
        self._consts: dict[tuple, Value] = {}
        self._node_names = {n.name for n in graph.all_nodes() if n.name}

    def node_name(self, hint: str) -> str:
        """A node name not yet used in the tree (onnxruntime refuses duplicates)."""
        name, k = hint, 0
        while name in self._node_names:
            k += 1
            name = f"{hint}__{k}"
        self._node_names.add(name)
        return name

    def graph(self, g: Graph) -> None:
        handlers = {"HardSwish": self.hardswish, "HardSigmoid": self.hardsigmoid,
                    "Gelu": self.gelu, "LayerNormalization": self.layernorm, "Sum": self.sum}
        for node in g.nodes:
            if node.graph is not g or node.domain != "" or not self.ctx.selected(node):
                continue  # removed by an earlier rewrite, or not ours to touch
            if node.op_type in handlers and node.op_type in self.plan.wanted:
                handlers[node.op_type](g, node)
            elif node.op_type in ("Min", "Max", "Clip") and "Relu6" in self.plan.wanted:
                self.relu6(g, node)

    # -- bookkeeping ----------------------------------------------------------------------
    def refuse(self, node: Node, op: Op, reason: str, why: str) -> None:
        self.st[f"refused_{SHORT[op]}_{reason}"] += 1
        self.refused.append({"node": node.name, "op": op, "reason": why})

    def feasible(self, node: Node, op: Op, needed: set[str]) -> bool:
        missing = self.plan.missing(needed)
        if missing:
            self.st[f"kept_{SHORT[op]}"] += 1
            self.kept.append({"node": node.name, "op": op, "missing": missing})
        return not missing

    def float_type(self, node: Node, op: Op) -> int | None:
        """The node's float element type, or None (refused) when unknown or not float."""
        x, out = node.inputs[0] if node.inputs else None, node.outputs[0]
        elem = self.types.elem(x) or self.types.elem(out)
        if elem not in FLOAT_TYPES:
            self.refuse(node, op, "dtype", f"element type {D.dtype_name(elem) if elem else 'unknown'} "
                        "(float16, float32 or float64 needed)")
            return None
        return elem

    def const(self, g: Graph, value, elem: int, hint: str) -> Value:
        arr = np.asarray(value, dtype=np.int64 if elem == D.INT64 else FLOAT_TYPES[elem])
        key = (id(g), elem, arr.shape, arr.tobytes())
        v = self._consts.get(key)
        if v is None or v.graph is not g:
            v = self._consts[key] = add_constant(g, self.names.fresh(hint), arr)
        return v

    def finish(self, g: Graph, anchor: Node, new: Value, doomed: Sequence[Node], op: Op) -> None:
        old = anchor.outputs[0]
        assert old is not None
        replaced = replace_value(old, new, self.names, keep_name=True)
        assert replaced, "a fresh node output can always take the anchor's name"
        g.remove_nodes(doomed)
        self.st[DONE[op]] += 1

    # -- HardSwish / HardSigmoid ------------------------------------------------------------
    def hardsigmoid_needs(self) -> set[str]:
        return {"Mul", "Add", "Clip"}

    def hardswish(self, g: Graph, node: Node) -> None:
        elem = self.float_type(node, "HardSwish")
        if elem is None:
            return
        inner = "HardSigmoid" in self.plan.wanted
        needed = {"Mul"} | (self.hardsigmoid_needs() if inner else {"HardSigmoid"})
        if not self.feasible(node, "HardSwish", needed):
            return
        x = node.inputs[0]
        b = _Emit(self, g, node, elem)
        if inner:
            gate = self.emit_hardsigmoid(b, x, 1 / 6, 0.5)
        else:
            gate = b.op("HardSigmoid", [x], "gate", alpha=float(np.float32(1 / 6)), beta=0.5)
        self.finish(g, node, b.op("Mul", [x, gate], "out"), [node], "HardSwish")

    def hardsigmoid(self, g: Graph, node: Node) -> None:
        elem = self.float_type(node, "HardSigmoid")
        if elem is None or not self.feasible(node, "HardSigmoid", self.hardsigmoid_needs()):
            return
        b = _Emit(self, g, node, elem)
        out = self.emit_hardsigmoid(b, node.inputs[0], float(node.attr("alpha", 0.2)),
                                    float(node.attr("beta", 0.5)))
        self.finish(g, node, out, [node], "HardSigmoid")

    def emit_hardsigmoid(self, b: _Emit, x: Value, alpha: float, beta: float) -> Value:
        """Clip(x * alpha + beta, 0, 1)."""
        scaled = b.op("Mul", [x, b.const(alpha, "alpha")], "scaled")
        shifted = b.op("Add", [scaled, b.const(beta, "beta")], "shifted")
        return b.clip(shifted, 0.0, 1.0, "gate")

    # -- Sum ----------------------------------------------------------------------------------
    def sum(self, g: Graph, node: Node) -> None:
        terms = [v for v in node.inputs if v is not None]
        if len(terms) < 2:
            return  # a one-input Sum is an identity: cleanup's business
        elem = self.float_type(node, "Sum")
        if elem is None or not self.feasible(node, "Sum", {"Add"}):
            return
        b = _Emit(self, g, node, elem)
        acc = terms[0]
        for k, v in enumerate(terms[1:], start=1):
            acc = b.op("Add", [acc, v], f"add{k}")
        self.finish(g, node, acc, [node], "Sum")

    # -- Gelu ---------------------------------------------------------------------------------
    def gelu(self, g: Graph, node: Node) -> None:
        elem = self.float_type(node, "Gelu")
        if elem is None:
            return
        tanh = node.attr("approximate", "none") == "tanh"
        if not self.feasible(node, "Gelu", {"Mul", "Add", "Tanh" if tanh else "Erf"}):
            return
        b = _Emit(self, g, node, elem)
        x = node.inputs[0]
        if tanh:  # sqrt(2/pi) * (x + 0.044715 * x^3)
            cube = b.op("Mul", [b.op("Mul", [x, x], "sq"), x], "cube")
            inner = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715, "gelu_c")], "cubic")], "poly")
            arg = b.op("Mul", [inner, b.const(math.sqrt(2 / math.pi), "sqrt_2_over_pi")], "arg")
            curve = b.op("Tanh", [arg], "tanh")
        else:  # x / sqrt(2)
            arg = b.op("Mul", [x, b.const(1 / math.sqrt(2), "rsqrt2")], "arg")
            curve = b.op("Erf", [arg], "erf")
        one_plus = b.op("Add", [curve, b.const(1.0, "one")], "one_plus")
        scaled = b.op("Mul", [x, one_plus], "scaled")
        self.finish(g, node, b.op("Mul", [scaled, b.const(0.5, "half")], "out"), [node], "Gelu")

    # -- LayerNormalization ---------------------------------------------------------------
    def layernorm(self, g: Graph, node: Node) -> None:
        op = "LayerNormalization"
        stats_outputs = [o for o in node.outputs[1:] if o is not None and (o.uses or o.is_graph_output)]
        if stats_outputs:
            self.refuse(node, op, "outputs", f"its Mean/InvStdDev output `{stats_outputs[0].name}` "
                        "is used")
            return
        elem = self.float_type(node, op)
        if elem is None:
            return
        x, scale = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        axis = int(node.attr("axis", -1))
        if axis < 0:
            axes = list(range(axis, 0))
        else:
            rank = self.types.rank(x)
            if rank is None:
                self.refuse(node, op, "rank", f"axis={axis} and the rank of `{x.name}` is unknown")
                return
            axes = list(range(axis, rank))
        # stash_type=1: the fused kernel computes float16 statistics in float32.
        compute = D.FLOAT if elem == D.FLOAT16 and int(node.attr("stash_type", 1)) == 1 else elem
        needed = {"ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div"}
        if compute != elem:
            needed.add("Cast")
        if not self.feasible(node, op, needed):
            return
        b = _Emit(self, g, node, compute)
        if compute != elem:
            x, scale = b.cast(x, compute), b.cast(scale, compute)
            bias = b.cast(bias, compute) if bias is not None else None
        mean = b.reduce_mean(x, axes, "mean")
        centered = b.op("Sub", [x, mean], "centered")
        var = b.reduce_mean(b.op("Mul", [centered, centered], "sq"), axes, "var")
        std = b.op("Sqrt", [b.op("Add", [var, b.const(float(node.attr("epsilon", 1e-5)), "eps")],
                                  "var_eps")], "std")
        y = b.op("Mul", [b.op("Div", [centered, std], "normalized"), scale], "scaled")
        if bias is not None:
            y = b.op("Add", [y, bias], "biased")
        if compute != elem:
            y = b.cast(y, elem)
        self.finish(g, node, y, [node], op)

    # -- ReLU6 ----------------------------------------------------------------------------
    def relu6(self, g: Graph, anchor: Node) -> None:
        match = _relu6_match(anchor, g)
        if match is None:
            return
        inner, x, consts = match
        target = self.plan.target
        if target is not None and "Relu6" not in target.decompose and all(  # type: ignore[attr-defined]
                self.plan.has(n.op_type) for n in (inner, anchor)):
            return  # the target runs the pattern as it is
        elem = None
        needs_rank = False
        for v in consts:
            arr = constant_array(v)
            needs_rank |= arr.ndim == 1
            elem = elem or _elem_of(arr)
        x_elem = self.types.elem(x) or elem
        if x_elem not in FLOAT_TYPES or (elem is not None and elem != x_elem):
            self.refuse(anchor, "Relu6", "dtype", "not a float16/float32/float64 ReLU6")
            return
        if needs_rank and (self.types.rank(x) or 0) < 1:
            self.refuse(anchor, "Relu6", "shape", f"[1]-shaped bounds and `{x.name}` of "
                        "unknown rank: Clip would change the output's shape")
            return
        if not self.feasible(anchor, "Relu6", {"Clip"}):
            return
        b = _Emit(self, g, anchor, x_elem)
        self.finish(g, anchor, b.clip(x, 0.0, 6.0, "relu6"), [anchor, inner], "Relu6")
        for v in consts:  # bounds nobody reads any more
            if v.graph is not None and not v.uses and not v.is_graph_output and not v.is_graph_input:
                if v.producer is not None:
                    v.producer.graph.remove_nodes([v.producer])
                else:
                    remove_constant(v)


class _Emit:
    """Builds one anchor's replacement: nodes inserted before it, constants in `elem`."""

    def __init__(self, run: _Run, g: Graph, anchor: Node, elem: int):
        self.run, self.g, self.anchor, self.elem = run, g, anchor, elem
        self.base = anchor.name or anchor.op_type
        self.opset = opset(g)

    def op(self, op_type: str, inputs: Sequence[Value], hint: str, **attrs) -> Value:
        out = Value(self.run.names.fresh(f"{self.base}/{hint}"))
        self.g.insert(Node(op_type, list(inputs), [out], name=self.run.node_name(f"{self.base}/{hint}"),
                           attrs=attrs), before=self.anchor)
        return out

    def const(self, value: float, hint: str) -> Value:
        return self.run.const(self.g, value, self.elem, hint)

    def clip(self, x: Value, lo: float, hi: float, hint: str) -> Value:
        if self.opset >= CLIP_INPUT_BOUNDS_OPSET:
            return self.op("Clip", [x, self.const(lo, "lo"), self.const(hi, "hi")], hint)
        return self.op("Clip", [x], hint, min=lo, max=hi)

    def reduce_mean(self, x: Value, axes: list[int], hint: str) -> Value:
        if self.opset >= REDUCE_AXES_INPUT_OPSET:
            return self.op("ReduceMean", [x, self.run.const(self.g, axes, D.INT64, "axes")], hint,
                           keepdims=1)
        return self.op("ReduceMean", [x], hint, axes=axes, keepdims=1)

    def cast(self, x: Value, to: int) -> Value:
        return self.op("Cast", [x], f"cast{to}", to=to)


# ---------------------------------------------------------------------------------------
# ReLU6 spellings
# ---------------------------------------------------------------------------------------


def _relu6_match(anchor: Node, g: Graph) -> tuple[Node, Value, list[Value]] | None:
    """(inner node, x, constant bounds) when `anchor` ends a two-node ReLU6 with bounds
    exactly 0 and 6, the inner value read by `anchor` only."""
    t = anchor.op_type
    if t in ("Min", "Max"):
        if len(anchor.inputs) != 2 or anchor.outputs[0] is None:
            return None
        outer_bound = 6.0 if t == "Min" else 0.0
        for a, c in _both_orders(anchor):
            if not _is_scalar(c, outer_bound):
                continue
            inner = _sole_producer(a, anchor, g)
            if inner is None:
                continue
            if inner.op_type == "Relu" and t == "Min" and inner.inputs[0] is not None:
                return inner, inner.inputs[0], [c]
            other = "Max" if t == "Min" else "Min"
            if inner.op_type == other and len(inner.inputs) == 2:
                inner_bound = 0.0 if t == "Min" else 6.0
                for x, c2 in _both_orders(inner):
                    if _is_scalar(c2, inner_bound):
                        return inner, x, [c, c2]
        return None
    if t == "Clip" and anchor.inputs and anchor.inputs[0] is not None:
        inner = _sole_producer(anchor.inputs[0], anchor, g)
        if inner is None or inner.op_type != "Relu" or inner.inputs[0] is None:
            return None
        if opset(g) < CLIP_INPUT_BOUNDS_OPSET:
            lo = anchor.attr("min")
            if (lo is not None and lo > 0) or anchor.attr("max") != 6.0:
                return None
            return inner, inner.inputs[0], []
        lo_v = anchor.inputs[1] if len(anchor.inputs) > 1 else None
        hi_v = anchor.inputs[2] if len(anchor.inputs) > 2 else None
        lo_arr = constant_array(lo_v) if lo_v is not None else None
        if lo_v is not None and (lo_arr is None or lo_arr.size != 1 or float(lo_arr.reshape(())) > 0):
            return None
        if not _is_scalar(hi_v, 6.0):
            return None
        return inner, inner.inputs[0], [v for v in (lo_v, hi_v) if v is not None]
    return None


def _both_orders(node: Node):
    a, b = node.inputs
    if a is None or b is None:
        return
    yield a, b
    if a is not b:
        yield b, a


def _sole_producer(v: Value, reader: Node, g: Graph) -> Node | None:
    """`v`'s default-domain producer in `g`, when `reader` is its only reader and it is
    not a graph output."""
    p = v.producer
    if p is None or p.graph is not g or p.domain != "" or len(p.outputs) != 1:
        return None
    if v.is_graph_output or any(u is not reader for u in v.users):
        return None
    return p


def _is_scalar(v: Value | None, want: float) -> bool:
    """A float constant of one element (rank 0 or [1]) equal to `want`."""
    arr = constant_array(v)
    return (arr is not None and arr.size == 1 and arr.ndim <= 1 and arr.dtype.kind == "f"
            and float(arr.reshape(())) == want)


def _elem_of(arr: np.ndarray) -> int | None:
    for elem, np_type in FLOAT_TYPES.items():
        if arr.dtype == np_type:
            return elem
    return None
