"""Remove channel classes from the graph: apply the edits `channels.analyze` recorded.

Every edit names its node by position in `graph.nodes` (the deterministic topological order),
so the same analysis applies to the graph it was computed on or to a fresh copy of it (the
sensitivity analysis prunes copies). Constants are never edited in place: a sliced constant is
a new initializer, and the old one goes once nothing reads it (weights may be shared).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from homec.ir import Dim, Graph, Node, TensorType

from .channels import Analysis, Edit, label

__all__ = ["apply", "Applied"]


@dataclasses.dataclass
class Applied:
    constants_sliced: int = 0
    attributes_changed: int = 0
    values_resized: int = 0


def apply(graph: Graph, analysis: Analysis, removed_roots: np.ndarray) -> Applied:
    """Remove the channels of the classes `removed_roots` from `graph`."""
    from homec.passes._util import add_constant, is_const, remove_constant  # noqa: PLC0415

    removed_roots = np.asarray(removed_roots, np.int64)
    out = Applied()
    if removed_roots.size == 0:
        return out
    nodes = graph.nodes
    if [label(n) for n in nodes] != analysis.node_names:
        raise ValueError("the graph does not match the channel analysis (nodes changed)")

    def keep(atoms: np.ndarray) -> np.ndarray:
        return analysis.keep_mask(atoms, removed_roots)

    # slices of the same constant input of the same node compose (a weight loses rows and
    # columns): gather them per (node, slot) first
    slices: dict[tuple[int, int], list[Edit]] = {}
    for e in analysis.edits:
        if e.kind == "slice":
            slices.setdefault((e.node_index, e.slot), []).append(e)
    for (ni, slot), edits in slices.items():
        masks = [(e.axis, keep(e.atoms)) for e in edits]
        if all(m.all() for _, m in masks):
            continue
        node = nodes[ni]
        old = node.inputs[slot]
        data = old.const.numpy()
        for axis, m in masks:
            data = np.compress(m, data, axis=axis)
        new = add_constant(graph, graph.unique_name(f"{old.name}_pruned"), np.ascontiguousarray(data))
        node.graph.set_inputs_of(node, [new if i == slot else v for i, v in enumerate(node.inputs)])
        if not old.uses and not old.is_graph_output and is_const(old):
            remove_constant(old)
        out.constants_sliced += 1
    for e in analysis.edits:
        node = nodes[e.node_index]
        if e.kind == "slice":
            continue
        if e.kind == "group":
            kept = int(keep(e.atoms).sum())
            if kept != node.attr("group", 1):
                node.set_attr("group", kept)
                out.attributes_changed += 1
        elif e.kind == "split":
            _set_split(graph, node, [int(keep(p).sum()) for p in e.pieces])
            out.attributes_changed += 1
        elif e.kind == "slice_range":
            m = keep(e.atoms)
            start, end = int(m[:e.start].sum()), int(m[:e.end].sum())
            _set_int_entry(graph, node, 1, e.index, start)
            _set_int_entry(graph, node, 2, e.index, end)
            out.attributes_changed += 1
        elif e.kind == "reshape":
            _set_int_entry(graph, node, 1, e.index, int(keep(e.atoms).sum()) * e.factor)
            out.attributes_changed += 1
        elif e.kind == "sizes":
            _set_int_entry(graph, node, 3, e.index, int(keep(e.atoms).sum()))
            out.attributes_changed += 1
        else:  # pragma: no cover - analysis and rewrite are written together
            raise AssertionError(e.kind)
    for name, cm in analysis.maps.items():
        v = graph.value(name)
        t = v.tensor_type() if v is not None else None
        if t is None or t.shape is None or cm.axis >= len(t.shape):
            continue
        mask = keep(cm.atoms)
        n = int(mask.sum())
        if mask.all() or t.shape[cm.axis].value == n:
            continue
        dims = list(t.shape)
        dims[cm.axis] = Dim.of(n) if dims[cm.axis].value is not None else dims[cm.axis]
        v.type = TensorType(t.elem_type, tuple(dims))
        out.values_resized += 1
    return out


def _set_int_entry(graph: Graph, node: Node, slot: int, index: int, value: int) -> None:
    """Set entry `index` of the constant int64 input `slot` (a fresh constant)."""
    from homec.passes._util import add_constant, is_const, remove_constant  # noqa: PLC0415

    old = node.inputs[slot]
    data = old.const.numpy().copy()
    flat = data.reshape(-1)
    flat[index] = value
    new = add_constant(graph, graph.unique_name(f"{old.name}_pruned"), data)
    node.graph.set_inputs_of(node, [new if i == slot else v for i, v in enumerate(node.inputs)])
    if not old.uses and not old.is_graph_output and is_const(old):
        remove_constant(old)


def _set_split(graph: Graph, node: Node, sizes: list[int]) -> None:
    from homec.passes._util import add_constant, is_const, remove_constant  # noqa: PLC0415

    sizes_arr = np.array(sizes, np.int64)
    if node.attr("split") is not None or (graph.opset() or 13) < 13:
        node.set_attr("split", sizes)
        return
    if node.attr("num_outputs") is not None:
        node.attrs.pop("num_outputs", None)
    new = add_constant(graph, graph.unique_name(f"{node.name or 'split'}_sizes"), sizes_arr)
    ins = list(node.inputs) + [None] * max(0, 2 - len(node.inputs))
    old = ins[1]
    ins[1] = new
    node.graph.set_inputs_of(node, ins)
    if old is not None and not old.uses and not old.is_graph_output and is_const(old):
        remove_constant(old)
