"""Common subexpression elimination over nodes and initializers."""

from __future__ import annotations

import hashlib
from typing import Any

from homec.context import PassContext
from homec.ir import Attr, AttrType, Graph, Node, SparseTensor, Tensor, Value
from homec.registry import Stats, Tolerance, register_pass

from ._util import NONDETERMINISTIC, Names, all_graphs, can_replace, is_const, replace_value


@register_pass("cse", tolerance=Tolerance.exact())
def cse(graph: Graph, ctx: PassContext, *, initializers: bool = True) -> Stats:
    """Merge nodes computing the same thing, and initializers holding the same data.

    Algebra: two nodes `y1 = op(x1..xn; attrs)` and `y2 = op(x1..xn; attrs)` with the same
    op type, domain and overload, the same input values in the same slots, equal attributes
    (tensor attributes compared by dtype, shape and bytes; floats by their bits) and the
    same pattern of present outputs compute the same outputs: every reader of `y2` reads
    `y1` and the second node is removed. Nodes are visited in topological order and the
    first one is kept, so merged inputs make their consumers mergeable in the same run.
    Nodes with subgraphs and random ops (RandomNormal*, RandomUniform*, Multinomial,
    Bernoulli) are never merged; nodes are only merged within one graph (each If/Loop/Scan
    body separately). If the removed node's output is a graph output, the kept node's
    output is renamed to it (when that output is itself a graph output or a graph input,
    the pair is left alone). Both nodes must be selected.

    Two constant initializers of one graph with the same dtype, dims and bytes are one
    constant: readers of the later one (file order) read the first. An initializer that is
    a graph output or an overridable input (IR >= 4) is never merged away. Initializers are
    deduplicated only when the pass runs unrestricted (no `on`/`where` selector).

    Options:
      initializers: also deduplicate initializers.

    Statistics: merged_nodes, merged_initializers.
    """
    st = {"merged_nodes": 0, "merged_initializers": 0}
    names = Names(graph)
    for g in list(all_graphs(graph)):
        if initializers and ctx.selector.is_empty:
            st["merged_initializers"] += _dedup_initializers(g)
        st["merged_nodes"] += _merge_nodes(g, ctx, names)
    return st


def _dedup_initializers(g: Graph) -> int:
    by_shape: dict[tuple, list[Value]] = {}
    for v in g.initializers.values():
        if isinstance(v.const, Tensor) and is_const(v):
            by_shape.setdefault((v.const.dtype, v.const.dims), []).append(v)
    merged = 0
    for candidates in by_shape.values():
        if len(candidates) < 2:
            continue
        groups: dict[str, list[Value]] = {}
        for v in candidates:
            groups.setdefault(_digest(v.const), []).append(v)  # type: ignore[arg-type]
        for vals in groups.values():
            first = vals[0]
            for dup in vals[1:]:
                # Below IR 4 constants are listed as inputs too; the entry stays (unused).
                if dup.is_graph_output or not dup.uses:
                    continue
                if not _same_tensor(first.const, dup.const):  # type: ignore[arg-type]
                    continue
                g.replace_all_uses(dup, first, include_outputs=False)
                merged += 1
    return merged


def _digest(t: Tensor) -> str:
    """A grouping key: a hash of a strided sample of the bytes (at most ~64 KiB), since
    `_same_tensor` confirms every merge on the full data; hashing whole weights dominated
    the pass on large models."""
    data = _tensor_bytes(t)
    step = max(1, len(data) // 65536)
    return hashlib.sha256(len(data).to_bytes(8, "little") + data[::step]).hexdigest()


def _tensor_bytes(t: Tensor) -> bytes:
    arr = t.numpy()
    if arr.dtype.kind == "O":
        return repr(arr.tolist()).encode()
    return arr.tobytes()


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.dims == b.dims and _tensor_bytes(a) == _tensor_bytes(b)


def _merge_nodes(g: Graph, ctx: PassContext, names: Names) -> int:
    seen: dict[tuple, Node] = {}
    merged = 0
    for node in g.nodes:
        if node.subgraphs() or node.op_type in NONDETERMINISTIC or not ctx.selected(node):
            continue
        if not node.outputs or all(o is None for o in node.outputs):
            continue
        try:
            key = _key(node)
        except _Unhashable:
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        pairs = [(o2, o1) for o1, o2 in zip(first.outputs, node.outputs) if o2 is not None]
        if not all(can_replace(o2, o1) for o2, o1 in pairs):
            continue
        # Two outputs of the removed node cannot both take names of the kept one.
        if sum(o2.is_graph_output for o2, _ in pairs) > 1:
            continue
        for o2, o1 in pairs:
            replace_value(o2, o1, names)
        g.remove_nodes([node])
        merged += 1
    return merged


class _Unhashable(Exception):
    pass


def _key(node: Node) -> tuple:
    return (node.op_type, node.domain, node.overload,
            tuple(id(v) if v is not None else None for v in node.inputs),
            tuple(o is not None for o in node.outputs),
            tuple(sorted((name, _attr_key(a)) for name, a in node.attrs.items())))


def _attr_key(a: Attr) -> tuple:
    if a.ref_attr_name:
        return ("ref", a.ref_attr_name)
    return (int(a.type), _value_key(a.type, a.value))


def _value_key(t: AttrType, v: Any) -> Any:
    if t == AttrType.FLOAT:
        import struct

        return struct.pack("<d", float(v))  # bits: 0.0 and -0.0 differ, NaN equals itself
    if t == AttrType.FLOATS:
        return tuple(_value_key(AttrType.FLOAT, x) for x in v)
    if t in (AttrType.INT, AttrType.STRING):
        return v
    if t in (AttrType.INTS, AttrType.STRINGS):
        return tuple(v)
    if t == AttrType.TENSOR:
        return (v.dtype, v.dims, _digest(v))
    if t == AttrType.TENSORS:
        return tuple((x.dtype, x.dims, _digest(x)) for x in v)
    if t == AttrType.SPARSE_TENSOR and isinstance(v, SparseTensor):
        return (v.dims, _value_key(AttrType.TENSOR, v.values), _value_key(AttrType.TENSOR, v.indices))
    if t in (AttrType.TYPE_PROTO,):
        return repr(v)
    if t == AttrType.TYPE_PROTOS:
        return tuple(repr(x) for x in v)
    raise _Unhashable
