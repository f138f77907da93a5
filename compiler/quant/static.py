"""Static quantization to the QDQ form: which tensors to quantize, with which parameters, and
the graph edits that insert QuantizeLinear/DequantizeLinear (used by the `quantize` pass and by
its sensitivity analysis, which applies the same plan one layer at a time).

Vocabulary. A *layer* is a node whose arithmetic runs in integers once quantized (Conv,
ConvTranspose, Gemm, MatMul and, when asked, Add/Mul). Its *weights* are constant inputs,
quantized offline to integer initializers read through a DequantizeLinear; its *activations*
are the non-constant float inputs and outputs, quantized with calibrated per-tensor parameters
by a QuantizeLinear -> DequantizeLinear pair placed right after the tensor is produced, so every
consumer reads the same (fake-)quantized value. *Data-movement* ops (Reshape, Transpose,
MaxPool, ...) only move or select values, so DQ -> op -> Q with the input's parameters is exact:
their output reuses the input's parameters and no requantization is inserted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Collection, Iterable, Sequence

import numpy as np

from homec import dtypes as D
from homec.ir import Graph, Node, Tensor, Value
from homec.quant import numerics as N

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ELEMENTWISE_OPS = ("Add", "Mul")
# Ops whose output values are a selection/rearrangement of input values: quantization
# parameters pass through unchanged (Resize only in nearest mode, MaxPool picks values).
DATA_MOVEMENT_OPS = frozenset({
    "Reshape", "Transpose", "MaxPool", "Slice", "Flatten", "Squeeze", "Unsqueeze", "Resize",
    "Identity", "Gather", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
})


@dataclasses.dataclass(frozen=True)
class QParams:
    """Per-tensor or per-axis affine parameters of one quantized tensor."""

    scale: np.ndarray  # float32, scalar or 1-D
    zero_point: np.ndarray  # qtype's dtype, same shape as scale
    qtype: N.QType
    axis: int | None = None


@dataclasses.dataclass
class Layer:
    """One node to quantize: which input slots are weights, activations, bias."""

    node: Node
    key: str  # its first output's name: stable across copies of the graph
    weight_slots: dict[int, int | None]  # slot -> per-channel axis (None: per tensor)
    activation_slots: list[int]
    bias_slot: int | None = None  # Conv/ConvTranspose/Gemm bias quantized to int32
    # the tensor quantized as the layer's output: its own output, or the output of a Relu/Clip
    # reading it alone (quantizing after the activation lets a runtime fuse it; see absorb)
    output_tensor: str | None = None

    @property
    def label(self) -> str:
        return self.node.name or self.key


@dataclasses.dataclass
class Plan:
    """Everything static quantization decides before it edits the graph."""

    layers: list[Layer]
    # activation tensor name -> the tensor whose parameters it reuses (itself if calibrated)
    activation_source: dict[str, str]
    weight_qtype: N.QType
    activation_qtype: N.QType
    per_channel: bool
    weight_symmetric: bool
    activation_symmetric: bool
    reduce_range: bool = False
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    # y -> (a, b): y = Add(Mul(h, a), b) with scalar constants, foldable into y's quantizer
    affine: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    drop_small_shifts: bool = False  # see _absorb_affine

    @property
    def calibrated(self) -> list[str]:
        """Tensors that need calibration statistics (the ones not sharing another's)."""
        return sorted({src for src in self.activation_source.values()})

    def layer_tensors(self, layer: Layer) -> list[str]:
        """The activation tensors quantized for `layer` alone (its inputs and output)."""
        names = [layer.node.inputs[s].name for s in layer.activation_slots]  # type: ignore[union-attr]
        if layer.output_tensor is not None:
            names.append(layer.output_tensor)
        return [n for n in names if n in self.activation_source]


def _is_float(types, v: Value | None) -> bool:
    return v is not None and types.elem(v) == D.FLOAT


def _const(v: Value | None) -> np.ndarray | None:
    from homec.passes._util import const_of

    return const_of(v)


def _weight_axis(node: Node, slot: int, arr: np.ndarray, per_channel: bool) -> int | None:
    """The output-channel axis of a weight, or None for per-tensor parameters."""
    if not per_channel:
        return None
    op = node.op_type
    if op == "Conv" and slot == 1 and arr.ndim >= 3:
        return 0  # [M, C/group, k...]
    if op == "ConvTranspose" and slot == 1 and arr.ndim >= 3:
        return 1  # [C, M/group, k...]
    if op == "Gemm" and slot == 1 and arr.ndim == 2:
        return 0 if node.attr("transB", 0) else 1
    if op == "MatMul" and slot == 1 and arr.ndim == 2:
        return 1  # [K, N]: one scale per output column
    return None


def build_plan(graph: Graph, types, *, ops: Collection[str], selected: Callable[[Node], bool],
               excluded: Callable[[Node], bool], weight_qtype: N.QType,
               activation_qtype: N.QType, per_channel: bool, weight_symmetric: bool = True,
               activation_symmetric: bool = False, reduce_range: bool = False,
               weights_only: bool = False) -> Plan:
    """Choose the layers of the top-level graph and the activation tensors to quantize.

    Subgraphs (If/Loop bodies) are left in float. A layer needs float inputs; its weight must
    be a constant initializer (Constant nodes are lifted by `fold_constants`).
    """
    layers: list[Layer] = []
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for node in graph.nodes:
        if node.domain != "" or node.op_type not in ops:
            continue
        if not selected(node) or excluded(node):
            skip("kept_float_excluded")
            continue
        out = node.outputs[0] if node.outputs else None
        if out is None or not _is_float(types, out):
            skip("skipped_not_float")
            continue
        layer = _layer_of(node, types, per_channel, weights_only)
        if isinstance(layer, str):
            skip(layer)
            continue
        layers.append(layer)

    source: dict[str, str] = {}
    if not weights_only:
        for layer in layers:
            for s in layer.activation_slots:
                v = layer.node.inputs[s]
                assert v is not None
                source.setdefault(v.name, v.name)
            out = layer.node.outputs[0]
            if out is not None and not out.is_graph_output:
                act = _activation_after(out, types)
                if act is not None:
                    out = act.outputs[0]
                layer.output_tensor = out.name
                source.setdefault(out.name, out.name)
        _share_through_data_movement(graph, types, source, {id(la.node) for la in layers})
        _share_into_concat(graph, types, source)
    plan = Plan(layers, source, weight_qtype, activation_qtype, per_channel, weight_symmetric,
                activation_symmetric, reduce_range, skipped)
    if not weights_only:
        layer_ids = {id(la.node) for la in layers}
        for name in source:
            v = graph.value(name)
            ab = _scalar_affine(v, types, layer_ids) if v is not None else None
            if ab is not None:
                plan.affine[name] = ab
    return plan


def _scalar(v: Value | None) -> float | None:
    arr = _const(v)
    if arr is None or arr.size != 1 or arr.dtype != np.float32:
        return None
    return float(arr.reshape(()))


def _scalar_affine(y: Value, types, layer_ids: set[int] = frozenset()) -> tuple[float, float] | None:
    """(a, b) when y = Add(Mul(h, a), b) with float32 scalar constants, a > 0, the Mul read
    only by the Add, h of the same shape as y (PP-LCNetV3's learnable affine blocks after
    each activation). Quantizing y then needs neither node: see `affine_qparams`. Not when
    the Add or the Mul is itself a quantized layer (`layer_ids`: its own Q/DQ then sits
    between them)."""
    add = y.producer
    if add is None or add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
        return None
    if id(add) in layer_ids:
        return None
    for slot in (0, 1):
        b = _scalar(add.inputs[1 - slot])
        m = add.inputs[slot]
        mul = m.producer if m is not None else None
        if b is None or mul is None or mul.op_type != "Mul" or mul.domain != "" or len(mul.inputs) != 2:
            continue
        if id(mul) in layer_ids:
            continue
        if len(m.uses) != 1 or m.is_graph_output:
            continue
        for mslot in (0, 1):
            a = _scalar(mul.inputs[1 - mslot])
            h = mul.inputs[mslot]
            if a is None or not a > 0 or h is None or not _is_float(types, h):
                continue
            hs, ys = types.static(h), types.static(y)
            if types.rank(h) is None or types.rank(h) != types.rank(y) or \
                    (hs is not None and ys is not None and hs != ys):
                continue
            return a, b
    return None


def affine_qparams(p: QParams, b: float) -> QParams | None:
    """Parameters for y = a*h + b with b a whole number k of steps (b = k*s), or None.

    Then Q(a*h + b; s, z) = saturate(round(a*h/s) + k + z) = Q(h; s/a, z + k): the quantizer
    reads h directly with scale s/a and zero point z + k, and DequantizeLinear(s, z) still
    yields y's values (exact up to float rounding of h/(s/a) vs a*h/s). k is b/s rounded
    toward zero, so the step only grows (no extra clipping), by at most 1.5x; the zero point
    keeps the calibrated lower end and z + k must stay in the type's range.
    """
    if p.axis is not None:
        return None
    if b == 0.0:
        return p
    s0 = float(p.scale)
    k = math.trunc(b / s0)
    if k == 0:
        return None  # |b| under one step
    s = np.float32(b / k)
    if not s >= s0 * (1 - 1e-6) or float(s) > 1.5 * s0:
        return None
    qt = p.qtype
    z0 = int(np.asarray(p.zero_point).astype(np.int64))
    rmin = (qt.qmin - z0) * s0
    z = int(np.clip(round(qt.qmin - rmin / float(s)), qt.qmin, qt.qmax))
    if not qt.qmin <= z + k <= qt.qmax:
        return None
    return QParams(np.asarray(s, np.float32).reshape(()), np.asarray(z).astype(qt.np_dtype).reshape(()), qt)


def _layer_of(node: Node, types, per_channel: bool, weights_only: bool) -> Layer | str:
    """The Layer for `node`, or the statistic key saying why it is not one."""
    op = node.op_type
    ins = node.inputs
    key = node.outputs[0].name  # type: ignore[union-attr]
    if any(v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"
           for v in ins):
        return "skipped_already_quantized"  # a QDQ model, or this pass ran before
    weight_slots: dict[int, int | None] = {}
    acts: list[int] = []
    bias = None
    if op in ("Conv", "ConvTranspose", "Gemm"):
        if len(ins) < 2 or not _is_float(types, ins[0]):
            return "skipped_not_float"
        w = _const(ins[1])
        if w is None:
            return "skipped_nonconstant_weight"
        if op == "Gemm" and node.attr("transA", 0):
            return "skipped_gemm_transA"
        if _const(ins[0]) is not None:
            return "skipped_constant_input"
        weight_slots[1] = _weight_axis(node, 1, w, per_channel)
        acts = [0]
        if len(ins) > 2 and ins[2] is not None:
            b = _const(ins[2])
            if b is None:
                return "skipped_nonconstant_bias"
            # an int32 bias needs scale = input scale x weight scale: a 1-D bias per channel
            if b.ndim == 1 and (op != "Gemm" or (node.attr("beta", 1.0) == 1.0
                                                 and node.attr("alpha", 1.0) == 1.0)):
                bias = 2
    elif op == "MatMul":
        if len(ins) != 2 or not all(_is_float(types, v) for v in ins):
            return "skipped_not_float"
        for s in (0, 1):
            arr = _const(ins[s])
            if arr is not None:
                weight_slots[s] = _weight_axis(node, s, arr, per_channel)
            else:
                acts.append(s)
        if not acts:
            return "skipped_constant_input"
    else:  # Add / Mul: quantized elementwise, where the target has integer kernels for them
        if len(ins) != 2 or not all(_is_float(types, v) for v in ins):
            return "skipped_not_float"
        for s in (0, 1):
            arr = _const(ins[s])
            if arr is not None:
                weight_slots[s] = None
            else:
                acts.append(s)
        if not acts:
            return "skipped_constant_input"
    if weights_only:
        if not weight_slots:
            return "skipped_no_weights"
        acts, bias = [], None
    return Layer(node, key, weight_slots, acts, bias)


def _share_through_data_movement(graph: Graph, types, source: dict[str, str],
                                 layer_ids: set[int]) -> None:
    """Give data-movement outputs the parameters of their input when they feed a layer.

    DQ(x) -> MaxPool -> Q with x's parameters is exact (the op only selects or moves
    values), so no requantization is needed between them. Only outputs that reach a
    quantized layer (possibly through more data movement) are quantized: elsewhere the pair
    would only add nodes to a float path.
    """
    feeds_layer: dict[str, bool] = {}

    def reaches_layer(v: Value) -> bool:
        hit = feeds_layer.get(v.name)
        if hit is not None:
            return hit
        feeds_layer[v.name] = False  # cycle guard (graphs are acyclic; cheap anyway)
        ok = False
        for user, slot in v.uses:
            if id(user) in layer_ids:
                ok = True
                break
            if _moves_data(user) and slot == 0 and user.outputs and user.outputs[0] is not None \
                    and reaches_layer(user.outputs[0]):
                ok = True
                break
        feeds_layer[v.name] = ok
        return ok

    for node in graph.nodes:  # topological order: chains of data movement propagate
        if not _moves_data(node) or not node.inputs or node.inputs[0] is None:
            continue
        src = source.get(node.inputs[0].name)
        out = node.outputs[0] if node.outputs else None
        if src is None or out is None or out.is_graph_output or not _is_float(types, out):
            continue
        if len([o for o in node.outputs if o is not None]) != 1:
            continue  # Split: several outputs, keep it simple
        if reaches_layer(out):
            source[out.name] = src  # overrides a calibrated entry: no requantization


def _activation_after(out: Value, types) -> Node | None:
    """The Relu/Clip that alone reads a layer's output `out`, when its result is quantized in
    the layer's place (so Q(act(y)) can absorb it, see `absorbs`)."""
    if len(out.uses) != 1:
        return None
    act, slot = out.uses[0]
    if slot != 0 or act.domain != "" or act.op_type not in ("Relu", "Clip"):
        return None
    res = act.outputs[0] if act.outputs else None
    if res is None or res.is_graph_output or not _is_float(types, res) or act.graph is not out.graph:
        return None
    if act.op_type == "Clip" and clip_bounds(act) is None:
        return None
    return act


def clip_bounds(node: Node) -> tuple[float, float] | None:
    """(lo, hi) of a Relu or a Clip with constant bounds (inputs from opset 11, attributes
    before), else None."""
    if node.op_type == "Relu":
        return 0.0, float("inf")
    lo, hi = float("-inf"), float("inf")
    if len(node.inputs) > 1 or (node.graph is not None and (node.graph.opset() or 21) >= 11):
        for slot in (1, 2):
            v = node.inputs[slot] if slot < len(node.inputs) else None
            if v is None:
                continue
            arr = _const(v)
            if arr is None or arr.size != 1:
                return None
            if slot == 1:
                lo = float(arr.reshape(()))
            else:
                hi = float(arr.reshape(()))
    else:
        lo = float(node.attr("min", lo))
        hi = float(node.attr("max", hi))
    return lo, hi


def absorbs(act: Node, p: QParams) -> bool:
    """Whether Q(x; p) == Q(act(x); p) for every x: the quantized range lies inside the
    activation's [lo, hi], so saturation already clips (Relu with zero point = qmin)."""
    bounds = clip_bounds(act)
    if bounds is None or p.axis is not None:
        return False
    lo, hi = bounds
    s = float(p.scale)
    z = int(np.asarray(p.zero_point).astype(np.int64))
    rep_lo, rep_hi = (p.qtype.qmin - z) * s, (p.qtype.qmax - z) * s
    return lo <= rep_lo and rep_hi <= hi


def _share_into_concat(graph: Graph, types, source: dict[str, str]) -> None:
    """Quantize every input of a quantized Concat with the Concat's parameters.

    Concat of integers is exact only when all inputs share one map; then DQ -> Concat -> Q
    runs on the integers (`fold_qdq` moves it) instead of in float. Each input is traced up
    through data movement (Resize-nearest, Reshape, ...) to the tensor that produces it, and
    every tensor on the way takes the Concat output's parameters, so the requantization
    happens once, where the tensors are smallest (before an upsampling Resize). The Concat's
    calibrated range is the union of its inputs' ranges. Only chains of single-use tensors are
    rewired (all inputs or none): elsewhere other readers would see the shared map too.
    """
    for node in graph.nodes:
        if node.op_type != "Concat" or node.domain != "" or not node.outputs or node.outputs[0] is None:
            continue
        y = node.outputs[0]
        src = source.get(y.name)
        if src is None:
            continue
        chains: list[list[str]] = []
        for x in node.inputs:
            chain = _single_use_chain(x, types)
            if chain is None:
                break
            chains.append(chain)
        else:
            for chain in chains:
                for name in chain:
                    source[name] = src


def _single_use_chain(x: Value | None, types) -> list[str] | None:
    """[x, its data-movement ancestors...] while each is float, read once and not a graph
    output; None when x itself does not qualify."""
    chain: list[str] = []
    v = x
    while v is not None and _is_float(types, v) and len(v.uses) == 1 and not v.is_graph_output \
            and _const(v) is None:
        chain.append(v.name)
        p = v.producer
        if p is None or not _moves_data(p) or not p.inputs or p.inputs[0] is None:
            break
        if len([o for o in p.outputs if o is not None]) != 1:
            break
        v = p.inputs[0]
    return chain or None


def _moves_data(node: Node) -> bool:
    if node.domain != "" or node.op_type not in DATA_MOVEMENT_OPS:
        return False
    if node.op_type == "Resize":
        return node.attr("mode", b"nearest") in (b"nearest", "nearest")
    return True


# ---------------------------------------------------------------------------------------
# Editing the graph
# ---------------------------------------------------------------------------------------


def activation_qparams(rmin: float, rmax: float, plan: Plan) -> QParams:
    scale, zp = N.choose_qparams(rmin, rmax, plan.activation_qtype,
                                 symmetric=plan.activation_symmetric)
    return QParams(np.asarray(scale, np.float32).reshape(()),
                   np.asarray(zp).astype(plan.activation_qtype.np_dtype).reshape(()),
                   plan.activation_qtype)


def weight_qparams(arr: np.ndarray, axis: int | None, plan: Plan) -> QParams:
    scale, zp = N.weight_qparams(arr, plan.weight_qtype, axis=axis,
                                 symmetric=plan.weight_symmetric, reduce_range=plan.reduce_range)
    if axis is None:
        scale, zp = np.asarray(scale).reshape(()), np.asarray(zp).reshape(())
    return QParams(np.asarray(scale, np.float32), np.asarray(zp).astype(plan.weight_qtype.np_dtype),
                   plan.weight_qtype, axis)


@dataclasses.dataclass
class ApplyStats:
    layers: int = 0
    weights: int = 0
    biases: int = 0
    activations: int = 0
    shared: int = 0
    absorbed: int = 0
    affine_absorbed: int = 0
    # activation tensor name -> the DequantizeLinear output consumers read now
    dequantized: dict[str, str] = dataclasses.field(default_factory=dict)
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0


class _Builder:
    def __init__(self, graph: Graph):
        self.g = graph

    def const(self, hint: str, arr: np.ndarray) -> Value:
        from homec.passes._util import add_constant

        return add_constant(self.g, self.g.unique_name(hint), np.asarray(arr))

    def qdq_nodes(self, x: Value, p: QParams, hint: str) -> tuple[Node, Node, Value]:
        s = self.const(hint + "_s", p.scale)
        z = self.const(hint + "_z", p.zero_point)
        q_out = Value(self.g.unique_name(hint + "_q"))
        dq_out = Value(self.g.unique_name(hint + "_dq"))
        attrs = {} if p.axis is None else {"axis": int(p.axis)}
        q = Node("QuantizeLinear", [x, s, z], [q_out], name=self.g.fresh_name(hint + "_Q"),
                 attrs=dict(attrs))
        dq = Node("DequantizeLinear", [q_out, s, z], [dq_out],
                  name=self.g.fresh_name(hint + "_DQ"), attrs=dict(attrs))
        return q, dq, dq_out

    def dequantized_const(self, q: np.ndarray, p: QParams, hint: str, before: Node,
                          with_zero_point: bool = True) -> Value:
        qv = self.const(hint + "_q", q)
        s = self.const(hint + "_s", p.scale)
        ins = [qv, s]
        if with_zero_point:
            ins.append(self.const(hint + "_z", p.zero_point))
        out = Value(self.g.unique_name(hint + "_dq"))
        attrs = {} if p.axis is None else {"axis": int(p.axis)}
        dq = Node("DequantizeLinear", ins, [out], name=self.g.fresh_name(hint + "_DQ"),
                  attrs=attrs)
        self.g.insert(dq, before=before)
        return out


def quantize_activation(graph: Graph, v: Value, p: QParams) -> Node:
    """Insert Q -> DQ after `v`; every consumer (not graph-output lists) reads the DQ output."""
    b = _Builder(graph)
    uses = list(v.uses)
    q, dq, dq_out = b.qdq_nodes(v, p, v.name)
    if v.producer is not None:
        graph.insert(q, after=v.producer)
    else:
        graph.insert(q, before=min((u for u, _ in uses), key=graph.position))
    graph.insert(dq, after=q)
    for user, slot in uses:  # subgraph captures included: they read the outer value by name
        user.set_input(slot, dq_out)
    return q


def _absorb_affine(graph: Graph, q: Node, y: Value, ab: tuple[float, float], p: QParams,
                   small_shift: bool = False) -> bool:
    """Fold y = Add(Mul(h, a), b) into y's quantizer; True when the Add went too.

    Always: Q(a*h + b; s, z) = Q(h + b/a; s/a, z), so the Mul goes (the Add now adds b/a).
    When b = k*s (see affine_qparams): = Q(h; s/a, z + k), and the Add goes as well.
    """
    from homec.passes._util import remove_constant

    a, bias = ab
    add = y.producer
    assert add is not None
    m = next(v for v in add.inputs if v is not None and v.producer is not None
             and v.producer.op_type == "Mul" and _const(v) is None)
    mul = m.producer
    h = next(v for v in mul.inputs if v is not None and _const(v) is None)
    z = int(np.asarray(p.zero_point).astype(np.int64))
    steps = bias / float(p.scale)
    whole = bias == 0.0 or (round(steps) != 0 and abs(steps - round(steps)) <= 1e-3)
    if not whole and small_shift and p.qtype.qmin <= z + round(steps) <= p.qtype.qmax:
        # b rounded to a whole number of steps: every value moves by under half a step (the
        # error of one more rounding), and the Add goes too
        whole, steps = True, float(round(steps))
    b = _Builder(graph)
    scale = b.const(y.name + "_as", np.asarray(np.float32(float(p.scale) / a)))
    dead = [c for c in (*add.inputs, *mul.inputs) if c is not None and _const(c) is not None]
    if whole:
        zp = b.const(y.name + "_az",
                     np.asarray(z + (round(steps) if steps else 0)).astype(p.qtype.np_dtype))
        graph.set_inputs_of(q, [h, scale, zp])
        graph.remove_nodes([add, mul])
    else:
        shift = b.const(y.name + "_ab", np.asarray(np.float32(bias / a)))
        graph.set_inputs_of(add, [h, shift])
        graph.set_inputs_of(q, [y, scale, q.inputs[2]])
        graph.remove_nodes([mul])
    for c in dead:
        if not c.uses and not c.is_graph_output and c.const is not None:
            remove_constant(c)
    return whole


def apply_plan(graph: Graph, plan: Plan, params: dict[str, QParams], *,
               layers: Iterable[Layer] | None = None,
               bias_shift: Callable[[Layer, np.ndarray, np.ndarray], np.ndarray | None] | None = None,
               ) -> ApplyStats:
    """Quantize `layers` (default: all of the plan) of `graph` in place.

    `params` maps each activation tensor of the plan to its parameters (shared tensors
    included). `bias_shift(layer, w_float, w_dequantized)` may return an amount to add to the
    float bias before it is quantized (bias correction). Layers are looked up by key so a plan
    made on one copy of a graph applies to another copy.
    """
    st = ApplyStats()
    chosen = list(plan.layers if layers is None else layers)
    by_key = {n.outputs[0].name: n for n in graph.nodes if n.outputs and n.outputs[0] is not None}
    tensors: list[str] = []
    seen: set[str] = set()
    shared_weights: dict[tuple[str, int | None], tuple[Value, QParams, np.ndarray]] = {}
    for layer in chosen:
        node = by_key.get(layer.key)
        if node is None:
            raise KeyError(f"layer {layer.key!r} is not in the graph")
        _quantize_layer_weights(graph, node, layer, plan, params, st, bias_shift, shared_weights)
        for name in plan.layer_tensors(layer):
            if name not in seen:
                seen.add(name)
                tensors.append(name)
    if layers is None:
        # data-movement outputs sharing a layer tensor's parameters
        for name, src in plan.activation_source.items():
            if name not in seen and src != name:
                seen.add(name)
                tensors.append(name)
    absorbing = {la.output_tensor for la in chosen if la.output_tensor is not None}
    for name in tensors:
        v = graph.value(name)
        if v is None or name not in params:
            continue
        q = quantize_activation(graph, v, params[name])
        st.activations += 1
        st.dequantized[name] = q.outputs[0].uses[0][0].outputs[0].name  # type: ignore[union-attr]
        act = v.producer
        if name in absorbing and act is not None and act.op_type in ("Relu", "Clip") \
                and absorbs(act, params[name]):
            # Q(act(y)) == Q(y): quantize y directly and drop the activation (exact)
            q.set_input(0, act.inputs[0])
            graph.remove_nodes([act])
            st.absorbed += 1
        elif name in plan.affine and v.producer is not None and v.producer.op_type == "Add":
            st.affine_absorbed += 1 + _absorb_affine(graph, q, v, plan.affine[name], params[name],
                                                     small_shift=plan.drop_small_shifts)
        if plan.activation_source.get(name, name) != name:
            st.shared += 1
    st.layers = len(chosen)
    return st


def _quantize_layer_weights(graph: Graph, node: Node, layer: Layer, plan: Plan,
                            params: dict[str, QParams], st: ApplyStats, bias_shift,
                            shared_weights: dict) -> None:
    from homec.passes._util import remove_constant

    b = _Builder(graph)
    w_scales: dict[int, QParams] = {}
    w_float: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for slot, axis in layer.weight_slots.items():
        v = node.inputs[slot]
        assert v is not None and isinstance(v.const, Tensor)
        arr = v.const.numpy().astype(np.float32)
        known = shared_weights.get((v.name, axis))
        if known is not None:  # a weight several layers read: quantized once
            dq_out, p, deq = known
            w_scales[slot] = p
            w_float[slot] = (arr, deq)
            node.set_input(slot, dq_out)
            if not v.uses and not v.is_graph_output:
                remove_constant(v)
            continue
        p = weight_qparams(arr, axis, plan)
        q = N.quantize(arr, p.scale, p.zero_point, plan.weight_qtype, axis)
        w_scales[slot] = p
        w_float[slot] = (arr, N.dequantize(q, p.scale, p.zero_point, axis))
        st.weight_bytes_before += arr.nbytes
        st.weight_bytes_after += q.nbytes * plan.weight_qtype.bits // 8 // q.dtype.itemsize \
            + p.scale.nbytes + p.zero_point.nbytes
        dq_out = b.dequantized_const(q, p, (node.name or layer.key) + "_" + _slot_name(node, slot),
                                     before=node)
        node.set_input(slot, dq_out)
        shared_weights[(v.name, axis)] = (dq_out, p, w_float[slot][1])
        st.weights += 1
        if not v.uses and not v.is_graph_output:
            remove_constant(v)
    bias_slot = layer.bias_slot
    if bias_slot is None:
        if bias_shift is None or node.op_type not in ("Conv", "ConvTranspose") or 1 not in w_float \
                or len(node.inputs) > 2:
            return
        # bias correction needs a bias to shift: give the layer a zero one
        w = w_float[1][0]
        n_out = w.shape[0] if node.op_type == "Conv" else w.shape[1] * int(node.attr("group", 1))
        zero = b.const((node.name or layer.key) + "_bias", np.zeros(n_out, np.float32))
        graph.set_inputs_of(node, [*node.inputs, zero])
        bias_slot = 2
    bv = node.inputs[bias_slot]
    assert bv is not None and isinstance(bv.const, Tensor)
    bias = bv.const.numpy().astype(np.float32)
    if bias_shift is not None and 1 in w_float:
        shift = bias_shift(layer, *w_float[1])
        if shift is not None:
            bias = (bias + shift).astype(np.float32)
    x = node.inputs[layer.activation_slots[0]] if layer.activation_slots else None
    xp = params.get(x.name) if x is not None else None
    wp = w_scales.get(1)
    if xp is None or wp is None:
        if bias_shift is not None and bias is not bv.const.numpy():
            node.set_input(bias_slot, b.const((node.name or layer.key) + "_bias", bias))
            if not bv.uses and not bv.is_graph_output:
                remove_constant(bv)
        return  # input kept float (weights-only): the bias stays float
    n_out = bias.shape[0]
    if wp.scale.ndim and wp.scale.shape[0] != n_out:
        return
    qb, sb = N.quantize_bias(bias, float(xp.scale), wp.scale)
    if wp.scale.ndim == 0:  # per-tensor weights: one bias scale, no axis (valid below opset 13)
        bp = QParams(sb.astype(np.float32).reshape(()), np.zeros((), np.int32), N.qtype("int32"))
    else:
        bp = QParams(sb.astype(np.float32), np.zeros(n_out, np.int32), N.qtype("int32"), 0)
    dq_out = b.dequantized_const(qb, bp, (node.name or layer.key) + "_bias", before=node)
    node.set_input(bias_slot, dq_out)
    st.biases += 1
    st.weight_bytes_before += bias.nbytes
    st.weight_bytes_after += qb.nbytes + sb.nbytes + bp.zero_point.nbytes
    if not bv.uses and not bv.is_graph_output:
        remove_constant(bv)


def _slot_name(node: Node, slot: int) -> str:
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return ("x", "w", "b")[slot] if slot < 3 else f"in{slot}"
    return f"in{slot}"


def match_names(globs: Sequence[str], layers: Sequence[Node]) -> Callable[[Node], bool]:
    """A predicate for `exclude`: node-name globs, plus @first / @last (the first / last
    quantizable layer in topological order)."""
    special = {g for g in globs if g.startswith("@")}
    plain = [g for g in globs if not g.startswith("@")]
    ids: set[int] = set()
    if layers:
        if "@first" in special:
            ids.add(id(layers[0]))
        if "@last" in special:
            ids.add(id(layers[-1]))

    def excluded(node: Node) -> bool:
        if id(node) in ids:
            return True
        return any(fnmatch.fnmatchcase(node.name, g) for g in plain)

    return excluded
