"""Fold Shape/Size and the small integer computations on them into constants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.dtypes import numpy_dtype_of
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import (Names, Types, all_graphs, can_add_constant, const_of, constant_in_place,
                    opset, used)


@dataclass(frozen=True)
class _PV:
    """A 0-d or 1-d tensor some of whose entries are known (None: unknown)."""

    dtype: int
    scalar: bool
    items: tuple[int | float | None, ...]
    derived: bool  # computed from a Shape/Size (not merely a constant)

    @property
    def known(self) -> bool:
        return all(i is not None for i in self.items)

    def array(self) -> np.ndarray:
        arr = np.array(self.items, dtype=numpy_dtype_of(self.dtype))
        return arr.reshape(()) if self.scalar else arr


_INT_TYPES = {D.INT64, D.INT32, 4, 5, 12, 13, D.INT8, D.UINT8}
_TRACKED = ("Shape", "Size", "Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast",
            "Reshape", "Identity", "Add", "Sub", "Mul")


@register_pass("fold_shapes", tolerance=Tolerance.exact())
def fold_shapes(graph: Graph, ctx: PassContext) -> Stats:
    """Replace Shape, Size and the shape arithmetic built on them by constants.

    Algebra: Shape(x; start, end) = dims(x)[start:end] and Size(x) = prod(dims(x)) are known
    where those dims are static (shapes from homec.analysis.shapes.infer_shapes for the
    top-level graph, declared types inside subgraphs). Entries are tracked one by one, so a
    partly static shape still yields constants: Gather(Shape(x), 1) is 3 for x: [N, 3, H, W]
    even though N, H, W are unknown. The entries are carried through Gather (axis 0,
    constant indices), Slice (constant starts/ends/axes/steps, ONNX clamping), Concat,
    Unsqueeze/Squeeze (0-d <-> 1-d), Cast, Reshape (0-d <-> 1-d), Identity and integer
    Add/Sub/Mul (entry-wise, with scalar broadcasting). Every value computed this way
    whose entries are all known and that is read by anything else (or is a graph output)
    becomes an initializer with the same name; nodes left without readers are removed.
    A folded shape can make later shapes static (Reshape(x, Concat(.., Size(y)))), so
    shapes are re-inferred and the rewrite repeated until nothing more folds (at most 8
    rounds). Only nodes of the default domain that are selected take part.

    Statistics: folded_shapes (Shape/Size nodes removed), folded_values (values made
    constants), removed_nodes (all nodes removed).
    """
    st = {"folded_shapes": 0, "folded_values": 0, "removed_nodes": 0}
    for _ in range(_MAX_ROUNDS):
        before = st["folded_values"]
        types = Types(graph)  # re-inferred each round: a folded shape can fix later shapes
        names = Names(graph)
        pvs: dict[Value, _PV] = {}
        for g in list(all_graphs(graph)):
            if can_add_constant(g):
                _fold_graph(g, ctx, types, pvs, st, names)
        if st["folded_values"] == before:
            break
    return st


_MAX_ROUNDS = 8


def _fold_graph(g: Graph, ctx: PassContext, types: Types, pvs: dict[Value, _PV], st: Stats,
                names: Names) -> None:
    order = g.nodes
    tracked: set[int] = set()
    op = opset(g)
    for node in order:
        if node.domain != "" or node.op_type not in _TRACKED or not ctx.selected(node):
            continue
        out = node.outputs[0] if len(node.outputs) == 1 else None
        if out is None:
            continue
        try:
            pv = _eval(node, types, pvs, op)
        except (ValueError, IndexError, TypeError, OverflowError):
            pv = None
        if pv is not None:
            pvs[out] = pv
            tracked.add(id(node))
    # Materialize fully known values read by something that is not itself folded away.
    folded_nodes = {id(n) for n in order if id(n) in tracked and pvs[n.outputs[0]].known}
    doomed: list[Node] = []
    for node in order:
        if id(node) not in folded_nodes:
            continue
        out = node.outputs[0]
        doomed.append(node)
        readers_outside = out.is_graph_output or any(
            u.graph is not g or id(u) not in folded_nodes for u in out.users)
        if not readers_outside:
            continue
        constant_in_place(out, pvs[out].array(), names)
        st["folded_values"] += 1
    for node in reversed(doomed):
        if not any(used(o) for o in node.outputs):
            if node.op_type in ("Shape", "Size"):
                st["folded_shapes"] += 1
            g.remove_nodes([node])
            st["removed_nodes"] += 1


# ---------------------------------------------------------------------------------------
# Entry-wise evaluation
# ---------------------------------------------------------------------------------------


def _pv_of(v: Value | None, pvs: dict[Value, _PV]) -> _PV | None:
    if v is None:
        return None
    got = pvs.get(v)
    if got is not None:
        return got
    arr = const_of(v)
    if arr is None or arr.ndim > 1 or arr.dtype.kind not in "iuf":
        return None
    items = tuple(x.item() for x in arr.reshape(-1))
    return _PV(v.const.dtype, arr.ndim == 0, items, False)  # type: ignore[union-attr]


def _ints(v: Value | None, pvs: dict[Value, _PV]) -> list[int] | None:
    pv = _pv_of(v, pvs)
    if pv is None or not pv.known or pv.dtype not in _INT_TYPES:
        return None
    return [int(i) for i in pv.items]  # type: ignore[arg-type]


def _eval(node: Node, types: Types, pvs: dict[Value, _PV], op: int) -> _PV | None:
    t = node.op_type
    ins = node.inputs
    if t == "Shape":
        dims = types.dims(ins[0])
        if dims is None:
            return None
        r = len(dims)
        start, end = node.attr("start", 0), node.attr("end", r)
        start = min(max(start + r if start < 0 else start, 0), r)
        end = min(max(end + r if end < 0 else end, 0), r)
        return _PV(D.INT64, False, tuple(dims[start:end]), True)
    if t == "Size":
        dims = types.dims(ins[0])
        if dims is None:
            return None
        if any(d == 0 for d in dims):
            return _PV(D.INT64, True, (0,), True)
        if any(d is None for d in dims):
            return None
        return _PV(D.INT64, True, (int(np.prod(dims, dtype=np.int64)),), True)

    args = [_pv_of(v, pvs) for v in ins if v is not None]
    data = _pv_of(ins[0], pvs) if ins else None
    if data is None or not any(a is not None and a.derived for a in args):
        return None  # only computations on shapes (constants alone are fold_constants' job)

    if t == "Identity":
        return data
    if t == "Gather":
        idx_v = ins[1]
        idx = const_of(idx_v)
        if node.attr("axis", 0) != 0 or data.scalar or idx is None or idx.ndim > 1 \
                or idx.dtype.kind not in "iu":
            return None
        n = len(data.items)
        picked = []
        for i in idx.reshape(-1).tolist():
            i = i + n if i < 0 else i
            if not 0 <= i < n:
                return None
            picked.append(data.items[i])
        return _PV(data.dtype, idx.ndim == 0, tuple(picked), True)
    if t == "Slice":
        if data.scalar:
            return None
        if op >= 10:
            starts, ends = _ints(ins[1], pvs), _ints(ins[2], pvs)
            axes = _ints(ins[3], pvs) if len(ins) > 3 and ins[3] is not None else [0]
            steps = _ints(ins[4], pvs) if len(ins) > 4 and ins[4] is not None else [1]
        else:
            starts, ends = node.attr("starts"), node.attr("ends")
            axes, steps = node.attr("axes", (0,)), (1,)
        if starts is None or ends is None or axes is None or steps is None:
            return None
        if len(starts) != 1 or len(ends) != 1 or list(axes) not in ([0], [-1]) or len(steps) != 1:
            return None
        idx = _slice_indices(len(data.items), starts[0], ends[0], steps[0])
        if idx is None:
            return None
        return _PV(data.dtype, False, tuple(data.items[i] for i in idx), True)
    if t == "Concat":
        if node.attr("axis", 0) not in (0, -1) or any(a is None or a.scalar for a in args):
            return None
        if len({a.dtype for a in args}) != 1:  # type: ignore[union-attr]
            return None
        items = tuple(i for a in args for i in a.items)  # type: ignore[union-attr]
        return _PV(data.dtype, False, items, True)
    if t in ("Unsqueeze", "Squeeze"):
        axes = (_ints(ins[1], pvs) if len(ins) > 1 and ins[1] is not None else None) \
            if op >= 13 else node.attr("axes")
        if t == "Unsqueeze":
            if data.scalar and axes is not None and list(axes) in ([0], [-1]):
                return _PV(data.dtype, False, data.items, True)
            return None
        if not data.scalar and len(data.items) == 1 and (axes is None or list(axes) in ([0], [-1])):
            return _PV(data.dtype, True, data.items, True)
        return None
    if t == "Cast":
        to = node.attr("to")
        if to in _INT_TYPES:
            items = []
            for i in data.items:
                if i is None:
                    items.append(None)
                    continue
                if float(i) != int(i):
                    return None  # a float that would be truncated: leave it to the runtime
                v = int(i)
                info = np.iinfo(numpy_dtype_of(to))
                if not info.min <= v <= info.max:
                    return None
                items.append(v)
            return _PV(to, data.scalar, tuple(items), True)
        if to in (D.FLOAT, D.DOUBLE):
            if any(i is not None and abs(i) > 2**24 for i in data.items):
                return None
            return _PV(to, data.scalar, tuple(None if i is None else float(i) for i in data.items), True)
        return None
    if t == "Reshape":
        shape = _ints(ins[1], pvs) if op >= 5 else node.attr("shape")
        if shape is None:
            return None
        shape = list(shape)
        if shape == [] and len(data.items) == 1:
            return _PV(data.dtype, True, data.items, True)
        if shape in ([-1], [len(data.items)]) or (shape == [0] and not data.scalar):
            return _PV(data.dtype, False, data.items, True)
        return None
    if t in ("Add", "Sub", "Mul"):
        if len(args) != 2 or any(a is None for a in args):
            return None
        a, b = args
        if a.dtype != b.dtype or a.dtype not in _INT_TYPES:  # type: ignore[union-attr]
            return None
        n = max(len(a.items), len(b.items))  # type: ignore[union-attr]
        if len(a.items) not in (1, n) or len(b.items) not in (1, n):  # type: ignore[union-attr]
            return None
        out = []
        info = np.iinfo(numpy_dtype_of(a.dtype))  # type: ignore[union-attr]
        for k in range(n):
            x = a.items[0 if len(a.items) == 1 else k]  # type: ignore[union-attr]
            y = b.items[0 if len(b.items) == 1 else k]  # type: ignore[union-attr]
            if x is None or y is None:
                out.append(None)
                continue
            r = x + y if t == "Add" else x - y if t == "Sub" else x * y
            if not info.min <= r <= info.max:
                return None
            out.append(r)
        return _PV(a.dtype, a.scalar and b.scalar, tuple(out), True)  # type: ignore[union-attr]
    return None


def _slice_indices(n: int, start: int, end: int, step: int) -> Sequence[int] | None:
    """Indices ONNX Slice takes along an axis of size n (clamping as the spec says)."""
    if step == 0:
        return None
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return range(start, end, step)
