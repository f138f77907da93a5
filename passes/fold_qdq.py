"""Fold QuantizeLinear / DequantizeLinear (QDQ) models: constant weights, redundant pairs,
integer operators or plain float."""

from __future__ import annotations

from typing import Literal

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.ir import Graph, Node, TensorType, Value
from homec.quant import numerics as N
from homec.registry import Stats, Tolerance, register_pass

from ._qdq import (DEQUANTIZE, QUANTIZE, QParams, Weight, is_op, producer, qdq_params,
                   quantized_constant, trace_weight)
from ._util import (Names, Types, add_constant, all_graphs, can_add_constant, const_of, is_const,
                    opset, remove_constant, replace_value, used)

Form = Literal["auto", "qdq", "integer", "float"]

CHANGES = ("weights_folded", "pairs_cancelled", "chains_merged", "movement_simplified",
           "qlinear_conv", "qlinear_matmul", "gemm_as_qlinear_conv", "conv_integer",
           "matmul_integer", "weights_dequantized", "activation_qdq_removed", "activations_to_uint8")

# Ops that only select or move elements: op(DQ(q)) = DQ(op(q)) for a per-tensor DQ.
# Value: the input slots holding data (None: all of them).
MOVEMENT: dict[str, tuple[int, ...] | None] = {
    "Reshape": (0,), "Transpose": (0,), "MaxPool": (0,), "Concat": None, "Slice": (0,),
    "Resize": (0,), "Flatten": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
}

# (x, w, y) element types of QLinearConv / QLinearMatMul that onnxruntime's CPU kernels
# implement (1.32: the other combinations fail with NOT_IMPLEMENTED).
_U8, _S8 = D.UINT8, D.INT8
QLINEAR_TYPES = {(_U8, _U8, _U8), (_U8, _S8, _U8), (_S8, _S8, _S8)}

_MAX_SWEEPS = 64


def resolve_form(form: str, target: object | None) -> str:
    """The form `auto` stands for: the target's boolean `integer_kernels`, else `qdq`."""
    if form != "auto":
        return form
    flag = getattr(target, "integer_kernels", None) if target is not None else None
    if isinstance(flag, bool):
        return "integer" if flag else "float"
    return "qdq"


@register_pass("fold_qdq", tolerance=Tolerance.bounded(min_cosine=0.99))
def fold_qdq(graph: Graph, ctx: PassContext, *, form: Form = "auto", fold_weights: bool = True,
             cancel: bool = True, activations: Literal["keep", "uint8"] = "keep") -> Stats:
    """Fold QuantizeLinear/DequantizeLinear (QDQ) models into integer weights, integer ops or float.

    Accepts QDQ models of any producer (homec `quantize`, onnxruntime `quantize_static`,
    PyTorch QAT exports with float weights behind Q -> DQ, NNCF). Q(x) = sat(rint(x / s) + z),
    DQ(q) = (q - z) * s, rint rounding half to even, sat clamping to [-128, 127] / [0, 255];
    per-axis s, z broadcast along `axis`. Only 8-bit activations and weights (int32 biases),
    float32 scales and standard-domain operators are produced.

    Rewrites and their algebra:
      1. weights (`weights_folded`): Q(W) of a float constant W is computed here with
         onnxruntime's arithmetic (homec.quant.numerics) and stored as an integer constant;
         the DQ stays. Exact; the weight shrinks 4x.
      2. redundant pairs: Q(DQ(q)) = q when both maps are identical, since
         (q - z) * s / s rounds back to q - z for any normal float32 s (`pairs_cancelled`,
         exact). Q2(DQ1(Q1(x))) = Q2(x) when s1 = s2 (same axis) and Q1's clamp range,
         relative to its zero point, contains Q2's (`chains_merged`, exact). Data-movement
         ops M (Reshape, Transpose, MaxPool, Concat, Slice, Resize nearest, Flatten,
         Squeeze, Unsqueeze) commute with a per-tensor DQ: M(DQ(q)) = DQ(M(q)) (MaxPool since
         DQ is increasing; Concat only when all its inputs share one map), so M runs on the
         integers and its DQ moves below it, where it cancels against a following identical
         Q (`movement_simplified`, exact).
      3. integer form, anchored on Conv / MatMul / Gemm with DQ inputs:
         DQ -> Conv -> Q:    QLinearConv(xq, xs, xz, wq, ws, wz, ys, yz, bq)
                             = Q(Conv(DQ(xq), DQ(wq), DQ(bq)), ys, yz)   (`qlinear_conv`)
         DQ -> MatMul -> Q:  QLinearMatMul(aq, as, az, bq, bs, bz, ys, yz)  (`qlinear_matmul`;
                             Gemm with transA = 0, alpha = 1 and no C too, op(B) folded)
         DQ -> Gemm(C) -> Q: Reshape -> QLinearConv 1x1 -> Reshape (`gemm_as_qlinear_conv`,
                             the only standard integer op with a bias)
         DQ -> Conv -> float:  Cast(ConvInteger(xq, wq, xz, wz)) * (xs * ws) (+ b)
                             (`conv_integer`); MatMul / Gemm likewise with MatMulInteger
                             (`matmul_integer`).
         The integer accumulator sum (xq - xz)(wq - wz) + bq is exact; the float QDQ graph
         sums rounded products instead and the QLinear kernels rescale the accumulator once
         by xs * ws / ys, so a QLinear output is within one output quantization step of the
         QDQ graph's (given the same input; through a deep net the steps can compound), and
         an *Integer output within float rounding of it. A float bias b is
         quantized with bq = rint(b / (xs * ws)) (numerics.quantize_bias); a DQ(int32) bias
         must already have scale xs * ws (relative difference <= 1e-6) and zero point 0.
         A weight seen through Transpose / Unsqueeze (or Gemm's transB) is stored
         transposed / unsqueezed with its per-axis `axis` moved along (a per-channel scale
         on the wrong axis silently mixes channels). Kept as is, counted as `refused_<why>`:
         an activation DQ this pass cannot read (`activation`: not 8-bit, non-constant
         scale), per-axis activations (`activation_per_axis`), a weight that is not an 8-bit
         DQ (`weight`), a per-axis weight whose axis is not the output channel (Conv: 0,
         2-D MatMul B: 1; QLinearMatMul and MatMulInteger take per-column scales only for
         2-D B) (`weight_axis`), per-channel weight zero points that differ where the op
         takes one (`weight_zero_point`), type combinations onnxruntime's CPU kernels lack
         (QLinear (x, w, y): u8/u8/u8, u8/s8/u8, s8/s8/s8 only) (`type_combo`), a DQ bias of
         another scale (`bias_scale`) or a bias that is not constant (`bias`), transA or
         alpha != 1 in Gemm (`gemm_attrs`), an output read both by Q and by float ops or a
         Q per-axis output (`output`). Graph outputs keep their names.
      4. float form: DQ of a constant (or of Q of a constant) becomes its float value
         (the fake-quantized weight, `weights_dequantized`, exact), and DQ(Q(x)) with one
         per-tensor map becomes Clip(x, (qmin - z) s, (qmax - z) s)
         (`activation_qdq_removed`): the rounding goes, the saturation stays, because
         quantizers remove a Relu / Clip before Q when Q's range already clamps the same
         way (onnxruntime does). Data-movement ops on integers are first moved back above
         their DQ. Dropping the rounding moves outputs by up to about one activation step
         per layer, hence the bounded tolerance; everything else this pass does is exact
         or within one output step.

      5. activation type (`activations="uint8"`, `activations_to_uint8`): an int8 activation
         quantizer Q(x; s, z) and the DQs reading it become uint8 with zero point z + 128:
         the integers shift by 128 and so does the zero point, (q + 128) - (z + 128) = q - z,
         and saturation to [-128, 127] shifts to [0, 255]: exact. x86 CPUs multiply u8 x s8
         fastest (onnxruntime converts S8S8 QDQ models the same way before fusing them);
         applied first, to Q nodes read only by DQs of the same map.

    Options:
      form: "qdq" rewrites 1-2, "integer" 1-3, "float" 1, 2 and 4; "auto" takes "integer"
        or "float" from a target's boolean `integer_kernels`, else "qdq".
      fold_weights: rewrite 1 (the other forms read Q(constant) weights either way).
      cancel: rewrite 2.
      activations: "uint8" applies rewrite 5; "keep" leaves activation types alone.

    The node selector picks the anchor of each rewrite: the QuantizeLinear of 1 and 2, the
    data-movement op, the Conv / MatMul / Gemm of 3, the DequantizeLinear of 4.
    Statistics: one count per rewrite as named above, `refused_*` as listed.
    """
    chosen = resolve_form(form, ctx.target)
    stats: dict[str, int] = dict.fromkeys(CHANGES, 0)
    types = Types(graph)
    names = Names(graph)
    for g in list(all_graphs(graph)):
        if not can_add_constant(g):
            continue
        folder = _Folder(g, ctx, types, names, stats)
        if fold_weights:
            folder.fold_weights()
        if activations == "uint8":
            folder.activations_to_uint8()
        if cancel:
            folder.simplify(move=chosen != "float")
        if chosen == "integer" and opset(g) >= 10:
            folder.integer_form()
            if cancel:
                folder.simplify()
        elif chosen == "float":
            folder.float_form()
    return stats


class _Refused(Exception):
    """A pattern that cannot be expressed exactly; the message is the statistics key."""


class _Folder:
    def __init__(self, g: Graph, ctx: PassContext, types: Types, names: Names, stats: dict[str, int]):
        self.g, self.ctx, self.types, self.names, self.stats = g, ctx, types, names, stats

    # -- helpers ----------------------------------------------------------------------------
    def _mine(self, node: Node, op_type: str) -> bool:
        return node.graph is self.g and is_op(node, op_type) and self.ctx.selected(node)

    def _params(self, node: Node | None) -> QParams | None:
        return None if node is None else qdq_params(node, self.types)

    def _const(self, hint: str, data: np.ndarray) -> Value:
        return add_constant(self.g, self.names.fresh(hint), np.asarray(data))

    def _value(self, hint: str, like: Value | None = None, elem: int | None = None) -> Value:
        v = Value(self.names.fresh(hint))
        t = self.types.of(like) if like is not None else None
        if elem is not None:
            v.type = TensorType(elem, t.shape if t is not None else None)
        return v

    def _add(self, op: str, inputs: list[Value | None], before: Node, hint: str,
             elem: int | None = None, like: Value | None = None, name: str = "", **attrs) -> Value:
        out = self._value(hint, like, elem)
        self.g.insert(Node(op, inputs, [out], name=name, attrs=attrs), before=before)
        return out

    def _input_or_const(self, node: Node, slot: int, data: np.ndarray, hint: str) -> Value:
        """`node`'s input `slot` when it already holds `data` (same dtype and shape), else a
        new constant."""
        v = node.inputs[slot] if slot < len(node.inputs) else None
        arr = const_of(v)
        if v is not None and arr is not None and arr.dtype == data.dtype and arr.shape == data.shape:
            return v
        return self._const(hint, data)

    def _drop_dead(self, nodes: list[Node]) -> None:
        """Remove the given nodes once unused (in any order), then the Q/DQ/view nodes and
        constants that only they read."""
        pending = list(nodes)
        progress = True
        while progress:
            progress = False
            for n in list(pending):
                if n.graph is not self.g:
                    pending.remove(n)
                elif not any(used(o) for o in n.outputs if o is not None):
                    pending.remove(n)
                    self._remove(n)
                    progress = True

    def _remove(self, node: Node) -> None:
        work = [node]
        while work:
            n = work.pop()
            if n.graph is not self.g or any(used(o) for o in n.outputs if o is not None):
                continue
            inputs = [v for v in n.inputs if v is not None]
            self.g.remove_nodes([n])
            for v in inputs:
                p = v.producer
                if p is not None and p.graph is self.g and p.domain == "" and \
                        p.op_type in (QUANTIZE, DEQUANTIZE, "Transpose", "Unsqueeze", "Constant"):
                    work.append(p)
                elif is_const(v) and v.graph is self.g and not used(v) and not v.is_graph_input:
                    remove_constant(v)

    # -- 1. weights -------------------------------------------------------------------------
    def fold_weights(self) -> None:
        for q in self.g.nodes:
            if not self._mine(q, QUANTIZE) or q.outputs[0] is None or not used(q.outputs[0]):
                continue
            data = quantized_constant(q.outputs[0], self.types)
            if data is None:
                continue
            out = q.outputs[0]
            new = self._const(out.name, data)
            if not replace_value(out, new, self.names, keep_name=True):
                remove_constant(new)
                continue
            self._drop_dead([q])
            self.stats["weights_folded"] += 1

    # -- 2. redundant pairs, chains, data movement --------------------------------------
    def simplify(self, *, move: bool = True) -> None:
        for _ in range(_MAX_SWEEPS):
            changed = False
            for n in self.g.nodes:
                if n.graph is not self.g:
                    continue  # removed earlier in this sweep
                if is_op(n, QUANTIZE):
                    changed |= self._cancel(n) or self._merge_chain(n)
                elif move and n.domain == "" and n.op_type in MOVEMENT:
                    changed |= self._move(n)
            if not changed:
                return

    def _cancel(self, q: Node) -> bool:
        if not self._mine(q, QUANTIZE):
            return False
        dq = producer(q.inputs[0], DEQUANTIZE)
        pq, pd = self._params(q), self._params(dq)
        if pq is None or pd is None or pq.qtype.bits != 8 or not pq.same(pd):
            return False
        assert dq is not None
        if not replace_value(q.outputs[0], dq.inputs[0], self.names):
            return False
        self._drop_dead([q])
        self.stats["pairs_cancelled"] += 1
        return True

    def _merge_chain(self, q2: Node) -> bool:
        if not self._mine(q2, QUANTIZE):
            return False
        dq = producer(q2.inputs[0], DEQUANTIZE)
        q1 = producer(dq.inputs[0], QUANTIZE) if dq is not None else None
        p1, pd, p2 = self._params(q1), self._params(dq), self._params(q2)
        if p1 is None or pd is None or p2 is None or not p1.same(pd) or p2.same(pd):
            return False
        if p1.qtype.bits != 8 or p2.qtype.bits != 8 or p1.axis != p2.axis or \
                p1.scale.tobytes() != p2.scale.tobytes() or p1.scale.shape != p2.scale.shape:
            return False
        z1, z2 = p1.zero_point.astype(np.int64), p2.zero_point.astype(np.int64)
        if not (np.all(p1.qtype.qmin - z1 <= p2.qtype.qmin - z2)
                and np.all(p1.qtype.qmax - z1 >= p2.qtype.qmax - z2)):
            return False  # Q1 clamps more than Q2: the chain is not one quantization
        assert q1 is not None and dq is not None
        q2.set_input(0, q1.inputs[0])
        self._drop_dead([dq])
        self.stats["chains_merged"] += 1
        return True

    def _move(self, m: Node) -> bool:
        """DQ -> M  =>  M -> DQ (M on the integers)."""
        if not self.ctx.selected(m) or m.graph is not self.g or m.outputs[0] is None:
            return False
        if any(used(o) for o in m.outputs[1:] if o is not None):
            return False  # MaxPool's indices
        if not self._movable(m):
            return False
        slots = self._data_slots(m)
        dqs = [producer(m.inputs[s], DEQUANTIZE) for s in slots]
        if not dqs or any(d is None for d in dqs):
            return False
        params = [self._params(d) for d in dqs]
        p = params[0]
        if p is None or p.per_axis or p.qtype.bits != 8 or \
                any(o is None or not o.same(p) for o in params[1:]):
            return False
        out = m.outputs[0]
        only_reader = all({u._uid for u in d.outputs[0].users} == {m._uid}  # type: ignore[union-attr]
                          and not _is_graph_output(d) for d in dqs)
        if not (only_reader or self._read_by_maps_only(out, QUANTIZE, p)):
            return False  # moving would duplicate the op on the float side
        inputs = list(m.inputs)
        for s, d in zip(slots, dqs):
            inputs[s] = d.inputs[0]  # type: ignore[union-attr]
        moved = self._value(out.name, out, p.qtype.elem_type)
        self.g.insert(Node(m.op_type, inputs, [moved], name=m.name, attrs=list(m.attrs.values())),
                      before=m)
        dq0 = dqs[0]
        assert dq0 is not None
        deq = self._add(DEQUANTIZE, [moved, *self._map_inputs(dq0, p)], m, out.name, like=out,
                        elem=self.types.elem(out))
        if not replace_value(out, deq, self.names, keep_name=True):
            self._drop_dead([deq.producer])  # type: ignore[list-item]
            return False
        self._drop_dead([m])
        self.stats["movement_simplified"] += 1
        return True

    def _lift(self, dq: Node) -> bool:
        """M -> DQ  =>  DQ -> M (float form: brings DQ next to the Q it pairs with)."""
        m = dq.inputs[0].producer if dq.inputs[0] is not None else None
        if m is None or m.graph is not self.g or m.domain != "" or m.op_type not in MOVEMENT \
                or not self.ctx.selected(m) or not self._movable(m):
            return False
        if any(used(o) for o in m.outputs[1:] if o is not None):
            return False
        p = self._params(dq)
        out = m.outputs[0]
        if p is None or p.per_axis or p.qtype.bits != 8 or out is None or \
                not self._read_by_maps_only(out, DEQUANTIZE, p):
            return False
        inputs = list(m.inputs)
        map_inputs = self._map_inputs(dq, p)
        for s in self._data_slots(m):
            v = m.inputs[s]
            if self.types.elem(v) != p.qtype.elem_type:
                return False
        for s in self._data_slots(m):
            v = m.inputs[s]
            inputs[s] = self._add(DEQUANTIZE, [v, *map_inputs], m, f"{v.name}_dq",  # type: ignore[union-attr]
                                  elem=D.FLOAT, like=v)
        lifted = self._value(out.name, dq.outputs[0], D.FLOAT)
        self.g.insert(Node(m.op_type, inputs, [lifted], name=m.name, attrs=list(m.attrs.values())),
                      before=m)
        readers = out.users
        for r in readers:
            replace_value(r.outputs[0], lifted, self.names, keep_name=True)  # type: ignore[arg-type]
        self._drop_dead([*readers, m])
        self.stats["movement_simplified"] += 1
        return True

    def _read_by_maps_only(self, v: Value, op_type: str, p: QParams) -> bool:
        """`v` is read only by `op_type` nodes with map `p` (and is no graph output); with
        several readers none of their outputs is a graph output either."""
        readers = v.users
        if not readers or v.is_graph_output:
            return False
        for r in readers:
            pr = self._params(r) if is_op(r, op_type) else None
            if pr is None or not pr.same(p) or (len(readers) > 1 and _is_graph_output(r)):
                return False
        return True

    @staticmethod
    def _data_slots(m: Node) -> list[int]:
        slots = MOVEMENT[m.op_type]
        return list(range(len(m.inputs))) if slots is None else [s for s in slots if s < len(m.inputs)]

    def _map_inputs(self, node: Node, p: QParams) -> list[Value]:
        """Scale and zero point inputs for a new per-tensor Q/DQ of map `p`."""
        return [self._input_or_const(node, 1, p.scale, "scale"),
                self._input_or_const(node, 2, p.zero_point, "zero_point")]

    def _movable(self, m: Node) -> bool:
        if m.op_type == "MaxPool":
            return opset(self.g) >= 12  # integer MaxPool
        if m.op_type == "Resize":
            return (m.attr("mode", "nearest") == "nearest"
                    and m.attr("coordinate_transformation_mode", "half_pixel") != "tf_crop_and_resize")
        return True

    # -- 5. activation type ----------------------------------------------------------------
    def activations_to_uint8(self) -> None:
        for q in list(self.g.nodes):
            if not self._mine(q, QUANTIZE) or q.graph is not self.g:
                continue
            p = self._params(q)
            out = q.outputs[0] if q.outputs else None
            if p is None or p.qtype.name != "int8" or p.per_axis or out is None or out.is_graph_output:
                continue
            if const_of(q.inputs[0]) is not None or len(q.inputs) < 3:
                continue  # a weight, or an implicit zero point (uint8 by default already)
            readers = out.uses
            if not readers or any(slot != 0 or not is_op(u, DEQUANTIZE) or u.graph is not self.g
                                  or len(u.inputs) < 3 for u, slot in readers):
                continue
            if any(not (pu := self._params(u)) or not pu.same(p) for u, _ in readers):
                continue
            old_zp = {q.inputs[2], *(u.inputs[2] for u, _ in readers)}
            zp = self._const(f"{out.name}_zero_point_u8",
                             np.asarray(int(p.zero_point) + 128, np.uint8))
            for n in (q, *(u for u, _ in readers)):
                self.g.set_inputs_of(n, [n.inputs[0], n.inputs[1], zp])
            if q.attr("output_dtype"):
                q.set_attr("output_dtype", D.UINT8)
            if out.type is not None:
                t = self.types.of(out)
                out.type = TensorType(D.UINT8, t.shape if t is not None else None)
            for v in old_zp:
                if v is not None and not v.uses and not v.is_graph_output and v.const is not None:
                    remove_constant(v)
            self.stats["activations_to_uint8"] += 1

    # -- 3. integer form --------------------------------------------------------------------
    def integer_form(self) -> None:
        for n in self.g.nodes:
            if n.graph is not self.g or n.domain != "" or n.op_type not in ("Conv", "MatMul", "Gemm"):
                continue
            if not self.ctx.selected(n) or producer(n.inputs[0], DEQUANTIZE) is None:
                continue
            try:
                key = self._integer(n)
            except _Refused as why:
                key = f"refused_{why}"
            self.stats[key] = self.stats.get(key, 0) + 1

    def _integer(self, n: Node) -> str:
        dq_x = producer(n.inputs[0], DEQUANTIZE)
        assert dq_x is not None
        px = self._params(dq_x)
        if px is None or px.qtype.bits != 8:
            raise _Refused("activation")
        if px.per_axis:
            raise _Refused("activation_per_axis")
        w = trace_weight(n.inputs[1] if len(n.inputs) > 1 else None, self.types)
        if w is None:
            raise _Refused("weight")
        y = n.outputs[0]
        if y is None or any(o is not None and used(o) for o in n.outputs[1:]):
            raise _Refused("output")
        readers = y.users
        qs = [u for u in readers if is_op(u, QUANTIZE)]
        py = self._params(qs[0]) if qs else None
        if qs:
            # quantized output: every reader is a Q with one per-tensor 8-bit map
            if len(qs) != len(readers) or y.is_graph_output or py is None or py.per_axis \
                    or py.qtype.bits != 8:
                raise _Refused("output")
            for q in qs[1:]:
                pq = self._params(q)
                if pq is None or not pq.same(py) or q.outputs[0].is_graph_output:
                    raise _Refused("output")
        if n.op_type == "Gemm":
            w = self._gemm_weight(n, w)
        if n.op_type == "Conv":
            return self._conv(n, dq_x, px, w, qs, py)
        return self._matmul(n, dq_x, px, w, qs, py)

    def _gemm_weight(self, n: Node, w: Weight) -> Weight:
        if n.attr("transA", 0) or n.attr("alpha", 1.0) != 1.0:
            raise _Refused("gemm_attrs")
        if not n.attr("transB", 0):
            return w
        if not w.constant:
            raise _Refused("gemm_attrs")
        assert w.data is not None
        axis = None if w.params.axis is None else 1 - w.params.axis
        return Weight(w.params.with_axis(axis), w.data.T, w.value, w.nodes)

    def _check_types(self, px: QParams, w: Weight, py: QParams) -> None:
        if (px.qtype.elem_type, w.params.qtype.elem_type, py.qtype.elem_type) not in QLINEAR_TYPES:
            raise _Refused("type_combo")

    def _weight_inputs(self, n: Node, w: Weight, *, scalar_zero_point: bool) -> tuple[Value, Value, Value]:
        """Constants for an integer op's weight, its scale and zero point, reusing the DQ's
        inputs when they already hold them."""
        assert w.data is not None
        dq = w.nodes[0]
        if w.direct:
            data = dq.inputs[0]
        else:
            data = self._const(f"{n.name or n.op_type}_weight_q", w.data)
        zp = w.params.zero_point
        if scalar_zero_point:
            zp = zp.reshape(-1)[:1].reshape(())
        assert data is not None
        return (data, self._input_or_const(dq, 1, w.params.scale, "weight_scale"),
                self._input_or_const(dq, 2, zp, "weight_zero_point"))

    def _uniform_zero_point(self, w: Weight) -> None:
        zp = w.params.zero_point.reshape(-1)
        if np.any(zp != zp[0]):
            raise _Refused("weight_zero_point")

    def _bias(self, b: Value | None, px: QParams, w: Weight, nout: int) -> tuple[np.ndarray | None, list[Node]]:
        """The int32 bias of scale xs * ws, and the bias's DQ node (to remove later)."""
        if b is None:
            return None, []
        ws = np.broadcast_to(w.params.scale, (nout,))
        arr = const_of(b)
        if arr is not None:
            if arr.dtype != np.float32 or arr.size != nout:
                raise _Refused("bias")
            bq, s = N.quantize_bias(arr.reshape(nout), px.scale, ws)
            if np.any(np.abs(arr.reshape(nout).astype(np.float64) / s) >= 2**31 - 1):
                raise _Refused("bias")
            return bq, []
        dq = producer(b, DEQUANTIZE)
        pb = self._params(dq)
        data = const_of(dq.inputs[0]) if dq is not None else None
        if pb is None or data is None or pb.qtype.name != "int32" or data.size != nout \
                or np.any(pb.zero_point != 0):
            raise _Refused("bias")
        want = (px.scale * ws.astype(np.float32)).astype(np.float32)
        if not np.allclose(np.broadcast_to(pb.scale, (nout,)), want, rtol=1e-6, atol=0):
            raise _Refused("bias_scale")
        assert dq is not None
        return data.reshape(nout).astype(np.int32), [dq]

    def _float_bias(self, b: Value | None) -> tuple[np.ndarray | None, list[Node]]:
        if b is None:
            return None, []
        arr = const_of(b)
        if arr is not None:
            if arr.dtype != np.float32:
                raise _Refused("bias")
            return arr, []
        dq = producer(b, DEQUANTIZE)
        pb = self._params(dq)
        data = const_of(dq.inputs[0]) if dq is not None else None
        if pb is None or data is None or pb.qtype.name != "int32":
            raise _Refused("bias")
        assert dq is not None
        return N.dequantize(data, pb.scale, pb.zero_point, pb.axis), [dq]

    def _xq_inputs(self, dq_x: Node, px: QParams) -> tuple[Value, Value, Value]:
        return (dq_x.inputs[0], self._input_or_const(dq_x, 1, px.scale, "x_scale"),  # type: ignore[return-value]
                self._input_or_const(dq_x, 2, px.zero_point, "x_zero_point"))

    def _finish(self, old: Value, new: Value, dead: list[Node]) -> None:
        """`new` replaces `old` (keeping its name) and the pattern's leftovers go."""
        if not replace_value(old, new, self.names, keep_name=True):  # pragma: no cover - fresh value
            raise AssertionError(f"cannot replace {old.name}")
        self._drop_dead(dead)

    def _conv(self, n: Node, dq_x: Node, px: QParams, w: Weight, qs: list[Node], py: QParams | None) -> str:
        if not w.constant:
            raise _Refused("weight")
        assert w.data is not None
        if w.params.axis not in (None, 0):
            raise _Refused("weight_axis")
        nout = w.data.shape[0]
        b = n.inputs[2] if len(n.inputs) > 2 else None
        self._uniform_zero_point(w)
        xq, xs, xz = self._xq_inputs(dq_x, px)
        if py is not None:
            self._check_types(px, w, py)
            bq, bias_nodes = self._bias(b, px, w, nout)
            # the zero point is uniform (checked): QLinearConv takes it as a scalar, which
            # saves a byte per output channel in the file
            wq, ws, wz = self._weight_inputs(n, w, scalar_zero_point=True)
            q = qs[0]
            ys = self._input_or_const(q, 1, py.scale, "y_scale")
            yz = self._input_or_const(q, 2, py.zero_point, "y_zero_point")
            ins = [xq, xs, xz, wq, ws, wz, ys, yz]
            if bq is not None:
                ins.append(self._const(f"{n.name or 'conv'}_bias_q", bq))
            out = self._add("QLinearConv", ins, n, q.outputs[0].name, like=q.outputs[0],
                            elem=py.qtype.elem_type, name=n.name, **_attrs(n))
            self._replace_qs(qs, out, [n, dq_x, *w.nodes, *bias_nodes])
            return "qlinear_conv"
        bf, bias_nodes = self._float_bias(b)
        wq, _, wz = self._weight_inputs(n, w, scalar_zero_point=True)
        acc = self._add("ConvInteger", [xq, wq, xz, wz], n, f"{n.outputs[0].name}_acc",
                        elem=D.INT32, like=n.outputs[0], name=n.name, **_attrs(n))
        spatial = w.data.ndim - 2
        scale = (px.scale * w.params.scale).astype(np.float32)
        if w.params.per_axis:
            scale = scale.reshape((nout,) + (1,) * spatial)
        if bf is not None:
            bf = np.asarray(bf, np.float32).reshape((nout,) + (1,) * spatial)
        self._rescale(n, acc, scale, bf, [n, dq_x, *w.nodes, *bias_nodes])
        return "conv_integer"

    def _rescale(self, n: Node, acc: Value, scale: np.ndarray, bias: np.ndarray | None, dead: list[Node]) -> None:
        y = n.outputs[0]
        assert y is not None
        f = self._add("Cast", [acc], n, f"{y.name}_float", elem=D.FLOAT, like=y, to=D.FLOAT)
        r = self._add("Mul", [f, self._const(f"{y.name}_scale", scale)], n, f"{y.name}_scaled",
                      elem=D.FLOAT, like=y)
        if bias is not None:
            r = self._add("Add", [r, self._const(f"{y.name}_bias", bias)], n, f"{y.name}_biased",
                          elem=D.FLOAT, like=y)
        self._finish(y, r, dead)

    def _replace_qs(self, qs: list[Node], out: Value, dead: list[Node]) -> None:
        self._finish(qs[0].outputs[0], out, [])
        for q in qs[1:]:
            self._finish(q.outputs[0], out, [])
        self._drop_dead([*qs, *dead])

    def _matmul(self, n: Node, dq_x: Node, px: QParams, w: Weight, qs: list[Node], py: QParams | None) -> str:
        is_gemm = n.op_type == "Gemm"
        c = n.inputs[2] if is_gemm and len(n.inputs) > 2 else None
        if w.params.per_axis:
            rank = w.data.ndim if w.data is not None else self.types.rank(w.value)
            if rank != 2 or w.params.axis != 1:
                raise _Refused("weight_axis")
        if w.constant:
            # a uniform per-column zero point goes in as a scalar (onnxruntime applies it to
            # every column; a byte per column less in the file)
            zp = w.params.zero_point.reshape(-1)
            uniform = zp.size > 0 and bool(np.all(zp == zp[0]))
            wq, ws, wz = self._weight_inputs(n, w, scalar_zero_point=uniform)
        else:
            dq = w.nodes[0]
            wq = w.value
            ws = self._input_or_const(dq, 1, w.params.scale, "weight_scale")
            wz = self._input_or_const(dq, 2, w.params.zero_point, "weight_zero_point")
        xq, xs, xz = self._xq_inputs(dq_x, px)
        if py is not None:
            self._check_types(px, w, py)
            q = qs[0]
            ys = self._input_or_const(q, 1, py.scale, "y_scale")
            yz = self._input_or_const(q, 2, py.zero_point, "y_zero_point")
            if c is not None:
                return self._gemm_as_conv(n, dq_x, px, w, qs, py, c, (xq, xs, xz, ys, yz))
            out = self._add("QLinearMatMul", [xq, xs, xz, wq, ws, wz, ys, yz], n, q.outputs[0].name,
                            like=q.outputs[0], elem=py.qtype.elem_type, name=n.name)
            self._replace_qs(qs, out, [n, dq_x, *w.nodes])
            return "qlinear_matmul"
        bias, bias_nodes = self._float_bias(c)
        if bias is not None:
            beta = n.attr("beta", 1.0)
            bias = (bias.astype(np.float64) * beta).astype(np.float32) if beta != 1.0 else bias
        acc = self._add("MatMulInteger", [xq, wq, xz, wz], n, f"{n.outputs[0].name}_acc",
                        elem=D.INT32, like=n.outputs[0], name=n.name)
        scale = (px.scale * w.params.scale).astype(np.float32)
        self._rescale(n, acc, scale, bias, [n, dq_x, *w.nodes, *bias_nodes])
        return "matmul_integer"

    def _gemm_as_conv(self, n: Node, dq_x: Node, px: QParams, w: Weight, qs: list[Node], py: QParams,
                      c: Value, xio: tuple[Value, ...]) -> str:
        """Gemm(A, B, C) with a bias: A [M, K] -> [M, K, 1, 1], QLinearConv with W = op(B)^T
        as [N, K, 1, 1] (output channels = Gemm columns, so a per-column scale is per-channel)
        and the int32 bias, then back to [M, N]."""
        if not w.constant:
            raise _Refused("weight")
        assert w.data is not None
        if n.attr("beta", 1.0) != 1.0:
            raise _Refused("gemm_attrs")
        k, nout = w.data.shape
        cval = const_of(c)
        if cval is not None and cval.size != nout:
            raise _Refused("bias")  # C of shape [M, N] / [M, 1] is not a per-column bias
        self._uniform_zero_point(w)
        conv_w = Weight(w.params.with_axis(None if w.params.axis is None else 0),
                        np.ascontiguousarray(w.data.T).reshape(nout, k, 1, 1), w.value, w.nodes, False)
        bq, bias_nodes = self._bias(c, px, conv_w, nout)
        xq, xs, xz, ys, yz = xio
        wq, ws, wz = self._weight_inputs(n, conv_w, scalar_zero_point=True)
        q = qs[0]
        x4 = self._add("Reshape", [xq, self._const("gemm_as_conv_shape", np.array([0, k, 1, 1], np.int64))],
                       n, f"{xq.name}_4d", elem=px.qtype.elem_type)
        ins = [x4, xs, xz, wq, ws, wz, ys, yz]
        if bq is not None:
            ins.append(self._const(f"{n.name or 'gemm'}_bias_q", bq))
        y4 = self._add("QLinearConv", ins, n, f"{q.outputs[0].name}_4d", elem=py.qtype.elem_type,
                       name=n.name, kernel_shape=[1, 1])
        out = self._add("Reshape", [y4, self._const("gemm_as_conv_shape", np.array([0, nout], np.int64))],
                        n, q.outputs[0].name, like=q.outputs[0], elem=py.qtype.elem_type)
        self._replace_qs(qs, out, [n, dq_x, *w.nodes, *bias_nodes])
        return "gemm_as_qlinear_conv"

    # -- 4. float form ----------------------------------------------------------------------
    def float_form(self) -> None:
        for _ in range(_MAX_SWEEPS):
            changed = False
            for dq in self.g.nodes:
                if self._mine(dq, DEQUANTIZE) and dq.outputs[0] is not None:
                    changed |= self._dequantize_weight(dq) or self._drop_pair(dq) or self._lift(dq)
            if not changed:
                return

    def _dequantize_weight(self, dq: Node) -> bool:
        p = self._params(dq)
        if p is None:
            return False
        src = dq.inputs[0]
        data = quantized_constant(src, self.types)
        if data is None and p.qtype.name == "int32":
            data = const_of(src)
        if data is None or (p.per_axis and p.scale.size != data.shape[p.axis]):
            return False
        out = dq.outputs[0]
        assert out is not None
        new = self._const(out.name, N.dequantize(data, p.scale, p.zero_point, p.axis))
        if not replace_value(out, new, self.names, keep_name=True):
            remove_constant(new)
            return False
        self._drop_dead([dq])
        self.stats["weights_dequantized"] += 1
        return True

    def _drop_pair(self, dq: Node) -> bool:
        """DQ(Q(x)) => Clip(x, DQ(qmin), DQ(qmax)): no rounding, but the saturation stays
        (quantizers drop a Relu or Clip whose effect the Q's range already has)."""
        q = producer(dq.inputs[0], QUANTIZE)
        p, pq = self._params(dq), self._params(q)
        if q is None or p is None or pq is None or not pq.same(p) or p.per_axis:
            return False
        x = q.inputs[0]
        if x is None or is_const(x) or self.types.elem(x) != D.FLOAT:
            return False
        lo, hi = (N.dequantize(np.array(v), p.scale, p.zero_point) for v in (p.qtype.qmin, p.qtype.qmax))
        if opset(self.g) >= 11:
            clip = Node("Clip", [x, self._const("qmin", lo), self._const("qmax", hi)],
                        [self._value(f"{x.name}_clipped", x, D.FLOAT)], name=dq.name)
        else:
            clip = Node("Clip", [x], [self._value(f"{x.name}_clipped", x, D.FLOAT)], name=dq.name,
                        attrs={"min": float(lo), "max": float(hi)})
        self.g.insert(clip, before=dq)
        if not replace_value(dq.outputs[0], clip.outputs[0], self.names, keep_name=True):  # type: ignore[arg-type]
            self._drop_dead([clip])
            return False
        self._drop_dead([dq])
        self.stats["activation_qdq_removed"] += 1
        return True


def _is_graph_output(n: Node) -> bool:
    return any(o is not None and o.is_graph_output for o in n.outputs)


def _attrs(conv: Node) -> dict:
    """Conv's attributes for QLinearConv / ConvInteger (the same names and meaning)."""
    keep = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
    return {k: a for k, a in conv.attrs.items() if k in keep}


