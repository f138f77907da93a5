"""Remove nodes that provably return their input unchanged (and cancelling pairs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from homec import dtypes as D
from homec.context import PassContext
from homec.ir import Graph, Node, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import (INT32_MAX, Names, Types, all_graphs, input_const, opset, remove_if_unused,
                    replace_value, used)

KINDS = ("identity", "dropout", "cast", "cast_roundtrip", "cast_chain", "reshape", "transpose",
         "transpose_pair", "slice", "pad", "expand", "tile", "squeeze_unsqueeze")


@register_pass("eliminate_identity", tolerance=Tolerance.exact())
def eliminate_identity(graph: Graph, ctx: PassContext) -> Stats:
    """Bypass nodes whose output equals their input; merge provably lossless Cast chains.

    Algebra (each rewrite replaces the node's output `y` by its input `x`, then removes it):
      identity           y = Identity(x)
      dropout            y, [mask] = Dropout(x, ratio, training_mode) in inference: no
                         training_mode input or a constant false one (opset >= 12), or
                         is_test != 0 (opset < 7); the mask output must be unused
      cast               y = Cast(x, to=T) or CastLike(x, t) with T the known dtype of x
      cast_roundtrip     y = Cast(Cast(x, T1), T0) with T0 = dtype(x) and T0 -> T1 lossless
      reshape            y = Reshape(x, s) with s resolving (0 copies, at most one -1) to
                         x's shape dim for dim
      transpose          y = Transpose(x, perm) with perm the identity (or rank <= 1)
      transpose_pair     y = Transpose(Transpose(x, p1), p2) with p1[p2[i]] == i
      slice              y = Slice(x, starts, ends, axes, steps) taking everything on every
                         sliced axis: step 1, start clamping to 0 and end to the dim after
                         negative indices are offset by the dim; with the dim unknown only
                         start 0 and end >= INT32_MAX (exporters' INT_MAX) qualify
      pad                y = Pad(x, pads) with all pads zero
      expand             y = Expand(x, s) where broadcasting s to x's shape gives x's shape
                         (len(s) <= rank, each entry 1 or equal to the known dim)
      tile               y = Tile(x, repeats) with all repeats 1
      squeeze_unsqueeze  y = Squeeze(Unsqueeze(x, a), a) or Unsqueeze(Squeeze(x, a), a),
                         axes compared after normalising negatives against the shared rank
    One more rewrite is not a bypass:
      cast_chain         z = Cast(Cast(x, T1), T2) becomes Cast(x, T2) when every value of
                         dtype(x) is exactly representable in T1 (e.g. int8 -> int32,
                         float16 -> float32), so the inner cast changes no value; lossy
                         chains such as float -> int -> float are never merged.

    A graph output `y` keeps its name: `x` is renamed to it when `x` is a node output or
    initializer of the same graph and not itself a graph input or output; otherwise the
    node stays. Pair rewrites remove the inner node when nothing else reads it. Every node a
    rewrite removes or changes must be selected. Runs inside If/Loop/Scan bodies too (types
    there are the declared ones).

    Statistics: one count per rewrite kind above.
    """
    st = dict.fromkeys(KINDS, 0)
    types = Types(graph)
    names = Names(graph)
    for g in list(all_graphs(graph)):
        op = opset(g)
        for node in g.nodes:
            if node.graph is not g or node.domain != "" or not ctx.selected(node):
                continue
            rule = _RULES.get(node.op_type)
            if rule is None:
                continue
            rule(_Site(g, names), node, types, op, ctx, st)
    return st


# ---------------------------------------------------------------------------------------
# Applying a bypass
# ---------------------------------------------------------------------------------------


class _Site:
    """The graph being rewritten and the pass run's fresh-name source."""

    __slots__ = ("graph", "names")

    def __init__(self, graph: Graph, names: Names):
        self.graph, self.names = graph, names


def _bypass(site: _Site, node: Node, x: Value | None, kind: str, st: Stats,
            inner: Node | None = None) -> bool:
    """Replace `node`'s first output by `x`, remove `node` (and `inner` if now unused)."""
    g = site.graph
    if x is None or not node.outputs or node.outputs[0] is None:
        return False
    if any(used(o) for o in node.outputs[1:]):
        return False
    if not replace_value(node.outputs[0], x, site.names):
        return False
    g.remove_nodes([node])
    if inner is not None and inner.graph is g:
        remove_if_unused(g, inner)
    st[kind] += 1
    return True


def _inner(node: Node, op_type: str, ctx: PassContext) -> Node | None:
    """The producer of `node`'s first input when it is a selected `op_type` of this graph."""
    x = node.inputs[0] if node.inputs else None
    p = x.producer if x is not None else None
    if p is None or p.op_type != op_type or p.domain != "" or p.graph is not node.graph:
        return None
    return p if ctx.selected(p) else None


def _ints(a: np.ndarray | Sequence[int] | None) -> list[int] | None:
    if a is None:
        return None
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu" or arr.ndim > 1:
        return None
    return [int(v) for v in arr.reshape(-1)]


def _attr_or_input(node: Node, attr: str, slot: int, op: int, since: int) -> list[int] | None:
    """An int list given as attribute before opset `since` and as constant input from it on."""
    if op >= since:
        return _ints(input_const(node, slot)) if len(node.inputs) > slot and node.inputs[slot] is not None else None
    v = node.attr(attr)
    return None if v is None else [int(i) for i in v]


# ---------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------


def _identity(g, node, types, op, ctx, st):
    _bypass(g, node, node.inputs[0] if node.inputs else None, "identity", st)


def _dropout(g, node, types, op, ctx, st):
    if op < 7:
        if not node.attr("is_test", 0):
            return
    elif len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = input_const(node, 2)
        if mode is None or mode.size != 1 or bool(mode.reshape(-1)[0]):
            return
    elif node.attr("training_mode", 0):
        return
    _bypass(g, node, node.inputs[0], "dropout", st)


_INT_RANGE = {  # dtype -> (min, max)
    D.BOOL: (0, 1), D.INT8: (-128, 127), D.UINT8: (0, 255), 5: (-2**15, 2**15 - 1),
    4: (0, 2**16 - 1), D.INT32: (-2**31, 2**31 - 1), 12: (0, 2**32 - 1),
    D.INT64: (-2**63, 2**63 - 1), 13: (0, 2**64 - 1),
}
_FLOAT_MANTISSA = {D.FLOAT16: 11, D.BFLOAT16: 8, D.FLOAT: 24, D.DOUBLE: 53}
_FLOAT_WIDENING = {(D.FLOAT16, D.FLOAT), (D.FLOAT16, D.DOUBLE), (D.BFLOAT16, D.FLOAT),
                   (D.BFLOAT16, D.DOUBLE), (D.FLOAT, D.DOUBLE)}


def lossless(src: int, dst: int) -> bool:
    """Whether every value of dtype `src` is exactly representable in dtype `dst`."""
    if src == dst:
        return True
    if src in _INT_RANGE and dst in _INT_RANGE:
        lo, hi = _INT_RANGE[src]
        dlo, dhi = _INT_RANGE[dst]
        return dst != D.BOOL and dlo <= lo and hi <= dhi
    if src in _INT_RANGE and dst in _FLOAT_MANTISSA:
        lo, hi = _INT_RANGE[src]
        return max(-lo, hi) <= 2 ** _FLOAT_MANTISSA[dst]
    return (src, dst) in _FLOAT_WIDENING


def _cast(g, node, types, op, ctx, st):
    x = node.inputs[0]
    src = types.elem(x)
    to = node.attr("to")
    if src is not None and to == src:
        _bypass(g, node, x, "cast", st)
        return
    inner = _inner(node, "Cast", ctx)
    if inner is None or to is None:
        return
    x0 = inner.inputs[0]
    t0, t1 = types.elem(x0), inner.attr("to")
    if t0 is None or t1 is None or not lossless(t0, t1):
        return
    if to == t0:
        _bypass(g, node, x0, "cast_roundtrip", st, inner)
    else:
        node.set_input(0, x0)
        remove_if_unused(g.graph, inner)
        st["cast_chain"] += 1


def _cast_like(g, node, types, op, ctx, st):
    src, dst = types.elem(node.inputs[0]), types.elem(node.inputs[1])
    if src is not None and src == dst:
        _bypass(g, node, node.inputs[0], "cast", st)


def _reshape(g, node, types, op, ctx, st):
    shape = _ints(input_const(node, 1)) if op >= 5 else (
        None if node.attr("shape") is None else list(node.attr("shape")))
    dims = types.dims(node.inputs[0])
    if shape is None or dims is None or len(shape) != len(dims):
        return
    allowzero = node.attr("allowzero", 0)
    minus = 0
    for s, d in zip(shape, dims):
        if s == 0 and not allowzero:
            continue
        if s == -1:
            minus += 1
            continue
        if d is None or s != d:
            return
    if minus > 1 or (minus and any(d == 0 for d in dims)):
        return
    _bypass(g, node, node.inputs[0], "reshape", st)


def _perm(node: Node, types: Types) -> list[int] | None:
    perm = node.attr("perm")
    if perm is not None:
        return list(perm)
    r = types.rank(node.inputs[0])
    return None if r is None else list(range(r))[::-1]


def _transpose(g, node, types, op, ctx, st):
    p2 = _perm(node, types)
    if p2 is None:
        return
    if p2 == list(range(len(p2))):
        _bypass(g, node, node.inputs[0], "transpose", st)
        return
    inner = _inner(node, "Transpose", ctx)
    if inner is None:
        return
    p1 = _perm(inner, types)
    if p1 is None or len(p1) != len(p2):
        return
    if all(p1[p2[i]] == i for i in range(len(p2))):
        _bypass(g, node, inner.inputs[0], "transpose_pair", st, inner)


def slice_is_everything(dims: Sequence[int | None] | None, starts: Sequence[int],
                        ends: Sequence[int], axes: Sequence[int] | None,
                        steps: Sequence[int] | None) -> bool:
    """Whether Slice(starts, ends, axes, steps) provably takes every element of x.

    `dims` are x's dims (None entries unknown; None: rank unknown)."""
    n = len(starts)
    if len(ends) != n:
        return False
    axes = list(range(n)) if axes is None else list(axes)
    steps = [1] * n if steps is None else list(steps)
    if len(axes) != n or len(steps) != n:
        return False
    rank = None if dims is None else len(dims)
    for a, s, e, k in zip(axes, starts, ends, steps):
        if a < 0:
            if rank is None:
                return False
            a += rank
        if rank is not None and not 0 <= a < rank:
            return False
        d = None if dims is None else dims[a]
        if k != 1:
            return False
        if d is None:
            if not (s == 0 or s <= -INT32_MAX) or e < INT32_MAX:
                return False
            continue
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if min(max(s, 0), d) != 0 or min(max(e, 0), d) != d:
            return False
    return True


def _slice(g, node, types, op, ctx, st):
    if op >= 10:
        starts, ends = _ints(input_const(node, 1)), _ints(input_const(node, 2))
        axes = steps = None
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            axes = _ints(input_const(node, 3))
            if axes is None:
                return
        if len(node.inputs) > 4 and node.inputs[4] is not None:
            steps = _ints(input_const(node, 4))
            if steps is None:
                return
    else:
        starts = None if node.attr("starts") is None else list(node.attr("starts"))
        ends = None if node.attr("ends") is None else list(node.attr("ends"))
        axes = None if node.attr("axes") is None else list(node.attr("axes"))
        steps = None
    if starts is None or ends is None:
        return
    if slice_is_everything(types.dims(node.inputs[0]), starts, ends, axes, steps):
        _bypass(g, node, node.inputs[0], "slice", st)


def _pad(g, node, types, op, ctx, st):
    if op >= 11:
        pads = _ints(input_const(node, 1)) if len(node.inputs) > 1 else None
    else:
        p = node.attr("pads", node.attr("paddings"))
        pads = None if p is None else list(p)
    if pads is not None and all(p == 0 for p in pads):
        _bypass(g, node, node.inputs[0], "pad", st)


def _expand(g, node, types, op, ctx, st):
    shape = _ints(input_const(node, 1))
    dims = types.dims(node.inputs[0])
    if shape is None or dims is None or len(shape) > len(dims):
        return
    for s, d in zip(shape, dims[len(dims) - len(shape):]):
        if s != 1 and (d is None or s != d):
            return
    _bypass(g, node, node.inputs[0], "expand", st)


def _tile(g, node, types, op, ctx, st):
    reps = _ints(input_const(node, 1))
    if reps is not None and all(r == 1 for r in reps):
        _bypass(g, node, node.inputs[0], "tile", st)


def _axes(node: Node, op: int) -> list[int] | None:
    return _attr_or_input(node, "axes", 1, op, 13)


def _norm(axes: list[int], rank: int | None) -> list[int] | None:
    if any(a < 0 for a in axes):
        if rank is None:
            return None
        axes = [a + rank if a < 0 else a for a in axes]
    return sorted(axes)


def _squeeze_pair(g, node, types, op, ctx, st):
    other = "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze"
    inner = _inner(node, other, ctx)
    if inner is None:
        return
    a_in, a_out = _axes(inner, op), _axes(node, op)
    if not a_in or not a_out:
        return  # Squeeze without axes removes every 1-dim: not an inverse
    # Both axes lists refer to the higher-rank tensor: Unsqueeze's output, Squeeze's input.
    big = inner.outputs[0] if node.op_type == "Squeeze" else inner.inputs[0]
    rank = types.rank(big)
    if rank is None:
        r0 = types.rank(inner.inputs[0]) if node.op_type == "Squeeze" else None
        rank = None if r0 is None else r0 + len(a_in)
    n_in, n_out = _norm(a_in, rank), _norm(a_out, rank)
    if n_in is not None and n_in == n_out and len(set(n_in)) == len(n_in):
        _bypass(g, node, inner.inputs[0], "squeeze_unsqueeze", st, inner)


_RULES: dict[str, Callable[..., None]] = {
    "Identity": _identity, "Dropout": _dropout, "Cast": _cast, "CastLike": _cast_like,
    "Reshape": _reshape, "Transpose": _transpose, "Slice": _slice, "Pad": _pad,
    "Expand": _expand, "Tile": _tile, "Squeeze": _squeeze_pair, "Unsqueeze": _squeeze_pair,
}
